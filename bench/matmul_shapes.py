"""Microbenchmark behind docs/LOG.md's matmul tables: SmolLM2-135M's weight shapes at 1, 16 and
64 rows (decoding) and 512 rows (training), fp32 and bf16, weights hot in cache. For each, the
default `F.linear` (MKL's sgemm for fp32 on CPU) and oneDNN's linear (`tandem.model.onednn`,
what tandem runs), plus the two backward products at 512 rows (dx = g @ W, dW = g.T @ x).
Prints ms per call and GFLOP/s.

    python bench/matmul_shapes.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from tandem.model import onednn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import seconds_per_call  # noqa: E402

SHAPES = [(576, 576), (1536, 576), (576, 1536), (49152, 576)]  # q/o, gate/up, down, LM head


def _ops(x, w, g, backward: bool) -> dict:
    """op name -> (default kernel, oneDNN kernel)."""
    ops = {"y": (lambda: F.linear(x, w), lambda: onednn._mm(x, w))}
    if backward:
        ops["dx"] = (lambda: g @ w, lambda: onednn._mm(g, w.t()))
        ops["dW"] = (lambda: g.t() @ x, lambda: onednn._mm(g.t(), x.t()))
    return ops


def main() -> None:
    print("dtype     weight       rows  op   default ms (GFLOP/s)   oneDNN ms (GFLOP/s)  ratio")
    for dtype in (torch.float32, torch.bfloat16):
        for out_f, in_f in SHAPES:
            w = torch.randn(out_f, in_f, dtype=dtype)
            for rows in (1, 16, 64, 512):
                x = torch.randn(rows, in_f, dtype=dtype)
                g = torch.randn(rows, out_f, dtype=dtype)
                ops = _ops(x, w, g, backward=rows == 512)
                for op, (default, dnnl) in ops.items():
                    a, b = (1e3 * seconds_per_call(f, 0.3, warmup=3) for f in (default, dnnl))
                    gf = 2 * rows * out_f * in_f / 1e6
                    print(
                        f"{str(dtype)[6:]:9s} {out_f:5d}x{in_f:<5d} {rows:4d}  {op:3s} "
                        f"{a:9.3f} ({gf / a:6.1f})      {b:9.3f} ({gf / b:6.1f})   {a / b:5.2f}"
                    )


if __name__ == "__main__":
    main()
