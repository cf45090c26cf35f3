"""Score completions in worker processes with limits: a run's `rewards.*`.

A `RewardPool` holds `workers` processes (`tandem.rewards.worker`); each scores one completion
at a time with the task's verifier, or with a reward function of your own
(`rewards.function`, `tandem.rewards.function`) or a weighted composition of reward checks
(`rewards.checks`, `tandem.rewards.compose`) in its place, under an address-space limit
(`memory_mb`, RLIMIT_AS), with its output sent to /dev/null. The trainer hands out the
completions and waits at most `timeout_s` for each. What can go wrong, and what it counts:

=========  ===============================================================================
errors     the verifier or function raised, or returned no usable reward (None, a string,
           NaN, inf, outside [0, 1]: a function's value is checked, a verifier's `Score` is
           clamped as `tandem.rewards.safe` does); or the worker's answer was unusable
timeouts   no answer within `timeout_s`: the worker is killed (with anything it started)
crashes    the worker died: MemoryError past `memory_mb`, a segfault, ``os._exit``
restarts   workers killed and replaced (after a timeout, a crash, an unusable answer)
=========  ===============================================================================

The completion gets reward 0 (`on_error: zero`), or a `Dropped` score (reward 0 too, for
readers that do not drop: `dropped(score)` tells the rollout sources to leave it out of the
batch, `on_error: drop`). Nothing else in the batch is affected.

Workers are fresh interpreters (``python -m tandem.rewards.worker``), not multiprocessing's
"spawn" or "forkserver" children: both of those import the parent's ``__main__`` again in every
worker, which for a training script that imports torch costs 1-3 s per (re)start and 600 MB
of address space before any scoring (measured; `bench/reward_pool.py`); a fork after torch's
threads exist is unsafe. A fresh worker starts in about 0.1 s. Tasks reach the workers pickled;
functions that pickle cannot name (the lambdas of the arithmetic tasks) go as code.

With `rewards.checks`, the workers run every check but the reward models and send each check's
value back (`Score.parts`); the pool then scores the reward models (`kind: model`) in the
trainer's process, batched over the batch's completions, loaded once when the pool starts, and
sets the total Σ weight·value (`Composition.total`), which lies in `Composition.bounds`.

Nothing is left running: `close()` kills the workers (it runs at exit, and at the end of a
``with`` block); a worker also exits by itself when the trainer dies (kill -9 included).
Inside its ``with`` block a pool is the active one, which `score_batch` uses by default.
"""

from __future__ import annotations

import atexit
import io
import json
import marshal
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tandem.errors import ConfigError, TandemError
from tandem.rewards.compose import Composition, finite
from tandem.rewards.function import check_function, load_function
from tandem.rewards.safe import _OK, _run
from tandem.tasks.base import Example, Score, Task

if TYPE_CHECKING:
    from tandem.rewards.library import CheckSpec

COUNTS = ("errors", "timeouts", "crashes", "restarts")
"""The keys of the counts `RewardPool.score_batch` returns."""


@dataclass(frozen=True)
class Dropped(Score):
    """A completion whose scoring failed, under `on_error: drop` (reward 0, the reason says
    why): the rollout sources leave its item out of the batch."""


def dropped(score: Score) -> bool:
    """True if this completion's item should be left out of the batch (`on_error: drop`)."""
    return isinstance(score, Dropped)


_ACTIVE: list[RewardPool] = []


def active_pool() -> RewardPool | None:
    """The pool of the innermost ``with RewardPool(...)`` block, or None."""
    return _ACTIVE[-1] if _ACTIVE else None


# ------------------------------------------------------------------------ sending the task


def _rebuild_function(code: bytes, module: str, name: str, defaults, closure, kwdefaults):
    import importlib

    namespace = importlib.import_module(module).__dict__ if module else {}
    cells = None if closure is None else tuple(types.CellType(c) for c in closure)
    fn = types.FunctionType(marshal.loads(code), namespace, name, defaults, cells)
    fn.__kwdefaults__ = kwdefaults
    return fn


