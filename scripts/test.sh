#!/usr/bin/env bash
# README's test command: installs what the tests need (idempotent), then runs
# every test of the workspace. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
cargo test --workspace "$@"
# The crash points of the WRITE path exist only in a build with this feature.
cargo test -p dsm --features failpoints --test crash_points "$@"
