#!/usr/bin/env bash
# Start an SGLang server for cures rollouts, in the foreground:
#   scripts/serve-sglang.sh MODEL_DIR PORT [extra sglang.launch_server args...]
# GPU machine (nvidia-smi works and python3 can import sglang): the stock launcher.
# CPU: the venv from scripts/install-sglang-cpu.sh (SGLang 0.5.23 on its pure-torch CPU path:
# SGLANG_USE_CPU_ENGINE=1, torch_native attention, no CUDA graphs, a bounded KV cache).
# Served model name: `policy` (what the configs ask for) unless SERVED_NAME is set; listens on
# 127.0.0.1 unless HOST is set. GPU: --mem-fraction-static ${MEM_FRACTION_STATIC:-0.85}; pick the
# GPUs with CUDA_VISIBLE_DEVICES (add --tp 2 / --dp 4 for several).
# Weight sync uses POST /update_weights_from_disk (admin route: keep the server on a trusted
# network, or start it with --api-key and give cures the key).
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 MODEL_DIR PORT [extra sglang args...]" >&2
  exit 2
fi
MODEL="$1"; PORT="$2"; shift 2
HOST="${HOST:-127.0.0.1}"
NAME="${SERVED_NAME:-policy}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1 \
  && python3 -c "import sglang" >/dev/null 2>&1; then
  exec python3 -m sglang.launch_server --model-path "$MODEL" --served-model-name "$NAME" \
    --host "$HOST" --port "$PORT" --dtype "${DTYPE:-bfloat16}" \
    --mem-fraction-static "${MEM_FRACTION_STATIC:-0.85}" "$@"
fi
CACHE="${CURES_CACHE:-$HOME/.cache/cures}"
PY="$CACHE/sglang-cpu/venv/bin/python"
if [[ ! -x "$PY" ]]; then
  echo "serve-sglang: no SGLang found; run scripts/install-sglang-cpu.sh first (CPU) or install sglang (GPU)" >&2
  exit 1
fi
export SGLANG_USE_CPU_ENGINE=1
exec "$PY" -m sglang.launch_server --model-path "$MODEL" --served-model-name "$NAME" \
  --host "$HOST" --port "$PORT" --device cpu --attention-backend torch_native \
  --disable-cuda-graph --max-total-tokens "${MAX_TOTAL_TOKENS:-32768}" \
  --dtype "${DTYPE:-bfloat16}" "$@"
