#!/usr/bin/env python3
"""Reference for `cures bench reward`: HuggingFace Math-Verify on the same (prediction, gold)
pairs, single-threaded, library defaults (`verify(parse(gold), parse(prediction))`).

Reads a JSONL file of {"prediction": str, "gold": str, ...}; a gold with no `$` or box is
wrapped in `$...$` (what Math-Verify's README does for plain golds). Prints one JSON object
as the last stdout line: {"n", "seconds", "per_s", "verdicts": [bool, ...]}.
"""
import argparse
import json
import sys
import time

import math_verify  # noqa: F401  (fails early with a clear ImportError)
from math_verify import parse, verify


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--limit", type=int, default=0, help="score only the first N pairs")
    a = ap.parse_args()
    pairs = []
    with open(a.input, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                pairs.append(json.loads(line))
    if a.limit:
        pairs = pairs[: a.limit]
    golds = []
    for p in pairs:
        g = p["gold"]
        if "$" not in g and "\\boxed" not in g:
            g = "$" + g + "$"
        golds.append(g)
    out = []
    t0 = time.perf_counter()
    for p, g in zip(pairs, golds):
        try:
            ok = bool(verify(parse(g), parse(p["prediction"])))
        except Exception:  # a crash is "not verified", as in a training loop
            ok = False
        out.append(ok)
    dt = time.perf_counter() - t0
    print(json.dumps({"n": len(out), "seconds": dt, "per_s": len(out) / dt if dt > 0 else None,
                      "verdicts": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
