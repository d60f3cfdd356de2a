#!/usr/bin/env bash
# README's test command: installs what the tests need (idempotent), then runs
# every test of the workspace. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
cargo test --workspace "$@"
# The nemesis must catch a deliberately broken master (issue 5): the
# test-only `chaos-broken-ack` feature rebuilds only the dsm crate.
cargo test -p dsm --features chaos-broken-ack --test nemesis broken_ack_is_caught
# The crash points of the WRITE path exist only in a build with this feature.
cargo test -p dsm --features failpoints --test crash_points "$@"
