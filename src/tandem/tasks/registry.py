"""Task registry: `get_task(name, params)` and `list_tasks()`.

Built-in: arithmetic families (add, sub, mul, chain), `jsonl` (your own files) and `rg:<name>`
(any reasoning-gym dataset). `register_task` adds more.
"""

from __future__ import annotations

from collections.abc import Callable

from tandem.errors import ConfigError
from tandem.tasks.base import Task

TaskFactory = Callable[[dict], Task]


def _arith(family: str) -> TaskFactory:
    def make(params: dict) -> Task:
        from tandem.tasks.arith import ArithmeticTask

        return ArithmeticTask(family, params)

    return make


def _jsonl(params: dict) -> Task:
    from tandem.tasks.jsonl import JsonlTask

    return JsonlTask(params)


_TASKS: dict[str, tuple[str, TaskFactory]] = {
    "add": ("add two integers; params digits, ood_digits, style", _arith("add")),
    "sub": ("subtract two integers (a >= b); params digits, ood_digits, style", _arith("sub")),
    "mul": ("multiply two integers; params digits, ood_digits, style", _arith("mul")),
    "chain": ("add three integers; params digits, ood_digits, style", _arith("chain")),
    "jsonl": ("problems from JSONL files; params path, eval_path, ood_path, verifier", _jsonl),
}
RG_ENTRY = (
    "rg:<name>",
    "any reasoning-gym dataset, e.g. rg:chain_sum; params = its config fields + ood; "
    "names: tandem.tasks.rgym.dataset_names()",
)


def register_task(name: str, description: str, factory: TaskFactory) -> None:
    """Register a task `factory(params) -> Task` under `name` (must be new, no 'rg:' prefix)."""
    if name in _TASKS or name.startswith("rg:"):
        raise ValueError(f"task name {name!r} is taken")
    _TASKS[name] = (description, factory)


def list_tasks() -> list[tuple[str, str]]:
    """(name, one-line description) of every task, including the ``rg:<name>`` family."""
    return [(name, desc) for name, (desc, _) in _TASKS.items()] + [RG_ENTRY]


def get_task(name: str, params: dict | None = None) -> Task:
    """Build the task `name` with `params`; raises ConfigError on an unknown name or param."""
    if params is not None and not isinstance(params, dict):
        raise ConfigError(f"task.params: must be a mapping, got {type(params).__name__}")
    if isinstance(name, str) and name.startswith("rg:"):
        from tandem.tasks.rgym import ReasoningGymTask

        return ReasoningGymTask(name[3:], params)
    if name not in _TASKS:
        allowed = ", ".join([*_TASKS, "rg:<reasoning-gym dataset>"])
        raise ConfigError(f"task: unknown task {name!r}; allowed: {allowed}")
    return _TASKS[name][1](dict(params or {}))
