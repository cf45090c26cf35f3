"""Outcome advantage estimators over groups of rollouts of the same prompt.

Registry `ADVANTAGES`, one signature for all:

    fn(rewards_N: Tensor, group_N: Tensor, *, eps: float = 1e-6) -> adv_N

rewards_N: (N,) float, the scalar outcome reward r_i of each rollout (sum of token rewards).
group_N: (N,) integer group ids (one id per prompt; any values, need not be contiguous).
adv_N: (N,) advantage, to be broadcast over each response's tokens by the caller.

All estimators are vectorized with scatter-adds over groups (no Python loop over items or
groups) and run without grad. Notation: n_g = size of the group, mean_g = its mean reward.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from tandem.errors import ConfigError


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


ADVANTAGES: dict[str, AdvantageFn] = {"grpo": grpo, "dr_grpo": dr_grpo, "rloo": rloo}


def get_advantage(name: str) -> AdvantageFn:
    """The estimator registered as ``name``; ConfigError naming the allowed values otherwise."""
    if name not in ADVANTAGES:
        raise ConfigError(f"unknown advantage estimator {name!r}; allowed: {sorted(ADVANTAGES)}")
    return ADVANTAGES[name]


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


__all__: list[str] = [
    "ADVANTAGES",
    "AdvantageFn",
    "dr_grpo",
    "equal_reward_groups",
    "get_advantage",
    "grpo",
    "rloo",
]
