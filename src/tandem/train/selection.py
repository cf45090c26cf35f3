"""Prompt selection: data-side controls that choose which of a source's examples a step draws,
usable with any preset (`objective.sources.<name>.select`, a config block, not a preset).

A selector sits between a source and its example stream: `take(stream, n, step)` returns the
step's n examples, and `observe(examples, rewards, step)` reads the verifier's rewards of their
samples afterwards. Its state (per-example statistics) is in every checkpoint, so a resumed run
selects the same. Registry `SELECTORS`:

================ ===========================================================================
instance_filter  RIF-RFT's rollout-based instance filtering: skip examples whose last samples
                 all failed (unlearnable now) or all passed (nothing to learn), re-checked
                 after `recheck_every` steps
beta_curriculum  an adaptive curriculum: a Beta belief over each example's pass rate, serving
                 those whose expected pass rate is nearest a target (Trinity-RFT's
                 DifficultyBasedSelector)
easy_to_hard     an offline curriculum: the pool sorted once by a difficulty feature and
                 served in that order (Trinity-RFT's OfflineEasy2HardSelector)
================ ===========================================================================
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from tandem.errors import ConfigError
from tandem.registry import Registry, Spec
from tandem.tasks.base import Example
from tandem.train.data import ExampleStream

SELECTORS: Registry[type] = Registry("selector")


class Selector:
    """Base: the stream's own order, nothing observed."""

    def __init__(self, spec: Spec, pool: list[Example], seed: int) -> None:
        self.spec, self.pool, self.seed = spec, pool, seed

    def take(
        self, stream: ExampleStream, n: int, step: int, env: Any = None
    ) -> tuple[list[Example], dict]:
        return stream.take(n), {}

    def observe(self, exs: list[Example], rewards: list[float], step: int) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def _pass_counts(
    exs: list[Example], rewards: list[float], success: float
) -> dict[str, tuple[int, int]]:
    """Per example id: (samples that passed, samples)."""
    out: dict[str, list[int]] = {}
    for ex, r in zip(exs, rewards):
        c = out.setdefault(ex.id, [0, 0])
        c[0] += int(r >= success)
        c[1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


# ----------------------------------------------------------------------- instance filtering


class InstanceFilterSpec(Spec):
    """Skip examples that are never or always solved; re-check them on a schedule."""

    drop: Literal["unsolved", "solved", "both"] = "both"
    """unsolved: all samples failed; solved: all passed; both."""
    recheck_every: int = Field(20, ge=1)
    """A skipped example is served again (and re-scored) this many steps after it was flagged."""
    success_reward: float = 1.0
    max_pull: int = Field(4, ge=1)
    """At most max_pull·n examples are read from the stream per step; if still short, flagged
    ones fill the step (the batch size never shrinks)."""


@SELECTORS.register("instance_filter", InstanceFilterSpec, "skip never/always solved prompts")
class InstanceFilter(Selector):
    """RIF-RFT (arXiv 2507.05386), abstract-level (ALGORITHMS.md §7 RECON): an example whose
    samples all got reward 0 (unlearnable for the current model) or all passed is flagged
    with the step; the stream skips flagged examples until `recheck_every` steps have passed,
    then serves them once more and the new rewards decide again. The paper filters once per
    task before RL; here the check is online, on each step's own rollouts, with no extra
    sampling."""

    def __init__(self, spec, pool, seed) -> None:
        super().__init__(spec, pool, seed)
        self.flagged: dict[str, int] = {}  # example id -> step flagged

    def _skip(self, ex: Example, step: int) -> bool:
        at = self.flagged.get(ex.id)
        return at is not None and step - at < self.spec.recheck_every

    def take(self, stream, n, step, env=None):
        kept: list[Example] = []
        skipped: list[Example] = []
        pulls = 0
        while len(kept) < n and pulls < self.spec.max_pull * n:
            ex = stream.take(1)[0]
            pulls += 1
            (skipped if self._skip(ex, step) else kept).append(ex)
        kept += skipped[: n - len(kept)]
        return kept, {
            "data/skipped_prompts": float(len(skipped)),
            "data/flagged": float(len(self.flagged)),
        }

    def observe(self, exs, rewards, step) -> None:
        drop = self.spec.drop
        for key, (ok, total) in _pass_counts(exs, rewards, self.spec.success_reward).items():
            never, always = ok == 0, ok == total
            if (never and drop in ("unsolved", "both")) or (always and drop in ("solved", "both")):
                self.flagged[key] = step
            else:
                self.flagged.pop(key, None)

    def state_dict(self):
        return {"flagged": dict(self.flagged)}

    def load_state_dict(self, state):
        self.flagged = {str(k): int(v) for k, v in state["flagged"].items()}


# ------------------------------------------------------------------------ beta curriculum


class BetaCurriculumSpec(Spec):
    """Serve the examples whose expected pass rate is nearest `target`."""

    target: float = Field(0.5, ge=0.0, le=1.0)
    decay: float = Field(0.2, ge=0.0, le=1.0)
    """λ: how much of the old belief each observation replaces."""
    temperature: float = Field(0.1, ge=0.0)
    """0: the top n by score; > 0: sampled without replacement ∝ exp(score / temperature)."""
    success_reward: float = 1.0


@SELECTORS.register(
    "beta_curriculum", BetaCurriculumSpec, "adaptive curriculum: Beta belief per prompt"
)
class BetaCurriculum(Selector):
    """An adaptive curriculum after Trinity-RFT's `DifficultyBasedSelector` with
    `InterpolationBetaPREstimator` (yanxi-chen/Trinity-RFT `trinity/buffer/selector/`): each
    example has a Beta(α, β) belief over its pass rate, Beta(1, 1) before it is seen; after its
    samples are scored (s passed, f failed), α ← (1 − λ)α + λ + s and β ← (1 − λ)β + λ + f;
    its score is −|target − α/(α + β)|, and a step serves the n best (temperature 0) or n
    sampled without replacement ∝ exp(score/temperature). Unseen examples (expected 0.5) are
    served first when the target is 0.5; as an example's pass rate rises past the target it
    gives way to harder ones. Deviation: Trinity also interpolates a prior from two difficulty
    features with a capability coefficient (ρ = 0.2); here the prior is flat (ρ = 0)."""

    def __init__(self, spec, pool, seed) -> None:
        super().__init__(spec, pool, seed)
        self.belief: dict[str, tuple[float, float]] = {}

    def expected(self, ex: Example) -> float:
        a, b = self.belief.get(ex.id, (1.0, 1.0))
        return a / (a + b)

    def take(self, stream, n, step, env=None):
        spec = self.spec
        scores = [-abs(spec.target - self.expected(ex)) for ex in self.pool]
        rng = random.Random(f"{self.seed}:{step}:beta_curriculum")
        order = list(range(len(self.pool)))
        if spec.temperature == 0:
            rng.shuffle(order)  # ties broken at random, reproducibly
            order.sort(key=lambda i: -scores[i])
            pick = order[:n]
        else:  # Gumbel top-n = sampling without replacement ∝ exp(score / temperature)
            keys = [
                scores[i] / spec.temperature - math.log(-math.log(rng.random() or 1e-300))
                for i in order
            ]
            pick = sorted(order, key=lambda i: -keys[i])[:n]
        while len(pick) < n:  # a pool smaller than n: repeat
            pick += pick[: n - len(pick)]
        exs = [self.pool[i] for i in pick]
        m = {"data/served_expected_pass": sum(self.expected(ex) for ex in exs) / len(exs)}
        m["data/known"] = float(len(self.belief))
        return exs, m

    def observe(self, exs, rewards, step) -> None:
        lam = self.spec.decay
        for key, (ok, total) in _pass_counts(exs, rewards, self.spec.success_reward).items():
            a, b = self.belief.get(key, (1.0, 1.0))
            self.belief[key] = ((1 - lam) * a + lam + ok, (1 - lam) * b + lam + (total - ok))

    def state_dict(self):
        return {"belief": {k: list(v) for k, v in self.belief.items()}}

    def load_state_dict(self, state):
        self.belief = {str(k): (float(v[0]), float(v[1])) for k, v in state["belief"].items()}


# ---------------------------------------------------------------------------- easy to hard


FEATURES: dict[str, Callable[[Example], float]] = {
    "answer_len": lambda ex: float(len(ex.answer)),
    "prompt_len": lambda ex: float(len(ex.prompt)),
    "solution_len": lambda ex: float(len(ex.solution or "")),
}


def feature_of(name: str) -> Callable[[Example], float]:
    """A difficulty feature: a built-in (`FEATURES`) or `meta.<key>[.<key>...]`, a number in
    the example's meta (a reasoning-gym entry's `meta.entry.metadata.difficulty.<param>`)."""
    if name in FEATURES:
        return FEATURES[name]
    if name.startswith("meta."):
        keys = name.split(".")[1:]

        def get(ex: Example) -> float:
            v: Any = ex.meta
            for k in keys:
                if not isinstance(v, dict) or k not in v:
                    raise ConfigError(f"select.feature: example {ex.id!r} has no meta {name[5:]!r}")
                v = v[k]
            if isinstance(v, list | tuple):
                v = sum(v)
            return float(v)

        return get
    raise ConfigError(
        f"select.feature: got {name!r}; allowed: {', '.join(FEATURES)}, or meta.<key>"
    )


class EasyToHardSpec(Spec):
    """Serve the pool once sorted by a difficulty feature, easiest first."""

    feature: str = "answer_len"
    """A built-in (answer_len, prompt_len, solution_len) or `meta.<key>` (numbers; a list is
    summed: the arithmetic task's `meta.operands`)."""
    easy: Literal["low", "high"] = "low"
    """Which end of the feature is easy."""


@SELECTORS.register("easy_to_hard", EasyToHardSpec, "offline curriculum sorted by a feature")
class EasyToHard(Selector):
    """Trinity-RFT's `OfflineEasy2HardSelector` (yanxi-chen/Trinity-RFT
    `trinity/buffer/selector/selector.py`): the pool is sorted once by the feature (ties keep
    the stream's seeded shuffle) and served in that order, easy to hard; after the hardest it
    starts again. The position is in every checkpoint."""

    def __init__(self, spec, pool, seed) -> None:
        super().__init__(spec, pool, seed)
        f = feature_of(spec.feature)
        idx = list(range(len(pool)))
        random.Random(f"{seed}:easy_to_hard").shuffle(idx)
        sign = 1.0 if spec.easy == "low" else -1.0
        self.order = sorted(idx, key=lambda i: sign * f(pool[i]))
        self.position = 0

    def take(self, stream, n, step, env=None):
        exs = []
        for _ in range(n):
            exs.append(self.pool[self.order[self.position % len(self.order)]])
            self.position += 1
        f = feature_of(self.spec.feature)
        return exs, {"data/feature_mean": sum(f(ex) for ex in exs) / len(exs)}

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = int(state["position"])


def build_selector(spec: Spec | None, pool: list[Example], seed: int) -> Selector:
    if spec is None:
        return Selector(None, pool, seed)  # type: ignore[arg-type]
    return SELECTORS.get(spec.kind)(spec, pool, seed)  # type: ignore[attr-defined]


__all__ = ["FEATURES", "SELECTORS", "Selector", "build_selector", "feature_of"]
