#!/usr/bin/env bash
# Install SGLang (PyPI `sglang==0.5.23`) for CPU-only serving into a cached venv.
# PyPI has no CPU sgl-kernel/sglang-kernel (CUDA wheels only), so: PyPI torch==2.14.1 (the
# version sglang pins; CUDA build, computes fine on CPU), sglang --no-deps, only the deps its
# server actually imports, and a tiny pure-torch `sgl_kernel` stub module (sglang imports
# assign_req_to_token_pool_cpu etc. at import time when SGLANG_USE_CPU_ENGINE=1). The stub
# registers no torch.ops.sgl_kernel ops, so cpu_has_amx_support() stays False and sglang uses
# its torch fallbacks (torch_native attention). No source patches to sglang.
# Result: ~/.cache/cures/sglang-cpu/venv (override the cache with CURES_CACHE); ~7 GB.
# Idempotent; prints the venv's python last.
#
# Launch (verified on 2-core x86_64 CPU, SmolLM2-135M; /health up after ~29 s, ~4.2 GB RSS):
#   SGLANG_USE_CPU_ENGINE=1 HF_HUB_OFFLINE=1 ~/.cache/cures/sglang-cpu/venv/bin/python \
#     -m sglang.launch_server --model-path ~/.cache/cures/smollm2-135m-instruct \
#     --device cpu --attention-backend torch_native --disable-cuda-graph \
#     --max-total-tokens 32768 --host 127.0.0.1 --port 30000 [--dtype float32]
# (without --max-total-tokens the KV cache takes ~72% of RAM: 14 GB, 23 s to allocate.)
# Verified routes: /health, /v1/completions (+ "return_token_ids": true), /generate,
# /get_model_info (has "weight_version"), POST /update_weights_from_disk.
set -euo pipefail
CACHE="${CURES_CACHE:-$HOME/.cache/cures}"
ROOT="$CACHE/sglang-cpu"
VENV="$ROOT/venv"
PY="$VENV/bin/python"
STAMP="$ROOT/.installed-0.5.23"
check() {
  SGLANG_USE_CPU_ENGINE=1 "$PY" -c "import sgl_kernel, sglang.launch_server, sglang.srt.managers.scheduler, sglang.srt.entrypoints.http_server, sglang.srt.models.llama" 2>/dev/null
}
if [[ -f "$STAMP" && -x "$PY" ]] && check; then
  echo "install-sglang-cpu: already installed" >&2
  echo "$PY"
  exit 0
fi
mkdir -p "$ROOT/dl"
[[ -x "$PY" ]] || python3 -m venv "$VENV"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

# Exact versions that were verified together (pip freeze of the working venv).
cat > "$ROOT/constraints.txt" <<'EOF'
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiosignal==1.4.0
annotated-doc==0.0.7
annotated-types==0.8.0
anyio==4.16.0
apache-tvm-ffi==0.1.15.post2
asttokens==3.0.2
attrs==26.1.0
certifi==2026.10.19.post1
cffi==2.1.1
charset-normalizer==3.5.3
click==8.5.1
compressed-tensors==0.18.0
cuda-bindings==13.5.0
cuda-pathfinder==1.9.1
cuda-toolkit==13.0.3.0
dill==0.4.1
distro==1.9.0
einops==0.8.2
executing==2.3.0
fastapi==0.165.0
filelock==4.3.1
frozenlist==1.8.0
fsspec==2026.9.0
gguf==0.19.0
h11==0.16.0
hf-xet==1.8.0
httpcore==1.0.9
httpx==0.28.1
huggingface_hub==1.33.0
idna==3.20
interegular==0.3.3
ipython==9.18.1
ipython_pygments_lexers==1.1.1
jedi==0.20.1
Jinja2==3.1.6
jiter==0.19.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
llguidance==1.9.1
loguru==0.7.3
markdown-it-py==4.3.0
MarkupSafe==3.0.4
matplotlib-inline==0.2.2
mdurl==0.1.2
mpmath==1.3.0
msgspec==0.22.0
multidict==7.2.1
networkx==3.6.1
numpy==2.4.6
nvidia-cublas==13.1.1.3
nvidia-cuda-cupti==13.0.85
nvidia-cuda-nvrtc==13.0.88
nvidia-cuda-runtime==13.0.96
nvidia-cudnn-cu13==9.24.0.43
nvidia-cufft==12.0.0.61
nvidia-cufile==1.15.1.6
nvidia-curand==10.4.0.35
nvidia-cusolver==12.0.4.66
nvidia-cusparse==12.6.3.3
nvidia-cusparselt-cu13==0.8.1
nvidia-nccl-cu13==2.30.7
nvidia-nvjitlink==13.5.37
nvidia-nvshmem-cu13==3.4.5
nvidia-nvtx==13.0.85
openai==2.8.0
openai-harmony==0.0.4
opentelemetry-api==1.45.2
orjson==3.13.0
packaging==26.4
parso==0.8.7
partial-json-parser==0.2.1.1.post7
pexpect==4.9.0
pillow==13.0.0
prometheus_client==0.26.0
prompt_toolkit==3.0.53
propcache==0.5.4
psutil==7.2.2
ptyprocess==0.7.0
pure_eval==0.2.4
pybase64==1.5.1
pycparser==3.12
pydantic==2.14.4
pydantic_core==2.50.5
Pygments==2.21.0
python-dateutil==2.9.0.post0
python-multipart==0.0.34
PyYAML==6.0.4
pyzmq==27.3.0
referencing==0.37.0
regex==2026.11.19
requests==2.34.2
rich==15.0.0
rpds-py==2026.9.1
safetensors==0.8.0
scipy==1.17.1
sentencepiece==0.2.1
setproctitle==1.3.8
sglang==0.5.23
shellingham==1.5.4
six==1.17.0
sniffio==1.3.1
soundfile==0.13.1
stack-data==0.6.3
starlette==1.10.0
sympy==1.14.0
tiktoken==0.14.0
tokenizers==0.23.2
torch==2.14.1
torchvision==0.29.2
tqdm==4.70.1
traitlets==5.16.1
transformers==5.19.0
triton==3.8.0
typer==0.29.2
typing-inspection==0.4.5
typing_extensions==4.16.0
urllib3==2.8.0
uvicorn==0.54.0
uvloop==0.23.0
watchfiles==1.3.0
wcwidth==0.9.4
xgrammar==0.2.7
xxhash==4.1.0
yarl==1.25.1
zstandard==0.25.0
EOF

