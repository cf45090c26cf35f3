"""Reward workers (`tandem.rewards.pool`): real processes, a real task, a real reward file.

Each misbehaviour (raise, hang, 4 GB allocation, NaN/None/str/1.5/-1, 10 MB of output,
os._exit, a segfault) must cost only its own completion, land in the right counter, and leave
the rest of the batch scored right by the replacement workers; nothing may outlive the pool.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tandem.errors import ConfigError, TandemError
from tandem.rewards import RewardPool, dropped, score_batch
from tandem.tasks import Example, Score, get_task

REWARD = """
import ctypes, os, time

def reward(prompt, completion, answer):
    if completion == "raise":
        raise RuntimeError("boom")
    if completion == "hang":
        time.sleep(60)
    if completion == "alloc":
        block = bytearray(4 * 2**30)
        return 1.0
    if completion == "print":
        print("x" * 10_000_000)
        print("y" * 1_000_000, file=__import__("sys").stderr)
        return 1.0
    if completion == "exit":
        os._exit(3)
    if completion == "segv":
        ctypes.string_at(0)
    bad = {"nan": float("nan"), "none": None, "str": "1", "big": 1.5, "neg": -1, "inf": float("inf")}
    if completion in bad:
        return bad[completion]
    return 1.0 if completion.strip() == answer else 0.0
"""

# completion -> the counter it lands in (its reward is 0)
CASES = {
    "raise": "errors",
    "hang": "timeouts",
    "alloc": "crashes",
    "nan": "errors",
    "none": "errors",
    "str": "errors",
    "big": "errors",
    "neg": "errors",
    "inf": "errors",
    "exit": "crashes",
    "segv": "crashes",
}


def _workers_of(pid: int) -> list[int]:
    """Live reward-worker processes whose parent is `pid` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z" and b"tandem.rewards.worker" in cmd:
            out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def task():
    return get_task("add", {"digits": 1})


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text(REWARD)
    return f"{path}:reward"


