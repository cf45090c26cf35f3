"""Verifiers and safe scoring."""

import threading
import time

import pytest

from tandem.rewards import exact_match, last_number, math_equal, safe_score, score_batch
from tandem.tasks import Example, Score

EX = Example(id="1", prompt="?", answer="1")


class FakeTask:
    name = "fake"
    description = "a task whose verifier misbehaves on request"

    def examples(self, split, n, seed=0):
        return [EX] * n

    def score(self, example, completion):
        if completion == "raise":
            raise RuntimeError("boom")
        if completion == "hang":
            time.sleep(5)
        if completion == "big":
            return Score(7.0, "too big")
        if completion == "nan":
            return Score(float("nan"), "nan")
        return Score(1.0 if completion == example.answer else 0.0, "ok")


def test_safe_score_isolates():
    task = FakeTask()
    assert safe_score(task, EX, "1") == Score(1.0, "ok")
    assert safe_score(task, EX, "raise") == Score(0.0, "error: RuntimeError: boom")
    start = time.monotonic()
    assert safe_score(task, EX, "hang", timeout_s=0.2) == Score(0.0, "timeout")
    assert time.monotonic() - start < 2
    assert safe_score(task, EX, "big").reward == 1.0
    assert safe_score(task, EX, "nan").reward == 0.0
    assert safe_score(task, EX, "raise", timeout_s=None).reason.startswith("error: RuntimeError")


def test_score_batch_counts():
    comps = ["1", "raise", "hang", "0", "raise", "big"]
    scores, counts = score_batch(FakeTask(), [EX] * len(comps), comps, timeout_s=0.2)
    assert [s.reward for s in scores] == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert counts == {"errors": 2, "timeouts": 1}
    with pytest.raises(ValueError):
        score_batch(FakeTask(), [EX], [], timeout_s=0.2)


@pytest.mark.parametrize(
    ("completion", "answer", "reward"),
    [
        ("0.5", "\\frac{1}{2}", 1.0),
        ("\\frac{1}{2}", "0.5", 1.0),
        ("The answer is $\\frac{1}{2}$.", "1/2", 1.0),
        ("so \\boxed{3}", "3", 1.0),
        ("\\boxed{\\frac12}", "0.5", 1.0),
        ("<answer>\\sqrt{2}</answer>", "\\sqrt{2}", 1.0),
        ("The answer is 13", "12", 0.0),
        ("", "12", 0.0),
        ("Paris", "Paris", 1.0),
    ],
)
def test_math_equal(completion, answer, reward):
    assert math_equal(completion, answer).reward == reward


def test_math_equal_in_worker_thread():
    """math-verify's signal timeouts fail outside the main thread; ours must still work."""
    out = {}
    thread = threading.Thread(target=lambda: out.update(s=math_equal("0.5", "\\frac{1}{2}")))
    thread.start()
    thread.join(20)
    assert out["s"].reward == 1.0


def test_exact_and_number():
    assert exact_match("  Paris. ", "Paris").reward == 1.0
    assert exact_match("paris", "Paris").reward == 0.0
    assert exact_match("", "Paris").reason == "no answer found"
    assert last_number("x = 1,000.0", "1000").reward == 1.0
    assert last_number("45-23=22", "22").reward == 1.0
    assert last_number("−5", "-5").reward == 1.0
    assert last_number("12", "no number").reason.startswith("error")
