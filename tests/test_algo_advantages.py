"""tandem.algo.advantages: estimators by hand, a loop reference, and the equal-reward mask."""

import math

import pytest
import torch

from tandem.algo.advantages import (
    ADVANTAGES,
    AdvantageInputs,
    dr_grpo,
    equal_reward_groups,
    estimate,
    grpo,
    rloo,
    token_rewards,
)
from tandem.algo.value import gae, masked_whiten
from tandem.errors import ConfigError

OUTCOME = {"grpo": grpo, "dr_grpo": dr_grpo, "rloo": rloo}

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


@pytest.mark.parametrize("name", sorted(OUTCOME))
def test_vectorized_matches_loop(name):
    g = torch.Generator().manual_seed(1)
    groups = torch.randint(0, 9, (40,), generator=g) * 11  # sparse ids, random group sizes
    rewards = torch.randn(40, dtype=F64, generator=g)
    got = OUTCOME[name](rewards, groups, eps=1e-6)
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
    adv = dr_grpo(torch.tensor([1, 0]), torch.tensor([0, 0]))
    assert adv.is_floating_point() and adv.tolist() == [0.5, -0.5]
    assert set(ADVANTAGES.names()) == {
        "grpo",
        "dr_grpo",
        "rloo",
        "reinforce",
        "reinforce_pp",
        "reinforce_pp_baseline",
        "gae",
    }
    with pytest.raises(ConfigError, match="rloo"):
        ADVANTAGES.get("vtrace")


def test_outcome_estimator_broadcasts_over_scored_rows():
    # Rows 0-1: one group, rewards 1 and 0 → dr_grpo ±0.5 on their trained tokens; row 2 is not
    # scored (NaN: a demonstration of another term) → 0.
    mask = torch.tensor([[0, 1, 1], [0, 1, 0], [1, 1, 1]], dtype=torch.float32)
    x = AdvantageInputs(
        reward_B=torch.tensor([1.0, 0.0, math.nan]), group_B=torch.tensor([0, 0, -1]), mask_BT=mask
    )
    out = estimate(ADVANTAGES.spec("dr_grpo")(), x)
    assert out.adv_BT.tolist() == [[0.0, 0.5, 0.5], [0.0, -0.5, 0.0], [0.0, 0.0, 0.0]]
    assert out.returns_BT is None


def test_gae_by_hand():
    # One row, three response tokens (mask [0, 1, 1, 1]); reward 1 on the last token; values
    # V = [., 0.5, 0.4, 0.2]; γ = 0.9, λ = 0.8.
    #   t=3: δ = 1 + 0.9·0 − 0.2 = 0.8;            A3 = 0.8
    #   t=2: δ = 0 + 0.9·0.2 − 0.4 = −0.22;        A2 = −0.22 + 0.72·0.8 = 0.356
    #   t=1: δ = 0 + 0.9·0.4 − 0.5 = −0.14;        A1 = −0.14 + 0.72·0.356 = 0.11632
    #   returns R = A + V = [0.61632, 0.756, 1.0]
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0]], dtype=F64)
    r = token_rewards(torch.tensor([1.0]), mask).double()
    assert r.tolist() == [[0.0, 0.0, 0.0, 1.0]]
    v = torch.tensor([[9.0, 0.5, 0.4, 0.2]], dtype=F64)
    adv, ret = gae(r, v, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(
        adv, torch.tensor([[0.0, 0.11632, 0.356, 0.8]], dtype=F64), atol=TOL, rtol=0
    )
    torch.testing.assert_close(
        ret, torch.tensor([[0.0, 0.61632, 0.756, 1.0]], dtype=F64), atol=TOL, rtol=0
    )


def test_gae_skips_tool_tokens():
    # A tool's output (mask 0) between two sampled spans does not break the recursion: the
    # token after the gap is the "next" one. Mask [1, 0, 1], V = [0.3, 7, 0.6], reward 1 at t=2,
    # γ = λ = 1: A2 = 1 − 0.6 = 0.4; A0 = (0 + 0.6 − 0.3) + 0.4 = 0.7; R = [1.0, 0, 1.0].
    mask = torch.tensor([[1.0, 0.0, 1.0]], dtype=F64)
    r = torch.tensor([[0.0, 0.0, 1.0]], dtype=F64)
    adv, ret = gae(r, torch.tensor([[0.3, 7.0, 0.6]], dtype=F64), mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.7, 0.0, 0.4]], dtype=F64), atol=TOL, rtol=0)
    torch.testing.assert_close(ret, torch.tensor([[1.0, 0.0, 1.0]], dtype=F64), atol=TOL, rtol=0)


def test_masked_whiten_and_gae_estimator():
    # whiten [1, 2, 3] (mask) → mean 2, unbiased var 1 → [−1, 0, 1]; masked-out entries 0.
    x = torch.tensor([[1.0, 2.0, 99.0, 3.0]], dtype=F64)
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0]], dtype=F64)
    torch.testing.assert_close(
        masked_whiten(x, mask), torch.tensor([[-1.0, 0.0, 0.0, 1.0]], dtype=F64), atol=1e-6, rtol=0
    )
    # The estimator with a KL penalty in the reward: two rows of two tokens, V = 0, γ = λ = 1,
    # β = 0.5, k1 = old − ref = 0.2 on every token, rewards [1, 0]:
    #   row 0: r = [−0.1, 0.9] → A = [0.8, 0.9];  row 1: r = [−0.1, −0.1] → A = [−0.2, −0.1]
    #   whitened over the 4 values: mean 0.35, unbiased var = (0.2025+0.3025+0.3025+0.2025)/3
    #   = 0.336667, std 0.580230 → [0.775549, 0.947893, −0.947893, −0.775549]
    m = torch.ones(2, 2)
    x = AdvantageInputs(
        reward_B=torch.tensor([1.0, 0.0]),
        group_B=torch.tensor([-1, -1]),
        mask_BT=m,
        values_BT=torch.zeros(2, 2),
        old_logp_BT=torch.full((2, 2), -1.0),
        ref_logp_BT=torch.full((2, 2), -1.2),
    )
    spec = ADVANTAGES.spec("gae")(kl_coef=0.5, lam=1.0)
    assert spec.extra_needs() == {"old_logp_batch", "ref_logp"}
    out = estimate(spec, x)
    want = torch.tensor([[0.775549, 0.947893], [-0.947893, -0.775549]])
    torch.testing.assert_close(out.adv_BT, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        out.returns_BT, torch.tensor([[0.8, 0.9], [-0.2, -0.1]]), atol=1e-6, rtol=0
    )
