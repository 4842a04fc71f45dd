#!/usr/bin/env python3
"""PyTorch-eager reference for `cures bench train-step`: forward + backward of the mean
next-token log-likelihood of a random-init transformers LlamaForCausalLM or Qwen2ForCausalLM
(the config cures passes, by its model_type), on the given device, dtype and CPU thread count.
Prints one JSON object as the last line:
{"tokens_per_s": ..., "step_ms": ..., "threads": ..., "params": ..., "device": ..., "dtype": ...}."""
import argparse
import json
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="config.json written by cures")
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--seq", type=int, required=True)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import transformers

    raw = json.load(open(a.config))
    if raw.get("model_type") == "qwen2":
        cfg, cls = transformers.Qwen2Config(**raw), transformers.Qwen2ForCausalLM
    else:
        cfg, cls = transformers.LlamaConfig(**raw), transformers.LlamaForCausalLM
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    dev = torch.device(a.device)
    torch.manual_seed(0)
    with dev:
        model = cls(cfg).to(dtype).train()
    # Same computation as cures: logits → log_softmax → gather next tokens → mean.
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), generator=g).to(dev)
    mask = torch.ones_like(ids)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    times = []
    for i in range(a.warmup + a.steps):
        sync()
        t0 = time.perf_counter()
        logits = model(input_ids=ids, attention_mask=mask).logits
        lp = torch.log_softmax(logits[:, :-1].float(), -1)
        loss = -lp.gather(-1, ids[:, 1:, None]).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)
        sync()
        dt = time.perf_counter() - t0
        if i >= a.warmup:
            times.append(dt)
    times.sort()
    med = times[len(times) // 2]
    print(
        json.dumps(
            {
                "tokens_per_s": a.batch * a.seq / med,
                "step_ms": med * 1e3,
                "threads": torch.get_num_threads(),
                "params": sum(p.numel() for p in model.parameters()),
                "attn_implementation": model.config._attn_implementation,
                "device": str(dev),
                "dtype": a.dtype,
            }
        )
    )


if __name__ == "__main__":
    main()
