"""Per-token loss terms: policy-gradient (PG), expert log-likelihood, KL penalty.

Every term maps (B, T) tensors to a (B, T) per-token loss, **unmasked and unnormalized**:
masking and normalization belong to `tandem.algo.aggregate.aggregate` alone, so one term can be
aggregated token-mean, seq-mean or by a constant without changing its formula.

Notation (ALGORITHMS.md §0): ``logp_BT`` = log π_θ(y_t | s_t) of the sampled token (with grad),
``old_logp_BT`` = log π_old (the rollout policy, no grad), ``ref_logp_BT`` = log π_ref,
``adv_BT`` = advantage A broadcast over the response tokens, p = exp(logp), sg = stop-gradient,
ρ = π_θ / π_old.

Registries (one signature each, no if/elif on names in callers):

- `PG_TERMS`: ``fn(logp_BT, old_logp_BT, adv_BT, *, clip_low, clip_high, clip_ratio_c)``
  for on-policy rollouts ("clip": PPO/GRPO/DAPO, "none": LUFFY's loss_remove_clip).
- `EXPERT_TERMS`: ``fn(logp_BT)`` for expert demonstrations ("nll": SFT, "dft": DFT,
  "chord_phi": CHORD-φ).
- `KL_ESTIMATORS`: ``fn(logp_BT, ref_logp_BT)`` ("k1", "k2", "k3" and straight-through "k1+",
  "k3+"); use `kl_penalty(..., kind)`.

`shaped_pg` (LUFFY off-policy shaping) has its own signature (no old policy, a γ) and is called
directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

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
    if clip_ratio_c is None:
        return loss_BT
    if clip_ratio_c <= 1.0:
        raise ConfigError(f"clip_ratio_c must be > 1 (or None to disable), got {clip_ratio_c}")
    dual_BT = torch.minimum(loss_BT, -adv_BT * clip_ratio_c)
    return torch.where(adv_BT < 0, dual_BT, loss_BT)


def unclipped_pg(logp_BT: Tensor, old_logp_BT: Tensor, adv_BT: Tensor) -> Tensor:
    """Importance-weighted policy gradient without clipping: ℓ = −A·ρ.

    LUFFY's on-policy term with ``loss_remove_clip=True`` (arXiv 2504.14945; ElliottYan/LUFFY
    `compute_token_on_off_policy_loss`). With old_logp = sg(logp) this is plain REINFORCE
    (ρ = 1, ∇ℓ = −A·∇logp). Deviation: log ρ is clamped to ±20 as in `clipped_pg`, for safety.

    Shapes: (B, T) in, (B, T) out.
    """
    return -adv_BT * _ratio(logp_BT, old_logp_BT)


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


class PGTerm(Protocol):
    """Signature shared by every entry of `PG_TERMS`."""

    def __call__(
        self,
        logp_BT: Tensor,
        old_logp_BT: Tensor,
        adv_BT: Tensor,
        *,
        clip_low: float,
        clip_high: float,
        clip_ratio_c: float | None,
    ) -> Tensor: ...


def _pg_clip(
    logp_BT: Tensor,
    old_logp_BT: Tensor,
    adv_BT: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    clip_ratio_c: float | None,
) -> Tensor:
    return clipped_pg(logp_BT, old_logp_BT, adv_BT, clip_low, clip_high, clip_ratio_c)


def _pg_none(
    logp_BT: Tensor,
    old_logp_BT: Tensor,
    adv_BT: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    clip_ratio_c: float | None,
) -> Tensor:
    del clip_low, clip_high, clip_ratio_c  # same signature as "clip"; no clipping here
    return unclipped_pg(logp_BT, old_logp_BT, adv_BT)


PG_TERMS: dict[str, PGTerm] = {"clip": _pg_clip, "none": _pg_none}


def get_pg_term(name: str) -> PGTerm:
    """The PG term registered as ``name``; ConfigError naming the allowed values otherwise."""
    if name not in PG_TERMS:
        raise ConfigError(f"unknown pg term {name!r}; allowed: {sorted(PG_TERMS)}")
    return PG_TERMS[name]


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


ExpertTerm = Callable[[Tensor], Tensor]

EXPERT_TERMS: dict[str, ExpertTerm] = {"nll": nll, "dft": dft_nll, "chord_phi": chord_phi_nll}


def get_expert_term(name: str) -> ExpertTerm:
    """The expert term registered as ``name``; ConfigError naming the allowed values otherwise."""
    if name not in EXPERT_TERMS:
        raise ConfigError(f"unknown expert term {name!r}; allowed: {sorted(EXPERT_TERMS)}")
    return EXPERT_TERMS[name]


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


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def pg_stats(
    logp_BT: Tensor,
    old_logp_BT: Tensor,
    adv_BT: Tensor,
    mask_BT: Tensor,
    clip_low: float,
    clip_high: float,
) -> dict[str, float]:
    """Diagnostics of a PG step, as token means over ``mask_BT`` (for metrics only, no grad).

    - ``clip_frac``: fraction of tokens where the clip is active, i.e.
      −A·clip(ρ) > −A·ρ (verl ``pg_clipfrac``); these tokens get no gradient.
    - ``approx_kl``: mean(old_logp − logp), a k1 estimate of KL(π_old ‖ π_θ) (verl ``ppo_kl``).
    - ``ratio_mean``: mean ρ.

    All three are 0.0 when the mask is empty. These are means over the given rows, not
    micro-batch invariant sums; compute them on the whole batch when possible.
    Shapes: all (B, T); mask is 0/1 (bool or float).
    """
    m_BT = mask_BT.bool()
    n = int(m_BT.sum().item())
    if n == 0:
        return {"clip_frac": 0.0, "approx_kl": 0.0, "ratio_mean": 0.0}
    ratio_BT = _ratio(logp_BT, old_logp_BT)
    clipped_BT = -adv_BT * torch.clamp(ratio_BT, 1.0 - clip_low, 1.0 + clip_high)
    clip_active_BT = clipped_BT > -adv_BT * ratio_BT
    return {
        "clip_frac": clip_active_BT[m_BT].double().mean().item(),
        "approx_kl": (old_logp_BT - logp_BT)[m_BT].double().mean().item(),
        "ratio_mean": ratio_BT[m_BT].double().mean().item(),
    }


__all__ = [
    "EXPERT_TERMS",
    "KL_ESTIMATORS",
    "PG_TERMS",
    "ExpertTerm",
    "PGTerm",
    "chord_phi_nll",
    "clipped_pg",
    "dft_nll",
    "get_expert_term",
    "get_pg_term",
    "kl_penalty",
    "nll",
    "pg_stats",
    "shaped_pg",
    "unclipped_pg",
]
