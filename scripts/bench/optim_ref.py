#!/usr/bin/env python3
"""PyTorch reference for `cures bench optim`: one optimiser step (clip_grad_norm_ to 1.0, then
torch.optim.AdamW, lr 1e-6, weight decay 0.01) over fp32 parameters of the shapes cures passes,
with fused=True and with foreach=True, on the given device and thread count. Prints one JSON
object as the last line: {"fused_ms": ..., "foreach_ms": ..., "params": ..., "threads": ...}
(a variant this torch cannot run on the device is left out, with the reason on stderr)."""
import argparse
import json
import sys
import time

import torch


def time_variant(shapes, device, reps, **kw):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, device=device) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(params, lr=1e-6, weight_decay=0.01, **kw)
    times = []
    for i in range(reps + 2):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if i >= 2:
            times.append(dt)
    times.sort()
    return times[len(times) // 2] * 1e3, sum(p.numel() for p in params)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", required=True, help="JSON list of shapes written by cures")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    shapes = json.load(open(a.shapes))
    out = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    for key, kw in (("fused_ms", {"fused": True}), ("foreach_ms", {"foreach": True})):
        try:
            ms, n = time_variant(shapes, a.device, a.reps, **kw)
            out[key] = ms
            out["params"] = n
        except Exception as e:  # a variant this build cannot run on this device
            print(f"optim_ref: {key[:-3]} skipped: {e}", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
