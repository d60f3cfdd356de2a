#!/usr/bin/env bash
# README's test command: installs what the tests need (idempotent), then runs
# every test of the workspace. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
cargo test --workspace "$@"
# The nemesis must catch each deliberately broken master: acknowledging before
# the quorum, the wall-clock takeover that records its cut before fencing, and
# NOT_FOUND without confirming the term. The test-only features rebuild only
# the dsm crate.
cargo test -p dsm --features chaos-broken-ack,chaos-broken-takeover,chaos-broken-read \
    --test nemesis broken_
# The crash points of the WRITE path exist only in a build with this feature.
cargo test -p dsm --features failpoints --test crash_points "$@"
