#!/usr/bin/env bash
# Cut a CPU-only libtorch 2.11.0 out of the PyPI torch wheel (no download.pytorch.org needed).
#
# Idempotent: if the cache already holds a complete libtorch, it only prints where it is.
# Usage: scripts/fetch-libtorch.sh            (installs into $CURES_CACHE/libtorch-2.11.0)
#        CURES_CACHE=/some/dir scripts/fetch-libtorch.sh
# Prints the libtorch directory on the last line of stdout (so `LIBTORCH=$(scripts/fetch-libtorch.sh | tail -1)`).
set -euo pipefail

TORCH_VERSION=2.11.0
CUDART_VERSION=13.0.96   # nvidia-cuda-runtime, as pinned by torch 2.11.0's Requires-Dist
CUPTI_VERSION=13.0.85    # nvidia-cuda-cupti, likewise
CACHE="${CURES_CACHE:-$HOME/.cache/cures}"
DEST="$CACHE/libtorch-$TORCH_VERSION"
STAMP="$DEST/.complete"

log() { echo "fetch-libtorch: $*" >&2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
link_repo() {
  # .cargo/config.toml points LIBTORCH at <repo>/.libtorch, so plain `cargo build` finds it.
  ln -sfn "$DEST" "$REPO/.libtorch"
}

if [[ -f "$STAMP" ]]; then
  link_repo
  log "libtorch $TORCH_VERSION already present in $DEST (nothing to do; linked as $REPO/.libtorch)"
  echo "$DEST"
  exit 0
fi

PY="${PYTHON:-python3}"
if ! command -v "$PY" >/dev/null 2>&1; then
  log "error: $PY not found; install Python 3 with pip (needed to download the torch wheel from PyPI)"
  exit 1
fi
if ! "$PY" -m pip --version >/dev/null 2>&1; then
  log "error: '$PY -m pip' does not work; install pip (e.g. apt-get install python3-pip)"
  exit 1
fi

mkdir -p "$CACHE"
WHEELS="$CACHE/wheels"   # kept, so a re-run after a failure does not download 530 MB again
mkdir -p "$WHEELS"
WORK=$(mktemp -d "$CACHE/.libtorch-work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

download() {
  local spec=$1
  log "downloading $spec from PyPI ..."
  if ! "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$WHEELS" "$spec"; then
    log "error: 'pip download $spec' failed: is PyPI reachable from this machine (proxy, certificate)?"
    exit 1
  fi
}
download "torch==$TORCH_VERSION"
download "nvidia-cuda-runtime==$CUDART_VERSION"
download "nvidia-cuda-cupti==$CUPTI_VERSION"

STAGE="$WORK/libtorch"
mkdir -p "$STAGE/lib" "$STAGE/include"
TORCH_WHL=$(ls "$WHEELS"/torch-"$TORCH_VERSION"-*.whl | head -1)
log "extracting headers and CPU libraries from $(basename "$TORCH_WHL")"
(cd "$WORK" && "$PY" - "$TORCH_WHL" <<'PYEOF'
import sys, zipfile, os
whl = sys.argv[1]
keep_libs = {"libtorch_cpu.so", "libc10.so", "libgomp.so.1", "libshm.so"}
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name.startswith("torch/include/"):
            out = os.path.join("libtorch", "include", name[len("torch/include/"):])
        elif name.startswith("torch/lib/") and (os.path.basename(name) in keep_libs
                                                 or os.path.basename(name).startswith("libgomp")):
            out = os.path.join("libtorch", "lib", os.path.basename(name))
        else:
            continue
        if name.endswith("/"):
            continue
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with z.open(name) as src, open(out, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
PYEOF
)
for whl in "$WHEELS"/nvidia_cuda_runtime-"$CUDART_VERSION"-*.whl "$WHEELS"/nvidia_cuda_cupti-"$CUPTI_VERSION"-*.whl; do
  log "extracting CUDA runtime stubs from $(basename "$whl")"
  (cd "$WORK" && "$PY" - "$whl" <<'PYEOF'
import sys, zipfile, os, re
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if re.match(r"lib(cudart|cupti)\.so(\.\d+)*$", base):
            with z.open(name) as src, open(os.path.join("libtorch", "lib", base), "wb") as dst:
                dst.write(src.read())
PYEOF
  )
done

# torch-sys always links -ltorch; the wheel's libtorch.so would pull in libtorch_cuda.so, so we
# provide an empty stand-in library of that name.
log "building empty stand-in libtorch.so"
echo 'void cures_libtorch_stub(void) {}' > "$WORK/stub.c"
cc -shared -fPIC -o "$STAGE/lib/libtorch.so" "$WORK/stub.c"

[[ -f "$STAGE/lib/libtorch_cpu.so" && -f "$STAGE/lib/libc10.so" ]] || { log "error: wheel layout unexpected (no libtorch_cpu.so/libc10.so)"; exit 1; }
touch "$STAGE/.complete"
rm -rf "$DEST"
mv "$STAGE" "$DEST"
link_repo
log "installed CPU libtorch $TORCH_VERSION into $DEST ($(du -sh "$DEST" | cut -f1)); linked as $REPO/.libtorch"
echo "$DEST"
