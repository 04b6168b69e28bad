#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs what is missing, then runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh test
# tests/example_verifier.rs runs this example's binary (cargo test builds examples only as test harnesses).
cargo build --example verify_assertion
# RUST_TEST_THREADS rather than `-- --test-threads`: the criterion bench target (run once in test mode) rejects that flag.
RUST_TEST_THREADS=4 cargo test --all-targets --no-fail-fast
