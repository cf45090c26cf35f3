"""A library of reward checks: `rewards.checks: {name: {kind: ..., weight: ..., ...}}`.

Each kind is a registered spec (`CHECKS`, `tandem.registry`): its settings, documented once,
and its `score(example, completion, task) -> float | Score`. A composition of several
(`tandem.rewards.compose`) sums weight·value and logs each value as `reward/<name>`.

=============  =========  ====================================================================
kind           range      value
=============  =========  ====================================================================
verifier       [0, 1]     the task's own verifier (`task.score`), clamped as today
math           [0, 1]     mathematical equivalence with the answer (math-verify)
exact          [0, 1]     string equality after collapsing whitespace
numeric        [0, 1]     the last number within a relative / absolute tolerance
choice         [0, 1]     the chosen letter (A-E, "(B)", "answer: C") equals the answer's
format         [0, 1]     1 if the completion is ``<think>...</think><answer>...</answer>``
length         [-1, 0]    0 up to `max_chars` characters, then linear down to -1
repetition     [-1, 0]    minus the share of repeated word n-grams (Open-R1, arXiv 2502.03373)
function       [-1, 1]    your own function, by dotted path or file path
model          [0, 1]     a reward model: any local HF sequence-classification directory
=============  =========  ====================================================================

The correctness checks (math, exact, numeric, choice) look only inside the last
``<answer>...</answer>`` block when there is one, like `tandem.rewards.verifiers`. Penalties
are checks whose values are <= 0, so a positive weight always means "this much of it".

All kinds but `model` run where the verifier runs today: in the reward workers, or in the
trainer with `rewards.workers: 0`. `model` runs in the trainer's process, batched, loaded once
when the run's `RewardPool` starts (a worker has no GPU and a small address space, and
loading a model per worker would cost its size once per worker and per restart).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from tandem.errors import ConfigError
from tandem.registry import Registry, Spec
from tandem.rewards.function import check_function, check_reward, load_function
from tandem.rewards.verifiers import (
    exact_match,
    extract_tagged,
    find_last_number,
    format_number,
    math_equal,
)
from tandem.tasks.base import Example, Score, Task


class CheckSpec(Spec):
    """Base of every check's settings: its weight in the total."""

    weight: float = Field(1.0, ge=0.0)
    """Its share of the total reward, Σ weight·value; 0 logs the check without training on it."""

    RANGE: ClassVar[tuple[float, float]] = (0.0, 1.0)
    """The values this kind gives (a value outside is an error of that completion)."""
    IN_TRAINER: ClassVar[bool] = False
    """Scored in the trainer's process, batched (a reward model), not in the workers."""
    NEEDS_TASK: ClassVar[bool] = False
    """Reads the task (its verifier): the task is sent to the workers."""

    def check_settings(self, field: str) -> None:
        """Validate what can be validated in the trainer without running user code; raises a
        one-line ConfigError naming `field` (``rewards.checks.<name>``)."""

    def build(self, field: str) -> Any:
        """The object that scores (`score`, or `score_batch` for `IN_TRAINER` kinds); kinds
        that load something (a function, a model) load it here, once per process."""
        return self

    def score(self, example: Example, completion: str, task: Task | None) -> float | Score:
        """The value of one completion (a Score when there is a reason to tell)."""
        raise NotImplementedError


CHECKS: Registry[type[CheckSpec]] = Registry("reward check")


# ------------------------------------------------------------------------- correctness


@CHECKS.register("verifier", summary="the task's own verifier")
class VerifierCheck(CheckSpec):
    """The task's verifier (`task.score`); its reward is clamped to [0, 1] (NaN -> 0)."""

    NEEDS_TASK: ClassVar[bool] = True

    def score(self, example: Example, completion: str, task: Task | None) -> Score:
        if task is None:
            raise RuntimeError("the verifier check got no task")
        got = task.score(example, completion)
        if not isinstance(got, Score):
            raise TypeError(f"score() returned {type(got).__name__}, not Score")
        reward = float(got.reward)
        return Score(0.0 if math.isnan(reward) else min(1.0, max(0.0, reward)), got.reason)


@CHECKS.register("math", summary="mathematical equivalence via math-verify")
class MathCheck(CheckSpec):
    """1 if the completion's final expression equals the answer mathematically (math-verify:
    ``\\frac{1}{2}`` == 0.5 == ``\\boxed{1/2}``); `tandem.rewards.verifiers.math_equal`."""

    def score(self, example: Example, completion: str, task: Task | None) -> Score:
        return math_equal(completion, example.answer)


