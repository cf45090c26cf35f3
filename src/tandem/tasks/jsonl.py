"""Task `jsonl`: problems from your own JSON-lines files.

Each non-blank line is an object ``{"prompt": str, "answer": str, "solution"?: str,
"wrong"?: [str, ...], "id"?: str}``; a numeric answer (``42``) is accepted and turned into text;
any other keys go to ``Example.meta``. A malformed line raises `DataError` "FILE:LINE: problem".

Params: ``path`` (required), ``eval_path``, ``ood_path``, ``verifier`` ("exact" default,
"number" = last number, "math" = math-verify equivalence).

Splits: with ``eval_path``, train is ``path`` minus any prompt that is also in the eval file;
without it, each prompt goes to train or eval by a stable hash of its text (about 20% eval).
"ood" is ``ood_path``, or the eval split when that is not given. The pools are finite:
`examples` shuffles a pool by `seed` and repeats it (reshuffled) when `n` exceeds its size.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from tandem.errors import ConfigError, DataError
from tandem.rewards.verifiers import VERIFIERS
from tandem.tasks.base import Example, Score, Split, check_params, check_split, is_eval_key

PARAMS = {
    "path": "JSONL file of problems (required)",
    "eval_path": "JSONL file of eval problems (default: a hash split of path)",
    "ood_path": "JSONL file of ood problems (default: the eval split)",
    "verifier": f"one of {list(VERIFIERS)}, default 'exact'",
}


def _check_line(where: str, record: Any) -> None:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("prompt", "answer"):
        if key not in record:
            raise DataError(f"{where}: missing required field {key!r}")
    if not isinstance(record["prompt"], str) or not record["prompt"].strip():
        raise DataError(f"{where}: field 'prompt' must be a non-empty string")
    answer = record["answer"]
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        raise DataError(f"{where}: field 'answer' must be a string or a number")
    if record.get("solution") is not None and not isinstance(record["solution"], str):
        raise DataError(f"{where}: field 'solution' must be a string")
    wrong = record.get("wrong", [])
    if not isinstance(wrong, list) or not all(isinstance(w, str) for w in wrong):
        raise DataError(f"{where}: field 'wrong' must be a list of strings")
    if "id" in record and not isinstance(record["id"], str | int):
        raise DataError(f"{where}: field 'id' must be a string or an integer")


def load_jsonl(path: str | Path) -> list[Example]:
    """Read and validate a problems file; raises DataError naming FILE:LINE on a bad line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"task.params: file not found: {path}")
    out = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
            _check_line(where, record)
            known = {"id", "prompt", "answer", "solution", "wrong"}
            out.append(
                Example(
                    id=str(record.get("id", f"{path.name}:{lineno}")),
                    prompt=record["prompt"],
                    answer=str(record["answer"]),
                    solution=record.get("solution"),
                    wrong=tuple(record.get("wrong", [])),
                    meta={k: v for k, v in record.items() if k not in known},
                )
            )
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
        verifier = params.get("verifier", "exact")
        if verifier not in VERIFIERS:
            raise ConfigError(
                f"task.params.verifier: must be one of {list(VERIFIERS)}, got {verifier!r}"
            )
        self.verifier = VERIFIERS[verifier]
        self.description = f"problems from {params['path']} ({verifier} verifier)"
        main = load_jsonl(params["path"])
        if params.get("eval_path"):
            eval_pool = load_jsonl(params["eval_path"])
            eval_prompts = {ex.prompt for ex in eval_pool}
            train = [ex for ex in main if ex.prompt not in eval_prompts]
        else:
            train = [ex for ex in main if not is_eval_key(ex.prompt)]
            eval_pool = [ex for ex in main if is_eval_key(ex.prompt)]
        ood = load_jsonl(params["ood_path"]) if params.get("ood_path") else eval_pool
        self.pools: dict[str, list[Example]] = {"train": train, "eval": eval_pool, "ood": ood}

    def examples(self, split: Split, n: int, seed: int = 0) -> list[Example]:
        """`n` examples of `split`, shuffled by `seed`, repeating the pool when needed."""
        check_split(split, n)
        pool = self.pools[split]
        if n and not pool:
            raise DataError(f"jsonl: the {split} split is empty (too few lines in the file?)")
        rng = random.Random(f"tandem.jsonl:{split}:{seed}")
        out: list[Example] = []
        while len(out) < n:
            out += rng.sample(pool, len(pool))
        return out[:n]

    def score(self, example: Example, completion: str) -> Score:
        """Apply the configured verifier to `completion` and the example's answer."""
        return self.verifier(completion, example.answer)
