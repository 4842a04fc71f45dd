#!/usr/bin/env python3
"""Python references for `cures bench curriculum`: one curriculum step at scale.

A step = observe the previous step's outcomes (posterior update), recompute rho over the pool,
draw `batch` prompts, allocate `budget` rollouts (n_i proportional to sigma_i, sum exact).

--mode loop   the authors' style: per-prompt Python loops for the posterior and rho,
              np.random.choice(N, m, replace=False, p=rho), a Python loop for the allocation.
--mode numpy  vectorised numpy: np.add.at for the posterior, rho over the pool with array ops,
              Generator.choice(replace=True, p=rho), vectorised largest-remainder allocation.

Prints one JSON object as the last line: {"mode", "step_ms" (median), "steps"}.
"""
import argparse
import json
import math
import time

import numpy as np

TAU = 0.1
N_MIN = 2


def allocate_numpy(sigma, budget, n_min, n_max):
    """Neyman allocation with bounds (water-filling by bisection) + largest remainder."""
    lo_l, hi_l = 0.0, budget / max(sigma.min(), 1e-12)
    for _ in range(60):
        lam = 0.5 * (lo_l + hi_l)
        if np.clip(lam * sigma, n_min, n_max).sum() < budget:
            lo_l = lam
        else:
            hi_l = lam
    x = np.clip(hi_l * sigma, n_min, n_max)
    n = np.floor(x).astype(np.int64)
    rest = budget - n.sum()
    if rest > 0:
        order = np.argsort(-(x - n))
        order = order[n[order] < n_max][:rest]
        n[order] += 1
    return n


def step_numpy(state, rng, batch, budget, n_max):
    alpha, beta, prev_idx, prev_n, prev_s = state
    np.add.at(alpha, prev_idx, prev_s)
    np.add.at(beta, prev_idx, prev_n - prev_s)
    p = alpha / (alpha + beta)
    score = np.sqrt(p * (1.0 - p)) / TAU
    w = np.exp(score - score.max())
    rho = w / w.sum()
    draws = rng.choice(len(alpha), size=batch, replace=True, p=rho)
    idx, mult = np.unique(draws, return_counts=True)
    ph = p[idx]
    sigma = np.sqrt(ph * (1.0 - ph)) * mult
    n = allocate_numpy(sigma, budget, N_MIN * mult, n_max * mult)
    return idx, n


def step_loop(state, rng, batch, budget, n_max):
    alpha, beta, prev_idx, prev_n, prev_s = state
    for i, n, s in zip(prev_idx.tolist(), prev_n.tolist(), prev_s.tolist()):
        alpha[i] += s
        beta[i] += n - s
    scores = []
    for a, b in zip(alpha, beta):
        p = a / (a + b)
        scores.append(math.sqrt(p * (1.0 - p)) / TAU)
    mx = max(scores)
    ws = [math.exp(s - mx) for s in scores]
    z = sum(ws)
    rho = np.array([w / z for w in ws])
    idx = np.random.choice(len(alpha), batch, replace=False, p=rho)
    sig = []
    for i in idx.tolist():
        p = alpha[i] / (alpha[i] + beta[i])
        sig.append(math.sqrt(p * (1.0 - p)))
    tot = sum(sig)
    x = [budget * s / tot for s in sig]
    n = [min(max(int(v), N_MIN), n_max) for v in x]
    rem = budget - sum(n)
    order = sorted(range(len(x)), key=lambda k: -(x[k] - int(x[k])))
    k = 0
    while rem != 0 and k < 10 * len(order):
        j = order[k % len(order)]
        if rem > 0 and n[j] < n_max:
            n[j] += 1
            rem -= 1
        elif rem < 0 and n[j] > N_MIN:
            n[j] -= 1
            rem += 1
        k += 1
    return idx, np.array(n)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["loop", "numpy"], required=True)
    ap.add_argument("--prompts", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--budget", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    np.random.seed(7)
    p_true = rng.random(args.prompts)
    s0 = rng.binomial(4, p_true)
    n_max = max(args.budget // 4, N_MIN)
    if args.mode == "loop":
        alpha = [1.0 + float(s) for s in s0]
        beta = [1.0 + 4.0 - float(s) for s in s0]
        step = step_loop
    else:
        alpha = 1.0 + s0.astype(np.float64)
        beta = 5.0 - s0.astype(np.float64)
        step = step_numpy
    prev_idx = np.zeros(0, dtype=np.int64)
    prev_n = np.zeros(0, dtype=np.int64)
    prev_s = np.zeros(0, dtype=np.int64)
    times = []
    for k in range(args.steps + 1):
        t0 = time.perf_counter()
        idx, n = step((alpha, beta, prev_idx, prev_n, prev_s), rng, args.batch, args.budget, n_max)
        dt = (time.perf_counter() - t0) * 1e3
        if k > 0:  # the first step has no outcomes to observe
            times.append(dt)
        assert int(np.sum(n)) == args.budget, (int(np.sum(n)), args.budget)
        prev_idx, prev_n = np.asarray(idx), np.asarray(n)
        prev_s = rng.binomial(prev_n, p_true[prev_idx])
    times.sort()
    print(json.dumps({"mode": args.mode, "step_ms": times[len(times) // 2], "steps": len(times)}))


if __name__ == "__main__":
    main()
