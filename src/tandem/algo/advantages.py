"""Advantage estimators.

Outcome estimators over groups of rollouts of the same prompt, pure functions with one
signature:

    fn(rewards_N: Tensor, group_N: Tensor, *, eps: float = 1e-6) -> adv_N

rewards_N: (N,) float, the scalar outcome reward r_i of each rollout (sum of token rewards).
group_N: (N,) integer group ids (one id per prompt; any values, need not be contiguous).
adv_N: (N,) advantage, broadcast over each response's tokens.

All are vectorized with scatter-adds over groups (no Python loop over items or groups) and run
without grad. Notation: n_g = size of the group, mean_g = its mean reward.

The registry `ADVANTAGES` (what `objective.advantage` chooses) wraps them, and GAE
(`tandem.algo.value.gae`, which needs the value head), behind one signature:

    estimator(x: AdvantageInputs, **settings) -> Advantages(adv_BT, returns_BT | None)

over the scored rows of a collated batch (rows with a reward); other rows get 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from pydantic import Field
from torch import Tensor

from tandem.algo.terms import KL_ESTIMATORS, kl_penalty
from tandem.algo.value import gae as gae_BT
from tandem.algo.value import masked_whiten
from tandem.registry import Registry, Spec


class AdvantageFn(Protocol):
    """Signature shared by every entry of `ADVANTAGES`."""

    def __call__(self, rewards_N: Tensor, group_N: Tensor, *, eps: float = 1e-6) -> Tensor: ...


def _as_float(rewards_N: Tensor) -> Tensor:
    r_N = rewards_N.detach()
    return r_N if r_N.is_floating_point() else r_N.to(torch.get_default_dtype())


def _group_stats(rewards_N: Tensor, group_N: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-item group size n_N, group mean mean_N and unbiased group variance var_N.

    For a group of size 1, var is set to NaN (undefined); callers decide what to use.
    """
    if rewards_N.dim() != 1 or group_N.shape != rewards_N.shape:
        raise ValueError(
            f"rewards and group ids must both be (N,), got {tuple(rewards_N.shape)} "
            f"and {tuple(group_N.shape)}"
        )
    _, inv_N = torch.unique(group_N, return_inverse=True)
    n_groups = int(inv_N.max().item()) + 1 if inv_N.numel() else 0
    r_N = _as_float(rewards_N)
    count_G = torch.zeros(n_groups, dtype=r_N.dtype, device=r_N.device).index_add_(
        0, inv_N, torch.ones_like(r_N)
    )
    sum_G = torch.zeros_like(count_G).index_add_(0, inv_N, r_N)
    mean_G = sum_G / count_G
    sq_G = torch.zeros_like(count_G).index_add_(0, inv_N, (r_N - mean_G[inv_N]) ** 2)
    var_G = sq_G / (count_G - 1.0)  # n = 1 gives 0/0 = NaN, replaced by callers
    return count_G[inv_N], mean_G[inv_N], var_G[inv_N]


@torch.no_grad()
def grpo(rewards_N: Tensor, group_N: Tensor, *, eps: float = 1e-6) -> Tensor:
    """GRPO (DeepSeekMath, arXiv 2402.03300): A_i = (r_i − mean_g) / (std_g + eps).

    std_g is the unbiased standard deviation (torch.std). As in verl
    `compute_grpo_outcome_advantage`, a group of size 1 uses mean 0 and std 1, so its advantage
    is r_i / (1 + eps): a lone sample keeps its raw reward rather than getting no signal.
    A group with all-equal rewards gets A = 0 (see `equal_reward_groups`).
    Shapes: (N,), (N,) → (N,).
    """
    n_N, mean_N, var_N = _group_stats(rewards_N, group_N)
    single_N = n_N < 2
    mean_N = torch.where(single_N, torch.zeros_like(mean_N), mean_N)
    std_N = torch.where(single_N, torch.ones_like(var_N), var_N.clamp(min=0.0).sqrt())
    return (_as_float(rewards_N) - mean_N) / (std_N + eps)