def _named(fn: types.FunctionType) -> bool:
    obj: Any = sys.modules.get(fn.__module__)
    for part in fn.__qualname__.split("."):
        obj = getattr(obj, part, None)
    return obj is fn


class _TaskPickler(pickle.Pickler):
    """Pickle, with functions pickle cannot find by name (lambdas, local functions) sent as
    their code and their module's globals by name: both ends run the same interpreter."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.FunctionType) and not _named(obj):
            cells = obj.__closure__
            closure = None if cells is None else tuple(c.cell_contents for c in cells)
            code = marshal.dumps(obj.__code__)
            args = (code, obj.__module__, obj.__name__, obj.__defaults__, closure)
            return _rebuild_function, (*args, obj.__kwdefaults__)
        return NotImplemented


def _task_blob(task: Task) -> bytes:
    buf = io.BytesIO()
    try:
        _TaskPickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(task)
    except Exception as exc:  # any object pickle cannot take
        raise TandemError(
            f"rewards.workers: task {getattr(task, 'name', task)!r} cannot be sent to a reward "
            f"worker ({type(exc).__name__}: {exc}); set rewards.workers: 0 to score in the "
            "trainer's process"
        ) from None
    return buf.getvalue()


# ---------------------------------------------------------------------------------- workers


@dataclass
class _Worker:
    proc: subprocess.Popen
    conn: Connection
    state: Literal["starting", "idle", "loading", "busy"] = "starting"
    item: int | None = None
    deadline: float = 0.0
    tasks: set[int] | None = None


def _exit_reason(proc: subprocess.Popen) -> str:
    try:
        code = proc.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
        return "crash: the worker stopped answering"
    if code < 0:
        try:
            return f"crash: worker killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"crash: worker killed by signal {-code}"
    return f"crash: worker exited with code {code}"


class RewardPool:
    """Worker processes that score completions with limits (see the module docstring).

    Args:
        function: `path/to/file.py:name` (or `package.module:name`), a reward function that
            replaces the verifier; None: the task's verifier (`task.score`).
        checks: name -> check settings (`tandem.rewards.library`), a weighted composition
            that replaces the verifier; None or empty: the task's verifier. Not with
            `function` (a function is a check of kind `function`).
        workers: processes; 0 scores in this process (threads with a timeout, no memory
            limit, a hung verifier keeps running: `tandem.rewards.safe`).
        timeout_s: the most one completion may take.
        memory_mb: the address-space limit of each worker.
        on_error: "zero" (reward 0) or "drop" (a `Dropped` score).
        start_timeout_s: the most a worker may take to start or to load a task.

    Raises ConfigError (one line, naming `rewards.function` or `rewards.checks.<name>`) when the
    function or a check cannot be loaded: its file is missing or has a syntax error, raises on
    import, lacks the name, or the name is not callable; a reward model's directory does not
    load. The workers are started and ready, and reward models loaded, when the constructor
    returns.
    """

    def __init__(
        self,
        function: str | None = None,
        *,
        checks: Mapping[str, CheckSpec | dict] | None = None,
        workers: int = 2,
        timeout_s: float = 10.0,
        memory_mb: int = 2048,
        on_error: Literal["zero", "drop"] = "zero",
        start_timeout_s: float = 60.0,
    ) -> None:
        if on_error not in ("zero", "drop"):
            raise ConfigError(f"rewards.on_error: must be zero or drop, got {on_error!r}")
        if function and checks:
            raise ConfigError(
                "rewards.function: set rewards.function or rewards.checks, not both (a function "
                "is a check: {kind: function, path: ...})"
            )
        self.function = check_function(function) if function else None
        self.checks = Composition(checks) if checks else None
        self.n_workers, self.timeout_s, self.memory_mb = workers, timeout_s, memory_mb
        self.on_error, self.start_timeout_s = on_error, start_timeout_s
        self._fn = load_function(self.function) if self.function and not workers else None
        if self.checks is not None:
            self.checks.check_settings()
            here = self.checks.trainer_names()
            self.checks.build(here if workers else [*here, *self.checks.worker_names()])
        self._owner = os.getpid()
        self._tasks: dict[int, tuple[Task, bytes]] = {}
        self._workers: list[_Worker] = []
        self._closed = False
        self._lock = threading.Lock()  # one batch at a time
        atexit.register(self.close)
        t0 = time.perf_counter()
        try:
            self._workers = [self._spawn() for _ in range(workers)]
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        self.startup_s = time.perf_counter() - t0

    @classmethod
    def from_config(cls, cfg: Any) -> RewardPool:
        """The pool of a run's `rewards` block (`tandem.config.RewardConfig`)."""
        return cls(
            cfg.function,
            checks=cfg.checks or None,
            workers=cfg.workers,
            timeout_s=cfg.timeout_s,
            memory_mb=cfg.memory_mb,
            on_error=cfg.on_error,
        )

    def describe(self) -> str:
        """One line for the run's log."""
        what = f"function {self.function}" if self.function else "the task's verifier"
        if self.checks is not None:
            what = self.checks.describe()
        if not self.n_workers:
            return f"rewards: {what} in the trainer's process (timeout {self.timeout_s:g} s)"
        return (
            f"rewards: {what} in {self.n_workers} worker processes (timeout {self.timeout_s:g} "
            f"s, {self.memory_mb} MB each, on_error {self.on_error}; "
            f"started in {self.startup_s:.2f} s)"
        )

    # --------------------------------------------------------------------------- scoring

    def score_batch(
        self, task: Task, examples: Sequence[Example], completions: Sequence[str]
    ) -> tuple[list[Score], dict[str, int]]:
        """Score `completions[i]` against `examples[i]`; returns the scores (in order) and the
        counts of `COUNTS`. A batch takes about ``len / workers`` scoring times, plus at most
        `timeout_s` for each completion that times out."""
        if len(examples) != len(completions):
            raise ValueError(f"{len(examples)} examples but {len(completions)} completions")
        if self._closed:
            raise RuntimeError("RewardPool.score_batch after close()")
        with self._lock:
            try:
                return self._score(task, examples, completions)
            except BaseException:  # Ctrl-C, a task no worker can load: no half-done state
                for w in self._workers:
                    if w.state != "idle" and not self._closed:
                        self._replace(w, dict.fromkeys(COUNTS, 0))
                raise

    def _score(self, task, examples, completions) -> tuple[list[Score], dict[str, int]]:
        counts = dict.fromkeys(COUNTS, 0)
        if not self.n_workers:
            out = self._score_here(task, examples, completions, counts)
            return self._trainer_parts(examples, completions, out, counts), counts
        needs_task = self.checks.needs_task if self.checks is not None else not self.function
        key = self._task_key(task) if needs_task else None
        out: list[Score | None] = [None] * len(examples)
        todo = deque(range(len(examples)))
        batch = (key, examples, completions, out, counts)
        while todo or any(w.item is not None for w in self._workers):
            for w in self._workers:
                if w.state == "idle" and todo:
                    self._dispatch(w, todo.popleft(), batch)
            waiting = [w for w in self._workers if w.state != "idle"]
            if not waiting:
                continue
            timeout = max(0.0, min(w.deadline for w in waiting) - time.monotonic())
            ready = wait([w.conn for w in waiting], timeout)
            for w in waiting:
                if w.conn in ready:
                    self._receive(w, batch)
                elif time.monotonic() >= w.deadline:
                    self._expire(w, batch)
        return self._trainer_parts(examples, completions, out, counts), counts  # type: ignore[arg-type]

    def _trainer_parts(self, examples, completions, out: list[Score], counts) -> list[Score]:
        """The checks that run in this process (reward models), on the completions whose
        worker-side checks succeeded; a failure there is that completion's error."""
        if self.checks is None or not self.checks.trainer_names():
            return out
        for i in self.checks.add_trainer_parts(examples, completions, out):
            counts["errors"] += 1
            out[i] = self._failed(out[i].reason)
        return out

    def _failed(self, reason: str) -> Score:
        return Dropped(0.0, reason) if self.on_error == "drop" else Score(0.0, reason)

    def _score_here(self, task, examples, completions, counts) -> list[Score]:
        scores = []
        for example, completion in zip(examples, completions):
            score, kind = _run(
                task, example, completion, self.timeout_s, fn=self._fn, checks=self.checks
            )
            if kind != _OK:
                counts[kind] += 1
                score = self._failed(score.reason)
            scores.append(score)
        return scores

    def _task_key(self, task: Task) -> int:
        if id(task) not in self._tasks:  # the task is kept, so its id is not reused
            self._tasks[id(task)] = (task, _task_blob(task))
        return id(task)

    def _send(self, w: _Worker, msg: tuple) -> bool:
        try:
            w.conn.send_bytes(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))
            return True
        except OSError:  # the worker is gone: its item is a crash
            return False

    def _dispatch(self, w: _Worker, i: int, batch) -> None:
        key, examples, completions, out, counts = batch
        w.item = i
        if key is not None and key not in w.tasks:
            w.state, w.deadline = "loading", time.monotonic() + self.start_timeout_s
            sent = self._send(w, ("task", key, self._tasks[key][1]))
        else:
            w.state, w.deadline = "busy", time.monotonic() + self.timeout_s
            try:
                payload = ("score", key, i, examples[i], completions[i])
                msg = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # an example pickle cannot take: that item's error
                counts["errors"] += 1
                out[i] = self._failed(f"error: cannot send to a worker: {type(exc).__name__}")
                w.state, w.item = "idle", None
                return
            try:
                w.conn.send_bytes(msg)
                sent = True
            except OSError:
                sent = False
        if not sent:
            self._fail(w, batch, "crashes", _exit_reason(w.proc))

    def _fail(self, w: _Worker, batch, kind: str, reason: str) -> None:
        """Count the failure of `w`'s item, give it the failed score, replace `w`."""
        out, counts = batch[3], batch[4]
        counts[kind] += 1
        out[w.item] = self._failed(reason)
        self._replace(w, counts)

    def _receive(self, w: _Worker, batch) -> None:
        key, out, counts = batch[0], batch[3], batch[4]
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):
            msg = None
            reason = _exit_reason(w.proc)
        except Exception as exc:  # an answer that does not unpickle
            msg = None
            reason = f"error: unusable answer from a worker: {type(exc).__name__}"
        if w.state == "starting":
            self._started(w, msg, reason if msg is None else "")
        elif msg is None:
            self._fail(w, batch, "crashes" if reason.startswith("crash") else "errors", reason)
        elif w.state == "loading":
            if not (isinstance(msg, tuple) and len(msg) == 3 and msg[0] == "loaded"):
                self._fail(w, batch, "errors", "error: unusable answer from a worker")
            elif msg[2] is not None:
                task = self._tasks[key][0]
                raise TandemError(
                    f"rewards.workers: task {getattr(task, 'name', task)!r} cannot be rebuilt in "
                    f"a reward worker ({msg[2]}); set rewards.workers: 0 to score in the "
                    "trainer's process"
                )
            else:
                w.tasks.add(key)
                w.state = "idle"
                self._dispatch(w, w.item, batch)
        else:
            ok = (
                isinstance(msg, tuple)
                and len(msg) == 6
                and msg[:2] == ("result", w.item)
                and msg[2] in (_OK, "errors", "crashes")
                and finite(msg[3])
                and self._low <= msg[3] <= self._high
                and isinstance(msg[4], str)
                and self._usable_parts(msg[5], msg[2])
            )
            if not ok:
                shown = " ".join(repr(msg).split())[:80]
                self._fail(w, batch, "errors", f"error: unusable answer from a worker: {shown}")
            elif msg[2] == "crashes":
                self._fail(w, batch, "crashes", msg[4])
            else:
                if msg[2] == _OK:
                    out[w.item] = Score(msg[3], msg[4], msg[5])
                else:
                    counts["errors"] += 1
                    out[w.item] = self._failed(msg[4])
                w.state, w.item = "idle", None

    def _usable_parts(self, parts: Any, kind: str) -> bool:
        """A worker's `parts`: a value for each worker-side check of a scored completion, None
        without checks or for a completion that failed."""
        if self.checks is None or kind != _OK:
            return parts is None
        return (
            isinstance(parts, dict)
            and sorted(parts) == sorted(self.checks.worker_names())
            and all(finite(v) for v in parts.values())
        )

    @property
    def _low(self) -> float:
        return self.checks.bounds()[0] - 1e-9 if self.checks is not None else 0.0

    @property
    def _high(self) -> float:
        return self.checks.bounds()[1] + 1e-9 if self.checks is not None else 1.0

    def _expire(self, w: _Worker, batch) -> None:
        if w.state == "busy":
            self._fail(w, batch, "timeouts", "timeout")
            return
        what = "start" if w.state == "starting" else "load the task"
        raise TandemError(
            f"rewards: a reward worker did not {what} within {self.start_timeout_s:g} s"
        )

    # ------------------------------------------------------------------------- processes

    def _spawn(self) -> _Worker:
        """Start one worker: a fresh interpreter in its own session (so that a kill takes
        whatever it started with it), talking over a socket pair."""
        import tandem

        ours, theirs = socket.socketpair()
        settings = {
            "memory_mb": self.memory_mb,
            "parent": os.getpid(),
            "function": self.function,
            "checks": self.checks.worker_json() if self.checks is not None else None,
            # the kernel kills the worker when the thread that started it ends: only safe
            # for the main thread, which ends with the process
            "pdeathsig": threading.current_thread() is threading.main_thread(),
            "path": [p or os.getcwd() for p in sys.path],
        }
        env = dict(os.environ)
        root = str(Path(tandem.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        env["CUDA_VISIBLE_DEVICES"] = ""  # a worker never needs a GPU (nor fits one in RLIMIT_AS)
        # single-threaded scoring: no thread pools, one malloc arena (RLIMIT_AS counts the
        # 64 MB that glibc reserves for each extra one)
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(name, "1")
        env.setdefault("MALLOC_ARENA_MAX", "1")
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tandem.rewards.worker",
                    str(theirs.fileno()),
                    json.dumps(settings),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        finally:
            theirs.close()
        return _Worker(
            proc,
            Connection(ours.detach()),
            deadline=time.monotonic() + self.start_timeout_s,
            tasks=set(),
        )

    def _started(self, w: _Worker, msg: Any, reason: str) -> None:
        if msg == ("ready",):
            w.state = "idle"
            return
        self._kill(w)
        if isinstance(msg, tuple) and len(msg) == 2 and msg[0] == "fatal":
            raise ConfigError(str(msg[1]))
        raise TandemError(f"rewards: a reward worker failed to start ({reason or repr(msg)})")

    def _wait_ready(self) -> None:
        while any(w.state == "starting" for w in self._workers):
            starting = [w for w in self._workers if w.state == "starting"]
            timeout = max(0.0, min(w.deadline for w in starting) - time.monotonic())
            ready = wait([w.conn for w in starting], timeout)
            if not ready:
                raise TandemError(
                    f"rewards: a reward worker did not start within {self.start_timeout_s:g} s"
                )
            for w in starting:
                if w.conn in ready:
                    self._receive(w, (None, [], [], [], {}))  # starting: no batch yet

    def _replace(self, w: _Worker, counts: dict[str, int]) -> None:
        self._kill(w)
        fresh = self._spawn()
        w.proc, w.conn, w.state, w.item = fresh.proc, fresh.conn, "starting", None
        w.deadline, w.tasks = fresh.deadline, fresh.tasks
        counts["restarts"] += 1

    @staticmethod
    def _kill(w: _Worker) -> None:
        w.conn.close()
        for kill in (lambda: os.killpg(w.proc.pid, signal.SIGKILL), w.proc.kill):
            try:
                kill()
            except (ProcessLookupError, PermissionError):
                pass
        try:
            w.proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        """Kill every worker (and what it started); idempotent. A forked child of the trainer
        that runs its exit handlers leaves the trainer's workers alone."""
        if self._closed or os.getpid() != self._owner:
            return
        self._closed = True
        for w in self._workers:
            self._kill(w)
        atexit.unregister(self.close)
        if self in _ACTIVE:
            _ACTIVE.remove(self)

    def __enter__(self) -> RewardPool:
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
