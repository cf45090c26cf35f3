"""Score completions so that one bad completion cannot crash or stall training.

`score_one` is the verdict on one completion, whoever runs it (the trainer or a reward
worker, `tandem.rewards.pool`): the task's verifier, or a reward function of your own
(`tandem.rewards.function`) in its place, or a composition of reward checks
(`rewards.checks`, `tandem.rewards.compose`).

* the verifier or function raises -> ``Score(0.0, "error: <ExcType>: msg")``
* a verifier's reward is clamped to [0, 1] (NaN -> 0); a function's must already be in it
  (`check_reward`), otherwise ``Score(0.0, "error: reward function returned ...")``.
* a composition's total is Σ weight·value and is not clamped: each check's value must lie in
  its kind's range, otherwise ``Score(0.0, "error: check <name>: ...")``.

In the trainer's process (`safe_score`, and `score_batch` without a pool), each call runs in a
daemon thread and is waited for at most `timeout_s` (-> ``Score(0.0, "timeout")``). A Python
thread cannot be killed: a hung verifier keeps running (and holding CPU / the GIL at times) in
the background until it finishes on its own, and one that allocates without bound takes the
trainer down. A run scores in worker processes instead (`RewardPool`, `rewards.workers`),
where a verifier past its time or its memory is killed.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tandem.rewards.compose import CheckFailed
from tandem.rewards.function import BadReward, check_reward
from tandem.tasks.base import Example, Score, Task

if TYPE_CHECKING:
    from tandem.rewards.compose import Composition
    from tandem.rewards.pool import RewardPool

_ERROR, _TIMEOUT, _OK = "errors", "timeouts", "ok"
RewardFn = Callable[[str, str, str], Any]


def _clamp(score: Any) -> Score:
    if not isinstance(score, Score):
        return Score(0.0, f"error: TypeError: score() returned {type(score).__name__}, not Score")
    reward = float(score.reward)
    if math.isnan(reward):
        return Score(0.0, f"{score.reason} (reward was NaN)")
    return Score(min(1.0, max(0.0, reward)), score.reason)


def _error(exc: BaseException) -> Score:
    message = " ".join(str(exc).split())[:200]
    return Score(0.0, f"error: {type(exc).__name__}: {message}")


def score_one(
    task: Task | None,
    fn: RewardFn | None,
    example: Example,
    completion: str,
    checks: Composition | None = None,
) -> tuple[Score, str]:
    """The verdict on one completion and its kind ("ok" or "errors"): the worker-side checks
    of a composition when `checks` is given, else `fn(prompt, completion, answer)` when a
    reward function is given, else `task.score(example, completion)`.

    Catches every Exception but MemoryError, which a reward worker treats as its own death.
    """
    try:
        if checks is not None:
            return checks.score(task, example, completion), _OK
        if fn is not None:
            reward = check_reward(fn(example.prompt, completion, example.answer))
            return Score(reward, "reward function"), _OK
        raw = task.score(example, completion)
    except MemoryError:
        raise
    except BadReward as exc:
        return Score(0.0, f"error: reward function {exc}"), _ERROR
    except CheckFailed as exc:
        return Score(0.0, f"error: {exc}"), _ERROR
    except Exception as exc:  # isolate anything the verifier raises
        return _error(exc), _ERROR
    try:
        return _clamp(raw), (_OK if isinstance(raw, Score) else _ERROR)
    except (TypeError, ValueError) as exc:
        return Score(0.0, f"error: {type(exc).__name__}: bad reward: {exc}"), _ERROR


def _run(
    task: Task | None,
    example: Example,
    completion: str,
    timeout_s: float | None,
    fn: RewardFn | None = None,
    checks: Composition | None = None,
) -> tuple[Score, str]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["out"] = score_one(task, fn, example, completion, checks)
        except Exception as exc:  # MemoryError: in the trainer's process, only an error
            box["out"] = _error(exc), _ERROR

    if timeout_s is None or timeout_s <= 0:
        target()
    else:
        worker = threading.Thread(target=target, name="tandem-verifier", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            return Score(0.0, "timeout"), _TIMEOUT
    if "out" not in box:  # the thread ended without a verdict (SystemExit)
        return Score(0.0, "error: the verifier exited without a score"), _ERROR
    return box["out"]


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
    pool: RewardPool | None = None,
) -> tuple[list[Score], dict[str, int]]:
    """Score `completions[i]` against `examples[i]`.

    With a `pool`, or else the active one (a `RewardPool` inside its ``with`` block: the run's,
    `rewards.*`), the pool scores them with its own limits and counts (errors, timeouts,
    crashes, restarts); `timeout_s` is then unused. Without one, `safe_score` scores them in
    this process one after the other, so a batch takes at most ``len(examples) * timeout_s``,
    and the counts are ``{"errors": n, "timeouts": n}``.
    """
    if len(examples) != len(completions):
        raise ValueError(f"{len(examples)} examples but {len(completions)} completions")
    if pool is None:
        from tandem.rewards.pool import active_pool

        pool = active_pool()
    if pool is not None:
        return pool.score_batch(task, examples, completions)
    counts = {_ERROR: 0, _TIMEOUT: 0}
    scores = []
    for example, completion in zip(examples, completions):
        score, kind = _run(task, example, completion, timeout_s)
        if kind != _OK:
            counts[kind] += 1
        scores.append(score)
    return scores, counts
