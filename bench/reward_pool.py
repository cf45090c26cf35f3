"""What scoring in reward worker processes costs (`tandem.rewards.pool`, README "Rewards in
worker processes"): one batch of 128 completions of the add task, scored

* by the verifier alone, inline (no timeout, no isolation),
* in-process, as `score_batch` without a pool does (a thread per completion, with a timeout),
* by `RewardPool(workers=0)` (the same, through the pool),
* by `RewardPool(workers=1, 2, 4)` (worker processes, the default is 2),

median over 20 batches after 3 of warm-up; then the start of a pool (and so of a replacement
worker), and, for comparison, the start of a multiprocessing "spawn" / "forkserver" child from
this script, which imports torch as a trainer does (they import it again: `__main__` is re-run).

    python bench/reward_pool.py [batches]
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import sys
import time

import torch  # noqa: F401  (a trainer's process has it loaded)

from tandem.rewards import RewardPool, score_batch
from tandem.tasks import get_task


def _child(q) -> None:
    q.put("torch" in sys.modules)


def _batch_ms(score, task, exs, comps, batches: int) -> float:
    for _ in range(3):
        score(task, exs, comps)
    times = []
    for _ in range(batches):
        t0 = time.perf_counter()
        score(task, exs, comps)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    batches = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    task = get_task("add")
    exs = task.examples("train", 128, seed=0)
    comps = [
        (ex.answer, f"The answer is {ex.answer}.", "12", "no idea")[i % 4]
        for i, ex in enumerate(exs)
    ]
    inline = _batch_ms(lambda *a: score_batch(*a, timeout_s=None), task, exs, comps, batches)
    base = _batch_ms(score_batch, task, exs, comps, batches)
    print(f"128 completions of the add task, median of {batches} batches after 3 of warm-up")
    print(f"  the verifier alone (no timeout)    {inline:7.2f} ms")
    print(f"  in-process (score_batch, no pool)  {base:7.2f} ms")
    for workers in (0, 1, 2, 4):
        with RewardPool(workers=workers) as pool:
            ms = _batch_ms(pool.score_batch, task, exs, comps, batches)
            assert (
                pool.score_batch(task, exs, comps)[0] == score_batch(task, exs, comps, pool=None)[0]
            )
        print(f"  RewardPool(workers={workers})             {ms:7.2f} ms  ({ms - base:+.2f} ms)")
    starts = []
    for workers in (1, 2):
        for _ in range(3):
            with RewardPool(workers=workers) as pool:
                starts.append((workers, pool.startup_s))
    for workers in (1, 2):
        s = statistics.median(t for w, t in starts if w == workers)
        print(f"  start of RewardPool(workers={workers})   {1000 * s:7.1f} ms")
    for method in ("spawn", "forkserver"):
        ctx = mp.get_context(method)
        times, has_torch = [], None
        for _ in range(2):
            q = ctx.Queue()
            t0 = time.perf_counter()
            p = ctx.Process(target=_child, args=(q,))
            p.start()
            has_torch = q.get()
            times.append(time.perf_counter() - t0)
            p.join()
        print(
            f"  start of a multiprocessing {method:10s} child {1000 * min(times):7.1f} ms "
            f"(torch imported in it: {has_torch})"
        )


if __name__ == "__main__":
    main()
