"""The machine's matmul peak: the best GFLOP/s of square torch.mm in fp32 and bf16.

    python bench/peak.py [--seconds 1.0]

Prints one JSON line: {"fp32": GFLOP/s, "bf16": GFLOP/s, "sizes": {...}}. A matmul of two
n x n matrices is 2 n^3 FLOPs; each size is repeated for `seconds` after one warm-up call, and the
best size counts (the peak the training figures are a share of).
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def gflops(n: int, dtype, seconds: float) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)  # warm-up: kernel choice, page faults
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        reps += 1
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=1.0, help="time per size and dtype")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    args = parser.parse_args()
    out = {"threads": torch.get_num_threads(), "sizes": {}}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        rates = {n: round(gflops(n, dtype, args.seconds), 1) for n in args.sizes}
        out["sizes"][name] = rates
        out[name] = max(rates.values())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