@CHECKS.register("exact", summary="string equality after collapsing whitespace")
class ExactCheck(CheckSpec):
    """1 if the answer text equals the reference after collapsing whitespace (a trailing
    period is ignored); `tandem.rewards.verifiers.exact_match`."""

    ignore_case: bool = False
    """Compare case-insensitively ("paris" == "Paris")."""

    def score(self, example: Example, completion: str, task: Task | None) -> Score:
        if self.ignore_case:
            return exact_match(completion.casefold(), example.answer.casefold())
        return exact_match(completion, example.answer)


def numbers_close(got: float, want: float, rel_tol: float, abs_tol: float) -> bool:
    """``|got - want| <= max(rel_tol·max(|got|, |want|), abs_tol)`` (`math.isclose`)."""
    return math.isclose(got, want, rel_tol=rel_tol, abs_tol=abs_tol)


@CHECKS.register("numeric", summary="the last number within a tolerance")
class NumericCheck(CheckSpec):
    """1 if the last number of the answer text is within tolerance of the reference's last
    number: ``|got - want| <= max(rel_tol·max(|got|, |want|), abs_tol)``. Numbers as
    `tandem.rewards.verifiers.find_last_number` reads them ("-1,234.5"; no exponents)."""

    rel_tol: float = Field(1e-4, ge=0.0)
    """Relative tolerance (1e-4: 3.1416 matches 3.14159)."""
    abs_tol: float = Field(0.0, ge=0.0)
    """Absolute tolerance (what counts near 0, where a relative one allows nothing)."""

    def score(self, example: Example, completion: str, task: Task | None) -> Score:
        want = find_last_number(example.answer)
        if want is None:
            raise ValueError(f"reference answer {example.answer[:40]!r} has no number")
        got = find_last_number(extract_tagged(completion))
        if got is None:
            return Score(0.0, "no answer found")
        if numbers_close(float(got), float(want), self.rel_tol, self.abs_tol):
            return Score(1.0, "correct")
        return Score(0.0, f"wrong: got {format_number(got)}")


def choice_letter(text: str, letters: str = "ABCDE") -> str | None:
    """The option a completion chooses, or None: inside the last ``<answer>`` block if any,
    the first of: ``\\boxed{C}``; the last "answer is (C)" / "answer: C"; a text that is only
    the letter ("C", "(C)", "C."); the last "(C)"."""
    text = extract_tagged(text)
    set_ = f"[{re.escape(letters)}]"
    found = re.findall(rf"\\boxed\{{\s*\(?({set_})\)?\s*\}}", text)
    if not found:
        found = re.findall(
            rf"(?i:answer)(?:\s+is)?\s*[:\-]?\s*(?:option\s+)?\(?({set_})\)?(?![A-Za-z0-9])", text
        )
    if not found:
        found = re.findall(rf"^\s*\(?({set_})[).:]?\s*$", text)
    if not found:
        found = re.findall(rf"\(({set_})\)", text)
    return found[-1] if found else None


@CHECKS.register("choice", summary="multiple choice: the chosen letter")
class ChoiceCheck(CheckSpec):
    """1 if the option the completion chooses (`choice_letter`) is the reference's: its
    answer is a letter, or a text `choice_letter` reads one from ("(B)")."""

    letters: str = Field("ABCDE", min_length=1, pattern=r"^[A-Z]+$")
    """The option letters (upper case)."""

    def score(self, example: Example, completion: str, task: Task | None) -> Score:
        want = choice_letter(example.answer.strip(), self.letters)
        if want is None:
            raise ValueError(f"reference answer {example.answer[:40]!r} names no option")
        got = choice_letter(completion, self.letters)
        if got is None:
            return Score(0.0, "no answer found")
        return Score(1.0, "correct") if got == want else Score(0.0, f"wrong: got {got}")


# ------------------------------------------------------------------------------- form

