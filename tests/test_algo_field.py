"""Hand-computed float64 checks (tol 1e-6) of the parts the RL, reweighted-SFT and preference
presets of the field add: GSPO's sequence ratio, REINFORCE++'s returns and whitening (and its
baseline variant), KTO and its reference point, PoFT, ASFT, the periodic controller, DAPO's
overlong shaping and its informative-group filter."""

import math

import pytest
import torch

from tandem.algo.advantages import ADVANTAGES, AdvantageInputs, discounted_returns, estimate
from tandem.algo.controllers import CONTROLLERS, build_controller
from tandem.algo.preference import asft, kto, kto_reference_point, poft
from tandem.algo.terms import gspo_pg
from tandem.errors import ConfigError
from tandem.experience import Item
from tandem.tasks.base import Example
from tandem.train.sources import _informative, _overlong

TOL = 1e-6
F64 = torch.float64


def t(*v):
    return torch.tensor(v, dtype=F64)


def test_gspo_sequence_ratio_clip_and_gradient():
    # Row 0: masked log-ratios 0.2, −0.1 (the third token is outside the mask and ignored):
    #   log s = 0.05, s = e^0.05 = 1.051271 > 1 + 4e-4 with A = +1: clipped, ℓ = −1.0004 on
    #   both tokens and no gradient.
    # Row 1: s = 1, A = −1: ℓ = 1 per token, dℓ/dlogp_t = −A·s = 1.
    # Row 2: log s = 1e-4, s = 1.000100005 inside [1 − 3e-4, 1 + 4e-4], A = +1: ℓ = −s and
    #   dℓ/dlogp_t = −s (each token's gradient is scaled by the sequence ratio).
    logp = t([-1.0, -2.0, -1.0], [-1.0, -1.0, 0.0], [-1.0, -1.0, 0.0]).requires_grad_(True)
    old = t([-1.2, -1.9, -5.0], [-1.0, -1.0, 0.0], [-1.0001, -1.0001, 0.0])
    mask = t([1, 1, 0], [1, 1, 0], [1, 1, 0])
    adv = t([1.0] * 3, [-1.0] * 3, [1.0] * 3)
    loss = gspo_pg(logp, old, adv, mask, clip_low=3e-4, clip_high=4e-4)
    s2 = 1.0001000050001667
    assert torch.allclose(loss[0, :2], t(-1.0004, -1.0004), atol=TOL)
    assert torch.allclose(loss[1, :2], t(1.0, 1.0), atol=TOL)
    assert torch.allclose(loss[2, :2], t(-s2, -s2), atol=TOL)
    (loss * mask).sum().backward()
    want = t([0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [-s2, -s2, 0.0])
    assert torch.allclose(logp.grad, want, atol=TOL)


def test_discounted_returns_skip_masked_positions():
    # γ = 0.9, rewards [0, 5, 0, 1] with position 1 masked out: G = [0.81, 0, 0.9, 1].
    g = discounted_returns(t([0.0, 5.0, 0.0, 1.0]), t([1, 0, 1, 1]), gamma=0.9)
    assert torch.allclose(g, t([0.81, 0.0, 0.9, 1.0]), atol=TOL)


def parse_spec(family: str, tree: dict):
    reg = {"advantage": ADVANTAGES, "controller": CONTROLLERS}[family]
    return reg.spec(tree["kind"])(**tree)


def test_reinforce_pp_whitens_returns_over_the_batch():
    # Rewards 1 and 0 on the last of 2 tokens, γ = 1, no KL: returns [1, 1] and [0, 0];
    # whitened over the 4 tokens (mean 0.5, unbiased var 1/3): ±0.5/√(1/3) = ±0.866025.
    mask = t([1, 1], [1, 1])
    spec = parse_spec("advantage", {"kind": "reinforce_pp"})
    x = AdvantageInputs(reward_B=t(1.0, 0.0), group_B=torch.tensor([0, 1]), mask_BT=mask)
    a = estimate(spec, x).adv_BT
    assert torch.allclose(a, t([0.866025, 0.866025], [-0.866025, -0.866025]), atol=TOL)
    # β = 0.1, k1 = old − ref = [0.5, 0] and [0, −1]: rewards [−0.05, 1] and [0, 0.1];
    # returns [0.95, 1.0] and [0.1, 0.1]; mean 0.5375, unbiased var 0.255625:
    # [0.815872, 0.914766, −0.865319, −0.865319].
    spec = parse_spec("advantage", {"kind": "reinforce_pp", "kl_coef": 0.1})
    x = AdvantageInputs(
        reward_B=t(1.0, 0.0),
        group_B=torch.tensor([0, 1]),
        mask_BT=mask,
        old_logp_BT=t([-1.0, -2.0], [-1.0, -2.0]),
        ref_logp_BT=t([-1.5, -2.0], [-1.0, -1.0]),
    )
    a = estimate(spec, x).adv_BT
    want = t([0.815872, 0.914766], [-0.865319, -0.865319])
    assert torch.allclose(a, want, atol=TOL)


def test_reinforce_pp_baseline_subtracts_group_mean_then_whitens_tokens():
    # Rewards [1, 0 | 1, 1] in groups 0 and 1: r − mean_g = [0.5, −0.5, 0, 0]; row 0 has 2
    # tokens, the others 1: token values [0.5, 0.5, −0.5, 0, 0], mean 0.1, unbiased var 0.175:
    # [0.956183, 0.956183, −1.434274, −0.239046, −0.239046].
    mask = t([1, 1], [1, 0], [1, 0], [1, 0])
    spec = parse_spec("advantage", {"kind": "reinforce_pp_baseline"})
    x = AdvantageInputs(
        reward_B=t(1.0, 0.0, 1.0, 1.0), group_B=torch.tensor([0, 0, 1, 1]), mask_BT=mask
    )
    a = estimate(spec, x).adv_BT
    want = t([0.956183, 0.956183], [-1.434274, 0.0], [-0.239046, 0.0], [-0.239046, 0.0])
    assert torch.allclose(a, want, atol=TOL)


def test_reinforce_has_no_baseline():
    spec = parse_spec("advantage", {"kind": "reinforce"})
    x = AdvantageInputs(reward_B=t(1.0, 0.0), group_B=torch.tensor([0, 0]), mask_BT=t([1], [1]))
    assert torch.allclose(estimate(spec, x).adv_BT, t([1.0], [0.0]))


def test_kto_losses_reference_point_and_gradient():
    # Δ = logp − ref = [0.5, −0.5] (desirable, undesirable), β = 0.1.
    # z_0 = max(0, mean(Δ)) = 0: both losses 1 − σ(0.05) = 0.487503;
    # dℓ_D/dlogp = −β·σ(0.05)(1 − σ(0.05)) = −0.024984, dℓ_U/dlogp = +0.024984.
    logp = t(-1.0, -2.0).requires_grad_(True)
    ref, des = t(-1.5, -1.5), torch.tensor([True, False])
    z0 = kto_reference_point(logp.detach(), ref)
    assert z0.item() == 0.0
    loss, reward = kto(logp, ref, des, z0, beta=0.1)
    assert torch.allclose(loss, t(0.487503, 0.487503), atol=TOL)
    assert torch.allclose(reward, t(0.05, -0.05), atol=TOL)
    loss.sum().backward()
    assert torch.allclose(logp.grad, t(-0.024984, 0.024984), atol=TOL)
    # z_0 from the policy before the update: old Δ = [1.0, 0.5] → 0.75.
    # desirable 1 − σ(0.1(0.5 − 0.75)) = 0.506250; undesirable 1 − σ(0.1(0.75 + 0.5)) = 0.468791,
    # the undesirable one weighted by λ_U = 2: 0.937581.
    z0 = kto_reference_point(t(-0.5, -1.0), ref)
    assert abs(z0.item() - 0.75) < TOL
    loss, _ = kto(t(-1.0, -2.0), ref, des, z0, beta=0.1, lambda_u=2.0)
    assert torch.allclose(loss, t(0.506250, 0.937581), atol=TOL)
    # a negative mean log-ratio is clamped to 0
    assert kto_reference_point(t(-3.0), t(-1.0)).item() == 0.0


def test_poft_prefers_the_model_over_the_scorer():
    # avg_θ = −2/2 = −1, avg_ref = −1/2 = −0.5: z = −0.5, ℓ = log(1 + e^{0.5}) = 0.974077;
    # dℓ/dlogp = −(1 − σ(−0.5))/2 = −0.311230 (the NLL's −1/2 times σ(0.5)).
    logp = t(-2.0).requires_grad_(True)
    loss, margin = poft(logp, t(-1.0), t(2.0))
    assert abs(loss.item() - 0.974077) < TOL and abs(margin.item() + 0.5) < TOL
    loss.backward()
    assert abs(logp.grad.item() + 0.311230) < TOL


def test_asft_pointwise_log_odds():
    # β = 1: −log σ(lo(y)) = −log P̄, so ℓ = −avg_w − log(1 − P̄_l) with avg_w = −1/2 and
    # avg_l = −4/4: 0.5 − log(1 − e^{−1}) = 0.5 + 0.458675 = 0.958675. Margin lo_w − lo_l =
    # 0.432752 + 0.541325 = 0.974077.
    loss, margin = asft(t(-1.0), t(-4.0), t(2.0), t(4.0), beta=1.0)
    assert abs(loss.item() - 0.958675) < TOL and abs(margin.item() - 0.974077) < TOL
    # β = 2: −log σ(2·0.432752) − log σ(2·0.541325)
    want = math.log1p(math.exp(-0.865504)) + math.log1p(math.exp(-1.082650))
    loss2, _ = asft(t(-1.0), t(-4.0), t(2.0), t(4.0), beta=2.0)
    assert abs(loss2.item() - want) < TOL


def test_periodic_controller():
    every = build_controller(parse_spec("controller", {"kind": "periodic", "period": 4}))
    assert [every.value(k) for k in range(8)] == [0, 0, 0, 1, 0, 0, 0, 1]
    first = build_controller(
        parse_spec("controller", {"kind": "periodic", "period": 3, "phase": 0})
    )
    assert [first.value(k) for k in range(6)] == [1, 0, 0, 1, 0, 0]
    with pytest.raises(ConfigError, match="phase"):
        build_controller(parse_spec("controller", {"kind": "periodic", "period": 3, "phase": 3}))


def test_dapo_overlong_shaping():
    # max 20 tokens, buffer 0.2 → L_buf 4, L_exp 16: 0 up to 16, then −(|y| − 16)/4.
    got = [_overlong(n, 20, 0.2, 1.0) for n in (10, 16, 18, 20)]
    assert got == [0.0, 0.0, -0.5, -1.0]
    assert _overlong(20, 20, 0.0, 1.0) == 0.0
    assert _overlong(18, 20, 0.2, 2.0) == -1.0


def test_informative_groups_drop_all_equal_groups():
    def it(group, reward):
        return Item.of([1], [2], "sampled", "r", group=group, reward=reward)

    items = [it(0, 1.0), it(0, 1.0), it(1, 0.0), it(1, 1.0), it(2, 0.0), it(2, 0.0)]
    assert [x.group for x in _informative(items)] == [1, 1]


def test_one_token_rollout_in_expectation():
    # π = [0.5, 0.3, 0.2] over 3 tokens, gold y = 0, β = 0.1.
    # τ = 1 (q = π): ℓ = −[0.5·log 0.5 − 0.1·(0.3·log 0.3 + 0.2·log 0.2)] = 0.278266.
    #   ∂ℓ/∂z_j = −[q_y(δ_yj − π_j) − β·Σ_{v≠y} q_v(δ_vj − π_j)] = [−0.275, 0.165, 0.110].
    # τ = 2 (q ∝ √π = [0.415446, 0.321803, 0.262751]): ℓ = 0.206933.
    from tandem.algo.terms import one_token_rollout

    z = torch.log(t(0.5, 0.3, 0.2)).reshape(1, 1, 3).requires_grad_(True)
    lp = torch.log_softmax(z, -1)
    loss = one_token_rollout(lp[..., 0], lp, temperature=1.0, beta=0.1)
    assert abs(loss.item() - 0.278266) < TOL
    loss.sum().backward()
    assert torch.allclose(z.grad.flatten(), t(-0.275, 0.165, 0.110), atol=TOL)
    lp2 = torch.log_softmax(z.detach(), -1)
    loss2 = one_token_rollout(lp2[..., 0], lp2, temperature=2.0, beta=0.1)
    assert abs(loss2.item() - 0.206933) < TOL
    # β = 0 at τ = 1 is DFT's −sg(p)·log p
    loss3 = one_token_rollout(lp2[..., 0], lp2, temperature=1.0, beta=0.0)
    assert abs(loss3.item() + 0.5 * math.log(0.5)) < TOL


def test_srft_terms_weight_by_sequence_entropy():
    # Rows: an own sample that passed (entropies 0.2, 0.4: H̄ = 0.3, weight 0.1·e^0.3 = 0.134986),
    # an own sample that failed (+log p), the in-group demonstration (A = 0.5, p = 0.5:
    # −A·p/(p + 0.1) = −0.416667). SFT weight on the demonstration: 0.5·e^{−0.3} = 0.370409.
    from tandem.algo.objective import TERMS, TokenInputs
    from tandem.experience import ROLE_ID

    logp = torch.log(t([0.5, 0.25], [0.5, 0.25], [0.5, 0.5]))
    role = torch.tensor([[ROLE_ID["sampled"]] * 2, [ROLE_ID["sampled"]] * 2, [ROLE_ID["demo"]] * 2])
    x = TokenInputs(
        logp=logp,
        old_logp=logp,
        adv=t([1.0, 1.0], [-1.0, -1.0], [0.5, 0.5]),
        role=role,
        entropy=t([0.2, 0.4], [0.2, 0.4], [0.2, 0.4]),
        mask=torch.ones(3, 2, dtype=F64),
        reward=t(1.0, 0.0, 1.0),
    )
    rl = TERMS.get("srft_rl").fn(x, rl_scale=0.1, shaping_gamma=0.1, success_reward=1.0)
    want = t(
        [0.134986 * math.log(2), 0.134986 * math.log(4)],
        [math.log(0.5), math.log(0.25)],
        [-0.416667, -0.416667],
    )
    assert torch.allclose(rl, want, atol=TOL)
    sft = TERMS.get("entropy_nll").fn(x, scale=0.5, sign=-1)
    assert torch.allclose(sft[2], t(0.370409 * math.log(2), 0.370409 * math.log(2)), atol=TOL)


def test_group_demos_weights_by_success():
    # A group of 4 rollouts with 1 success: gate 0 → no demo (HPT), gate 1 → weight 1;
    # linear → 1 − 1/4 = 0.75. A group with 0 successes: gate → 1, linear → 1.
    from tandem.train.sources import SOURCES, DrawEnv

    ex_a = Example(id="a", prompt="a", answer="1", solution="1")
    ex_b = Example(id="b", prompt="b", answer="2", solution="2")

    class Enc:
        def prompt(self, ex):
            return [1]

        def demo(self, ex):
            return [2, 3]

    items = [
        Item.of([1], [5], "sampled", "r", group=0, reward=r, example=ex_a) for r in (1, 0, 0, 0)
    ]
    items += [
        Item.of([1], [5], "sampled", "r", group=1, reward=0.0, example=ex_b) for _ in range(4)
    ]
    env = DrawEnv(0, None, Enc(), None, {}, items, None, None)
    pools = {"demos": [ex_a, ex_b], "train": [ex_a, ex_b]}

    def draw(**kw):
        spec = SOURCES.spec("group_demos")(kind="group_demos", watch="r", **kw)
        got, _ = SOURCES.get("group_demos")("g", spec, pools, 0).draw(env)
        return [(it.example.id, it.weight) for it in got]

    assert draw(weighting="gate", gate=0) == [("b", 1.0)]
    assert draw(weighting="gate", gate=1) == [("a", 1.0), ("b", 1.0)]
    assert draw(weighting="linear") == [("a", 0.75), ("b", 1.0)]


def test_sstoken_trains_only_the_top_rel_tokens():
    # REL = log π_θ − log π_ref = [1, −1, 0] on 3 tokens; ρ = 0.6 keeps ceil(1.8) = 2: the
    # first and the third. ℓ = [1, 0, 0.5] and the second token gets no gradient.
    from tandem.algo.objective import TERMS, TokenInputs

    logp = t([-1.0, -2.0, -0.5]).requires_grad_(True)
    x = TokenInputs(
        logp=logp,
        old_logp=logp.detach(),
        adv=torch.zeros(1, 3, dtype=F64),
        role=torch.zeros(1, 3, dtype=torch.long),
        ref_logp=t([-2.0, -1.0, -0.5]),
        mask=torch.ones(1, 3, dtype=F64),
    )
    loss = TERMS.get("sstoken").fn(x, keep=0.6)
    assert torch.allclose(loss, t([1.0, 0.0, 0.5]))
    loss.sum().backward()
    assert torch.allclose(logp.grad, t([-1.0, 0.0, -1.0]))


def test_fault_mask_marks_the_differing_tokens():
    from tandem.train.sources import fault_mask

    # gold 1 2 3 4 vs wrong 1 9 3 4: the second token differs; vs wrong 1 2 (shorter): the tail.
    assert fault_mask([1, 2, 3, 4], [1, 9, 3, 4]) == [0, 1, 0, 0]
    assert fault_mask([1, 2, 3, 4], [1, 2]) == [0, 0, 1, 1]
    assert fault_mask([5, 6], [5, 6]) == [0, 0]


def test_replaced_groups_drops_the_rollouts_of_prompts_turned_into_demonstrations():
    from tandem.train.filters import FILTERS, apply_filters

    ex_a = Example(id="a", prompt="a", answer="1", solution="1")
    ex_b = Example(id="b", prompt="b", answer="2", solution="2")
    items = [Item.of([1], [5], "sampled", "r", group=0, reward=0.0, example=ex_a) for _ in range(2)]
    items += [
        Item.of([1], [5], "sampled", "r", group=1, reward=1.0, example=ex_b) for _ in range(2)
    ]
    items.append(Item.of([1], [2], "demo", "gated", example=ex_a))
    spec = FILTERS.spec("replaced_groups")(kind="replaced_groups", sources=["r"], by="gated")
    kept, m = apply_filters({"switch": spec}, items)
    assert [(it.source, it.example.id) for it in kept] == [("r", "b"), ("r", "b"), ("gated", "a")]
    assert m["filter/replaced_items"] == 2.0


def test_ift_propagated_weights():
    # −log p' = [log 2, log 4] over |y| = 2 tokens: c = [0.346574, 0.693147].
    # γ = 0.5: W = [c_0 + 0.5·c_1, c_1] = [0.693147, 0.693147], scaled to sum 2: [1, 1];
    #   ℓ = [0.693147, 1.386294].
    # γ = 0: W ∝ c, scaled to sum 2: [0.666667, 1.333333]; ℓ = [0.462098, 1.848392].
    from tandem.algo.objective import TERMS, TokenInputs

    def run(gamma):
        logp = torch.log(t([0.5, 0.25]))
        x = TokenInputs(
            logp=logp,
            old_logp=logp,
            adv=torch.zeros(1, 2, dtype=F64),
            role=torch.zeros(1, 2, dtype=torch.long),
            mask=torch.ones(1, 2, dtype=F64),
        )
        return TERMS.get("ift").fn(x, mix=0.2, gamma=gamma)

    assert torch.allclose(run(0.5), t([0.693147, 1.386294]), atol=TOL)
    assert torch.allclose(run(0.0), t([0.462098, 1.848392]), atol=TOL)


def test_mix_ppg_clips_around_the_old_to_behaviour_ratio():
    from tandem.algo.terms import clipped_pg, mix_ppg

    # Token 0: behaviour log-prob −1.5, old −1.0: c = e^0.5 = 1.648721; current −0.9:
    #   r = e^0.6 = 1.822119 > c + 0.2 = 1.848721? no: inside, A = +1: ℓ = −r, dℓ/dlogp = −r.
    # Token 1: r = e^1.0 = 2.718282 > c + 0.2 with A = +1: clipped at 1.848721, no gradient.
    # Token 2: behaviour = old (a fresh sample): c = 1, the same as clipped_pg.
    # Token 3: A = −1, r = e^(−2.0 + 1.5) = 0.606531 < c − 0.2 = 1.448721:
    #   max(−A·r, −A·(c − 0.2)) = 1.448721, no gradient.
    logp = t(-0.9, -0.5, -1.1, -2.0).requires_grad_(True)
    old = t(-1.0, -1.0, -1.0, -1.0)
    behav = t(-1.5, -1.5, -1.0, -1.5)
    adv = t(1.0, 1.0, 1.0, -1.0)
    loss = mix_ppg(logp, old, behav, adv, 0.2, 0.2, None)
    c = math.exp(0.5)
    want = [-math.exp(0.6), -(c + 0.2), -math.exp(-0.1), c - 0.2]
    assert loss.tolist() == pytest.approx(want, abs=TOL)
    loss.sum().backward()
    assert logp.grad.tolist() == pytest.approx([-math.exp(0.6), 0.0, -math.exp(-0.1), 0.0])
    # behaviour = old everywhere: exactly the PPO term
    x = t(-0.9, -0.5, -1.1, -2.0)
    torch.testing.assert_close(
        mix_ppg(x, old, old, adv, 0.2, 0.28, 3.0), clipped_pg(x, old, adv, 0.2, 0.28, 3.0)
    )


def test_step_decay_controller_is_remix_lambda():
    c = build_controller(CONTROLLERS.spec("step_decay")(kind="step_decay"))
    # 1 until step 50, then 0.1 lower every 10 steps (ceil), floor 0.5
    got = [c.value(k) for k in (0, 50, 51, 60, 61, 70, 90, 200)]
    assert got == pytest.approx([1.0, 1.0, 0.9, 0.9, 0.8, 0.8, 0.6, 0.5])


def test_coefficient_forms():
    from tandem.config import parse_coef

    assert parse_coef("0.01*lam") == ("lam", 0.01, 0.0)
    assert parse_coef("0.01-0.01*lam") == ("lam", -0.01, 0.01)
    assert parse_coef("1-mu") == ("mu", -1.0, 1.0)
    with pytest.raises(ConfigError, match="coefficient"):
        parse_coef("2+mu")


def test_replay_rollouts_mix_fresh_and_replayed_groups_and_resume(warm_tiny, tmp_path):
    from tandem.report.metrics import read_metrics
    from tandem.train.loop import train, train_from_files

    from .conftest import tiny_config

    args = [f"model.name={warm_tiny}", "method=remix", "eval.prompts=0", "stages.mix.steps=3"]
    train(tiny_config(tmp_path / "full", *args, "steps=4"), log=lambda s: None)
    rows = read_metrics(tmp_path / "full/metrics.jsonl")
    # 8 prompts per step: round(0.4·8) = 3 replayed once the replay has groups; none after
    # the reincarnation (step 4: on-policy), where the reference restarts (KL 0)
    assert [r["rollout/replayed_groups"] for r in rows] == [0.0, 3.0, 3.0, 0.0]
    assert rows[2]["rollout/replay_age"] >= 1.0
    assert [r["optim/updates"] for r in rows] == [2.0, 2.0, 2.0, 1.0]
    assert rows[1]["rollout/items"] == 8 * 8 and rows[3]["loss/kl"] == 0.0
    train(tiny_config(tmp_path / "part", *args, "steps=2"), log=lambda s: None)
    train_from_files(None, ["steps=4"], resume_dir=str(tmp_path / "part"))
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]  # noqa: E731
    assert strip(read_metrics(tmp_path / "part/metrics.jsonl")) == strip(rows)


