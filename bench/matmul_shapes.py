"""Microbenchmark behind docs/LOG.md's "sampling is bound by memory bandwidth" table:
`F.linear` on SmolLM2-135M's weight shapes at 1, 16 and 64 rows, fp32 and bf16, weights hot in
cache. Prints µs per call, achieved GFLOP/s and weight bytes read per second.

    python bench/matmul_shapes.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

SHAPES = [(576, 576), (1536, 576), (576, 1536), (49152, 576)]  # q/o, gate/up, down, LM head


def us_per_call(fn, n: int) -> float:
    for _ in range(5):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


def main() -> None:
    for dtype in (torch.float32, torch.bfloat16):
        for out_f, in_f in SHAPES:
            w = torch.randn(out_f, in_f, dtype=dtype)
            for rows in (1, 16, 64):
                x = torch.randn(rows, in_f, dtype=dtype)
                us = us_per_call(lambda x=x, w=w: F.linear(x, w), 50 if out_f > 10_000 else 200)
                gflops = 2 * rows * out_f * in_f / us / 1e3
                gbs = w.numel() * w.element_size() / us / 1e3
                print(
                    f"{str(dtype):15s} {out_f:5d}x{in_f:<5d} rows {rows:2d}: {us:9.0f} us "
                    f"({gflops:6.1f} GFLOP/s, weights {gbs:5.1f} GB/s)"
                )


if __name__ == "__main__":
    main()