@torch.no_grad()
def dr_grpo(rewards_N: Tensor, group_N: Tensor, *, eps: float = 1e-6) -> Tensor:
    """Dr. GRPO (arXiv 2503.20783): A_i = r_i − mean_g, no std division.

    Also LUFFY's ``grpo_use_std=False``. A group of size 1 uses mean 0 (verl), so A = r_i.
    ``eps`` is unused (same signature as the registry). Shapes: (N,), (N,) → (N,).
    """
    del eps
    n_N, mean_N, _ = _group_stats(rewards_N, group_N)
    mean_N = torch.where(n_N < 2, torch.zeros_like(mean_N), mean_N)
    return _as_float(rewards_N) - mean_N


@torch.no_grad()
def rloo(rewards_N: Tensor, group_N: Tensor, *, eps: float = 1e-6) -> Tensor:
    """RLOO (arXiv 2402.14740): A_i = r_i − mean_{j≠i} r_j = n/(n−1)·(r_i − mean_g).

    Deviation: a group of size 1 has no leave-one-out baseline and gets A = 0 (no signal);
    verl `compute_rloo_outcome_advantage` leaves the raw reward r_i there instead.
    ``eps`` is unused. Shapes: (N,), (N,) → (N,).
    """
    del eps
    n_N, mean_N, _ = _group_stats(rewards_N, group_N)
    scale_N = torch.where(n_N < 2, torch.zeros_like(n_N), n_N / (n_N - 1.0).clamp(min=1.0))
    return scale_N * (_as_float(rewards_N) - mean_N)


@torch.no_grad()
def reinforce(rewards_N: Tensor, group_N: Tensor, *, eps: float = 1e-6) -> Tensor:
    """Plain REINFORCE (Williams 1992): A_i = r_i, no baseline (the reference point against
    which baselines are measured). ``group_N`` and ``eps`` are unused. Shapes: (N,) → (N,)."""
    del group_N, eps
    return _as_float(rewards_N).clone()


@torch.no_grad()
def equal_reward_groups(rewards_N: Tensor, group_N: Tensor) -> Tensor:
    """Bool mask (N,): True for items whose group has all-equal rewards (max == min).

    These groups have zero group-relative advantage and no learning signal; DAPO's dynamic
    sampling (arXiv 2503.14476, ALGORITHMS.md §3.3) drops them and resamples. A group of size 1
    counts as all-equal. Rewards are compared exactly (DAPO compares 0/1 accuracies).
    """
    if rewards_N.dim() != 1 or group_N.shape != rewards_N.shape:
        raise ValueError("rewards and group ids must both be (N,)")
    _, inv_N = torch.unique(group_N, return_inverse=True)
    n_groups = int(inv_N.max().item()) + 1 if inv_N.numel() else 0
    r_N = _as_float(rewards_N)
    max_G = torch.full((n_groups,), -torch.inf, dtype=r_N.dtype, device=r_N.device)
    min_G = torch.full((n_groups,), torch.inf, dtype=r_N.dtype, device=r_N.device)
    max_G = max_G.scatter_reduce(0, inv_N, r_N, reduce="amax")
    min_G = min_G.scatter_reduce(0, inv_N, r_N, reduce="amin")
    return (max_G == min_G)[inv_N]


# --------------------------------------------------------------------------- the registry


@dataclass
class AdvantageInputs:
    """What an estimator may read: the batch's rewards (NaN: not scored), group ids, the mask
    of trained tokens of scored rows, and (when the estimator needs them) the value head's old
    values and the policy's old and reference log-probs, all (B,) or (B, T)."""

    reward_B: Tensor
    group_B: Tensor
    mask_BT: Tensor
    values_BT: Tensor | None = None
    old_logp_BT: Tensor | None = None
    ref_logp_BT: Tensor | None = None


@dataclass
class Advantages:
    adv_BT: Tensor
    returns_BT: Tensor | None = None
    """Value targets (GAE's A + V), for the value term."""


@dataclass(frozen=True)
class Estimator:
    fn: object
    needs: frozenset[str] = frozenset()
    gives: frozenset[str] = frozenset()
    """What it computes beyond advantages ("returns": value targets)."""


