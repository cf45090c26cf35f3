"""Task `jsonl`: problems from your own JSON-lines files.

Each non-blank line is an object ``{"prompt": str, "answer": str, "solution"?: str,
"wrong"?: [str, ...], "id"?: str}``; a numeric answer (``42``) is accepted and turned into text;
any other keys go to ``Example.meta``. A malformed line raises `DataError` "FILE:LINE: problem".
The row logic is the `dataset` task's (`tandem.tasks.dataset.parse_row`), restricted to these
fields; use task `dataset` for chat messages, preference pairs, labeled completions, a field
mapping or skipping bad rows.

Params: ``path`` (required), ``eval_path``, ``ood_path``, ``verifier`` ("exact" default,
"number" = last number, "math" = math-verify equivalence).

Splits: with ``eval_path``, train is ``path`` minus any prompt that is also in the eval file;
without it, each prompt goes to train or eval by a stable hash of its text (about 20% eval).
"ood" is ``ood_path``, or the eval split when that is not given. The pools are finite:
`examples` shuffles a pool by `seed` and repeats it (reshuffled) when `n` exceeds its size.
"""

from __future__ import annotations

from pathlib import Path

from tandem.errors import ConfigError, DataError
from tandem.rewards.verifiers import VERIFIERS
from tandem.tasks.base import Example, Score, Split, check_params
from tandem.tasks.dataset import (
    draw,
    make_schema,
    parse_row,
    read_jsonl,
    split_pools,
    verifier_of,
)

PARAMS = {
    "path": "JSONL file of problems (required)",
    "eval_path": "JSONL file of eval problems (default: a hash split of path)",
    "ood_path": "JSONL file of ood problems (default: the eval split)",
    "verifier": f"one of {list(VERIFIERS)}, default 'exact'",
}

# The row logic of the `dataset` task restricted to this task's fields, with an answer required.
_SCHEMA = make_schema(None, chat=False, required=("prompt", "answer"))


def load_jsonl(path: str | Path) -> list[Example]:
    """Read and validate a problems file; raises DataError naming FILE:LINE on a bad line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"task.params: file not found: {path}")
    out = []
    for where, record, default_id in read_jsonl(path):
        if isinstance(record, DataError):
            raise record
        out.append(parse_row(record, _SCHEMA, where, default_id).example)
    if not out:
        raise DataError(f"{path}: no examples (file is empty)")
    return out


class JsonlTask:
    """Problems from JSONL files (see module docstring)."""

    name = "jsonl"

    def __init__(self, params: dict | None = None) -> None:
        params = check_params("jsonl", params, PARAMS)
        if "path" not in params:
            raise ConfigError("task.params.path: required for task 'jsonl' (a JSONL file)")
        verifier, self.verifier = verifier_of(params)
        self.description = f"problems from {params['path']} ({verifier} verifier)"
        main = load_jsonl(params["path"])
        eval_pool = load_jsonl(params["eval_path"]) if params.get("eval_path") else None
        ood = load_jsonl(params["ood_path"]) if params.get("ood_path") else None
        self.pools: dict[str, list[Example]] = split_pools(main, eval_pool, ood)

    def examples(self, split: Split, n: int, seed: int = 0) -> list[Example]:
        """`n` examples of `split`, shuffled by `seed`, repeating the pool when needed."""
        return draw(self.pools, "jsonl", split, n, seed)

    def score(self, example: Example, completion: str) -> Score:
        """Apply the configured verifier to `completion` and the example's answer."""
        return self.verifier(completion, example.answer)
