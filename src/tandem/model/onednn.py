"""float32 `nn.Linear` on CPU through oneDNN instead of the default BLAS.

PyTorch's CPU build runs float32 `F.linear` / `mm` through MKL's sgemm. On AMD CPUs MKL does not
use its AVX-512 kernels, and on this project's machine (AMD EPYC, AVX-512) oneDNN's float32
matmul is about 2x faster for every shape a small model uses: the decode step's 1-64 rows, the
training forward's hundreds of rows, and both backward products (`python bench/matmul_shapes.py`,
numbers in docs/LOG.md). bfloat16 matmuls already go through oneDNN, so only float32 changes.

The results are float32 to float32 rounding (relative error ~1e-6 against float64, the same order
as MKL); oneDNN runs in IEEE float32 unless `torch.backends.mkldnn.matmul.fp32_precision` asks
for less. The op is PyTorch's own `torch.ops.mkldnn._linear_pointwise`, the one TorchInductor
emits for CPU linears; where it is missing or fails its probe, everything falls back to
`F.linear` unchanged.

`onednn_linears(model)` swaps the forward of the model's plain `nn.Linear` modules for the
duration of a `with` block (instance-level overrides, restored on exit). Calls that are not
float32-on-CPU (bf16 weights, autocast, another device) take `F.linear` as before.
Tests: tests/test_lean.py (outputs and all three gradients against `F.linear`).
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tandem.model import castcache


def _mm(a: Tensor, b_t: Tensor) -> Tensor:
    """a @ b_t.T through oneDNN (a: (..., K), b_t: (N, K), any strides)."""
    return torch.ops.mkldnn._linear_pointwise(a, b_t, None, "none", [], "")


@functools.cache
def available() -> bool:
    """oneDNN's linear op exists here and agrees with F.linear on a small probe."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        g = torch.Generator().manual_seed(0)
        x = torch.randn(5, 7, generator=g)
        w = torch.randn(3, 7, generator=g)
        # the first call may come from inside an autocast region: probe in plain fp32
        with torch.autocast("cpu", enabled=False), torch.no_grad():
            return bool(torch.allclose(_mm(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5))
    except (AttributeError, RuntimeError):
        return False


class _Linear(torch.autograd.Function):
    """y = x @ w.T + b with all three products (y, dx, dw) through oneDNN."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, g: Tensor):
        x, weight = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1])
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _mm(g, weight.t())
        if ctx.needs_input_grad[1]:
            dw = _mm(g2.t(), x.reshape(-1, x.shape[-1]).t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g2.sum(0)
        return dx, dw, db


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear`, through oneDNN when every tensor is float32 on CPU and autocast is off. Under
    bf16 autocast, a weight with a registered bf16 copy (`tandem.model.castcache`) uses it
    instead of being cast again."""
    w16 = castcache.cast_weight(weight)
    if w16 is not None:
        return F.linear(x, w16, bias)
    if (
        x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.device.type == "cpu"
        and weight.device.type == "cpu"
        and (bias is None or bias.dtype == torch.float32)
        and not torch.is_autocast_enabled("cpu")
        and x.numel() > 0
        and available()
    ):
        return _Linear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


def packed_weight(weight: Tensor, rows: int) -> Tensor | None:
    """`weight` reordered once into oneDNN's blocked layout for inference matmuls with about
    `rows` input rows (an opaque `torch._mkldnn` tensor for `packed_linear`), or None where
    that does not apply (not float32/bfloat16 on CPU, oneDNN missing, grad mode on).

    A plain weight is reordered inside every oneDNN call; packing it once makes a decode step's
    matmuls read each weight once. Measured on SmolLM2-135M's shapes (`python
    bench/decode_linears.py`, docs/LOG.md): all layers in bf16 at 1 row 11.5 -> 8.3 ms per
    step, at 16 rows 14.3 -> 10.6 ms; the float32 LM head at 16 rows 11.2 -> 3.4 ms. Packing
    costs about one pass over the weights and their size in memory while they are held.
    """
    if (
        weight.device.type != "cpu"
        or weight.dtype not in (torch.float32, torch.bfloat16)
        or torch.is_grad_enabled()
        or not available()
    ):
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), max(1, rows))
    except (AttributeError, RuntimeError):
        return None


def packed_linear(x: Tensor, packed: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ W.T + b for a weight from `packed_weight` (x in the weight's dtype)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def packed_linear_add(x: Tensor, packed: Tensor, bias: Tensor | None, res: Tensor) -> Tensor:
    """res + x @ W.T + b in one oneDNN call (a post-op sum; x, res in the weight's dtype, res
    contiguous with the output's shape)."""
    return torch.ops.mkldnn._linear_pointwise.binary(x, res, packed, bias, "add")


def _forward(m: nn.Linear):
    return lambda x: linear(x, m.weight, m.bias)


@contextlib.contextmanager
def onednn_linears(model: nn.Module):
    """Within the block, the plain `nn.Linear` modules of `model` use `linear` above. A no-op
    where oneDNN is unavailable."""
    patched: list[nn.Module] = []
    try:
        if available():
            for m in model.modules():
                if type(m) is nn.Linear and "forward" not in m.__dict__:
                    m.forward = _forward(m)
                    patched.append(m)
        yield
    finally:
        for m in patched:
            del m.forward
