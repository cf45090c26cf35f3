"""Run verifiers so that one bad completion cannot crash or stall training.

`safe_score` runs `task.score` in a daemon worker thread and waits at most `timeout_s`:

* the verifier raises -> ``Score(0.0, "error: <ExcType>: msg")``
* it does not return in time -> ``Score(0.0, "timeout")``
* otherwise its reward, clamped to [0, 1] (NaN -> 0).

A Python thread cannot be killed: a hung verifier keeps running (and holding CPU / the GIL at
times) in the background until it finishes on its own; it is a daemon thread, so it does not
keep the process alive at exit. Verifiers that can hang forever should bound their own work.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

from tandem.tasks.base import Example, Score, Task

_ERROR, _TIMEOUT, _OK = "errors", "timeouts", "ok"


def _clamp(score: Any) -> Score:
    if not isinstance(score, Score):
        return Score(0.0, f"error: TypeError: score() returned {type(score).__name__}, not Score")
    reward = float(score.reward)
    if math.isnan(reward):
        return Score(0.0, f"{score.reason} (reward was NaN)")
    return Score(min(1.0, max(0.0, reward)), score.reason)


def _run(task: Task, example: Example, completion: str, timeout_s: float | None) -> tuple:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["score"] = task.score(example, completion)
        except Exception as exc:  # isolate anything the verifier raises
            box["exc"] = exc

    if timeout_s is None or timeout_s <= 0:
        target()
    else:
        worker = threading.Thread(target=target, name="tandem-verifier", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            return Score(0.0, "timeout"), _TIMEOUT
    if "exc" in box:
        exc = box["exc"]
        message = " ".join(str(exc).split())[:200]
        return Score(0.0, f"error: {type(exc).__name__}: {message}"), _ERROR
    try:
        return _clamp(box.get("score")), _OK
    except (TypeError, ValueError) as exc:
        return Score(0.0, f"error: {type(exc).__name__}: bad reward: {exc}"), _ERROR


def safe_score(
    task: Task, example: Example, completion: str, timeout_s: float | None = 10.0
) -> Score:
    """Score one completion; never raises, never blocks for much longer than `timeout_s`.

    `timeout_s=None` (or <= 0) runs the verifier inline, still catching exceptions.
    """
    return _run(task, example, completion, timeout_s)[0]


def score_batch(
    task: Task,
    examples: Sequence[Example],
    completions: Sequence[str],
    timeout_s: float | None = 10.0,
) -> tuple[list[Score], dict[str, int]]:
    """Score `completions[i]` against `examples[i]` with `safe_score`.

    Returns the scores and ``{"errors": n, "timeouts": n}``: how many verifier calls raised or
    timed out. Scoring is sequential, so a batch takes at most ``len(examples) * timeout_s``.
    """
    if len(examples) != len(completions):
        raise ValueError(f"{len(examples)} examples but {len(completions)} completions")
    counts = {_ERROR: 0, _TIMEOUT: 0}
    scores = []
    for example, completion in zip(examples, completions):
        score, kind = _run(task, example, completion, timeout_s)
        if kind != _OK:
            counts[kind] += 1
        scores.append(score)
    return scores, counts
