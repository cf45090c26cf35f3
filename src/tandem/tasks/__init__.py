"""Tasks: where problems come from and how completions are scored.

`get_task(name, params)` builds a task; `list_tasks()` lists them. A task yields `Example`s for
the "train", "eval" (disjoint from train) and "ood" (harder / shifted) splits and scores a
completion into a `Score` (reward in [0, 1] plus a reason).
"""

from tandem.tasks.base import Example, Score, Split, Task
from tandem.tasks.chat import render_completion, render_prompt
from tandem.tasks.registry import get_task, list_tasks, register_task

__all__ = [
    "Example",
    "Score",
    "Split",
    "Task",
    "get_task",
    "list_tasks",
    "register_task",
    "render_completion",
    "render_prompt",
]
