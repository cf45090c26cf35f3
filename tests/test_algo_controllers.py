"""tandem.algo.controllers: schedule values at hand-picked steps, state round-trips, registry."""

import pytest

from tandem.algo.controllers import (
    CONTROLLERS,
    Constant,
    Controller,
    StageSwitch,
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


def test_stage_switch():
    s = StageSwitch(switch_step=5, before=1.0, after=0.0)
    assert [s.value(k) for k in (0, 4, 5, 9)] == [1.0, 1.0, 0.0, 0.0]
    s.update(4, {})
    assert s.switched_at is None and not s.switched
    s.update(6, {})  # first step at or after switch_step that ran
    s.update(7, {})
    assert s.switched_at == 6 and s.switched


@pytest.mark.parametrize(
    "controller",
    [Constant(0.3), WarmupCosine(0.5, 0.02, 200, 400), StageSwitch(5, 1.0, 0.0)],
)
def test_state_dict_round_trip(controller):
    controller.update(7, {})
    state = controller.state_dict()
    fresh = build_controller(state["kind"], **_params_of(state))
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state
    assert all(fresh.value(k) == controller.value(k) for k in (0, 5, 150, 300, 700))
    assert isinstance(fresh, Controller)


def _params_of(state):
    """Different parameters than the state's, to check load_state_dict restores them."""
    return {
        "constant": {"value": 0.0},
        "warmup_cosine": {"peak": 1.0, "valley": 0.0, "warmup_steps": 1, "decay_steps": 1},
        "stage": {"switch_step": 0, "before": 0.0, "after": 0.0},
    }[state["kind"]]


def test_load_state_dict_wrong_kind():
    with pytest.raises(ValueError, match="constant"):
        StageSwitch(1, 0.0, 1.0).load_state_dict(Constant(1.0).state_dict())


def test_build_controller_errors():
    assert set(CONTROLLERS) == {"constant", "warmup_cosine", "stage"}
    assert isinstance(build_controller("stage", switch_step=3, before=0.0, after=1.0), StageSwitch)
    with pytest.raises(ConfigError, match="warmup_cosine"):
        build_controller("cosine", peak=1.0)
    with pytest.raises(ConfigError, match="horizon"):
        build_controller("constant", value=1.0, horizon=3)
    with pytest.raises(ConfigError, match="decay_steps"):
        build_controller("warmup_cosine", peak=1.0, valley=0.0, warmup_steps=3)
