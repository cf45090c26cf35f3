"""A reward worker process: ``python -m tandem.rewards.worker FD SETTINGS_JSON``, started by
`tandem.rewards.pool.RewardPool` (settings: memory_mb, parent, pdeathsig, function, checks).

It sends its output to /dev/null (a reward that prints megabytes floods nothing), limits its
address space to memory_mb (RLIMIT_AS), exits when the trainer is gone (its parent pid changes,
the socket reaches EOF, or with pdeathsig the kernel kills it), loads the reward function or the
worker-side reward checks (`rewards.checks`, their settings as JSON) if given, then answers on
the socket FD, one message at a time:

    ("task", key, blob)                 -> ("loaded", key, None | "ExcType: msg")
    ("score", key, i, example, text)    -> ("result", i, kind, reward, reason, parts)

`parts` is the checks' values by name (`Score.parts`), or None without checks.
`kind` is "ok", "errors" or "crashes" (a MemoryError: the worker reports it and exits, as its
state may be broken). Its first message is ("ready",), or ("fatal", msg) when the function
cannot be loaded or the worker starts already over its memory limit.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import sys
import threading
import time
from multiprocessing.connection import Connection

from tandem.errors import ConfigError
from tandem.rewards.compose import Composition
from tandem.rewards.function import load_function
from tandem.rewards.safe import score_one

_PR_SET_PDEATHSIG = 1


def _silence() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115


def _watch_parent(parent: int, pdeathsig: bool) -> None:
    """Exit when the trainer dies: at once by the kernel (`--pdeathsig`, Linux), else within
    half a second by a thread that sees the parent pid change (a verifier stuck in one long C
    call holds the GIL and delays it)."""
    if pdeathsig and sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(0)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="tandem-parent-watch", daemon=True).start()


def _address_space_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


def main(argv: list[str]) -> None:
    conn = Connection(int(argv[0]))
    settings = json.loads(argv[1])
    memory_mb, function = int(settings["memory_mb"]), settings["function"]
    sys.path[:] = settings["path"]  # the trainer's: its tasks' modules import here too
    _silence()
    _watch_parent(int(settings["parent"]), bool(settings["pdeathsig"]))
    used = _address_space_mb()
    if used > 0.8 * memory_mb:
        fatal = f"a reward worker uses {used:.0f} MB of address space before scoring"
        conn.send(("fatal", f"rewards.memory_mb: {fatal}; raise it above {memory_mb}"))
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = memory_mb * 2**20
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    fn = checks = None
    what = function or "the reward checks"
    try:
        if function is not None:
            fn = load_function(function)
        if settings.get("checks") is not None:  # {} when every check runs in the trainer
            checks = Composition(settings["checks"])
            checks.build(checks.worker_names())
    except ConfigError as exc:
        conn.send(("fatal", str(exc)))
        return
    except MemoryError:
        conn.send(("fatal", f"rewards.memory_mb: loading {what} needs over {memory_mb}"))
        return
    conn.send(("ready",))
    tasks: dict[int, object] = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "task":
            _, key, blob = msg
            try:
                tasks[key] = pickle.loads(blob)
                conn.send(("loaded", key, None))
            except Exception as exc:  # reported to the trainer, which stops the run
                what = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]
                if isinstance(exc, MemoryError):
                    what += f" (raise rewards.memory_mb above {memory_mb})"
                conn.send(("loaded", key, what))
            continue
        _, key, i, example, completion = msg
        try:
            score, kind = score_one(tasks.get(key), fn, example, completion, checks)
        except MemoryError:
            del msg, example, completion  # room to answer in
            reason = f"crash: MemoryError (rewards.memory_mb = {memory_mb})"
            conn.send(("result", i, "crashes", 0.0, reason, None))
            os._exit(1)
        parts = None if score.parts is None else {k: float(v) for k, v in score.parts.items()}
        reward = float(score.reward)
        conn.send(("result", i, kind, reward, str(score.reason)[:200], parts))


if __name__ == "__main__":
    main(sys.argv[1:])
