"""Controllers: small stateful objects that set one coefficient per optimizer step.

A controller answers ``value(step)`` (e.g. CHORD's μ, a KL β, a stage switch) and may read the
step's metrics in ``update(step, stats)``. Its state goes into every checkpoint through
``state_dict()`` / ``load_state_dict()``; the dict holds the parameters and the mutable state,
so a round-trip rebuilds an equal controller. ``step`` is the optimizer-step index as the
trainer counts it (tandem counts from 0).

Registry `CONTROLLERS` (kind → class) and `build_controller(kind, **params)`, which turns
config errors (unknown kind, unknown or missing parameter) into `ConfigError`.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Protocol, runtime_checkable

from tandem.errors import ConfigError


@runtime_checkable
class Controller(Protocol):
    """What the training step needs from a coefficient controller."""

    def value(self, step: int) -> float:
        """The coefficient to use at optimizer step ``step``."""
        ...

    def update(self, step: int, stats: dict[str, float]) -> None:
        """Read the metrics of step ``step`` (after it ran); may be a no-op."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _check_kind(state: dict[str, Any], kind: str) -> None:
    if state.get("kind") != kind:
        raise ValueError(f"state_dict is for controller {state.get('kind')!r}, not {kind!r}")


class Constant:
    """A fixed coefficient: value(step) = value. Used for CHORD-φ's μ = 0.1, fixed KL β, etc."""

    kind = "constant"

    def __init__(self, value: float) -> None:
        self._value = float(value)

    def value(self, step: int) -> float:
        return self._value

    def update(self, step: int, stats: dict[str, float]) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self._value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_kind(state, self.kind)
        self._value = float(state["value"])


class WarmupCosine:
    """CHORD's μ schedule: linear warm-up, cosine decay, then a floor (ALGORITHMS.md §6).

    With k = step, W = warmup_steps, D = decay_steps:

        k < W:          μ = peak · k / W
        W ≤ k < W + D:  μ = valley + (peak − valley) · ½(1 + cos(π (k − W) / D))
        k ≥ W + D:      μ = valley

    Source: CHORD (arXiv 2508.11408), Trinity-RFT `mu_schedule_function` in
    trinity/algorithm/policy_loss_fn/chord_policy_loss.py (commit 0414330); this matches it
    branch for branch, including W = 0 (no warm-up, μ starts at peak) and D = 0 (μ = valley from
    step W on). Trinity evaluates it at its trainer's ``global_step``; here ``step`` is tandem's
    step index, so μ = 0 at step 0 when W > 0. Paper settings: CHORD-μ W=0, D=200, peak 0.9,
    valley 0.05; combined example W=200, D=400, peak 0.5, valley 0.02.
    """

    kind = "warmup_cosine"

    def __init__(self, peak: float, valley: float, warmup_steps: int, decay_steps: int) -> None:
        if warmup_steps < 0 or decay_steps < 0:
            raise ConfigError(
                f"warmup_steps and decay_steps must be >= 0, got {warmup_steps}, {decay_steps}"
            )
        self.peak = float(peak)
        self.valley = float(valley)
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = int(decay_steps)

    def value(self, step: int) -> float:
        w, d = self.warmup_steps, self.decay_steps
        if step < w:
            return self.peak * step / w
        if step >= w + d:
            return self.valley
        cosine = 0.5 * (1.0 + math.cos(math.pi * (step - w) / d))
        return self.valley + (self.peak - self.valley) * cosine

    def update(self, step: int, stats: dict[str, float]) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "peak": self.peak,
            "valley": self.valley,
            "warmup_steps": self.warmup_steps,
            "decay_steps": self.decay_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_kind(state, self.kind)
        self.peak = float(state["peak"])
        self.valley = float(state["valley"])
        self.warmup_steps = int(state["warmup_steps"])
        self.decay_steps = int(state["decay_steps"])


class StageSwitch:
    """A two-stage coefficient: value = before for step < switch_step, else after.

    E.g. ReFT's SFT warm-up then PPO (ALGORITHMS.md §3.6): an SFT weight with before=1, after=0
    and a PG weight with before=0, after=1. The value depends on the step only; ``update``
    records the first step at or after ``switch_step`` that actually ran (``switched_at``), so a
    resumed run and the logs know whether and when the switch happened.
    """

    kind = "stage"

    def __init__(self, switch_step: int, before: float, after: float) -> None:
        if switch_step < 0:
            raise ConfigError(f"switch_step must be >= 0, got {switch_step}")
        self.switch_step = int(switch_step)
        self.before = float(before)
        self.after = float(after)
        self.switched_at: int | None = None

    def value(self, step: int) -> float:
        return self.before if step < self.switch_step else self.after

    def update(self, step: int, stats: dict[str, float]) -> None:
        if self.switched_at is None and step >= self.switch_step:
            self.switched_at = int(step)

    @property
    def switched(self) -> bool:
        return self.switched_at is not None

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "switch_step": self.switch_step,
            "before": self.before,
            "after": self.after,
            "switched_at": self.switched_at,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_kind(state, self.kind)
        self.switch_step = int(state["switch_step"])
        self.before = float(state["before"])
        self.after = float(state["after"])
        at = state["switched_at"]
        self.switched_at = None if at is None else int(at)


CONTROLLERS: dict[str, type] = {
    Constant.kind: Constant,
    WarmupCosine.kind: WarmupCosine,
    StageSwitch.kind: StageSwitch,
}


def build_controller(kind: str, **params: Any) -> Controller:
    """Construct the controller registered as ``kind`` from its parameters.

    ConfigError if the kind is unknown, a parameter is unknown, or a required one is missing;
    the message names the allowed values.
    """
    if kind not in CONTROLLERS:
        raise ConfigError(f"unknown controller kind {kind!r}; allowed: {sorted(CONTROLLERS)}")
    cls = CONTROLLERS[kind]
    sig = inspect.signature(cls.__init__)
    allowed = [name for name in sig.parameters if name != "self"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {unknown} for controller {kind!r}; allowed: {allowed}"
        )
    missing = [
        name
        for name in allowed
        if sig.parameters[name].default is inspect.Parameter.empty and name not in params
    ]
    if missing:
        raise ConfigError(f"missing parameter(s) {missing} for controller {kind!r}")
    return cls(**params)


__all__ = [
    "CONTROLLERS",
    "Constant",
    "Controller",
    "StageSwitch",
    "WarmupCosine",
    "build_controller",
]
