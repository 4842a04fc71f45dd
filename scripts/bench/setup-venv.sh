#!/usr/bin/env bash
# Create (idempotently) the Python venv that the reference benchmarks run in:
# ~/.cache/cures/bench-venv (override with CURES_CACHE). `cures bench ...` finds it there,
# or use CURES_BENCH_PYTHON=/path/to/python.
set -euo pipefail
CACHE="${CURES_CACHE:-$HOME/.cache/cures}"
VENV="$CACHE/bench-venv"
PY="${PYTHON:-python3}"
# Packages the references need (one per line: requirement spec).
REQS=(
  "numpy>=1.26"
  "math-verify>=0.8"
  # policy parity fixtures, train-step reference, SmolLM2 fixtures (scripts/make-tiny-models.py,
  # scripts/bench/train_step_ref.py, scripts/smollm2-server-logprobs.py); torch==2.11.0 matches libtorch.
  "torch==2.11.0"
  "transformers>=4.51"
  "tokenizers"
  "safetensors"
  "peft"
  "gguf"
)
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "setup-venv: creating $VENV" >&2
  mkdir -p "$CACHE"
  "$PY" -m venv "$VENV" || { echo "setup-venv: error: '$PY -m venv' failed (install python3-venv)" >&2; exit 1; }
fi
missing=()
for r in "${REQS[@]}"; do
  mod=${r%%[<>=\[]*}; mod=${mod//-/_}
  "$VENV/bin/python" -c "import $mod" 2>/dev/null || missing+=("$r")
done
if ((${#missing[@]})); then
  echo "setup-venv: installing ${missing[*]}" >&2
  "$VENV/bin/pip" install --quiet "${missing[@]}" || { echo "setup-venv: error: pip install failed: is PyPI reachable?" >&2; exit 1; }
fi
echo "setup-venv: ready: $VENV/bin/python" >&2
echo "$VENV/bin/python"
