#!/usr/bin/env bash
# README command (1): set up and run the main job on the embedded default — CurES training the
# tiny warm-started testbed policy on the CPU testbed, printing held-out accuracy before/after.
# Idempotent; reuses the libtorch cut under ~/.cache/cures. Output: results/runs/demo/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/fetch-libtorch.sh >/dev/null
cargo build --release
if [[ ! -f assets/testbed-policy/config.json ]]; then
  ./target/release/cures sft --config configs/demo.toml --out assets/testbed-policy
fi
rm -rf results/runs/demo
./target/release/cures run --config configs/demo.toml --out results/runs/demo
./target/release/cures plot results/runs/demo --out results/runs/demo/plots
