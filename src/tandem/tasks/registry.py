"""Task registry: `get_task(name, params)`, `list_tasks()` and `task_params(name)`.

Built-in: arithmetic families (add, sub, mul, chain), `jsonl` (your own files), `champ` (CHAMP
math problems) and `rg:<name>` (any reasoning-gym dataset). `register_task` adds more.

A task's params and their one-line descriptions come from the module-level ``PARAMS`` dict of
its module ``tandem.tasks.<name>`` (``tandem.tasks.arith`` for the arithmetic families), from
``register_task(..., params=...)``, or, for ``rg:<name>``, from the dataset's config fields.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

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


def _dataset(params: dict) -> Task:
    from tandem.tasks.dataset import DatasetTask

    return DatasetTask(params)


def _champ(params: dict) -> Task:
    from tandem.tasks.champ import ChampTask

    return ChampTask(params)


def _humaneval(params: dict) -> Task:
    from tandem.tasks.humaneval import HumanEvalTask

    return HumanEvalTask(params)


_TASKS: dict[str, tuple[str, TaskFactory]] = {
    "add": ("add two integers", _arith("add")),
    "sub": ("subtract two integers (a >= b)", _arith("sub")),
    "mul": ("multiply two integers", _arith("mul")),
    "chain": ("add three integers", _arith("chain")),
    "jsonl": ("problems from your own JSONL files", _jsonl),
    "dataset": (
        "local datasets (saved dir, parquet, arrow, CSV, JSON, JSONL): problems, demos, "
        "pairs, labeled, chat (docs/data.md)",
        _dataset,
    ),
    "champ": ("CHAMP competition math, math-verify scored; ood = a held-out category", _champ),
    "humaneval": (
        "HumanEval code problems, tests run in a bubblewrap sandbox (docs/sandbox.md)",
        _humaneval,
    ),
}
RG_ENTRY = (
    "rg:<name>",
    "any reasoning-gym dataset, e.g. rg:chain_sum (tandem tasks rg:NAME: its config fields)",
)


# params of tasks added by `register_task` (built-in tasks keep theirs in their module's PARAMS)
_REGISTERED_PARAMS: dict[str, dict[str, str]] = {}
RG_EXTRA_PARAMS = {
    "ood": "dict of config overrides for the ood split (default: eval's config, other seeds)",
    "levels": "list of config-override dicts, easiest first: the train split mixes them",
    "traces": "true: procedural worked solutions as demonstrations (some datasets only)",
}


def register_task(
    name: str,
    description: str,
    factory: TaskFactory,
    params: Mapping[str, str] | None = None,
) -> None:
    """Register a task `factory(params) -> Task` under `name` (must be new, no 'rg:' prefix).

    `params` maps each parameter name to a one-line description (shown by `tandem tasks`).
    """
    if name in _TASKS or name.startswith("rg:"):
        raise ValueError(f"task name {name!r} is taken")
    _TASKS[name] = (description, factory)
    if params:
        _REGISTERED_PARAMS[name] = dict(params)


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


def task_params(name: str) -> dict[str, str]:
    """{param: one-line description (with its default)} of task `name`; {} if it documents none.

    For ``rg:<dataset>``: the dataset's config fields with their reasoning-gym defaults, plus
    tandem's ``ood``, ``levels`` and ``traces``. Raises ConfigError on an unknown task.
    """
    if name.startswith("rg:"):
        from tandem.tasks.rgym import _lookup, dataset_params

        _lookup(name[3:])  # ConfigError naming close matches
        fields = {k: f"default {v!r}" for k, v in dataset_params(name[3:]).items()}
        return fields | RG_EXTRA_PARAMS
    if name not in _TASKS:
        allowed = ", ".join([*_TASKS, "rg:<reasoning-gym dataset>"])
        raise ConfigError(f"task: unknown task {name!r}; allowed: {allowed}")
    if name in _REGISTERED_PARAMS:
        return dict(_REGISTERED_PARAMS[name])
    from tandem.tasks.arith import FAMILIES

    module = "arith" if name in FAMILIES else name
    try:
        mod = importlib.import_module(f"tandem.tasks.{module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"tandem.tasks.{module}":
            raise
        return {}
    return dict(getattr(mod, "PARAMS", {}) or {})
