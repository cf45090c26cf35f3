"""tandem.algo.controllers: schedule values at hand-picked steps, state round-trips, registry."""

import math
import random

import pytest

from tandem.algo.controllers import (
    CONTROLLERS,
    AdaptiveKl,
    Constant,
    Cosine,
    Sasr,
    WarmupCosine,
    build_controller,
)
from tandem.errors import ConfigError

TOL = 1e-6


def test_constant():
    c = Constant(0.1)
    assert c.value(0) == 0.1 and c.value(10_000) == 0.1
    c.update(3, {"reward/mean": 1.0})
    assert c.value(3) == 0.1


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.0),  # warm-up: 0.5 · 0/200
        (100, 0.25),  # 0.5 · 100/200
        (200, 0.5),  # k = W: cos(0) = 1 → peak
        (400, 0.26),  # (k−W)/D = 1/2: ½(1 + cos(π/2)) = ½ → 0.02 + 0.48·½
        (
            500,
            0.090294,
        ),  # 3/4: ½(1 + cos(3π/4)) = ½(1 − 0.707107) = 0.146447 → 0.02 + 0.48·0.146447
        (600, 0.02),  # k = W + D → valley
        (10_000, 0.02),
    ],
)
def test_warmup_cosine_chord_combined_example(step, expected):
    # CHORD combined example: W = 200, D = 400, peak 0.5, valley 0.02.
    mu = WarmupCosine(peak=0.5, valley=0.02, warmup_steps=200, decay_steps=400)
    assert abs(mu.value(step) - expected) < TOL


def test_warmup_cosine_edge_cases():
    # CHORD-μ: W = 0 → starts at peak 0.9; k = 100 = D/2 → 0.05 + 0.85·½ = 0.475; k = 200 → 0.05.
    mu = WarmupCosine(0.9, 0.05, 0, 200)
    assert abs(mu.value(0) - 0.9) < TOL
    assert abs(mu.value(100) - 0.475) < TOL
    assert abs(mu.value(200) - 0.05) < TOL
    # D = 0: warm-up to step W, then the valley at once (no division by zero).
    mu = WarmupCosine(1.0, 0.2, 10, 0)
    assert abs(mu.value(5) - 0.5) < TOL
    assert mu.value(10) == 0.2
    with pytest.raises(ConfigError):
        WarmupCosine(1.0, 0.0, -1, 10)


def test_cosine_schedule():
    # Prefix-RFT's lower prefix bound, 0.95 -> 0.05 over N = 100 steps:
    #   k = 0: 0.05 + ½(1 + cos 0)·0.9 = 0.95;  k = 50: 0.05 + ½·0.9 = 0.5;
    #   k = 25: ½(1 + cos(π/4)) = 0.853553 → 0.05 + 0.768198 = 0.818198;  k ≥ 100: 0.05.
    c = Cosine(start=0.95, end=0.05, steps=100)
    for k, want in ((0, 0.95), (25, 0.818198), (50, 0.5), (100, 0.05), (500, 0.05)):
        assert abs(c.value(k) - want) < TOL


def test_adaptive_kl():
    # β = 0.1, target 0.01, horizon 10, n_steps 2: KL 0.02 → e = clip(1, ±0.2) = 0.2 →
    # β = 0.1·(1 + 0.2·2/10) = 0.104; KL 0.009 → e = −0.1 → β = 0.104·(1 − 0.02) = 0.10192.
    c = AdaptiveKl(init=0.1, target=0.01, horizon=10, stat="loss/kl", n_steps=2)
    c.update(0, {"loss/kl": 0.02})
    assert abs(c.value(1) - 0.104) < TOL
    c.update(1, {"loss/kl": 0.009})
    assert abs(c.value(2) - 0.10192) < TOL
    c.update(2, {})  # the step logged no KL: unchanged
    assert abs(c.value(3) - 0.10192) < TOL


def test_sasr_rule_and_switch_counts():
    # Warm-up of 2 SFT steps; G_0 = the SFT gradient norm at step 1 = 4.0; γ = 1.
    s = Sasr(warmup_steps=2, gamma=1.0, sft_term="sft", seed=0)
    assert s.wants_grad_norms == ("sft",)
    assert s.value(0) == 1.0 and s.value(1) == 1.0
    s.update(0, {"grad_norm/sft": 9.0})
    s.update(1, {"grad_norm/sft": 4.0})
    assert s.g0 == 4.0 and s.g_last == 4.0
    # p = G / (G + γ·G_0) = 4 / 8 = 0.5; the draw at step k is Random("sasr:0:k").random().
    assert abs(s.metrics()["p_sft"] - 0.5) < TOL
    u = random.Random("sasr:0:2").random()
    assert s.value(2) == (1.0 if u < 0.5 else 0.0)
    # An SFT step with a smaller gradient lowers p: G = 1 → p = 1/5 = 0.2.
    k = next(k for k in range(2, 200) if s.value(k) == 1.0)
    s.update(k, {"grad_norm/sft": 1.0})
    assert abs(s.metrics()["p_sft"] - 0.2) < TOL
    # Switch counts follow the realized sequence of values.
    t = Sasr(warmup_steps=1, gamma=1.0, sft_term="sft", seed=3)
    t.update(0, {"grad_norm/sft": 2.0})
    seq = [1.0]
    for k in range(1, 40):
        seq.append(t.value(k))
        t.update(k, {"grad_norm/sft": 2.0} if seq[-1] == 1.0 else {})
    to_rl = sum(a == 1.0 and b == 0.0 for a, b in zip(seq, seq[1:]))
    to_sft = sum(a == 0.0 and b == 1.0 for a, b in zip(seq, seq[1:]))
    assert t.metrics()["switches_to_rl"] == to_rl > 0
    assert t.metrics()["switches_to_sft"] == to_sft > 0


def _spec(kind, **kw):
    return CONTROLLERS.spec(kind)(**kw)


@pytest.mark.parametrize(
    "spec",
    [
        _spec("constant", value=0.3),
        _spec("warmup_cosine", peak=0.5, valley=0.02, warmup_steps=200, decay_steps=400),
        _spec("cosine", start=0.9, end=0.1, steps=50),
        _spec("adaptive_kl"),
        _spec("sasr", warmup_steps=2),
    ],
)
def test_state_dict_round_trip(spec):
    controller = build_controller(spec, seed=5)
    for k in range(6):
        controller.update(k, {"loss/kl": 0.05, "grad_norm/sft": 1.0 + k})
    state = controller.state_dict()
    fresh = build_controller(spec, seed=5)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state
    assert all(fresh.value(k) == controller.value(k) for k in (0, 5, 150, 300, 700))


def test_load_state_dict_wrong_kind():
    with pytest.raises(ValueError, match="constant"):
        WarmupCosine(1.0, 0.0, 1, 1).load_state_dict(Constant(1.0).state_dict())


def test_registry_and_seed():
    assert set(CONTROLLERS.names()) == {
        "constant",
        "warmup_cosine",
        "cosine",
        "adaptive_kl",
        "sasr",
        "periodic",
        "target_entropy",
        "tldr",
        "step_decay",
        "amft",
    }
    with pytest.raises(ConfigError, match="warmup_cosine"):
        CONTROLLERS.get("linear")
    # a spec's null seed takes the run's
    assert build_controller(_spec("sasr"), seed=7).seed == 7
    assert build_controller(_spec("sasr", seed=2), seed=7).seed == 2
    assert math.isfinite(build_controller(_spec("adaptive_kl")).value(0))
