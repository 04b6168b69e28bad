#!/usr/bin/env bash
# Run stepgate on its embedded defaults with a demo app; prints a sign-in link.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh build
exec cargo run --release --quiet -- demo "$@"
