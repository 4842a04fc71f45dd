#!/usr/bin/env bash
# Build llama.cpp's llama-server (and llama-quantize) from the source vendored in the PyPI sdist llama-cpp-python==0.3.36
# with CMake + Ninja from PyPI (no other network). Result: ~/.cache/cures/llama-server/bin/llama-server
# (override the cache with CURES_CACHE). Idempotent; prints the binary path last. ~5.5 min on 2 cores.
# Note: on Xeons with AMX (this machine class, under a VM) start it with --no-repack: the AMX
# weight repacking segfaults during warm-up.
set -euo pipefail
CACHE="${CURES_CACHE:-$HOME/.cache/cures}"
ROOT="$CACHE/llama-server"
BIN="$ROOT/bin/llama-server"
if [[ -x "$BIN" && -x "$ROOT/bin/llama-quantize" ]]; then
  echo "build-llama-server: already built" >&2
  echo "$BIN"
  exit 0
fi
mkdir -p "$ROOT/src" "$ROOT/bin"
TOOLS="$ROOT/tools-venv"
if [[ ! -x "$TOOLS/bin/cmake" || ! -x "$TOOLS/bin/ninja" ]] || ! "$TOOLS/bin/python" -c "import scikit_build_core" 2>/dev/null; then
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q cmake ninja scikit-build-core
fi
cd "$ROOT/src"
if [[ ! -d llama-cpp-python-0.3.36 ]]; then
  "$TOOLS/bin/pip" download -q --no-deps --no-build-isolation --no-binary llama-cpp-python \
    llama-cpp-python==0.3.36 -d .
  tar xzf llama_cpp_python-0.3.36.tar.gz 2>/dev/null || tar xzf llama-cpp-python-0.3.36.tar.gz
  [[ -d llama-cpp-python-0.3.36 ]] || mv llama_cpp_python-0.3.36 llama-cpp-python-0.3.36
fi
SRC="$ROOT/src/llama-cpp-python-0.3.36/vendor/llama.cpp"
export PATH="$TOOLS/bin:$PATH"
cmake -S "$SRC" -B "$ROOT/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF >&2
cmake --build "$ROOT/build" --target llama-server llama-quantize -j"${JOBS:-2}" >&2
cp "$ROOT/build/bin/llama-server" "$BIN"
cp "$ROOT/build/bin/llama-quantize" "$ROOT/bin/llama-quantize"
echo "$BIN"
