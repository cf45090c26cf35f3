"""Core task types: an `Example` to learn from, a `Score` for a completion, the `Task` protocol.

Also small helpers shared by the built-in tasks: a stable train/eval split by hash and parameter
checking that raises `ConfigError` with the allowed names.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from tandem.errors import ConfigError

Split = Literal["train", "eval", "ood"]
SPLITS: tuple[str, ...] = ("train", "eval", "ood")

# Fraction of the problem space (by hash of the problem) reserved for eval / ood.
EVAL_FRACTION = 0.2


@dataclass(frozen=True)
class Example:
    """One problem.

    Attributes:
        id: stable identifier of the problem (the same problem has the same id).
        prompt: the user message, without any chat template applied.
        answer: the reference answer the verifier compares against.
        solution: a gold completion (a demonstration) the model can be trained on, if any.
        wrong: plausible wrong completions (e.g. to build preference pairs).
        meta: task-specific extra data (e.g. the raw reasoning-gym entry).
    """

    id: str
    prompt: str
    answer: str
    solution: str | None = None
    wrong: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Score:
    """The verdict on one completion: `reward` in [0, 1] and a short human-readable `reason`.

    Reasons used by tandem: "correct", "wrong: got 12", "partial: 0.50", "no answer found",
    "error: <ExcType>: msg", "timeout".

    `parts` is set by a composition of reward checks (`rewards.checks`,
    `tandem.rewards.compose`): each check's own value by name; `reward` is then
    Σ weight·part, which may lie outside [0, 1]. None for a single verifier or function.
    """

    reward: float
    reason: str
    parts: Mapping[str, float] | None = field(default=None, compare=False)


@runtime_checkable
class Task(Protocol):
    """A source of problems plus a verifier for completions."""

    name: str
    description: str

    def examples(self, split: Split, n: int, seed: int = 0) -> list[Example]:
        """Return `n` examples of `split` ("train", "eval" or "ood"); deterministic in `seed`."""
        ...

    def score(self, example: Example, completion: str) -> Score:
        """Score a model completion (the assistant text only) against `example`."""
        ...


def stable_fraction(key: str) -> float:
    """Map a string to a number in [0, 1) that is the same on every machine and run."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_eval_key(key: str, fraction: float = EVAL_FRACTION) -> bool:
    """True if the problem with this key belongs to the held-out (eval / ood) part."""
    return stable_fraction(key) < fraction


def in_split(key: str, split: str, fraction: float = EVAL_FRACTION) -> bool:
    """True if the problem `key` may appear in `split` (eval and ood share the held-out part)."""
    return is_eval_key(key, fraction) == (split != "train")


def check_split(split: str, n: int) -> None:
    """Validate the arguments of `Task.examples`."""
    if split not in SPLITS:
        raise ConfigError(f"split: unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ConfigError(f"n: number of examples must be an integer >= 0, got {n!r}")


def check_params(task: str, params: Mapping[str, Any] | None, allowed: Mapping[str, str]) -> dict:
    """Return `params` as a dict, raising `ConfigError` on a name that is not in `allowed`.

    `allowed` maps each parameter name to a one-line description (shown in the error).
    """
    params = dict(params or {})
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        listing = "; ".join(f"{k} ({v})" for k, v in allowed.items()) or "none"
        raise ConfigError(
            f"task.params.{unknown[0]}: unknown parameter for task {task!r}; allowed: {listing}"
        )
    return params


def sample_unique(
    draw: Callable[[random.Random], tuple[Hashable, Example]],
    n: int,
    rng: random.Random,
    max_draws: int,
) -> list[Example]:
    """Draw up to `n` distinct examples (by key); if the pool runs dry, cycle through what we have.

    `draw(rng)` returns `(key, example)` or raises `LookupError` to reject a draw.
    Returns an empty list only if no draw succeeded.
    """
    seen: set[Hashable] = set()
    out: list[Example] = []
    for _ in range(max_draws):
        if len(out) >= n:
            break
        try:
            key, ex = draw(rng)
        except LookupError:
            continue
        if key in seen:
            continue
        seen.add(key)
        out.append(ex)
    return cycle_to(out, n)


def cycle_to(pool: list[Example], n: int) -> list[Example]:
    """Repeat `pool` in order until it has `n` items (or return [] if `pool` is empty)."""
    if not pool:
        return []
    return [pool[i % len(pool)] for i in range(n)]
