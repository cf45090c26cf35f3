"""Final-answer extraction shared by task verifiers and majority voting (maj@k in `tandem.eval`).

`final_answer(completion)`: the last ``\\boxed{...}`` (braces balanced), else the last
``<answer>...</answer>`` block, else the text after a final "answer is" / "answer:" on the last
line, else the last non-blank line.

`vote_answer(completion)`: the key a sample votes with in maj@k. It is `final_answer`,
normalized: ``$`` and ``\\text`` removed, whitespace dropped, lower-cased, one outer pair of
braces and a trailing period stripped; a final answer that is a number ("1,000", "-3.50") votes
as that number in canonical form ("1000", "-3.5"); and when the completion has no ``\\boxed{}`` or
``<answer>`` tag but its final answer contains numbers, the last number votes (so "The answer is
42 apples." and "42" agree). An empty final answer votes None (an abstention: it is counted as a
drawn sample but never wins a vote). Two answers that are equal only mathematically
(``\\frac{1}{2}`` and ``0.5``) are different votes; a task may define
``answer_key(example, completion) -> str | None`` to vote by its own reading instead.
"""

from __future__ import annotations

import re
from fractions import Fraction

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_ANSWER_IS = re.compile(r"(?:final answer|answer)\s*(?:is|:)\s*(.+)$", re.IGNORECASE)
_NUMBER = re.compile(r"(?:(?<![0-9A-Za-z])[-\u2212])?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in `text` (braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def final_answer(completion: str) -> str:
    """The final answer of a completion (see module docstring); "" when there is none."""
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed.strip()
    tagged = _ANSWER_TAG.findall(completion)
    if tagged:
        return tagged[-1].strip()
    lines = [line.strip() for line in completion.splitlines() if line.strip()]
    if not lines:
        return ""
    match = _ANSWER_IS.search(lines[-1])
    return (match.group(1) if match else lines[-1]).strip()


def normalize_answer(text: str) -> str:
    """Lower-cased `text` without ``$``, ``@@``, ``\\text``, whitespace, outer braces and a
    trailing period."""
    text = text.replace("@@", "").replace("$", "").replace("\\text", "").lower()
    text = "".join(text.split()).rstrip(".")
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    return text


def _number(text: str) -> str | None:
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    value = Fraction(matches[-1].replace(",", "").replace("\u2212", "-"))
    return str(value.numerator) if value.denominator == 1 else f"{float(value):.12g}"


def vote_answer(completion: str) -> str | None:
    """The normalized answer a completion votes with in maj@k, or None (see module docstring)."""
    answer = final_answer(completion)
    tagged = last_boxed(completion) is not None or bool(_ANSWER_TAG.search(completion))
    whole = _NUMBER.fullmatch(answer.rstrip(".").strip())
    if whole or (not tagged and _number(answer) is not None):
        return _number(answer)
    key = normalize_answer(answer)
    return key or None
