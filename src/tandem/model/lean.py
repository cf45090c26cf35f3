"""Leaner autograd for the training forward of Llama-architecture models: the same values and
gradients as transformers' modules, with fewer tensors kept for the backward pass.

transformers' `LlamaRMSNorm` keeps a float32 copy of its input, the normalized input and the
cast result; `LlamaMLP` keeps silu(gate) and silu(gate) * up besides gate and up. Here RMSNorm
keeps only its input and one float32 scalar per token, and SwiGLU keeps only gate and up,
recomputing the rest in the backward pass (a few elementwise ops). The same idea as the fused
RMSNorm / SwiGLU of Liger-Kernel, written in plain PyTorch. Measured on a SmolLM2 GRPO step:
see docs/LOG.md.

`lean_modules(model)` swaps these in for the duration of a `with` block (instance-level
`forward` overrides, restored on exit) and does nothing for models it does not recognise.
Tests: tests/test_lean.py compares outputs and gradients with the transformers modules.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tandem.model.onednn import onednn_linears


class _RMSNorm(torch.autograd.Function):
    """y = weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype), the normalization in float32."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return weight * (xf * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        x, weight, rstd = ctx.saved_tensors
        xhat = x.float() * rstd
        gf = g.float()
        d_weight = None
        if ctx.needs_input_grad[1]:
            d_weight = (gf * xhat.to(x.dtype).float()).reshape(-1, x.shape[-1]).sum(0)
            d_weight = d_weight.to(weight.dtype)
        dy = (gf * weight.float()).to(x.dtype).float()  # through the cast back to x.dtype
        dx = rstd * (dy - xhat * (dy * xhat).mean(-1, keepdim=True))
        return dx.to(x.dtype), d_weight, None


class _SwiGLU(torch.autograd.Function):
    """silu(gate) * up, keeping only gate and up for the backward pass."""

    @staticmethod
    def forward(ctx, gate: Tensor, up: Tensor) -> Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, g: Tensor):
        gate, up = ctx.saved_tensors
        gf = gate.float()
        sig = torch.sigmoid(gf)
        silu = (gf * sig).to(gate.dtype)  # the forward's rounding of silu(gate)
        d_up = g * silu
        d_silu = (g * up).float()
        d_gate = d_silu * sig * (1.0 + gf * (1.0 - sig))
        return d_gate.to(gate.dtype), d_up.to(up.dtype)


def _is_rmsnorm(m: nn.Module) -> bool:
    return type(m).__name__ in {"LlamaRMSNorm"} and hasattr(m, "variance_epsilon")


def _is_swiglu_mlp(m: nn.Module) -> bool:
    act = getattr(m, "act_fn", None)
    return (
        type(m).__name__ in {"LlamaMLP"}
        and all(hasattr(m, n) for n in ("gate_proj", "up_proj", "down_proj"))
        and (isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation")
    )


def _norm_forward(m: nn.Module):
    return lambda x: _RMSNorm.apply(x, m.weight, m.variance_epsilon)


def _mlp_forward(m: nn.Module):
    return lambda x: m.down_proj(_SwiGLU.apply(m.gate_proj(x), m.up_proj(x)))


@contextlib.contextmanager
def lean_modules(model: nn.Module):
    """Within the block, Llama RMSNorm and SwiGLU MLP modules of `model` use the lean autograd
    functions above (only while gradients are enabled; inference keeps the original code), and
    float32 linears run through oneDNN (`tandem.model.onednn`, with or without gradients)."""
    with onednn_linears(model):
        if not torch.is_grad_enabled():
            yield
        else:
            with _lean_norm_mlp(model):
                yield


@contextlib.contextmanager
def _lean_norm_mlp(model: nn.Module):
    patched: list[nn.Module] = []
    try:
        for m in model.modules():
            if "forward" in m.__dict__:
                continue
            if _is_rmsnorm(m):
                m.forward = _norm_forward(m)
            elif _is_swiglu_mlp(m):
                m.forward = _mlp_forward(m)
            else:
                continue
            patched.append(m)
        yield
    finally:
        for m in patched:
            del m.forward
