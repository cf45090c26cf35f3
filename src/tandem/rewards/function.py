"""A reward function of your own: `rewards.function: path/to/file.py:name`, or an importable
one by dotted path, `package.module:name` or `package.module.name`.

It is called as ``name(prompt, completion, answer) -> float`` with the example's prompt (no
chat template), the decoded completion and the example's reference answer, and replaces the
task's verifier. A value that is not a real number in [0, 1] (None, a string, NaN, inf, 1.5)
is an error, not clamped: a reward function that returns garbage should be seen.

`check_function` validates the setting in the trainer without running the file (it exists,
it compiles; for a dotted path: the module can be found, which imports its parent packages);
`load_function` runs the file or imports the module and returns the callable (in a reward
worker, or in the trainer with `rewards.workers: 0`). Both raise a one-line `ConfigError` that
names the field (`rewards.function`, or `rewards.checks.<name>.path` for a check of kind
`function`, `tandem.rewards.library`).
"""

from __future__ import annotations

import importlib
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


def _is_file(spec: str) -> bool:
    """`path/to/file.py:name` (a file) rather than `package.module:name` (a dotted path)."""
    path = str(spec).rpartition(":")[0] or str(spec)
    return path.endswith(".py") or "/" in path or path.startswith("~")


def _split(spec: str, field: str) -> tuple[Path, str]:
    path, sep, name = str(spec).rpartition(":")
    if not sep or not path or not name.isidentifier():
        raise ConfigError(f"{field}: expected path/to/file.py:name, got {spec!r}")
    return Path(path).expanduser().resolve(), name


def _split_dotted(spec: str, field: str) -> tuple[str, str]:
    spec = str(spec)
    module, sep, name = spec.rpartition(":") if ":" in spec else spec.rpartition(".")
    if not sep or not all(p.isidentifier() for p in module.split(".")) or not name.isidentifier():
        raise ConfigError(
            f"{field}: expected path/to/file.py:name, package.module:name or "
            f"package.module.name, got {spec!r}"
        )
    return module, name


def check_function(spec: str, field: str = FIELD) -> str:
    """Validate `spec` without running the file; return it with a file's path made absolute.

    Raises ConfigError if the form is wrong, the file is missing or it has a syntax error, or a
    dotted path's module cannot be found. Whether `name` exists and is callable is only known
    once the file runs (`load_function`).
    """
    if not _is_file(spec):
        module, name = _split_dotted(spec, field)
        try:
            found = importlib.util.find_spec(module)
        except Exception as exc:  # a parent package that raises on import, or is no package
            raise ConfigError(
                f"{field}: cannot look up module {module!r}: {type(exc).__name__}: {_one_line(exc)}"
            ) from None
        if found is None:
            raise ConfigError(
                f"{field}: no module {module!r} on sys.path (from {spec!r}); add its folder to "
                "PYTHONPATH"
            )
        return f"{module}:{name}"
    path, name = _split(spec, field)
    if not path.is_file():
        raise ConfigError(f"{field}: file {str(path)!r} not found (from {spec!r})")
    try:
        compile(path.read_bytes(), str(path), "exec")
    except SyntaxError as exc:
        raise ConfigError(
            f"{field}: syntax error in {path} line {exc.lineno}: {_one_line(exc.msg)}"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{field}: cannot read {path}: {_one_line(exc)}") from None
    return f"{path}:{name}"


def load_function(spec: str, field: str = FIELD) -> Callable[[str, str, str], float]:
    """Run the file of `spec` as a module (or import the module of a dotted path) and return
    its callable `name`."""
    spec = check_function(spec, field)
    if not _is_file(spec):
        module_name, name = _split_dotted(spec, field)
        where = module_name
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # anything the user's module raises at import
            raise ConfigError(
                f"{field}: importing {module_name} raised {type(exc).__name__}: {_one_line(exc)}"
            ) from None
    else:
        path, name = _split(spec, field)
        where = str(path)
        mod_name = f"tandem_user_reward_{abs(hash(str(path)))}"
        try:
            loader_spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[mod_name] = module  # so that pickle and dataclasses inside it work
            loader_spec.loader.exec_module(module)
        except Exception as exc:  # anything the user's file raises at import
            sys.modules.pop(mod_name, None)
            raise ConfigError(
                f"{field}: importing {path} raised {type(exc).__name__}: {_one_line(exc)}"
            ) from None
    if not hasattr(module, name):
        raise ConfigError(f"{field}: {where} defines no {name!r}")
    fn = getattr(module, name)
    if not callable(fn):
        raise ConfigError(f"{field}: {name!r} in {where} is not callable ({type(fn).__name__})")
    return fn


def check_reward(value: object, low: float = 0.0, high: float = 1.0) -> float:
    """`value` as a float in [low, high] ([0, 1] by default), or BadReward saying what came back.

    bool, int, float and numpy scalars are numbers; None, strings, NaN, inf and values outside
    [low, high] are not rewards.
    """
    if not isinstance(value, numbers.Real):
        shown = _one_line(repr(value), 40)
        raise BadReward(f"returned {type(value).__name__} {shown}, not a number")
    reward = float(value)
    if math.isnan(reward):
        raise BadReward("returned NaN")
    if not low <= reward <= high:
        raise BadReward(f"returned {reward:g}, outside [{low:g}, {high:g}]")
    return reward
