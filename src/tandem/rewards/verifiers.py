"""Answer verifiers: `(completion, answer) -> Score`.

* `exact_match`: whitespace-normalised string equality.
* `last_number`: the last number in the completion equals the reference number.
* `math_equal`: mathematical equivalence via the `math-verify` package (``\\frac{1}{2}`` == 0.5).

All three look only inside the last ``<answer>...</answer>`` block when the completion has one.
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction

from tandem.tasks.base import Score

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
# An optional minus sign (not glued to a preceding word/number, so "45-23" gives 45 and 23),
# digits with optional thousands commas, an optional decimal part.
_NUMBER = re.compile(r"(?:(?<![0-9A-Za-z])[-\u2212])?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def extract_tagged(completion: str) -> str:
    """Content of the last ``<answer>...</answer>`` block, or the whole completion if none."""
    matches = _ANSWER_TAG.findall(completion)
    return matches[-1] if matches else completion


def _short(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def find_last_number(text: str) -> Fraction | None:
    """The last number in `text` ("-1,234.5" style), or None. A trailing period is ignored."""
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    return Fraction(matches[-1].replace(",", "").replace("\u2212", "-"))


def format_number(value: Fraction) -> str:
    """Print a Fraction as an integer or a short decimal."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6g}"


def exact_match(completion: str, answer: str) -> Score:
    """1.0 if the completion equals the answer after collapsing whitespace (case-sensitive).

    A single trailing period in the completion is ignored ("Paris." matches "Paris").
    """
    got = " ".join(extract_tagged(completion).split())
    want = " ".join(answer.split())
    if not got:
        return Score(0.0, "no answer found")
    if got == want or (got.endswith(".") and got[:-1].rstrip() == want):
        return Score(1.0, "correct")
    return Score(0.0, f"wrong: got {_short(got)}")


def last_number(completion: str, answer: str) -> Score:
    """1.0 if the last number in the completion equals the (last) number in `answer`.

    Handles "-", thousands commas, decimals and a trailing period: "The answer is 1,234." -> 1234.
    """
    want = find_last_number(answer)
    if want is None:
        return Score(0.0, f"error: reference answer {_short(answer)!r} has no number")
    got = find_last_number(extract_tagged(completion))
    if got is None:
        return Score(0.0, "no answer found")
    if got == want:
        return Score(1.0, "correct")
    return Score(0.0, f"wrong: got {format_number(got)}")


def math_equal(completion: str, answer: str) -> Score:
    """1.0 if the completion's final expression is mathematically equal to `answer` (math-verify).

    math-verify extracts the answer from free text (``\\boxed{}``, "the answer is", LaTeX, plain
    expressions). Its built-in timeouts use ``signal.alarm``, which only works in the main thread,
    so outside the main thread they are switched off; `tandem.rewards.safe.safe_score` supplies
    the timeout instead. Falls back to `exact_match` for answers math-verify cannot parse.
    """
    from math_verify import parse, verify

    text = extract_tagged(completion)
    if not text.strip():
        return Score(0.0, "no answer found")
    timeout: int | None = 5 if threading.current_thread() is threading.main_thread() else None
    if timeout is None:
        _silence_math_verify_timeout_warning()
    gold = parse(f"${answer}$", parsing_timeout=timeout) or parse(answer, parsing_timeout=timeout)
    pred = parse(text, parsing_timeout=timeout)
    if gold and pred and verify(gold, pred, timeout_seconds=timeout):
        return Score(1.0, "correct")
    exact = exact_match(text, answer)
    if exact.reward == 1.0:
        return exact
    if not pred:
        return Score(0.0, "no answer found")
    shown = pred[-1] if isinstance(pred[-1], str) else str(pred[0])
    return Score(0.0, f"wrong: got {_short(shown)}")


def _silence_math_verify_timeout_warning() -> None:
    """math-verify warns once when its timeout is off; we supply our own, so mark it shown."""
    import math_verify.grader
    import math_verify.parser

    math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    math_verify.grader.TIMEOUT_WARNING_SHOWN = True


VERIFIERS = {"exact": exact_match, "number": last_number, "math": math_equal}