def _batch(task):
    """Good completions around every bad one: (examples, completions, expected rewards)."""
    exs = task.examples("train", 2 * len(CASES) + 1, seed=3)
    comps, want = [], []
    for i, ex in enumerate(exs):
        if i % 2:
            bad = list(CASES)[i // 2]
            comps.append(bad)
            want.append(0.0)
        else:  # alternately right and wrong
            comps.append(ex.answer if i % 4 == 0 else "no idea")
            want.append(1.0 if i % 4 == 0 else 0.0)
    comps.insert(1, "print")  # prints 11 MB, still scored
    exs.insert(1, exs[0])
    want.insert(1, 1.0)
    return exs, comps, want


def test_every_misbehaviour_is_isolated_and_counted(task, reward_file, capfd):
    exs, comps, want = _batch(task)
    start = time.monotonic()
    with RewardPool(reward_file, workers=2, timeout_s=1.0, memory_mb=256) as pool:
        scores, counts = pool.score_batch(task, exs, comps)
        assert time.monotonic() - start < 20
        assert [s.reward for s in scores] == want
        n = {k: list(CASES.values()).count(k) for k in ("errors", "timeouts", "crashes")}
        assert counts == {**n, "restarts": n["timeouts"] + n["crashes"]}
        assert counts == {"errors": 7, "timeouts": 1, "crashes": 3, "restarts": 4}
        by = dict(zip(comps, scores))
        assert by["raise"].reason == "error: RuntimeError: boom"
        assert by["hang"].reason == "timeout"
        assert by["alloc"].reason == "crash: MemoryError (rewards.memory_mb = 256)"
        assert by["exit"].reason == "crash: worker exited with code 3"
        assert by["segv"].reason == "crash: worker killed by SIGSEGV"
        assert by["nan"].reason == "error: reward function returned NaN"
        assert by["none"].reason == "error: reward function returned NoneType None, not a number"
        assert by["str"].reason == "error: reward function returned str '1', not a number"
        assert by["big"].reason == "error: reward function returned 1.5, outside [0, 1]"
        assert by["neg"].reason == "error: reward function returned -1, outside [0, 1]"
        assert by["print"] == Score(1.0, "reward function")
        assert not any(dropped(s) for s in scores)
        # the replaced workers score the next batch as usual
        again, counts = pool.score_batch(task, exs[:4], [ex.answer for ex in exs[:4]])
        assert [s.reward for s in again] == [1.0] * 4
        assert counts == {"errors": 0, "timeouts": 0, "crashes": 0, "restarts": 0}
        assert len(_workers_of(os.getpid())) == 2
    assert _workers_of(os.getpid()) == []
    out, err = capfd.readouterr()
    assert len(out) + len(err) < 10_000  # the worker's prints went to /dev/null


def test_drop_marks_the_failed_items(task, reward_file):
    exs = task.examples("train", 4, seed=1)
    comps = [exs[0].answer, "raise", "exit", exs[3].answer]
    with RewardPool(reward_file, workers=1, timeout_s=1.0, on_error="drop") as pool:
        scores, counts = pool.score_batch(task, exs, comps)
    assert [dropped(s) for s in scores] == [False, True, True, False]
    assert [s.reward for s in scores] == [1.0, 0.0, 0.0, 1.0]  # 0 for readers that keep it
    assert counts == {"errors": 1, "timeouts": 0, "crashes": 1, "restarts": 1}


class UnrulyTask:
    """The add task with a verifier that misbehaves on request (pickled by reference)."""

    name = "unruly"
    description = "add, with a verifier that misbehaves"

    def __init__(self):
        self.inner = get_task("add", {"digits": 1})

    def examples(self, split, n, seed=0):
        return self.inner.examples(split, n, seed)

    def score(self, example, completion):
        if completion == "raise":
            raise ValueError("bad verifier")
        if completion == "hang":
            time.sleep(60)
        if completion == "alloc":
            return Score(len(bytearray(4 * 2**30)), "never")
        if completion == "seven":
            return Score(7.0, "too big")  # a verifier's Score is clamped, as in-process
        if completion == "nan":
            return Score(float("nan"), "nan")
        if completion == "float":
            return 1.0  # not a Score
        return self.inner.score(example, completion)


def test_verifier_in_workers(task):
    unruly = UnrulyTask()
    exs = task.examples("train", 7, seed=2)
    comps = ["raise", exs[1].answer, "hang", "alloc", "seven", "nan", "float"]
    with RewardPool(workers=2, timeout_s=1.0, memory_mb=256) as pool:
        scores, counts = pool.score_batch(unruly, exs, comps)
    assert [s.reward for s in scores] == [0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert scores[0].reason == "error: ValueError: bad verifier"
    assert scores[5].reason == "nan (reward was NaN)"
    assert scores[6].reason.startswith("error: TypeError: score() returned float")
    assert counts == {"errors": 2, "timeouts": 1, "crashes": 1, "restarts": 2}


def test_same_rewards_as_in_process(task):
    exs = task.examples("train", 40, seed=5)
    comps = [ex.answer if i % 3 else f"The answer is {ex.answer}." for i, ex in enumerate(exs)]
    comps[::7] = ["7"] * len(comps[::7])
    here, here_counts = score_batch(task, exs, comps)
    with RewardPool(workers=2) as pool:
        there, counts = score_batch(task, exs, comps)  # the active pool
        assert there == pool.score_batch(task, exs, comps)[0]
    assert there == here
    assert counts == {**here_counts, "crashes": 0, "restarts": 0}
    assert len({s.reward for s in there}) == 2  # both verdicts occur
    with RewardPool(workers=0) as pool:  # in the trainer's process, same verdicts
        assert pool.score_batch(task, exs, comps)[0] == here


def test_function_in_process(task, reward_file):
    exs = task.examples("train", 3, seed=1)
    with RewardPool(reward_file, workers=0, timeout_s=0.5, on_error="drop") as pool:
        scores, counts = pool.score_batch(task, exs, [exs[0].answer, "nan", "raise"])
    assert [s.reward for s in scores] == [1.0, 0.0, 0.0]
    assert [dropped(s) for s in scores] == [False, True, True]
    assert counts == {"errors": 2, "timeouts": 0, "crashes": 0, "restarts": 0}


@pytest.mark.parametrize(
    ("source", "spec", "message"),
    [
        (None, "{dir}/missing.py:reward", "not found"),
        ("def reward(:\n", "{path}:reward", "syntax error in {path} line 1"),
        ("x = 1\n", "{path}:reward", "defines no 'reward'"),
        ("reward = 3\n", "{path}:reward", "'reward' in {path} is not callable (int)"),
        ("raise ImportError('no such lib\\nat all')\n", "{path}:reward", "raised ImportError"),
        ("x = 1\n", "{path}", "expected path/to/file.py:name"),
    ],
)
@pytest.mark.parametrize("workers", [0, 1])
def test_function_errors_are_one_line(tmp_path, source, spec, message, workers):
    path = tmp_path / "rw.py"
    if source is not None:
        path.write_text(source)
    fill = {"dir": tmp_path, "path": path}
    with pytest.raises(ConfigError) as info:
        RewardPool(spec.format(**fill), workers=workers)
    text = str(info.value)
    assert text.startswith("rewards.function: ")
    assert message.format(**fill) in text
    assert "\n" not in text
    assert _workers_of(os.getpid()) == []


CRASH = """
import os, signal, sys, threading, time
sys.path[:0] = {path!r}
from tandem.rewards import RewardPool
from tandem.tasks import get_task

def main():
    pool = RewardPool({spec!r}, workers=2, timeout_s=30.0)
    task = get_task("add", {{"digits": 1}})
    exs = task.examples("train", 2)
    threading.Thread(target=pool.score_batch, args=(task, exs, ["hang", "hang"]), daemon=True).start()
    time.sleep(0.5)  # both workers are now inside the hanging function
    print(pool.describe(), flush=True)
    sys.stdin.readline()  # the test has listed the workers
    os.kill(os.getpid(), signal.SIGKILL)  # a trainer crash: no atexit, no close()

if {in_thread}:
    threading.Thread(target=main).start()
else:
    main()
"""


@pytest.mark.parametrize("in_thread", [False, True])  # kernel death signal / parent watch
def test_no_orphans_after_a_trainer_crash(tmp_path, reward_file, in_thread):
    script = tmp_path / "trainer.py"
    script.write_text(CRASH.format(path=sys.path, spec=reward_file, in_thread=in_thread))
    trainer = subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    line = trainer.stdout.readline()
    assert "2 worker processes" in line
    workers = _workers_of(trainer.pid)
    trainer.stdin.write("go\n")
    trainer.stdin.flush()
    assert trainer.wait(timeout=30) == -signal.SIGKILL
    assert len(workers) == 2
    deadline = time.monotonic() + 5
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(_alive, workers))


def test_close_kills_what_workers_started(tmp_path, task):
    spawner = tmp_path / "spawner.py"
    spawner.write_text(
        textwrap.dedent(
            """
            import subprocess, time
            def reward(prompt, completion, answer):
                open(completion, "w").write(str(subprocess.Popen(["sleep", "60"]).pid))
                time.sleep(60)
            """
        )
    )
    pidfile = tmp_path / "pid"
    ex = task.examples("train", 1)
    with RewardPool(f"{spawner}:reward", workers=1, timeout_s=1.0) as pool:
        scores, counts = pool.score_batch(task, ex, [str(pidfile)])
    assert counts["timeouts"] == 1
    time.sleep(0.1)
    assert not _alive(int(pidfile.read_text()))


def test_unpicklable_example_is_an_error(task):
    ex = task.examples("train", 2)
    odd = Example(id="odd", prompt="?", answer="1", meta={"f": lambda: 0})
    with RewardPool(workers=1) as pool:
        scores, counts = pool.score_batch(task, [odd, ex[1]], ["1", ex[1].answer])
    assert scores[0].reason.startswith("error: cannot send to a worker")
    assert scores[1].reward == 1.0
    assert counts["errors"] == 1 and counts["restarts"] == 0


class _Encoder:
    """Token ids = character codes; a prompt is its example's answer (enough for the source)."""

    def prompt(self, ex):
        return [ord(ch) for ch in ex.answer]

    def decode(self, ids):
        return "".join(map(chr, ids))


@pytest.mark.parametrize("on_error", ["zero", "drop"])
def test_rollouts_source_drops_failed_items(task, reward_file, on_error):
    from tandem.train.sources import SOURCES, DrawEnv, Rollout, Sizes

    src = SOURCES.get("rollouts")(
        "rollouts",
        SOURCES.spec("rollouts")(kind="rollouts"),
        {"train": task.examples("train", 8)},
        0,
    )
    sizes = Sizes(2, 3, 0, 0, 8, 1.0, 1.0)  # 2 prompts x 3 samples

    def generate(prompts, **kw):  # per group: right, then two that fail or are wrong
        bad = ["raise", "exit", "wrong", "nan"]  # group 0 keeps 1 item, group 1 keeps 2
        comps = [p if j % 3 == 0 else [ord(c) for c in bad.pop(0)] for j, p in enumerate(prompts)]
        return Rollout(comps, [[-0.5] * len(c) for c in comps], [True] * len(comps))

    with RewardPool(reward_file, workers=1, timeout_s=5.0, on_error=on_error) as pool:
        score = lambda exs, texts: pool.score_batch(task, exs, texts)  # noqa: E731
        env = DrawEnv(0, sizes, _Encoder(), task, {}, [], generate, score)
        items, m = src.make(env)
    kept = 3 if on_error == "drop" else 6  # raise, exit, nan fail
    assert len(items) == kept
    assert sorted(it.reward for it in items) == [0.0] * (kept - 2) + [1.0, 1.0]
    assert [it.group for it in items] == ([0, 1, 1] if on_error == "drop" else [0, 0, 0, 1, 1, 1])
    assert m["reward/errors"] == 2 and m["reward/crashes"] == 1 and m["reward/restarts"] == 1
    assert m["reward/timeouts"] == 0
    assert m["reward/dropped"] == (3 if on_error == "drop" else 0)


def _refuse():
    raise RuntimeError("not here")


class FragileTask(UnrulyTask):
    """Pickles, but cannot be rebuilt in a worker."""

    def __reduce__(self):
        return _refuse, ()


def test_a_task_workers_cannot_rebuild_stops_with_a_clear_error(task):
    class LocalTask(UnrulyTask):  # pickle cannot name a local class
        pass

    exs = task.examples("train", 2)
    with RewardPool(workers=1) as pool:
        for bad, why in (
            (LocalTask(), "cannot be sent"),
            (FragileTask(), "RuntimeError: not here"),
        ):
            with pytest.raises(TandemError, match=f"rewards.workers: .*{why}.*rewards.workers: 0"):
                pool.score_batch(bad, exs, ["1", "2"])
        scores, _ = pool.score_batch(task, exs, [ex.answer for ex in exs])  # still usable
        assert [s.reward for s in scores] == [1.0, 1.0]
