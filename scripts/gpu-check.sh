#!/usr/bin/env bash
# Every GPU figure in one run, on a GPU machine that has PyTorch 2.11 but no Rust toolchain and
# no network: it carries a cures binary built elsewhere and builds nothing.
#
#   scripts/gpu-check.sh [--bin PATH] [--out FILE]      on the GPU machine
#   scripts/gpu-check.sh --cpu-smoke [--out FILE]       the same script end to end on a CPU, with
#                                                       tiny shapes (CI runs it, so it cannot rot)
#
# --bin: the cures binary (default $CURES_BIN, else ./cures, else target/release/cures).
# --out: where the JSON object goes (default gpu-check.json); one key per figure, null where a
#        figure could not be taken, its reason under "errors".
#
# On the GPU machine the binary loads that machine's libtorch: LD_LIBRARY_PATH is set to the
# torch/lib of its python3 (2.11), where libtorch_cuda.so lies beside libtorch_cpu.so, so cures
# loads the CUDA half itself (src/backend.rs); the PyTorch references run in that python3.
# The figures: `cures --version`; `cures bench train-step` and `cures bench generate` at the
# qwen2.5-math-1.5b preset (bf16, and f32 + bf16) beside their references; a 3-step `cures run` of
# the testbed demo on the device. Exit status 0 when every step ran, 1 otherwise (the JSON is
# written either way).
set -uo pipefail
CALLER=$(pwd)
abs() { case "$1" in /*) echo "$1" ;; *) echo "$CALLER/$1" ;; esac; }
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SMOKE=0
OUT="$CALLER/gpu-check.json"
BIN="${CURES_BIN:+$(abs "$CURES_BIN")}"
while (($#)); do
  case "$1" in
    --cpu-smoke) SMOKE=1 ;;
    --out) OUT=$(abs "${2:?--out needs a file}"); shift ;;
    --bin) BIN=$(abs "${2:?--bin needs a path}"); shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [[ -z "$BIN" ]]; then
  if [[ -x ./cures ]]; then BIN=./cures; else BIN=target/release/cures; fi
fi
if [[ ! -x "$BIN" ]]; then
  echo "gpu-check: no cures binary at $BIN (build it with cargo build --release, or give --bin)" >&2
  exit 2
fi
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null || { echo "gpu-check: $PY not found (it writes the JSON)" >&2; exit 2; }

if ((SMOKE)); then
  DEVICE=cpu
  PRESET=tiny
  RUN_SETS=(--set batch.prompts=16 --set batch.budget=64 --set iterations.init_rollouts=1
            --set run.eval_samples=1)
  export CURES_CUDA=0   # the CPU path, even where a CUDA libtorch and a GPU are present
else
  DEVICE=cuda
  PRESET=qwen2.5-math-1.5b
  RUN_SETS=()
  TL=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') || {
    echo "gpu-check: $PY cannot import torch: this machine needs PyTorch 2.11 (or give PYTHON=)" >&2
    exit 2
  }
  export LD_LIBRARY_PATH="$TL${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export CURES_BENCH_PYTHON="${CURES_BENCH_PYTHON:-$(command -v "$PY")}"
fi
# The references run in this python: it must be PyTorch 2.11 (the ABI cures was built against)
# with transformers; otherwise the figures it would give are missing, and the check fails.
REF_ERR=""
if ! REF_ERR=$("${CURES_BENCH_PYTHON:-$PY}" -c 'import torch, transformers
assert torch.__version__.startswith("2.11"), f"torch {torch.__version__}, not 2.11"' 2>&1); then
  REF_ERR="${CURES_BENCH_PYTHON:-$PY}: $(echo "$REF_ERR" | tail -1)"
  echo "gpu-check: no PyTorch reference: $REF_ERR" >&2
else
  REF_ERR=""
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cures-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
FAILED=0
# step NAME CMD...: stdout to $WORK/NAME.out, stderr to $WORK/NAME.err, exit status to NAME.rc.
step() {
  local name=$1
  shift
  echo "gpu-check: $name: $*" >&2
  local t0=$SECONDS
  "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"
  local rc=$?
  echo "$rc" >"$WORK/$name.rc"
  echo $((SECONDS - t0)) >"$WORK/$name.secs"
  if ((rc)); then
    FAILED=1
    echo "gpu-check: $name failed (exit $rc): $(tail -3 "$WORK/$name.err")" >&2
  else
    tail -n 8 "$WORK/$name.out" | grep -v '^{' | sed "s/^/gpu-check: $name: /" >&2
  fi
}

step version "$BIN" --version
step train_step "$BIN" bench train-step --device "$DEVICE" --preset "$PRESET" --json
step generate "$BIN" bench generate --device "$DEVICE" --preset "$PRESET" --json
step run "$BIN" run --config configs/demo.toml --set model.device="$DEVICE" \
  --set iterations.subsets=1 --set iterations.steps=3 --set run.eval_every=3 \
  ${RUN_SETS[@]+"${RUN_SETS[@]}"} --out "$WORK/run" --overwrite --quiet --json
# On a GPU machine a missing reference is a failed check (on a CPU smoke run it may be absent).
if [[ -n "$REF_ERR" ]] && ((SMOKE == 0)); then FAILED=1; fi

"$PY" - "$WORK" "$OUT" "$DEVICE" "$PRESET" "$SMOKE" "$REF_ERR" <<'PYEOF'
import json, os, sys

work, out, device, preset, smoke, ref_err = sys.argv[1:7]
res = {"mode": "cpu-smoke" if smoke == "1" else "gpu", "device": device, "preset": preset}
errors = {}


def read(name, ext):
    try:
        with open(os.path.join(work, f"{name}.{ext}")) as f:
            return f.read()
    except OSError:
        return ""


def last_json(name):
    """The step's JSON line, or None (with its error recorded)."""
    if read(name, "rc").strip() != "0":
        errors[name] = read(name, "err").strip()[-2000:] or "failed"
        return None
    for line in reversed(read(name, "out").splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError as e:
                errors[name] = f"bad JSON: {e}"
                return None
    errors[name] = "printed no JSON"
    return None


# cures --version: its three lines.
lines = read("version", "out").splitlines()
if read("version", "rc").strip() == "0" and lines:
    res["version"] = lines[0]
    res["libtorch"] = next((l for l in lines if l.startswith("libtorch ")), None)
    res["backend"] = next((l[len("backend: "):] for l in lines if l.startswith("backend: ")), None)
    res["cuda"] = bool(res["backend"]) and res["backend"].startswith("cuda")
else:
    errors["version"] = read("version", "err").strip() or "failed"
    res.update(version=None, libtorch=None, backend=None, cuda=None)

ts = last_json("train_step") or {}
res["train_step"] = ts or None
for key in ("cures_tokens_per_s", "pytorch_tokens_per_s", "ratio", "cures_mfu", "pytorch_mfu",
            "params", "dtype", "gpu"):
    res[f"train_step_{key}"] = ts.get(key)
if ts and ts.get("pytorch_tokens_per_s") is None:
    why = [l for l in read("train_step", "err").splitlines() if "reference" in l]
    errors["train_step_reference"] = ref_err or (why[-1] if why else "not run")

gen = last_json("generate") or {}
res["generate"] = gen or None
rows = {r["dtype"]: r for r in gen.get("rows", [])}
for dt in ("f32", "bf16"):
    r = rows.get(dt, {})
    res[f"generate_{dt}_tokens_per_s"] = r.get("kv_cache_tokens_per_s")
    res[f"generate_{dt}_recompute_tokens_per_s"] = r.get("recompute_tokens_per_s")
    res[f"generate_{dt}_same_tokens"] = r.get("same_tokens")
res["generate_bf16_over_f32"] = gen.get("bf16_over_f32")

run = last_json("run") or {}
res["run"] = run or None
res["run_steps"] = run.get("steps")
res["run_wall_s"] = run.get("run_wall_s")
steps = run.get("steps_here") or 0
res["run_s_per_step"] = run["run_wall_s"] / steps if steps else None
res["run_heldout_before"] = run.get("heldout_before")
res["run_heldout_after"] = run.get("heldout_after")

res["seconds"] = {n: int(read(n, "secs") or 0) for n in ("version", "train_step", "generate", "run")}
res["errors"] = errors
with open(out, "w") as f:
    json.dump(res, f, indent=1)
    f.write("\n")
print(json.dumps(res))
PYEOF
echo "gpu-check: wrote $OUT" >&2
exit "$FAILED"
