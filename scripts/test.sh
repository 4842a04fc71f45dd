#!/usr/bin/env bash
# README command (2): set up everything the tests need, then run the whole test suite.
# Idempotent; reuses the libtorch cut under ~/.cache/cures. `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/fetch-libtorch.sh >/dev/null
cargo build --release --all-targets
cargo test --release --all-targets