_THINK_ANSWER = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_ANSWER_ONLY = re.compile(r"\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def well_formed(completion: str, require_think: bool = True) -> bool:
    """``<think>reasoning</think>`` then ``<answer>answer</answer>``, nothing else but
    whitespace around, each tag once, neither part blank (without `require_think` the think
    block may be left out)."""
    counts = [completion.count(t) for t in _TAGS]
    m = _THINK_ANSWER.fullmatch(completion)
    if m is not None and counts == [1, 1, 1, 1]:
        return bool(m.group(1).strip() and m.group(2).strip())
    if not require_think and counts == [0, 0, 1, 1]:
        m = _ANSWER_ONLY.fullmatch(completion)
        return m is not None and bool(m.group(1).strip())
    return False


@CHECKS.register("format", summary="<think>...</think><answer>...</answer> tags")
class FormatCheck(CheckSpec):
    """1 if the completion is well formed (`well_formed`), else 0: DeepSeek-R1's format reward
    (arXiv 2501.12948), as Open-R1's `format_reward`, with any whitespace between the parts."""

    require_think: bool = True
    """The think block is required (false: an answer block alone also passes)."""

    def score(self, example: Example, completion: str, task: Task | None) -> float:
        return 1.0 if well_formed(completion, self.require_think) else 0.0


def length_penalty(n_chars: int, max_chars: int, ramp_chars: int) -> float:
    """0 up to `max_chars`, then linear to -1 at ``max_chars + ramp_chars`` and -1 beyond
    (a step to -1 right past `max_chars` when `ramp_chars` is 0)."""
    over = n_chars - max_chars
    if over <= 0:
        return 0.0
    return -1.0 if ramp_chars <= 0 else -min(1.0, over / ramp_chars)


@CHECKS.register("length", summary="penalty for completions over max_chars characters")
class LengthCheck(CheckSpec):
    """A penalty in [-1, 0] for completions longer than `max_chars` characters (of the decoded
    text: the checks see text, not tokens). DAPO's soft overlong punishment (arXiv 2503.14476)
    has the same shape in tokens and is the `rollouts` source's `overlong_buffer`."""

    RANGE: ClassVar[tuple[float, float]] = (-1.0, 0.0)

    max_chars: int = Field(ge=1)
    """The longest completion without penalty, in characters."""
    ramp_chars: int | None = Field(None, ge=0)
    """Characters past `max_chars` over which the penalty grows to -1 (null: `max_chars`, so
    twice the target costs the whole weight; 0: -1 at once)."""

    def score(self, example: Example, completion: str, task: Task | None) -> float:
        ramp = self.max_chars if self.ramp_chars is None else self.ramp_chars
        return length_penalty(len(completion), self.max_chars, ramp)


def repetition_penalty(text: str, ngram: int = 3) -> float:
    """Minus the share of repeated word n-grams: ``-(1 - unique / total)`` over the lower-cased
    whitespace-split words; 0 for a text shorter than `ngram` words. The n-gram repetition
    penalty of Yeo et al., "Demystifying Long Chain-of-Thought Reasoning" (arXiv 2502.03373,
    App. C.2), as Open-R1's `get_repetition_penalty_reward` with max_penalty -1."""
    words = text.lower().split()
    if len(words) < ngram:
        return 0.0
    grams = list(zip(*(words[i:] for i in range(ngram))))
    return -(1.0 - len(set(grams)) / len(grams))


@CHECKS.register("repetition", summary="penalty for repeated word n-grams (Open-R1)")
class RepetitionCheck(CheckSpec):
    """A penalty in [-1, 0]: minus the share of the completion's word n-grams that repeat an
    earlier one (`repetition_penalty`)."""

    RANGE: ClassVar[tuple[float, float]] = (-1.0, 0.0)

    ngram: int = Field(3, ge=1)
    """Words per n-gram (Open-R1's recipes: 3)."""

    def score(self, example: Example, completion: str, task: Task | None) -> float:
        return repetition_penalty(completion, self.ngram)


# ------------------------------------------------------------------------ your own code


class _Function:
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def score(self, example: Example, completion: str, task: Task | None) -> float:
        return check_reward(self.fn(example.prompt, completion, example.answer), -1.0, 1.0)


@CHECKS.register("function", summary="your own function, by dotted path or file path")
class FunctionCheck(CheckSpec):
    """``fn(prompt, completion, answer) -> float`` in [-1, 1], called as `rewards.function`
    calls it (`tandem.rewards.function`); a value outside [-1, 1], NaN or a non-number is an
    error of that completion, not clamped."""

    RANGE: ClassVar[tuple[float, float]] = (-1.0, 1.0)

    path: str
    """`package.module:name`, `package.module.name` (importable in the workers: on the
    trainer's sys.path or PYTHONPATH) or `path/to/file.py:name`."""

    def check_settings(self, field: str) -> None:
        check_function(self.path, f"{field}.path")

    def build(self, field: str) -> _Function:
        return _Function(load_function(self.path, f"{field}.path"))


# -------------------------------------------------------------------------- reward model

DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"


class RewardModel:
    """A local HF `AutoModelForSequenceClassification` directory as a batched scorer.

    Each (prompt, completion) is put through the model's tokenizer: its chat template as a
    user and an assistant message when it has one, else as a text pair. The value is
    sigmoid(logit) for a one-label head, or softmax(logits)[label].
    """

    def __init__(self, spec: ModelCheck, field: str) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.spec, self.field = spec, field
        device = spec.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        path = str(Path(spec.path).expanduser())
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype)
        except Exception as exc:  # not a model directory, a missing file, an unknown class
            message = " ".join(str(exc).split())[:200]
            raise ConfigError(
                f"{field}.path: cannot load a sequence-classification model from "
                f"{spec.path!r}: {type(exc).__name__}: {message}"
            ) from None
        labels = self.model.config.num_labels
        if spec.label is None and labels != 1:
            raise ConfigError(
                f"{field}.label: the model has {labels} labels; set label to one of 0..{labels - 1}"
            )
        if spec.label is not None and spec.label >= labels:
            raise ConfigError(
                f"{field}.label: {spec.label} is not a label of the model; allowed: 0..{labels - 1}"
            )
        if self.tokenizer.pad_token_id is None:
            if self.tokenizer.eos_token_id is None:
                raise ConfigError(f"{field}.path: the tokenizer has neither a pad nor an eos token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(device).eval()
        self.device = device

    def _encode(self, prompts: list[str], completions: list[str]) -> dict:
        tok, limit = self.tokenizer, self.spec.max_length
        if getattr(tok, "chat_template", None):
            texts = [
                tok.apply_chat_template(
                    [{"role": "user", "content": p}, {"role": "assistant", "content": c}],
                    tokenize=False,
                )
                for p, c in zip(prompts, completions)
            ]
            return tok(
                texts,
                add_special_tokens=False,
                padding=True,
                truncation=True,
                max_length=limit,
                return_tensors="pt",
            )
        return tok(
            prompts,
            completions,
            padding=True,
            truncation=True,
            max_length=limit,
            return_tensors="pt",
        )

    def score_batch(self, examples: Sequence[Example], completions: Sequence[str]) -> list[float]:
        """The value of each completion, `batch_size` at a time, without gradients."""
        import torch

        out: list[float] = []
        size = self.spec.batch_size
        for i in range(0, len(completions), size):
            prompts = [ex.prompt for ex in examples[i : i + size]]
            enc = self._encode(prompts, list(completions[i : i + size]))
            enc = {k: v.to(self.device) for k, v in enc.items()}
            with torch.no_grad():
                logits = self.model(**enc).logits.float()  # (B, labels)
            if self.spec.label is None:
                values = torch.sigmoid(logits[:, 0])
            else:
                values = torch.softmax(logits, dim=-1)[:, self.spec.label]
            out += values.cpu().tolist()
        return out


@CHECKS.register("model", summary="a reward model: a local HF sequence-classification dir")
class ModelCheck(CheckSpec):
    """A reward model's score in [0, 1] (`RewardModel`), from the trainer's process, batched."""

    IN_TRAINER: ClassVar[bool] = True

    path: str
    """A local directory that `AutoModelForSequenceClassification` and `AutoTokenizer` load
    (`save_pretrained`'s output)."""
    label: int | None = Field(None, ge=0)
    """The label whose softmax probability is the value; null: the model has one label and
    the value is sigmoid(logit)."""
    batch_size: int = Field(16, ge=1)
    """Completions per forward pass."""
    max_length: int = Field(2048, ge=8)
    """Tokens of prompt + completion kept (truncated beyond)."""
    device: str = Field("auto", pattern=DEVICE_PATTERN)
    """`auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N`; bf16 on CUDA."""

    def check_settings(self, field: str) -> None:
        if not (Path(self.path).expanduser() / "config.json").is_file():
            raise ConfigError(
                f"{field}.path: {self.path!r} is not a model directory (no config.json)"
            )

    def build(self, field: str) -> RewardModel:
        return RewardModel(self, field)


__all__ = [
    "CHECKS",
    "CheckSpec",
    "RewardModel",
    "choice_letter",
    "length_penalty",
    "numbers_close",
    "repetition_penalty",
    "well_formed",
]