ADVANTAGES: Registry[Estimator] = Registry("advantage estimator")


class OutcomeSpec(Spec):
    """A group-relative outcome advantage, the same for every token of a response."""

    eps: float = Field(1e-6, gt=0.0)
    """Added to the group std (grpo only)."""


def _outcome(fn: AdvantageFn):
    def estimate(x: AdvantageInputs, *, eps: float) -> Advantages:
        scored_B = ~torch.isnan(x.reward_B)
        adv_B = torch.zeros_like(x.reward_B)
        if scored_B.any():
            adv_B[scored_B] = fn(x.reward_B[scored_B], x.group_B[scored_B], eps=eps)
        return Advantages(adv_B[:, None] * x.mask_BT)

    return estimate


for _name, _fn, _summary in (
    ("grpo", grpo, "GRPO: (r − mean_g) / (std_g + eps) over each group"),
    ("dr_grpo", dr_grpo, "Dr. GRPO: r − mean_g (no std)"),
    ("rloo", rloo, "RLOO: leave-one-out baseline n/(n−1)·(r − mean_g)"),
    ("reinforce", reinforce, "REINFORCE: A = r, no baseline"),
):
    ADVANTAGES.add(_name, Estimator(_outcome(_fn)), OutcomeSpec, _summary)


class ReinforcePpSpec(Spec):
    """REINFORCE++'s token returns (the outcome on the last token, a per-token KL penalty),
    whitened over the whole batch rather than per group."""

    gamma: float = Field(1.0, ge=0.0, le=1.0)
    kl_coef: float = Field(0.0, ge=0.0)
    """β of the KL penalty in the reward, r_t −= β·KL_t (REINFORCE++ folds KL into the reward)."""
    kl_estimator: Literal[tuple(KL_ESTIMATORS)] = "k1"  # type: ignore[valid-type]

    def extra_needs(self) -> set[str]:
        return {"old_logp_batch", "ref_logp"} if self.kl_coef > 0 else set()


@torch.no_grad()
def discounted_returns(reward_BT: Tensor, mask_BT: Tensor, gamma: float = 1.0) -> Tensor:
    """G_t = Σ_{k≥t} γ^{k−t}·r_k over each row's masked tokens (0 outside the mask), right to
    left: verl `compute_reinforce_plus_plus_outcome_advantage`'s returns (which reset after
    the response's end; masked positions here do not interrupt the sum). Shapes: (B, T)."""
    m_BT = mask_BT.bool()
    g = torch.zeros(reward_BT.shape[0], dtype=torch.float64, device=reward_BT.device)
    out = torch.zeros(reward_BT.shape, dtype=torch.float64, device=reward_BT.device)
    for t in range(reward_BT.shape[1] - 1, -1, -1):
        on = m_BT[:, t]
        g = torch.where(on, reward_BT[:, t].double() + gamma * g, g)
        out[:, t] = torch.where(on, g, torch.zeros_like(g))
    return out.to(reward_BT.dtype)


def _reinforce_pp(
    x: AdvantageInputs, *, gamma: float, kl_coef: float, kl_estimator: str
) -> Advantages:
    mask = x.mask_BT * (~torch.isnan(x.reward_B)).float()[:, None]
    r_BT = token_rewards(x.reward_B, mask)
    if kl_coef > 0:
        r_BT = r_BT - kl_coef * kl_penalty(x.old_logp_BT, x.ref_logp_BT, kl_estimator) * mask
    return Advantages(masked_whiten(discounted_returns(r_BT, mask, gamma), mask))


class ReinforcePpBaselineSpec(Spec):
    """REINFORCE++-baseline: the group mean subtracted, then whitened over the whole batch."""


def _reinforce_pp_baseline(x: AdvantageInputs) -> Advantages:
    scored_B = ~torch.isnan(x.reward_B)
    mask = x.mask_BT * scored_B.float()[:, None]
    a_B = torch.zeros_like(x.reward_B)
    if scored_B.any():
        a_B[scored_B] = dr_grpo(x.reward_B[scored_B], x.group_B[scored_B])
    return Advantages(masked_whiten(a_B[:, None] * mask, mask))


