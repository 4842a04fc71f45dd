#!/usr/bin/env bash
# Cut libtorch 2.11.0 out of the PyPI torch wheel (no download.pytorch.org needed).
#
# Idempotent: what the cache already holds complete is not fetched again.
# Usage: scripts/fetch-libtorch.sh          CPU-only libtorch in $CURES_CACHE/libtorch-2.11.0
#                                           (~0.5 GB download, 0.5 GB on disk)
#        scripts/fetch-libtorch.sh --cuda   also the CUDA half, in $CURES_CACHE/libtorch-2.11.0-cuda:
#                                           the CPU files (hard links) plus libtorch_cuda.so & co
#                                           from the same wheel and the CUDA 13 runtime libraries
#                                           from the nvidia-* wheels the wheel requires (1.98 GB
#                                           more download, 3.1 GB more on disk)
#        scripts/fetch-libtorch.sh --cpu    link the CPU-only one again (CURES_CUDA=0 does the same
#                                           for one command)
#        CURES_CACHE=/some/dir scripts/fetch-libtorch.sh
# Either way the repository's .libtorch (which `cargo build` links against, .cargo/config.toml)
# points at the result; a plain run keeps a complete CUDA libtorch linked (it is a superset). The
# binary links the CPU half only and loads libtorch_cuda.so at start when it lies beside
# libtorch_cpu.so (src/backend.rs): `cures --version` says which backend it found.
# Prints the libtorch directory on the last line of stdout (so `LIBTORCH=$(scripts/fetch-libtorch.sh | tail -1)`).
set -euo pipefail

TORCH_VERSION=2.11.0
CUDART_VERSION=13.0.96   # nvidia-cuda-runtime, as pinned by torch 2.11.0's Requires-Dist
CUPTI_VERSION=13.0.85    # nvidia-cuda-cupti, likewise
CACHE="${CURES_CACHE:-$HOME/.cache/cures}"
DEST="$CACHE/libtorch-$TORCH_VERSION"
CUDA_DEST="$CACHE/libtorch-$TORCH_VERSION-cuda"
STAMP="$DEST/.complete"

log() { echo "fetch-libtorch: $*" >&2; }

CUDA=0
CPU_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --cuda) CUDA=1 ;;
    --cpu) CPU_ONLY=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) log "error: unknown argument $arg (expected --cuda, --cpu or nothing)"; exit 2 ;;
  esac
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
link_repo() {
  # .cargo/config.toml points LIBTORCH at <repo>/.libtorch, so plain `cargo build` finds it.
  ln -sfn "$1" "$REPO/.libtorch"
}

PY="${PYTHON:-python3}"
need_pip() {
  if ! command -v "$PY" >/dev/null 2>&1; then
    log "error: $PY not found; install Python 3 with pip (needed to download the torch wheel from PyPI)"
    exit 1
  fi
  if ! "$PY" -m pip --version >/dev/null 2>&1; then
    log "error: '$PY -m pip' does not work; install pip (e.g. apt-get install python3-pip)"
    exit 1
  fi
}

WHEELS="$CACHE/wheels"   # kept, so a re-run after a failure does not download again
download() {
  # download [--no-deps] SPEC...
  local deps=()
  if [[ "$1" == --no-deps ]]; then deps=(--no-deps); shift; fi
  log "downloading $* from PyPI ..."
  if ! "$PY" -m pip download --quiet ${deps[@]+"${deps[@]}"} --only-binary=:all: -d "${DL_DIR:-$WHEELS}" "$@"; then
    log "error: 'pip download $*' failed: is PyPI reachable from this machine (proxy, certificate)?"
    exit 1
  fi
}
torch_wheel() { ls "$WHEELS"/torch-"$TORCH_VERSION"-*.whl | head -1; }

