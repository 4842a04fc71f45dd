#!/usr/bin/env bash
# Regenerate the warm-started testbed policy committed under assets/testbed-policy
# (`cures sft` with configs/demo.toml: a ~0.8M-parameter Llama-architecture model, HF format).
# About 4 minutes on 2 idle cores. Pass extra `--set key=value` overrides as arguments.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/fetch-libtorch.sh >/dev/null
cargo build --release
./target/release/cures sft --config configs/demo.toml --out assets/testbed-policy "$@"
