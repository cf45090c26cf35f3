"""LM head + log-softmax + gather (+ entropy) as one autograd function that never keeps logits.

For the N hidden rows that predict a target, the training loss needs only
    logp_N = log_softmax(z)[target],  entropy_N = -sum(softmax(z) * log_softmax(z)),
    z = (h @ W.T + b) / temperature   (float32).
Written with autograd, this keeps (or, checkpointed, recomputes) the (N, V) logits, the
log-softmax output, a zero-filled (N, V) gradient for the gather and the log-softmax backward's
output: several (N, V) float32 blocks, each ~85 MB for 430 tokens of a 49k vocabulary, each a
fresh allocation the kernel must fault in. Here the forward keeps h, W and one float32 log-sum-exp
per row, and the backward recomputes z per chunk and writes the gradient in place:
    d logp / dz = onehot(target) - p,    d entropy / dz = -p * (log p + entropy),   p = softmax(z)
then dh = dz @ W and dW += dz.T @ h. The same idea as Liger-Kernel's fused linear cross-entropy,
in plain PyTorch. Chunks of `chunk_tokens` rows bound the live (chunk, V) block.

Under CPU autocast the head's matmuls run in the autocast dtype as they would with autograd
(bf16 logits, then float32 softmax); the weight gradient is accumulated in float32.
Tests: tests/test_head.py (values and gradients against the plain autograd formula).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tandem.model import onednn


def _compute_dtype(h: Tensor, weight: Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(h.device.type) and h.device.type == "cpu":
        return torch.get_autocast_dtype("cpu")
    return torch.promote_types(h.dtype, weight.dtype)


def _logits(h: Tensor, w: Tensor, b: Tensor | None, temperature: float) -> Tensor:
    """float32 (rows, V) logits / temperature; h, w (and b) already in the compute dtype."""
    z = onednn.linear(h, w, b).float()
    if temperature != 1.0:
        z = z / temperature
    return z


class _HeadLogp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_NH, weight, bias, targets_N, temperature, with_entropy, chunk):
        cdtype = _compute_dtype(h_NH, weight)
        with torch.autocast(h_NH.device.type, enabled=False):
            hc, wc = h_NH.to(cdtype), weight.to(cdtype)
            bc = None if bias is None else bias.to(cdtype)
            N = h_NH.shape[0]
            lse_N = torch.empty(N, dtype=torch.float32, device=h_NH.device)
            logp_N = torch.empty_like(lse_N)
            ent_N = torch.zeros_like(lse_N)
            for s in range(0, N, chunk):
                z = _logits(hc[s : s + chunk], wc, bc, temperature)
                lse = torch.logsumexp(z, dim=-1)
                lse_N[s : s + chunk] = lse
                logp_N[s : s + chunk] = z.gather(-1, targets_N[s : s + chunk, None])[:, 0] - lse
                if with_entropy:
                    z.sub_(lse[:, None])  # log p
                    ent_N[s : s + chunk] = -(z.exp() * z).sum(-1)
        ctx.save_for_backward(h_NH, weight, bias, targets_N, lse_N, ent_N)
        ctx.cfg = (cdtype, temperature, chunk)
        if not with_entropy:
            ctx.mark_non_differentiable(ent_N)
        return logp_N, ent_N

    @staticmethod
    def backward(ctx, g_logp: Tensor | None, g_ent: Tensor | None):
        h_NH, weight, bias, targets_N, lse_N, ent_N = ctx.saved_tensors
        cdtype, temperature, chunk = ctx.cfg
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        with torch.autocast(h_NH.device.type, enabled=False):
            hc, wc = h_NH.to(cdtype), weight.to(cdtype)
            bc = None if bias is None else bias.to(cdtype)
            dh = torch.empty_like(h_NH) if need_h else None
            dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            db = None if bias is None else torch.zeros_like(bias, dtype=torch.float32)
            for s in range(0, h_NH.shape[0], chunk):
                e = s + chunk
                z = _logits(hc[s:e], wc, bc, temperature)
                z.sub_(lse_N[s:e, None])  # log p
                p = z.exp()
                if g_ent is not None:  # d entropy / dz = -p * (log p + H)
                    z.add_(ent_N[s:e, None]).mul_(p).mul_(-g_ent[s:e, None])
                    dz = z
                else:
                    dz = torch.zeros_like(p)
                if g_logp is not None:  # d logp / dz = onehot - p
                    dz.sub_(p * g_logp[s:e, None])
                    dz.scatter_add_(-1, targets_N[s:e, None], g_logp[s:e, None])
                del p
                if temperature != 1.0:
                    dz.div_(temperature)
                dzc = dz.to(cdtype)
                del dz, z
                if need_h:
                    dh[s:e] = onednn.linear(dzc, wc.t()).to(h_NH.dtype)
                if need_w:
                    dw.add_(onednn.linear(dzc.t(), hc[s:e].t()).float())
                if need_b and db is not None:
                    db.add_(dzc.float().sum(0))
        dw = dw.to(weight.dtype) if need_w else None
        db = db.to(bias.dtype) if (need_b and db is not None) else None
        return dh, dw, db, None, None, None, None


def head_logp_entropy(
    h_NH: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets_N: Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_tokens: int = 128,
) -> tuple[Tensor, Tensor]:
    """(logp_N, entropy_N) float32 of softmax((h @ weight.T + bias) / temperature) at targets_N.
    entropy_N is zeros unless with_entropy. Differentiable w.r.t. h, weight and bias."""
    if h_NH.shape[0] == 0:
        raise ValueError("head_logp_entropy needs at least one row")
    return _HeadLogp.apply(
        h_NH, weight, bias, targets_N, float(temperature), bool(with_entropy), int(chunk_tokens)
    )
