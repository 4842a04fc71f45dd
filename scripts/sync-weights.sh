#!/usr/bin/env bash
# Publish a checkpoint to a running inference server by hand (what `cures run` does after each
# step with rollout.sync = vllm_full | vllm_lora | sglang_full):
#   scripts/sync-weights.sh URL DIR full|lora|sglang [VERSION]
# full: HF checkpoint dir (vLLM started with VLLM_SERVER_DEV_MODE=1, e.g. scripts/serve-vllm.sh);
# lora: PEFT adapter dir (server started with --lora); sglang: /update_weights_from_disk.
# DIR must be readable by the server (same filesystem). Set CURES_API_KEY_ENV to the name of a
# variable holding the server's API key, if it has one.
set -euo pipefail
usage="usage: $0 URL CHECKPOINT_DIR full|lora|sglang [VERSION]"
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  echo "$usage"
  sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 0
fi
if [[ $# -lt 3 ]]; then
  echo "$usage" >&2
  exit 2
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN="${CURES_BIN:-target/release/cures}"
[[ -x "$BIN" ]] || cargo build --release --bin cures >&2
exec "$BIN" sync --endpoint "$1" --checkpoint "$2" --mode "$3" --version "${4:-1}" \
  --api-key-env "${CURES_API_KEY_ENV:-}"
