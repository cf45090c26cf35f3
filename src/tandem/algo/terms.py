"""Per-token loss terms: policy-gradient (PG), expert log-likelihood, KL penalty.

Every term maps (B, T) tensors to a (B, T) per-token loss, **unmasked and unnormalized**:
masking and normalization belong to `tandem.algo.aggregate.aggregate` alone, so one term can be
aggregated token-mean, seq-mean or by a constant without changing its formula.

Notation (ALGORITHMS.md §0): ``logp_BT`` = log π_θ(y_t | s_t) of the sampled token (with grad),
``old_logp_BT`` = log π_old (the rollout policy, no grad), ``ref_logp_BT`` = log π_ref,
``adv_BT`` = advantage A broadcast over the response tokens, p = exp(logp), sg = stop-gradient,
ρ = π_θ / π_old.

The registry of term kinds that a config chooses from is `tandem.algo.objective.TERMS`; its
adapters call these functions. `KL_ESTIMATORS` (``fn(logp_BT, ref_logp_BT)``: "k1", "k2", "k3"
and straight-through "k1+", "k3+") is the list `objective.terms.<kl>.estimator` allows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tandem.errors import ConfigError

# Clamp on log ρ before exp (verl `compute_policy_loss_vanilla`): keeps ρ finite when a token's
# log-prob moved a lot, e.g. a stale rollout; exp(20) ≈ 4.9e8.
LOG_RATIO_CLAMP = 20.0
# k3 clamps (verl `kl_penalty_forward`, "low_var_kl"): d to ±20, the estimate to ±10.
K3_LOG_RATIO_CLAMP = 20.0
K3_VALUE_CLAMP = 10.0


def _ratio(logp_BT: Tensor, old_logp_BT: Tensor) -> Tensor:
    """ρ = exp(clamp(logp − old_logp, −20, 20)), shape (B, T)."""
    return torch.exp(torch.clamp(logp_BT - old_logp_BT, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


# --------------------------------------------------------------------------------------------
# Policy-gradient terms
# --------------------------------------------------------------------------------------------


def _dual_clip(loss_BT: Tensor, adv_BT: Tensor, clip_ratio_c: float | None) -> Tensor:
    """ℓ = min(ℓ, −A·clip_ratio_c) where A < 0 (Ye et al. 2020, arXiv 1912.09729); None: ℓ."""
    if clip_ratio_c is None:
        return loss_BT
    if clip_ratio_c <= 1.0:
        raise ConfigError(f"clip_ratio_c must be > 1 (or None to disable), got {clip_ratio_c}")
    return torch.where(adv_BT < 0, torch.minimum(loss_BT, -adv_BT * clip_ratio_c), loss_BT)


def clipped_pg(
    logp_BT: Tensor,
    old_logp_BT: Tensor,
    adv_BT: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_ratio_c: float | None = 3.0,
) -> Tensor:
    """PPO-clip token loss with optional dual clip (ALGORITHMS.md §2.1).

    ρ = exp(clamp(logp − old_logp, −20, 20))
    ℓ = max(−A·ρ, −A·clip(ρ, 1 − clip_low, 1 + clip_high))
    if A < 0 and clip_ratio_c is not None:  ℓ = min(ℓ, −A·clip_ratio_c)   (dual clip)

    Source: PPO (Schulman et al. 2017, arXiv 1707.06347); dual clip from Ye et al. 2020
    (arXiv 1912.09729); implementation follows verl `compute_policy_loss_vanilla`.
    clip_low ≠ clip_high is DAPO's clip-higher (0.2 / 0.28). ``clip_ratio_c=None`` disables the
    dual clip (verl always applies it); it must be > 1 otherwise.

    Shapes: logp_BT, old_logp_BT, adv_BT: (B, T) (adv broadcast over tokens). Returns (B, T).
    """
    ratio_BT = _ratio(logp_BT, old_logp_BT)
    unclipped_BT = -adv_BT * ratio_BT
    clipped_BT = -adv_BT * torch.clamp(ratio_BT, 1.0 - clip_low, 1.0 + clip_high)
    loss_BT = torch.maximum(unclipped_BT, clipped_BT)
    return _dual_clip(loss_BT, adv_BT, clip_ratio_c)


def mix_ppg(
    logp_BT: Tensor,
    old_logp_BT: Tensor,
    behav_logp_BT: Tensor,
    adv_BT: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_ratio_c: float | None = 3.0,
) -> Tensor:
    """ReMix's Mix-PPG term (arXiv 2507.06892, eq. of L^Mix-PPG): for a token sampled by an
    earlier policy π_behav,

        r = π_θ / π_behav,   c = π_old / π_behav   (c ≥ 0; 1 for a fresh sample, one update)
        ℓ = max(−A·r, −A·clip(r, c − clip_low, c + clip_high))

    the generalized PPO clip around the current policy's own ratio, with the dual clip
    (−A·clip_ratio_c as a bound for A < 0) as in `clipped_pg`. With π_behav = π_old it is
    `clipped_pg`.

    Shapes: (B, T) in, (B, T) out.
    """
    ratio_BT = _ratio(logp_BT, behav_logp_BT)
    c_BT = _ratio(old_logp_BT, behav_logp_BT).clamp(min=0.0)
    lo = (c_BT - clip_low).clamp(min=0.0)
    unclipped_BT = -adv_BT * ratio_BT
    clipped_BT = -adv_BT * torch.minimum(torch.maximum(ratio_BT, lo), c_BT + clip_high)
    loss_BT = torch.maximum(unclipped_BT, clipped_BT)
    return _dual_clip(loss_BT, adv_BT, clip_ratio_c)


def unclipped_pg(logp_BT: Tensor, old_logp_BT: Tensor, adv_BT: Tensor) -> Tensor:
    """Importance-weighted policy gradient without clipping: ℓ = −A·ρ.

    LUFFY's on-policy term with ``loss_remove_clip=True`` (arXiv 2504.14945; ElliottYan/LUFFY
    `compute_token_on_off_policy_loss`). With old_logp = sg(logp) this is plain REINFORCE
    (ρ = 1, ∇ℓ = −A·∇logp). Deviation: log ρ is clamped to ±20 as in `clipped_pg`, for safety.

    Shapes: (B, T) in, (B, T) out.
    """
    return -adv_BT * _ratio(logp_BT, old_logp_BT)


def gspo_pg(
    logp_BT: Tensor,
    old_logp_BT: Tensor,
    adv_BT: Tensor,
    mask_BT: Tensor,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
) -> Tensor:
    """GSPO's sequence-level clipped term (arXiv 2507.18071; verl `compute_policy_loss_gspo`).

    log s_i = Σ_t m·(logp − old_logp) / Σ_t m          (the sequence's mean log-ratio)
    log s_{i,t} = sg(log s_i) + logp − sg(logp), clamped at 10
    ℓ = max(−A·s_{i,t}, −A·clip(s_{i,t}, 1 − clip_low, 1 + clip_high))

    In value every token of a row has the row's ratio s_i (so the clip acts on whole
    sequences); the gradient of each token is s_i·∇logp. No dual clip (as verl's GSPO loss).
    verl forces seq-mean-token-mean aggregation; here that is the preset's `agg`.

    Shapes: logp_BT, old_logp_BT, adv_BT, mask_BT: (B, T). Returns (B, T).
    """
    m_BT = mask_BT.to(logp_BT.dtype)
    log_s_B = ((logp_BT - old_logp_BT) * m_BT).sum(1) / m_BT.sum(1).clamp(min=1)
    log_s_BT = log_s_B.detach()[:, None] + logp_BT - logp_BT.detach()
    s_BT = torch.exp(torch.clamp(log_s_BT, max=10.0))
    return torch.maximum(-adv_BT * s_BT, -adv_BT * torch.clamp(s_BT, 1 - clip_low, 1 + clip_high))


def shaped_pg(logp_BT: Tensor, adv_BT: Tensor, gamma: float = 0.1) -> Tensor:
    """LUFFY off-policy policy shaping: ℓ = −A·f(p), f(p) = p / (p + γ), p = exp(logp).

    Used on expert (off-policy) tokens, with no behaviour-policy denominator (the expert's
    probabilities are unknown). ∇ℓ = −A·γ/(p + γ)²·∇p, which up-weights low-probability tokens
    compared with −A·∇p. Source: LUFFY (arXiv 2504.14945), ``off_policy_reshape="p_div_p_0.1"``.
    LUFFY's optional ``off_max_clip`` / ``off_min_clip`` clamps are not implemented.

    Shapes: logp_BT, adv_BT: (B, T). Returns (B, T).
    """
    if gamma <= 0:
        raise ConfigError(f"shaping gamma must be > 0, got {gamma}")
    p_BT = torch.exp(logp_BT)
    return -adv_BT * (p_BT / (p_BT + gamma))


# --------------------------------------------------------------------------------------------
# Expert (demonstration) terms
# --------------------------------------------------------------------------------------------


def nll(logp_BT: Tensor) -> Tensor:
    """Negative log-likelihood (SFT): ℓ = −logp. ∇ℓ = −∇logp = −∇p / p.

    Equals the PG gradient with A = 1 on expert tokens (ALGORITHMS.md §1). Shapes: (B, T) → (B, T).
    """
    return -logp_BT


def dft_nll(logp_BT: Tensor) -> Tensor:
    """DFT (Dynamic Fine-Tuning, arXiv 2508.05629): ℓ = −sg(p)·logp, so ∇ℓ = −∇p.

    The 1/p implicit in the SFT gradient is cancelled (Trinity-RFT ``sft_is``). Shapes: (B, T).
    """
    return -torch.exp(logp_BT).detach() * logp_BT


def chord_phi_nll(logp_BT: Tensor) -> Tensor:
    """CHORD-φ (arXiv 2508.11408): ℓ = −sg(φ(p))·logp with φ(p) = p(1 − p).

    ∇ℓ = −(1 − p)·∇p: down-weights tokens the policy already finds near-certain (p→1) as well as
    near-impossible ones (p→0). Source: Trinity-RFT ``sft_phi`` (commit 0414330). Deviation:
    Trinity's optional ``cutoff_prob`` clamp of logp is not implemented (its default, 1.0, is a
    no-op). Shapes: (B, T) → (B, T).
    """
    p_BT = torch.exp(logp_BT).detach()
    return -(p_BT * (1.0 - p_BT)) * logp_BT


# --------------------------------------------------------------------------------------------
# KL penalty
# --------------------------------------------------------------------------------------------


def _k1(logp_BT: Tensor, ref_logp_BT: Tensor) -> Tensor:
    return logp_BT - ref_logp_BT


def _k2(logp_BT: Tensor, ref_logp_BT: Tensor) -> Tensor:
    return 0.5 * (logp_BT - ref_logp_BT) ** 2


def _k3(logp_BT: Tensor, ref_logp_BT: Tensor) -> Tensor:
    d_BT = torch.clamp(logp_BT - ref_logp_BT, -K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
    return torch.clamp(torch.exp(-d_BT) + d_BT - 1.0, -K3_VALUE_CLAMP, K3_VALUE_CLAMP)


def _straight_through(
    estimator: Callable[[Tensor, Tensor], Tensor],
) -> Callable[[Tensor, Tensor], Tensor]:
    def kl_st(logp_BT: Tensor, ref_logp_BT: Tensor) -> Tensor:
        k2_BT = _k2(logp_BT, ref_logp_BT)
        return k2_BT + (estimator(logp_BT, ref_logp_BT) - k2_BT).detach()

    return kl_st


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "k1": _k1,
    "k2": _k2,
    "k3": _k3,
    "k1+": _straight_through(_k1),
    "k3+": _straight_through(_k3),
}


def kl_penalty(logp_BT: Tensor, ref_logp_BT: Tensor, kind: str) -> Tensor:
    """Per-token estimate of KL(π_θ ‖ π_ref) from the sampled token (ALGORITHMS.md §2.2).

    With d = logp − ref_logp:
      k1 = d;   k2 ("mse") = ½d²;   k3 ("low_var_kl") = exp(−d) + d − 1,
    k3 computed with d clamped to ±20 and the result clamped to ±10 (verl `kl_penalty_forward`).
    A trailing "+" ("k1+", "k3+") is straight-through: forward value of k_x, gradient of k2
    (verl). Source: Schulman, "Approximating KL divergence" (2020); verl `core_algos.py`.

    Shapes: logp_BT, ref_logp_BT: (B, T). Returns (B, T).
    """
    if kind not in KL_ESTIMATORS:
        raise ConfigError(f"unknown kl kind {kind!r}; allowed: {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[kind](logp_BT, ref_logp_BT)


def vocab_kl(logp_BTV: Tensor, ref_logp_BTV: Tensor) -> Tensor:
    """KL(π_ref ‖ π_θ) over the whole vocabulary at each token: Σ_v π_ref(v)·(log π_ref(v) −
    log π_θ(v)). Anchored SFT's anchor (arXiv 2509.23753; `zhuchichi56/ASFT` computes it as
    `F.kl_div(log_softmax(θ), softmax(ref))`, the same direction). Its gradient with respect to
    the policy's logits is p_θ − p_ref. Shapes: (B, T, V) log-probs -> (B, T).
    """
    return (torch.exp(ref_logp_BTV) * (ref_logp_BTV - logp_BTV)).sum(-1)


def one_token_rollout(
    logp_BT: Tensor, logp_BTV: Tensor, temperature: float = 1.0, beta: float = 0.1
) -> Tensor:
    """OTR, One-Token Rollout (arXiv 2509.26313), in expectation: each position is a one-step
    episode whose actions a ~ q = sg(softmax(log π / τ)) earn +1 when a is the gold token y and
    a penalty β otherwise (ALGORITHMS.md's RECON, no code found):

        ℓ_t = −[ q(y)·log π(y) − β·Σ_{v≠y} q(v)·log π(v) ]

    This is the exact expectation of the RECON's K-sample estimate (1/K)Σ_k[1[a_k = y]·log π(a_k)
    − β·1[a_k ≠ y]·log π(a_k)], the K → ∞ limit, computed from the whole distribution instead of
    sampling K tokens (no sampling noise, no extra random stream). Shapes: logp_BT (B, T) the
    gold token's log π, logp_BTV (B, T, V) all log π. Returns (B, T)."""
    with torch.no_grad():
        scaled = logp_BTV / temperature
        q_BTV = torch.softmax(scaled, -1)
        q_y = torch.exp(logp_BT.detach() / temperature - torch.logsumexp(scaled, -1))
    others = (q_BTV * logp_BTV).sum(-1) - q_y * logp_BT
    return -(q_y * logp_BT - beta * others)


__all__ = [
    "KL_ESTIMATORS",
    "chord_phi_nll",
    "clipped_pg",
    "dft_nll",
    "gspo_pg",
    "kl_penalty",
    "nll",
    "one_token_rollout",
    "shaped_pg",
    "unclipped_pg",
    "vocab_kl",
]
