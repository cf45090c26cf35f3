"""Procedural arithmetic: `add`, `sub`, `mul`, `chain` (a + b + c).

Params: ``digits`` (operand size, default 2), ``ood_digits`` (operand size of the "ood" split,
default digits + 1), ``style``: "chat" ("What is 23 + 45? Answer with just the number.") or
"plain" ("23+45=", short, for tiny character-level models).

Train and eval are disjoint: each problem is assigned to train or to the held-out part by a hash
of the problem, so an eval problem never appears in train for any seed. "ood" draws held-out
problems with ``ood_digits``-digit operands.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from tandem.errors import ConfigError
from tandem.rewards.verifiers import last_number
from tandem.tasks.base import (
    Example,
    Score,
    Split,
    check_params,
    check_split,
    in_split,
    sample_unique,
)

PARAMS = {
    "digits": "digits per operand, default 2",
    "ood_digits": "digits per operand in the ood split, default digits+1",
    "style": "'chat' (question + instruction) or 'plain' ('23+45='), default 'chat'",
}
STYLES = ("chat", "plain")
MAX_DIGITS = 18


def _add(xs: list[int]) -> int:
    return xs[0] + xs[1]


def _sub(xs: list[int]) -> int:
    return xs[0] - xs[1]


def _mul(xs: list[int]) -> int:
    return xs[0] * xs[1]


# name -> (symbol, number of operands, function, description); module-level functions, so a
# task pickles by reference into the reward workers (`tandem.rewards.pool`)
FAMILIES: dict[str, tuple[str, int, Callable[[list[int]], int], str]] = {
    "add": ("+", 2, _add, "add two integers ('What is 23 + 45?')"),
    "sub": ("-", 2, _sub, "subtract two integers, a >= b ('What is 45 - 23?')"),
    "mul": ("*", 2, _mul, "multiply two integers ('What is 23 * 45?')"),
    "chain": ("+", 3, sum, "add three integers ('What is 12 + 34 + 56?')"),
}


def _int_param(name: str, value: Any, task: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DIGITS:
        raise ConfigError(
            f"task.params.{name}: must be an integer from 1 to {MAX_DIGITS} for task {task!r}, "
            f"got {value!r}"
        )
    return value


class ArithmeticTask:
    """One arithmetic family (see module docstring). Scored by the last integer in the reply."""

    def __init__(self, family: str, params: dict | None = None) -> None:
        if family not in FAMILIES:
            raise ConfigError(
                f"task: unknown arithmetic family {family!r}; allowed: {list(FAMILIES)}"
            )
        params = check_params(family, params, PARAMS)
        self.name = family
        self.digits = _int_param("digits", params.get("digits", 2), family)
        self.ood_digits = _int_param(
            "ood_digits", params.get("ood_digits", self.digits + 1), family
        )
        self.style = params.get("style", "chat")
        if self.style not in STYLES:
            raise ConfigError(
                f"task.params.style: must be one of {list(STYLES)}, got {self.style!r}"
            )
        self.symbol, self.arity, self.fn, self.description = FAMILIES[family]

    def _operands(self, rng: random.Random, digits: int) -> list[int]:
        low = 0 if digits == 1 else 10 ** (digits - 1)
        xs = [rng.randint(low, 10**digits - 1) for _ in range(self.arity)]
        if self.name == "sub":
            xs.sort(reverse=True)
        return xs

    def prompt(self, xs: list[int]) -> str:
        """The question text for operands `xs` in this task's style."""
        if self.style == "plain":
            return self.symbol.join(map(str, xs)) + "="
        expr = f" {self.symbol} ".join(map(str, xs))
        return f"What is {expr}? Answer with just the number."

    def make_example(self, xs: list[int], split: str) -> Example:
        """Build the Example for operands `xs`."""
        answer = self.fn(xs)
        key = self.symbol.join(map(str, xs))
        return Example(
            id=f"{self.name}:{key}",
            prompt=self.prompt(xs),
            answer=str(answer),
            solution=str(answer),
            wrong=tuple(str(w) for w in wrong_answers(answer)),
            meta={"operands": list(xs), "split": split},
        )

    def examples(self, split: Split, n: int, seed: int = 0) -> list[Example]:
        """`n` distinct problems of `split` (repeating only when the pool is smaller than `n`)."""
        check_split(split, n)
        digits = self.ood_digits if split == "ood" else self.digits
        rng = random.Random(f"tandem.arith:{self.name}:{split}:{digits}:{seed}")

        def draw(r: random.Random) -> tuple[str, Example]:
            xs = self._operands(r, digits)
            key = f"{self.name}:" + ",".join(map(str, xs))
            if not in_split(key, split):
                raise LookupError(key)
            return key, self.make_example(xs, split)

        pool = 10 ** (digits * self.arity)
        return sample_unique(draw, n, rng, max_draws=min(50 * n + 1000, 20 * pool + 1000))

    def score(self, example: Example, completion: str) -> Score:
        """1.0 if the last integer in `completion` equals the answer ("The answer is 68." works)."""
        return last_number(completion, example.answer)


def wrong_answers(answer: int) -> list[int]:
    """Three plausible wrong answers: off by one, last two digits swapped, off by ten."""
    text = str(abs(answer))
    swapped = answer + 1
    if len(text) >= 2 and text[-1] != text[-2]:
        swapped = int(text[:-2] + text[-1] + text[-2]) * (1 if answer >= 0 else -1)
    ten = answer - 10 if answer >= 10 else answer + 10
    candidates = [answer + 1, swapped, ten, answer - 1, answer + 2]
    out: list[int] = []
    for c in candidates:
        if c != answer and c not in out and (c >= 0 or answer < 0):
            out.append(c)
    return out[:3]
