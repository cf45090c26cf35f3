"""PPO's critic side: generalized advantage estimation and the clipped value loss.

Pure functions of (B, T) tensors. The response tokens of row b are the positions where
``mask_BT[b]`` is 1, in order; they need not be contiguous (a tool's output between two sampled
spans is skipped: the "next token" of the last sampled token before it is the first one after).
``values_BT[b, t]`` = V(s_t), the critic's estimate before token t is emitted (computed from the
same hidden state that predicts token t).

Source: PPO (arXiv 1707.06347) and GAE (arXiv 1506.02438), as in ReFT (arXiv 2401.08967,
`lqtrung1998/mwp_ReFT` `train_rl_reft.py` at bdc844e) and verl `compute_gae_advantage_return`.
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def gae(
    reward_BT: Tensor, values_BT: Tensor, mask_BT: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """GAE over each row's masked tokens, right to left. Returns (advantages_BT, returns_BT).

        δ_t = r_t + γ·V_{t+1} − V_t      (V after the last token = 0)
        A_t = δ_t + γλ·A_{t+1}           (A after the last token = 0)
        R_t = A_t + V_t

    Positions outside the mask get 0 (and do not interrupt the recursion). Not whitened: see
    `masked_whiten`. Shapes: all (B, T); mask 0/1.
    """
    m_BT = mask_BT.bool()
    B, T = reward_BT.shape
    r, v = reward_BT.double(), values_BT.double()
    next_v = torch.zeros(B, dtype=torch.float64, device=r.device)
    next_a = torch.zeros_like(next_v)
    adv = torch.zeros(B, T, dtype=torch.float64, device=r.device)
    for t in range(T - 1, -1, -1):
        on = m_BT[:, t]
        delta = r[:, t] + gamma * next_v - v[:, t]
        a = delta + gamma * lam * next_a
        adv[:, t] = torch.where(on, a, torch.zeros_like(a))
        next_a = torch.where(on, a, next_a)
        next_v = torch.where(on, v[:, t], next_v)
    ret = torch.where(m_BT, adv + v, torch.zeros_like(adv))
    return adv.to(reward_BT.dtype), ret.to(reward_BT.dtype)


@torch.no_grad()
def masked_whiten(x_BT: Tensor, mask_BT: Tensor, eps: float = 1e-8) -> Tensor:
    """(x − mean) / sqrt(var + eps) over the masked entries of the whole batch, unbiased
    variance (verl `masked_whiten`, `masked_var(unbiased=True)`); 0 outside the mask. A single
    masked entry is only centred."""
    m = mask_BT.bool()
    n = int(m.sum())
    if n == 0:
        return torch.zeros_like(x_BT)
    vals = x_BT[m].double()
    mean = vals.mean()
    out = x_BT.double() - mean
    if n > 1:
        out = out * torch.rsqrt(vals.var(unbiased=True) + eps)
    return torch.where(m, out, torch.zeros_like(out)).to(x_BT.dtype)


def clipped_value_loss(
    values_BT: Tensor, old_values_BT: Tensor, returns_BT: Tensor, clip: float | None = 0.2
) -> Tensor:
    """ℓ_t = ½·max((V − R)², (clip(V, V_old − c, V_old + c) − R)²); without clip ½(V − R)².

    PPO's value clipping (ReFT `cliprange_value` 0.2; verl `compute_value_loss`). Returns (B, T),
    unmasked: aggregation masks and normalizes.
    """
    err_BT = (values_BT - returns_BT) ** 2
    if clip is None:
        return 0.5 * err_BT
    v_clip_BT = old_values_BT + torch.clamp(values_BT - old_values_BT, -clip, clip)
    return 0.5 * torch.maximum(err_BT, (v_clip_BT - returns_BT) ** 2)


__all__ = ["clipped_value_loss", "gae", "masked_whiten"]