fetch_cpu() {
  need_pip
  mkdir -p "$CACHE" "$WHEELS"
  local work
  work=$(mktemp -d "$CACHE/.libtorch-work.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  download --no-deps "torch==$TORCH_VERSION"
  download --no-deps "nvidia-cuda-runtime==$CUDART_VERSION"
  download --no-deps "nvidia-cuda-cupti==$CUPTI_VERSION"

  local stage="$work/libtorch"
  mkdir -p "$stage/lib" "$stage/include"
  local whl
  whl=$(torch_wheel)
  log "extracting headers and CPU libraries from $(basename "$whl")"
  (cd "$work" && "$PY" - "$whl" <<'PYEOF'
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
  for w in "$WHEELS"/nvidia_cuda_runtime-"$CUDART_VERSION"-*.whl "$WHEELS"/nvidia_cuda_cupti-"$CUPTI_VERSION"-*.whl; do
    log "extracting CUDA runtime stubs from $(basename "$w")"
    (cd "$work" && "$PY" - "$w" <<'PYEOF'
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
  echo 'void cures_libtorch_stub(void) {}' > "$work/stub.c"
  cc -shared -fPIC -o "$stage/lib/libtorch.so" "$work/stub.c"

  [[ -f "$stage/lib/libtorch_cpu.so" && -f "$stage/lib/libc10.so" ]] || { log "error: wheel layout unexpected (no libtorch_cpu.so/libc10.so)"; exit 1; }
  touch "$stage/.complete"
  rm -rf "$DEST"
  mv "$stage" "$DEST"
  rm -rf "$work"
  trap - EXIT
  log "installed CPU libtorch $TORCH_VERSION into $DEST ($(du -sh "$DEST" | cut -f1))"
}

fetch_cuda() {
  need_pip
  local work
  work=$(mktemp -d "$CACHE/.libtorch-cuda-work.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  download --no-deps "torch==$TORCH_VERSION"   # (kept from the CPU cut; fetched again if pruned)
  local whl
  whl=$(torch_wheel)
  # The CUDA libraries exactly as the wheel pins them (its Linux Requires-Dist: cuda-toolkit[...]
  # and nvidia-*), so the CUDA half matches the CPU half byte for byte.
  local reqs=()
  mapfile -t reqs < <("$PY" - "$whl" <<'PYEOF'
import sys, zipfile, re
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    for line in z.read(meta).decode().splitlines():
        m = re.match(r"Requires-Dist: ((cuda-toolkit|nvidia-)[^;]*);\s*platform_system == \"Linux\"", line)
        if m:
            print(m.group(1).replace(" ", ""))
PYEOF
  )
  ((${#reqs[@]})) || { log "error: $(basename "$whl") requires no cuda-toolkit/nvidia-* wheels: not a CUDA wheel"; exit 1; }
  # Their own folder per torch version: only the wheels this torch pins are extracted.
  local cuda_wheels="$WHEELS/cuda-$TORCH_VERSION"
  mkdir -p "$cuda_wheels"
  DL_DIR="$cuda_wheels" download "${reqs[@]}"
  log "CUDA wheels: $(du -cb "$cuda_wheels"/*.whl | tail -1 | cut -f1 | awk '{printf "%d", $1/1e6}') MB in $cuda_wheels"

  local stage="$work/libtorch"
  mkdir -p "$stage"
  cp -al "$DEST/." "$stage/"   # the CPU half, as hard links (no extra disk)
  rm -f "$stage/.complete"
  log "extracting the CUDA half of $(basename "$whl") and the CUDA libraries of ${#reqs[@]} wheels"
  "$PY" - "$stage/lib" "$whl" "$cuda_wheels" "${reqs[@]}" <<'PYEOF'
import sys, zipfile, os, re, glob
lib, whl, wheels, reqs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
have = set(os.listdir(lib))
def extract(z, name, base):
    out = os.path.join(lib, base)
    tmp = out + ".part"
    with z.open(name) as src, open(tmp, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    os.replace(tmp, out)
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        # Every library of torch/lib the CPU cut left out, except libtorch.so (the stand-in
        # stays) and Python's own.
        if name.startswith("torch/lib/") and ".so" in base and base not in have \
                and base != "libtorch_python.so":
            extract(z, name, base)
# Every shared library of every nvidia-* wheel (nvidia/<pkg>/lib/*.so*), flat beside
# libtorch_cuda.so, whose RPATH includes $ORIGIN.
for w in sorted(glob.glob(os.path.join(wheels, "nvidia_*.whl"))):
    with zipfile.ZipFile(w) as z:
        for name in z.namelist():
            base = os.path.basename(name)
            if re.match(r"nvidia/[^/]+/lib/[^/]+\.so(\.\d+)*$", name):
                extract(z, name, base)
PYEOF
  [[ -f "$stage/lib/libtorch_cuda.so" ]] || { log "error: $(basename "$whl") holds no torch/lib/libtorch_cuda.so"; exit 1; }
  # Every library libtorch_cuda.so needs must resolve from here (no CUDA driver or GPU needed).
  if ! err=$(env -u LD_LIBRARY_PATH -u LD_PRELOAD "$PY" -c 'import ctypes,sys
ctypes.CDLL(sys.argv[1] + "/libc10.so", mode=ctypes.RTLD_GLOBAL)
ctypes.CDLL(sys.argv[1] + "/libtorch_cpu.so", mode=ctypes.RTLD_GLOBAL)
ctypes.CDLL(sys.argv[1] + "/libtorch_cuda.so", mode=ctypes.RTLD_GLOBAL)' "$stage/lib" 2>&1); then
    log "error: the CUDA libtorch does not load: $err"
    exit 1
  fi
  touch "$stage/.complete"
  rm -rf "$CUDA_DEST"
  mv "$stage" "$CUDA_DEST"
  rm -rf "$work"
  trap - EXIT
  log "installed CUDA libtorch $TORCH_VERSION into $CUDA_DEST ($(du -sh --apparent-size "$CUDA_DEST/lib" | cut -f1) of libraries, the CPU ones shared with $DEST)"
}

if [[ -f "$STAMP" ]]; then
  log "CPU libtorch $TORCH_VERSION already present in $DEST"
else
  fetch_cpu
fi
# The version beside lib/, as in libtorch's own archives (`cures --version` prints it).
[[ -f "$DEST/build-version" ]] || echo "$TORCH_VERSION" > "$DEST/build-version"

if ((CUDA)); then
  if [[ -f "$CUDA_DEST/.complete" ]]; then
    log "CUDA libtorch $TORCH_VERSION already present in $CUDA_DEST"
  else
    fetch_cuda
  fi
  [[ -f "$CUDA_DEST/build-version" ]] || echo "$TORCH_VERSION" > "$CUDA_DEST/build-version"
  OUT="$CUDA_DEST"
else
  # A complete CUDA libtorch already linked stays linked: it is the CPU one plus the CUDA half.
  cur=$(readlink "$REPO/.libtorch" 2>/dev/null || true)
  if ((CPU_ONLY == 0)) && [[ "$cur" == "$CUDA_DEST" && -f "$CUDA_DEST/.complete" ]]; then
    OUT="$CUDA_DEST"
  else
    OUT="$DEST"
  fi
fi
link_repo "$OUT"
log "linked $REPO/.libtorch -> $OUT"
echo "$OUT"
