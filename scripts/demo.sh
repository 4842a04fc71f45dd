#!/usr/bin/env bash
# README command (1): set up and run the main job on the embedded default.
# Idempotent; reuses the libtorch cut under ~/.cache/cures.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/fetch-libtorch.sh >/dev/null
cargo build --release
./target/release/cures simulate --config configs/simulate.toml --strategy grpo --quiet
./target/release/cures simulate --config configs/simulate.toml --strategy cures
