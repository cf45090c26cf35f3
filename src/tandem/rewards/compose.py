"""A weighted composition of reward checks: ``reward = Σ_checks weight·value`` (`rewards.checks`).

Each check (`tandem.rewards.library`) gives a value in its kind's range: [0, 1] for the
rewards, [-1, 0] for the penalties (length, repetition), [-1, 1] for a function of your own.
The total therefore lies in ``[Σ weight·low, Σ weight·high]`` (`Composition.bounds`), which is
not [0, 1] in general: with ``correct: 1.0, fmt: 0.2, long: 0.1`` it is [-0.1, 1.2]. The
group-relative advantages of RL do not mind (they subtract the group's mean); a reader that
assumes [0, 1] should keep the correctness check at weight 1 and the others small, so that a
correct completion still scores >= 0.5 (evaluation's pass@k threshold) and >= 1 - Σ penalty
weights.

Where each part is computed:

* every check but `model` in `score` (called by `tandem.rewards.safe.score_one`): in a reward
  worker with its isolation (time, memory, crashes), or in the trainer with `workers: 0`;
* `model` checks in `add_trainer_parts`, in the trainer's process, batched, after the workers
  have answered (a worker has no GPU and a small address space).

A completion's `Score.parts` maps each check's name to its (unweighted) value; the trainer logs
their means as `reward/<name>`. A check that raises or returns a value outside its range
fails the whole completion ("error: check <name>: ..."): it counts in `reward/errors` and gets
reward 0 (or is dropped, `on_error: drop`), as a failing verifier does. Its `reason` is the first
check's reason that has one (a correctness check's "wrong: got 12"), else "checks".
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tandem.errors import ConfigError
from tandem.tasks.base import Example, Score, Task

if TYPE_CHECKING:  # the library imports pydantic: a worker without checks does without it
    from tandem.rewards.library import CheckSpec

FIELD = "rewards.checks"
RESERVED = ("mean", "std", "errors", "timeouts", "crashes", "restarts", "dropped", "demo_mean")
"""Names a check may not take: they are `reward/*` metrics of their own (docs/METRICS.md)."""


class CheckFailed(Exception):
    """A check raised or returned a bad value; the message names the check."""


def check_names(checks: Mapping[str, Any]) -> None:
    """ConfigError unless every name is an identifier that is not a `RESERVED` metric."""
    for name in checks:
        if not str(name).isidentifier() or name in RESERVED:
            raise ConfigError(
                f"config error: {FIELD}.{name}: a check's name must be an identifier (letters, "
                f"digits, _) other than {', '.join(RESERVED)}: it is logged as reward/<name>"
            )


def _value(spec: CheckSpec, raw: Any) -> tuple[float, str | None]:
    reason = None
    if isinstance(raw, Score):
        raw, reason = raw.reward, raw.reason
    if isinstance(raw, bool) or not isinstance(raw, numbers.Real):
        raise ValueError(f"returned {type(raw).__name__}, not a number")
    value = float(raw)
    low, high = spec.RANGE
    if not low <= value <= high:  # NaN fails too
        raise ValueError(f"returned {value:g}, outside [{low:g}, {high:g}]")
    return value, reason


def _message(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:160]
    return text if isinstance(exc, ValueError) else f"{type(exc).__name__}: {text}"


class Composition:
    """The checks of `rewards.checks`, by name: `score` runs the worker-side ones on one
    completion, `add_trainer_parts` the trainer-side ones on a batch, `total` sums them."""

    def __init__(self, checks: Mapping[str, CheckSpec | dict]) -> None:
        from tandem.rewards.library import CHECKS

        check_names(checks)
        self.specs: dict[str, CheckSpec] = {}
        for name, spec in checks.items():
            if isinstance(spec, dict):
                kind = spec.get("kind")
                if kind not in CHECKS:
                    allowed = ", ".join(CHECKS.names())
                    raise ConfigError(
                        f"config error: {FIELD}.{name}.kind: got {kind!r}; allowed: {allowed}"
                    )
                spec = CHECKS.spec(kind).model_validate(spec)
            self.specs[name] = spec
        self._built: dict[str, Any] = {}

    # --------------------------------------------------------------------------- facts

    def worker_names(self) -> list[str]:
        return [n for n, s in self.specs.items() if not s.IN_TRAINER]

    def trainer_names(self) -> list[str]:
        return [n for n, s in self.specs.items() if s.IN_TRAINER]

    @property
    def needs_task(self) -> bool:
        return any(s.NEEDS_TASK for s in self.specs.values())

    def bounds(self) -> tuple[float, float]:
        """The lowest and highest total: Σ weight·low, Σ weight·high."""
        low = sum(s.weight * s.RANGE[0] for s in self.specs.values())
        high = sum(s.weight * s.RANGE[1] for s in self.specs.values())
        return low, high

    def total(self, parts: Mapping[str, float]) -> float:
        """Σ weight·value over the checks present in `parts` (the one formula of the total)."""
        return sum(self.specs[n].weight * v for n, v in parts.items())

    def worker_json(self) -> dict[str, dict]:
        """The worker-side checks' settings, for a worker's start (JSON)."""
        return {n: self.specs[n].model_dump(mode="json") for n in self.worker_names()}

    def describe(self) -> str:
        shown = ", ".join(
            f"{n} ({s.kind}, {s.weight:g}{', in the trainer' if s.IN_TRAINER else ''})"
            for n, s in self.specs.items()
        )
        low, high = self.bounds()
        return f"checks {shown}; total in [{low:g}, {high:g}]"

    # ------------------------------------------------------------------------- loading

    def check_settings(self) -> None:
        """Validate every check's settings without running user code (files, directories)."""
        for name, spec in self.specs.items():
            spec.check_settings(f"{FIELD}.{name}")

    def build(self, names: Sequence[str]) -> None:
        """Load the checks `names` in this process (functions, models): ConfigError if one
        cannot be loaded."""
        for name in names:
            if name not in self._built:
                self._built[name] = self.specs[name].build(f"{FIELD}.{name}")

    # ------------------------------------------------------------------------- scoring

    def score(self, task: Task | None, example: Example, completion: str) -> Score:
        """The worker-side checks on one completion: Score(Σ weight·value, reason, parts).
        Raises CheckFailed naming the first check that raised or gave a bad value; a
        MemoryError passes through (a worker treats it as its death)."""
        self.build(self.worker_names())
        parts: dict[str, float] = {}
        reason: str | None = None
        for name in self.worker_names():
            try:
                value, why = _value(
                    self.specs[name], self._built[name].score(example, completion, task)
                )
            except MemoryError:
                raise
            except Exception as exc:  # any check's failure fails this completion
                raise CheckFailed(f"check {name}: {_message(exc)}") from None
            parts[name] = value
            reason = reason or why
        return Score(self.total(parts), reason or "checks", parts)

    def add_trainer_parts(
        self, examples: Sequence[Example], completions: Sequence[str], scores: list[Score]
    ) -> list[int]:
        """Score the trainer-side checks (reward models) of the completions whose worker-side
        checks succeeded (their `parts` are set), batched, and update those scores in place.
        Returns the indices that failed (a model that raised or gave a bad value): their score
        is replaced by Score(0, "error: check <name>: ...") without parts."""
        names = self.trainer_names()
        todo = [i for i, s in enumerate(scores) if s.parts is not None]
        if not names or not todo:
            return []
        self.build(names)
        new = {i: dict(scores[i].parts or {}) for i in todo}
        failed: dict[int, str] = {}
        for name in names:
            live = [i for i in todo if i not in failed]
            try:
                values = self._built[name].score_batch(
                    [examples[i] for i in live], [completions[i] for i in live]
                )
                if len(values) != len(live):
                    raise ValueError(f"returned {len(values)} values for {len(live)} completions")
            except Exception as exc:  # the model failed on this batch: each item is an error
                for i in live:
                    failed[i] = f"error: check {name}: {_message(exc)}"
                continue
            for i, raw in zip(live, values):
                try:
                    new[i][name] = _value(self.specs[name], raw)[0]
                except ValueError as exc:
                    failed[i] = f"error: check {name}: {_message(exc)}"
        for i in todo:
            if i in failed:
                scores[i] = Score(0.0, failed[i])
            else:
                scores[i] = Score(self.total(new[i]), scores[i].reason, new[i])
        return sorted(failed)


def part_means(scores: Sequence[Score]) -> dict[str, float]:
    """`reward/<name>`: the mean value of each check over the completions it scored (failed
    completions have no parts and are not counted)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for s in scores:
        for name, v in (getattr(s, "parts", None) or {}).items():
            sums[name] = sums.get(name, 0.0) + v
            counts[name] = counts.get(name, 0) + 1
    return {f"reward/{n}": sums[n] / counts[n] for n in sums}


def finite(value: Any) -> bool:
    """A float that is neither NaN nor infinite."""
    return type(value) is float and math.isfinite(value)


__all__ = ["FIELD", "RESERVED", "CheckFailed", "Composition", "check_names", "part_means"]