"$VENV/bin/pip" install -q -c "$ROOT/constraints.txt" torch==2.14.1 >&2
"$VENV/bin/pip" install -q -c "$ROOT/constraints.txt" \
  aiohttp fastapi 'uvicorn>=0.51' uvloop 'pyzmq>=25.1.2' orjson msgspec psutil pydantic \
  python-multipart requests numpy tqdm transformers==5.19.0 tokenizers==0.23.2 safetensors \
  sentencepiece==0.2.1 setproctitle pybase64 'prometheus-client>=0.20.0' packaging einops \
  interegular partial_json_parser openai==2.8.0 openai-harmony==0.0.4 scipy pillow watchfiles \
  xxhash zstandard distro 'python-dateutil<3' regex tiktoken gguf compressed-tensors==0.18.0 \
  xgrammar==0.2.7 'llguidance>=1.7.6,<2' IPython torchvision dill jsonschema soundfile==0.13.1 >&2
ls "$ROOT"/dl/sglang-0.5.23-*.whl >/dev/null 2>&1 \
  || "$VENV/bin/pip" download -q --no-deps -d "$ROOT/dl" sglang==0.5.23 >&2
"$VENV/bin/pip" install -q --no-deps "$(ls "$ROOT"/dl/sglang-0.5.23-*.whl | head -n1)" >&2

# Pure-torch sgl_kernel stand-in (NOT the real package; see header).
mkdir -p "$SITE/sgl_kernel"
cat > "$SITE/sgl_kernel/__init__.py" <<'EOF'
"""Pure-torch stand-in for sgl_kernel on CPU (NOT the real package).

sglang 0.5.23 imports a few sgl_kernel CPU ops at module import time when
SGLANG_USE_CPU_ENGINE=1. This stub implements the one op needed on the plain
decode path in torch and returns a function raising NotImplementedError for
any other name. torch.ops.sgl_kernel.* is NOT registered, so sglang's
cpu_has_amx_support() stays False and its torch fallbacks are used.
"""
import torch  # noqa: F401

__version__ = "0.0.0+cpu-stub"


def assign_req_to_token_pool_cpu(req_pool_indices, req_to_token, start_offset,
                                 end_offset, out_cache_loc, pool_len):
    off = 0
    for r, s, e in zip(req_pool_indices.tolist(), start_offset.tolist(),
                       end_offset.tolist()):
        n = e - s
        if n > 0:
            req_to_token[r, s:e] = out_cache_loc[off:off + n].to(req_to_token.dtype)
        off += n


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def _missing(*args, **kwargs):
        raise NotImplementedError(f"sgl_kernel CPU stub: {name} is not implemented")

    _missing.__name__ = name
    return _missing
EOF
check || { echo "install-sglang-cpu: import check failed" >&2; exit 1; }
"$PY" -c "import sglang, torch; print('sglang', sglang.__version__, 'torch', torch.__version__)" >&2
touch "$STAMP"
echo "$PY"
