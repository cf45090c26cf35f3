"""A reward function of your own: `rewards.function: path/to/file.py:name`.

It is called as ``name(prompt, completion, answer) -> float`` with the example's prompt (no
chat template), the decoded completion and the example's reference answer, and replaces the
task's verifier. A value that is not a real number in [0, 1] (None, a string, NaN, inf, 1.5)
is an error, not clamped: a reward function that returns garbage should be seen.

`check_function` validates the setting in the trainer without running the file (it exists,
it compiles); `load_function` runs the file and returns the callable (in a reward worker, or
in the trainer with `rewards.workers: 0`). Both raise a one-line `ConfigError` that names
`rewards.function`.
"""

from __future__ import annotations

import importlib.util
import math
import numbers
import sys
from collections.abc import Callable
from pathlib import Path

from tandem.errors import ConfigError

FIELD = "rewards.function"


class BadReward(ValueError):
    """A reward function returned something that is not a reward; the message says what."""


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _split(spec: str) -> tuple[Path, str]:
    path, sep, name = str(spec).rpartition(":")
    if not sep or not path or not name.isidentifier():
        raise ConfigError(f"{FIELD}: expected path/to/file.py:name, got {spec!r}")
    return Path(path).expanduser().resolve(), name


def check_function(spec: str) -> str:
    """Validate `spec` without running the file; return it with the path made absolute.

    Raises ConfigError if the form is wrong, the file is missing or it has a syntax error.
    Whether `name` exists and is callable is only known once the file runs (`load_function`).
    """
    path, name = _split(spec)
    if not path.is_file():
        raise ConfigError(f"{FIELD}: file {str(path)!r} not found (from {spec!r})")
    try:
        compile(path.read_bytes(), str(path), "exec")
    except SyntaxError as exc:
        raise ConfigError(
            f"{FIELD}: syntax error in {path} line {exc.lineno}: {_one_line(exc.msg)}"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{FIELD}: cannot read {path}: {_one_line(exc)}") from None
    return f"{path}:{name}"


def load_function(spec: str) -> Callable[[str, str, str], float]:
    """Run the file of `spec` as a module and return its callable `name`."""
    path, name = _split(check_function(spec))
    mod_name = f"tandem_user_reward_{abs(hash(str(path)))}"
    try:
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module  # so that pickle and dataclasses inside it work
        loader_spec.loader.exec_module(module)
    except Exception as exc:  # anything the user's file raises at import
        sys.modules.pop(mod_name, None)
        raise ConfigError(
            f"{FIELD}: importing {path} raised {type(exc).__name__}: {_one_line(exc)}"
        ) from None
    if not hasattr(module, name):
        raise ConfigError(f"{FIELD}: {path} defines no {name!r}")
    fn = getattr(module, name)
    if not callable(fn):
        raise ConfigError(f"{FIELD}: {name!r} in {path} is not callable ({type(fn).__name__})")
    return fn


def check_reward(value: object) -> float:
    """`value` as a float in [0, 1], or BadReward saying what came back.

    bool, int, float and numpy scalars are numbers; None, strings, NaN, inf and values outside
    [0, 1] are not rewards.
    """
    if not isinstance(value, numbers.Real):
        shown = _one_line(repr(value), 40)
        raise BadReward(f"returned {type(value).__name__} {shown}, not a number")
    reward = float(value)
    if math.isnan(reward):
        raise BadReward("returned NaN")
    if not 0.0 <= reward <= 1.0:
        raise BadReward(f"returned {reward:g}, outside [0, 1]")
    return reward
