"""LM head + log-softmax + gather (+ entropy) as one autograd function that never keeps logits.

For the N hidden rows that predict a target, the training loss needs only
    logp_N = log_softmax(z)[target],  entropy_N = -sum(softmax(z) * log_softmax(z)),
    z = (h @ W.T + b) / temperature   (float32).
Written with autograd, this keeps (or, checkpointed, recomputes) the (N, V) logits, the
log-softmax output, a zero-filled (N, V) gradient for the gather and the log-softmax backward's
output: several (N, V) float32 blocks, each ~85 MB for 430 tokens of a 49k vocabulary, each a
fresh allocation the kernel must fault in (and, under autocast, the weight gradient converted
chunk by chunk). Here both passes walk the vocabulary in slices whose (N, slice) float32 block
stays under `block_bytes` (24 MB, below glibc's 32 MB mmap threshold, so blocks are reused
rather than faulted in):
- forward: an online log-sum-exp (running max, sum of exp, and sum of exp * z for the entropy)
  and the target logit; it keeps h, W and one log-sum-exp and entropy per row;
- backward: z recomputed per slice and turned into the gradient in place,
      d logp / dz = onehot(target) - p,    d entropy / dz = -p * (log p + entropy),
  then dh += dz @ W_slice and dW[slice] = dz.T @ h, each row of dW written once.
The same idea as Liger-Kernel's fused linear cross-entropy, in plain PyTorch.

Under autocast (CPU or CUDA) the matmuls run in the autocast dtype (bf16 logits, float32 softmax), as
autograd under autocast would; dW is written in the weight's own dtype.
Tests: tests/test_head.py (values and gradients against the plain autograd formula).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tandem.model import castcache, onednn


def _compute_dtype(h: Tensor, weight: Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(h.device.type):  # CPU or CUDA autocast: its dtype
        return torch.get_autocast_dtype(h.device.type)
    return torch.promote_types(h.dtype, weight.dtype)


def _weight_source(weight: Tensor, cdtype: torch.dtype) -> Tensor:
    """The weight to slice and cast: its registered bf16 copy when computing in bf16 (the same
    values as casting it, without the cast; `tandem.model.castcache`), else itself."""
    if cdtype == torch.bfloat16:
        copy = castcache.cached(weight)
        if copy is not None:
            return copy
    return weight


def _blocks(V: int, N: int, block_bytes: int) -> list[tuple[int, int]]:
    """Vocabulary slices [v0, v1) such that an (N, v1 - v0) float32 block fits block_bytes."""
    width = max(256, block_bytes // (4 * max(N, 1)))
    return [(v, min(V, v + width)) for v in range(0, V, width)]


def _block_logits(hc, wb, bias, v0, v1, cdtype, temperature) -> Tensor:
    """float32 (N, v1 - v0) logits / temperature for one vocabulary slice (wb = its weights)."""
    bb = None if bias is None else bias[v0:v1].to(cdtype)
    z = onednn.linear(hc, wb, bb).float()
    if temperature != 1.0:
        z = z / temperature
    return z


class TiedGrad:
    """Hands the LM head's dense weight gradient to the tied embedding lookup's backward pass.

    The head's backward runs first (the head is the last op of the forward pass) and parks its
    (V, H) gradient here; the lookup's backward adds its rows into that tensor in place and
    returns it as the weight's one gradient. Autograd would otherwise sum the two gradients out
    of place (a fresh (V, H) tensor and a full copy at the end of every backward pass).
    """

    __slots__ = ("dense",)

    def __init__(self) -> None:
        self.dense: Tensor | None = None


class _HeadLogp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_NH, weight, bias, targets_N, temperature, with_entropy, block_bytes, tied):
        cdtype = _compute_dtype(h_NH, weight)
        N, dev = h_NH.shape[0], h_NH.device
        with torch.autocast(dev.type, enabled=False):
            hc = h_NH.to(cdtype)
            # Online log-sum-exp over vocabulary slices: running max m, s1 = sum exp(z - m),
            # s2 = sum exp(z - m) * z (for the entropy), rescaled whenever m grows.
            m = torch.full((N,), float("-inf"), device=dev)
            s1, s2, tgt = (torch.zeros(N, device=dev) for _ in range(3))
            wsrc = _weight_source(weight, cdtype)
            for v0, v1 in _blocks(weight.shape[0], N, block_bytes):
                wb = wsrc[v0:v1].to(cdtype)
                z = _block_logits(hc, wb, bias, v0, v1, cdtype, temperature)
                inside = (targets_N >= v0) & (targets_N < v1)
                idx = (targets_N - v0).clamp(0, v1 - v0 - 1)
                tgt += torch.where(inside, z.gather(-1, idx[:, None])[:, 0], 0.0)
                m_new = torch.maximum(m, z.amax(-1))
                scale = torch.exp(m - m_new)
                z_exp = torch.exp(z - m_new[:, None])
                s1 = s1 * scale + z_exp.sum(-1)
                if with_entropy:
                    s2 = s2 * scale + (z_exp * z).sum(-1)
                m = m_new
            lse_N = m + torch.log(s1)
            logp_N = tgt - lse_N
            ent_N = lse_N - s2 / s1 if with_entropy else torch.zeros_like(lse_N)
        ctx.save_for_backward(h_NH, weight, bias, targets_N, lse_N, ent_N)
        ctx.cfg = (cdtype, temperature, block_bytes)
        ctx.tied = tied
        if not with_entropy:
            ctx.mark_non_differentiable(ent_N)
        return logp_N, ent_N

    @staticmethod
    def backward(ctx, g_logp: Tensor | None, g_ent: Tensor | None):
        """Over vocabulary slices again: each slice's dz is built in place and used at once for
        dh (accumulated, (N, H)) and for its rows of dW (written once, in the weight's dtype)."""
        h_NH, weight, bias, targets_N, lse_N, ent_N = ctx.saved_tensors
        cdtype, temperature, block_bytes = ctx.cfg
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        N = h_NH.shape[0]
        with torch.autocast(h_NH.device.type, enabled=False):
            hc = h_NH.to(cdtype)
            hc_t = hc.t()
            dh = torch.zeros(h_NH.shape, dtype=torch.float32, device=h_NH.device)
            dw = (
                torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
                if need_w
                else None
            )
            db = torch.empty_like(bias) if (need_b and bias is not None) else None
            wsrc = _weight_source(weight, cdtype)
            for v0, v1 in _blocks(weight.shape[0], N, block_bytes):
                wb = wsrc[v0:v1].to(cdtype)
                z = _block_logits(hc, wb, bias, v0, v1, cdtype, temperature)
                z.sub_(lse_N[:, None])  # log p
                p = z.exp()
                if g_ent is not None:  # d entropy / dz = -p * (log p + H)
                    dz = z.add_(ent_N[:, None]).mul_(p).mul_(-g_ent[:, None])
                else:
                    dz = torch.zeros_like(p)
                if g_logp is not None:  # d logp / dz = onehot - p
                    dz.sub_(p.mul_(g_logp[:, None]))
                    inside = (targets_N >= v0) & (targets_N < v1)
                    rows = inside.nonzero()[:, 0]
                    dz[rows, targets_N[rows] - v0] += g_logp[rows]
                del p
                if temperature != 1.0:
                    dz.div_(temperature)
                dzc = dz.to(cdtype)
                del dz, z
                if need_h:
                    dh += onednn.linear(dzc, wb.t()).float()
                if need_w:
                    dw[v0:v1] = onednn.linear(dzc.t(), hc_t)
                if db is not None:
                    db[v0:v1] = dzc.float().sum(0)
        dh = dh.to(h_NH.dtype) if need_h else None
        if ctx.tied is not None and dw is not None:  # the tied lookup's backward adds to it
            ctx.tied.dense, dw = dw, None
        return dh, dw, db, None, None, None, None, None


def head_logp_entropy(
    h_NH: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets_N: Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    block_bytes: int = 24 << 20,
    tied_grad: TiedGrad | None = None,
) -> tuple[Tensor, Tensor]:
    """(logp_N, entropy_N) float32 of softmax((h @ weight.T + bias) / temperature) at targets_N.
    entropy_N is zeros unless with_entropy. Differentiable w.r.t. h, weight and bias.
    block_bytes bounds each (N, vocabulary slice) float32 block (at least 256 columns).
    tied_grad: when the weight is also the input embedding (a `TiedGrad`),
    the weight's gradient is handed to the embedding lookup's backward pass instead of returned."""
    if h_NH.shape[0] == 0:
        raise ValueError("head_logp_entropy needs at least one row")
    return _HeadLogp.apply(
        h_NH,
        weight,
        bias,
        targets_N,
        float(temperature),
        bool(with_entropy),
        int(block_bytes),
        tied_grad,
    )