def test_amft_controller_update_by_hand():
    spec = CONTROLLERS.spec("amft")(kind="amft", meta_lr=2.0, entropy_lr=0.1, every=2)
    c = build_controller(spec)
    assert c.dots_at(0) and not c.dots_at(1) and c.grad_dots == ("val", ("sft", "pg"))
    # step 0: target entropy set from the first entropy (1.2): no push; meta-gradient
    #   dL/dμ = −α·(d_sft − d_rl) = −0.01·(3 − (−1)) = −0.04; μ = 0.5 − 2·(−0.04) = 0.58
    c.update(
        0, {"rollout/entropy": 1.2, "grad_dot/sft": 3.0, "grad_dot/pg": -1.0, "optim/lr": 0.01}
    )
    assert c.value(1) == pytest.approx(0.58, abs=TOL)
    # step 1: no dots; entropy fell to 0.7: μ += 0.1·(1.2 − 0.7) = 0.05
    c.update(1, {"rollout/entropy": 0.7, "optim/lr": 0.01})
    assert c.value(2) == pytest.approx(0.63, abs=TOL)
    # clipped to [min, max] = [0.05, 0.95]
    c.update(
        2, {"rollout/entropy": 1.2, "grad_dot/sft": 100.0, "grad_dot/pg": 0.0, "optim/lr": 1.0}
    )
    assert c.value(3) == pytest.approx(0.95, abs=TOL)
    again = build_controller(spec)
    again.load_state_dict(c.state_dict())
    assert again.value(3) == c.value(3) and again.target == 1.2


