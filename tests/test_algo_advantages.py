"""tandem.algo.advantages: estimators by hand, a loop reference, and the equal-reward mask."""

import math

import pytest
import torch

from tandem.algo.advantages import (
    ADVANTAGES,
    dr_grpo,
    equal_reward_groups,
    get_advantage,
    grpo,
    rloo,
)
from tandem.errors import ConfigError

TOL = 1e-6
F64 = torch.float64

# Three groups, interleaved and with non-contiguous ids:
#   group 7 (size 3): r = [1.0, 0.0, 0.5] at positions 0, 2, 5
#   group 3 (size 2): r = [2.0, 0.0]      at positions 1, 4
#   group 5 (size 1): r = [0.7]           at position 3
REWARDS = torch.tensor([1.0, 2.0, 0.0, 0.7, 0.0, 0.5], dtype=F64)
GROUPS = torch.tensor([7, 3, 7, 5, 3, 7])


def test_grpo_by_hand():
    # group 7: mean 0.5, unbiased var = (0.25 + 0.25 + 0)/2 = 0.25, std 0.5
    #   → (±0.5)/(0.5 + 1e-6) = ±0.999998, 0 for r = 0.5
    # group 3: mean 1, var = (1 + 1)/1 = 2, std √2 = 1.414214 → ±1/(1.414214 + 1e-6) = ±0.707106
    # group 5: size 1 → mean 0, std 1 → 0.7/(1 + 1e-6) = 0.699999
    expected = torch.tensor(
        [
            0.5 / 0.500001,
            1 / (math.sqrt(2) + 1e-6),
            -0.5 / 0.500001,
            0.7 / 1.000001,
            -1 / (math.sqrt(2) + 1e-6),
            0.0,
        ],
        dtype=F64,
    )
    torch.testing.assert_close(grpo(REWARDS, GROUPS), expected, atol=TOL, rtol=0)
    assert abs(grpo(REWARDS, GROUPS)[0].item() - 0.999998) < TOL


def test_dr_grpo_by_hand():
    # r − mean_g: group 7 → [0.5, −0.5, 0]; group 3 → [1, −1]; group 5 (size 1, mean 0) → 0.7
    expected = torch.tensor([0.5, 1.0, -0.5, 0.7, -1.0, 0.0], dtype=F64)
    torch.testing.assert_close(dr_grpo(REWARDS, GROUPS), expected, atol=TOL, rtol=0)


def test_rloo_by_hand():
    # r_i − mean_{j≠i} r_j:
    #   group 7: 1 − (0+0.5)/2 = 0.75; 0 − (1+0.5)/2 = −0.75; 0.5 − (1+0)/2 = 0
    #            (= 3/2·(r − 0.5))
    #   group 3: 2 − 0 = 2; 0 − 2 = −2   (= 2·(r − 1))
    #   group 5: size 1 → 0 (no leave-one-out baseline)
    expected = torch.tensor([0.75, 2.0, -0.75, 0.0, -2.0, 0.0], dtype=F64)
    torch.testing.assert_close(rloo(REWARDS, GROUPS), expected, atol=TOL, rtol=0)


def _reference(rewards, groups, name, eps=1e-6):
    """Loop over items, written from the formulas (verl style), to check the vectorized code."""
    out = torch.empty_like(rewards)
    for i in range(len(rewards)):
        same = rewards[groups == groups[i]]
        n = len(same)
        if name == "grpo":
            mean, std = (0.0, 1.0) if n == 1 else (same.mean(), same.std())
            out[i] = (rewards[i] - mean) / (std + eps)
        elif name == "dr_grpo":
            out[i] = rewards[i] - (0.0 if n == 1 else same.mean())
        else:
            out[i] = 0.0 if n == 1 else rewards[i] - (same.sum() - rewards[i]) / (n - 1)
    return out


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_vectorized_matches_loop(name):
    g = torch.Generator().manual_seed(1)
    groups = torch.randint(0, 9, (40,), generator=g) * 11  # sparse ids, random group sizes
    rewards = torch.randn(40, dtype=F64, generator=g)
    got = ADVANTAGES[name](rewards, groups, eps=1e-6)
    torch.testing.assert_close(got, _reference(rewards, groups, name), atol=1e-10, rtol=0)


def test_equal_reward_groups():
    # group 0: [1, 0] differ → False; group 1: [1, 1] equal → True; group 2: size 1 → True.
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.3])
    groups = torch.tensor([0, 0, 1, 1, 2])
    mask = equal_reward_groups(rewards, groups)
    assert mask.tolist() == [False, False, True, True, True]
    # All-equal groups have zero GRPO advantage (0 / (0 + eps)).
    assert grpo(rewards.double(), groups)[2:4].abs().max().item() == 0.0


def test_integer_rewards_and_registry():
    adv = get_advantage("dr_grpo")(torch.tensor([1, 0]), torch.tensor([0, 0]))
    assert adv.is_floating_point() and adv.tolist() == [0.5, -0.5]
    with pytest.raises(ConfigError, match="rloo"):
        get_advantage("gae")