ADVANTAGES.add(
    "reinforce_pp",
    Estimator(_reinforce_pp),
    ReinforcePpSpec,
    "REINFORCE++: discounted returns with KL in the reward, whitened over the batch",
)
ADVANTAGES.add(
    "reinforce_pp_baseline",
    Estimator(_reinforce_pp_baseline),
    ReinforcePpBaselineSpec,
    "REINFORCE++-baseline: r − mean_g, whitened over the batch",
)


class GaeSpec(Spec):
    """PPO's GAE from the value head: the reward on each response's last token, minus a
    per-token KL penalty to the reference (ReFT), whitened over the batch."""

    gamma: float = Field(1.0, ge=0.0, le=1.0)
    lam: float = Field(0.95, ge=0.0, le=1.0)
    kl_coef: float = Field(0.0, ge=0.0)
    """β of the KL penalty in the reward, r_t −= β·KL_t (ReFT: 0.05 natural-language CoT)."""
    kl_estimator: Literal[tuple(KL_ESTIMATORS)] = "k1"  # type: ignore[valid-type]
    """How KL_t is estimated from log π_old − log π_ref (ReFT: k1)."""
    whiten: bool = True
    """Whiten the advantages over the whole batch (ReFT, verl)."""

    def extra_needs(self) -> set[str]:
        return {"old_logp_batch", "ref_logp"} if self.kl_coef > 0 else set()


def token_rewards(reward_B: Tensor, mask_BT: Tensor) -> Tensor:
    """(B, T): each scored row's reward on its last masked token, 0 elsewhere (and on rows
    with a NaN reward)."""
    m = mask_BT.bool()
    T = m.shape[1]
    last_B = (T - 1 - m.flip(1).float().argmax(1)).clamp(min=0)
    dtype = reward_B.dtype if reward_B.is_floating_point() else torch.float32
    out = torch.zeros(mask_BT.shape, dtype=dtype, device=mask_BT.device)
    has_B = m.any(1) & ~torch.isnan(reward_B)
    rows = has_B.nonzero().squeeze(1)
    out[rows, last_B[rows]] = reward_B[rows].to(dtype)
    return out


def _gae(
    x: AdvantageInputs, *, gamma: float, lam: float, kl_coef: float, kl_estimator: str, whiten: bool
) -> Advantages:
    mask = x.mask_BT * (~torch.isnan(x.reward_B)).float()[:, None]
    r_BT = token_rewards(x.reward_B, mask)
    if kl_coef > 0:
        r_BT = r_BT - kl_coef * kl_penalty(x.old_logp_BT, x.ref_logp_BT, kl_estimator) * mask
    adv, ret = gae_BT(r_BT, x.values_BT, mask, gamma, lam)
    if whiten:
        adv = masked_whiten(adv, mask)
    return Advantages(adv, ret)


ADVANTAGES.add(
    "gae",
    Estimator(_gae, frozenset({"old_values"}), frozenset({"returns"})),
    GaeSpec,
    "GAE(γ, λ) from the value head, KL in the reward, whitened (PPO, ReFT)",
)


def estimator_needs(spec: Spec) -> frozenset[str]:
    """What an estimator with these settings needs the step to compute."""
    return ADVANTAGES.get(spec.kind).needs | spec.extra_needs()  # type: ignore[attr-defined]


def estimate(spec: Spec, x: AdvantageInputs) -> Advantages:
    """Run the estimator `spec` chooses."""
    params = {k: v for k, v in spec.model_dump().items() if k != "kind"}
    return ADVANTAGES.get(spec.kind).fn(x, **params)  # type: ignore[attr-defined]


__all__: list[str] = [
    "ADVANTAGES",
    "AdvantageFn",
    "AdvantageInputs",
    "Advantages",
    "dr_grpo",
    "discounted_returns",
    "equal_reward_groups",
    "estimate",
    "estimator_needs",
    "grpo",
    "reinforce",
    "rloo",
    "token_rewards",
]