def test_grad_dot_of_a_term_with_its_own_data_is_its_squared_gradient_norm(tmp_path):
    """The held-out source draws the same examples as the SFT source at step 0 (both on the
    `demos` stream, the same seeded order), so g_val = ∇L_sft: grad_dot/sft = ‖∇L_sft‖²,
    which is the step's (unclipped) gradient norm squared when μ = 1 turns the PG term off."""
    from tandem.report.metrics import read_metrics
    from tandem.train.loop import train

    from .conftest import tiny_config

    out = tmp_path / "run"
    o = "stages.adaptive.objective"
    train(
        tiny_config(
            out,
            "method=amft",
            "steps=1",
            "stages.warmup=null",
            "eval.prompts=0",
            "grad_clip=0",
            f"{o}.sources.demos.stream=demos",
            f"{o}.sources.val.stream=demos",
            f"{o}.controllers.mu={{kind: amft, init: 1.0, max: 1.0}}",
        ),
        log=lambda s: None,
    )
    (r,) = [r for r in read_metrics(out / "metrics.jsonl") if "loss/total" in r]
    assert "grad_dot/pg" not in r  # coefficient 1 − μ = 0: not active
    assert r["grad_dot/val_loss"] == pytest.approx(r["loss/sft"], rel=1e-6)
    assert r["grad_dot/sft"] == pytest.approx(r["optim/grad_norm"] ** 2, rel=1e-4)
