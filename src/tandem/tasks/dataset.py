"""Task `dataset`: problems, demonstrations and preferences from local data files.

Reads a Hugging Face ``save_to_disk`` directory, parquet, Arrow, CSV, JSON or JSONL (a file, a
directory of shards of one format, or a glob) with the `datasets` library, offline: nothing is
fetched from a hub. docs/data.md is the user's guide; this docstring is the contract.

Row kinds, told apart by which fields a row has (null counts as absent):

=========== =================================== ==============================================
kind        fields                              Example
=========== =================================== ==============================================
problem     prompt [+ answer]                   answer (RL with the verifier or a reward fn)
demo        prompt + solution [+ answer]        solution = the demonstration (SFT)
pair        prompt + chosen + rejected          solution = chosen, wrong = (rejected,) (DPO)
labeled     prompt + completion + label         grouped by prompt: one Example per desirable
                                                completion, wrong = every undesirable one (KTO)
chat        messages [+ answer]                 last user turn = prompt, a final assistant
                                                turn = solution, system turn -> meta["system"]
=========== =================================== ==============================================

`fields` maps tandem's names (`FIELDS`) to the dataset's column names; an unmapped name reads
the column of the same name when there is one. `prompt`, `solution`, `chosen`, `rejected` and
`completion` may also hold chat messages (TRL's conversational format): a completion is the
content of its final assistant turn and the turns before it are the prompt when the row has
no prompt of its own. When a row has both `messages` with a user turn and a `prompt` text, the
messages win. A conversation with earlier turns before the last user turn is a bad row unless
``multi_turn: last_turn`` (then the earlier turns go to meta["history"] and are not trained
on). A missing answer is "" and such an example scores 0 ("no reference answer") with the
task's verifier; a reward function still sees it. Columns outside the mapping go to meta.

Bad rows (a missing or mistyped field, an empty prompt) raise `DataError` "FILE:row N: problem"
(N counts data rows from 1, a CSV header not included; JSONL says "FILE:line N"), or with
``on_bad_row: skip`` are skipped, counted in `DatasetTask.skipped` and reported in one warning
per file. Splits are those of the `jsonl` task (`split_pools`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import random
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tandem.errors import ConfigError, DataError, TandemWarning
from tandem.rewards.verifiers import VERIFIERS
from tandem.tasks.base import Example, Score, Split, check_params, check_split, is_eval_key

FORMATS: dict[str, str] = {
    "saved": "a directory written by Dataset.save_to_disk / DatasetDict.save_to_disk",
    "parquet": ".parquet",
    "arrow": ".arrow (Arrow IPC stream or file)",
    "csv": ".csv (lists such as messages as JSON text)",
    "json": ".json (a JSON array, or JSON lines read by pyarrow)",
    "jsonl": ".jsonl / .ndjson (read line by line by tandem)",
}
_SUFFIXES = {
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}

FIELDS: dict[str, str] = {
    "id": "a stable id, text or integer (default: FILE:N)",
    "prompt": "the question: text, or chat messages ending with a user turn",
    "answer": "the reference answer the verifier checks (text or number)",
    "solution": "a demonstration: text, or messages ending with an assistant turn",
    "wrong": "a list of wrong completions",
    "chosen": "the preferred completion of a pair",
    "rejected": "the dispreferred completion of a pair",
    "completion": "a single completion with a label (KTO)",
    "label": "the completion's label: true/1 desirable, false/0 undesirable",
    "messages": "a chat conversation [{role, content}, ...]",
    "system": "a system message for the row (kept in meta['system'])",
}

BAD_ROW = ("error", "skip")
MULTI_TURN = ("error", "last_turn")

PARAMS = {
    "path": "a data file or directory (required); formats: " + ", ".join(FORMATS),
    "eval_path": "eval data (default: eval_split of path, else a hash split of path)",
    "ood_path": "ood data (default: ood_split of path, else the eval split)",
    "format": f"one of {list(FORMATS)} (default: from the suffix, or 'saved' for a directory)",
    "split": "split of a saved DatasetDict to train on (default 'train')",
    "eval_split": "split of a saved DatasetDict used as eval (e.g. 'test')",
    "ood_split": "split of a saved DatasetDict used as ood",
    "fields": f"mapping tandem name -> column name; names: {', '.join(FIELDS)}",
    "verifier": f"one of {list(VERIFIERS)}, default 'exact'",
    "on_bad_row": "error (default: stop at FILE:row N) or skip (skip, count and warn)",
    "multi_turn": "error (default) or last_turn (keep the last user turn, history to meta)",
    "cache_dir": "where parquet/CSV/JSON become Arrow (default: the datasets cache)",
}

_ROLES = ("system", "user", "assistant")
JSONL_FIELDS = ("id", "prompt", "answer", "solution", "wrong")
"""The fields of the `jsonl` task (its other keys go to meta)."""
_LABELS = {"true": True, "1": True, "false": False, "0": False}


# ------------------------------------------------------------------------------ row parsing


@dataclass(frozen=True)
class Schema:
    """How rows are read: the column of each tandem field, and what a row may hold.

    `columns` maps a tandem name to a column; `explicit` are the names the user mapped (an
    error names them as ``task.params.fields.<name>``); `chat` allows chat messages and the
    preference kinds (the `jsonl` task does not); `required` names fields every row must have.
    """

    columns: Mapping[str, str]
    explicit: frozenset[str] = frozenset()
    chat: bool = True
    required: tuple[str, ...] = ()
    multi_turn: str = "error"

    def label(self, name: str) -> str:
        """The field as named in an error: 'prompt', or 'question' (task.params.fields.prompt)."""
        col = self.columns[name]
        return f"{col!r}" if name not in self.explicit else f"{col!r} (task.params.fields.{name})"


@dataclass(frozen=True)
class Parsed:
    """One row: its Example, its kind, and for a labeled completion the label (else None)."""

    example: Example
    kind: str
    label: bool | None = None


def make_schema(
    fields: Any,
    *,
    chat: bool = True,
    multi_turn: str = "error",
    required: tuple[str, ...] = (),
) -> Schema:
    """The `Schema` of a `fields` mapping (tandem name -> column); raises ConfigError."""
    if fields is None:
        fields = {}
    if not isinstance(fields, Mapping):
        raise ConfigError(
            f"task.params.fields: must be a mapping of tandem name -> column, got {fields!r}"
        )
    for name, col in fields.items():
        if name not in FIELDS:
            raise ConfigError(
                f"task.params.fields.{name}: unknown field; allowed: {', '.join(FIELDS)}"
            )
        if not isinstance(col, str) or not col:
            raise ConfigError(f"task.params.fields.{name}: must be a column name, got {col!r}")
    if multi_turn not in MULTI_TURN:
        raise ConfigError(
            f"task.params.multi_turn: must be one of {list(MULTI_TURN)}, got {multi_turn!r}"
        )
    columns = {name: str(fields.get(name, name)) for name in FIELDS}
    return Schema(columns, frozenset(fields), chat, required, multi_turn)


def _get(row: Mapping, schema: Schema, name: str) -> Any:
    return row.get(schema.columns[name])


def _messages(value: Any, where: str, what: str) -> list[dict]:
    """Validate chat messages: a non-empty list of {role, content: str}."""
    if not isinstance(value, list | tuple) or not value:
        raise DataError(f"{where}: field {what} must be a non-empty list of chat messages")
    for i, m in enumerate(value, start=1):
        if not isinstance(m, Mapping) or m.get("role") not in _ROLES:
            raise DataError(
                f"{where}: field {what}: message {i} needs a role, one of {list(_ROLES)}"
            )
        if not isinstance(m.get("content"), str):
            raise DataError(f"{where}: field {what}: message {i} content must be a string")
    return [{"role": m["role"], "content": m["content"]} for m in value]


@dataclass(frozen=True)
class Turns:
    """A conversation cut up: leading system turns, the last user turn, the turns between
    them, and the final assistant turn (each None / empty when absent)."""

    system: str | None
    prompt: str | None
    history: list[dict]
    final: str | None


def _turns(value: Any, where: str, what: str, schema: Schema) -> Turns:
    msgs = _messages(value, where, what)
    final = msgs[-1]["content"] if msgs[-1]["role"] == "assistant" else None
    rest = msgs[:-1] if final is not None else msgs
    systems = []
    while rest and rest[0]["role"] == "system":
        systems.append(rest[0]["content"])
        rest = rest[1:]
    prompt = None
    if rest and rest[-1]["role"] == "user":
        prompt, rest = rest[-1]["content"], rest[:-1]
    if rest and schema.multi_turn == "error":
        raise DataError(
            f"{where}: field {what} has {len(rest)} turn(s) before the last user turn; "
            "set task.params.multi_turn: last_turn to train on the last turn only"
        )
    return Turns("\n\n".join(systems) or None, prompt, rest, final)


def _completion(row: Mapping, schema: Schema, name: str, where: str) -> tuple[Any, Turns | None]:
    """A completion field: (its text or None, the conversation when given as messages)."""
    value = _get(row, schema, name)
    if value is None or isinstance(value, str):
        return value, None
    what = schema.label(name)
    if not schema.chat or not isinstance(value, list | tuple):
        allowed = "a string" + (" or chat messages" if schema.chat else "")
        raise DataError(f"{where}: field {what} must be {allowed}")
    turns = _turns(value, where, what, schema)
    if turns.final is None:
        raise DataError(f"{where}: field {what}: messages must end with an assistant turn")
    return turns.final, turns


def _kind(present: set[str], has_label: bool, schema: Schema, where: str) -> str:
    """problem, demo, pair or labeled, from the completion fields a row has."""
    if present & {"chosen", "rejected"}:
        missing = "rejected" if "chosen" in present else "chosen"
        if missing not in present:
            raise DataError(f"{where}: missing required field {schema.label(missing)} of a pair")
        if present & {"solution", "completion"} or has_label:
            raise DataError(f"{where}: a pair row also has a solution, completion or label")
        return "pair"
    if "completion" in present or has_label:
        if not has_label:
            raise DataError(f"{where}: missing required field {schema.label('label')}")
        if "completion" not in present:
            raise DataError(f"{where}: missing required field {schema.label('completion')}")
        if "solution" in present:
            raise DataError(f"{where}: a labeled row also has a solution")
        return "labeled"
    return "demo" if "solution" in present else "problem"


def _label(value: Any, where: str, schema: Schema) -> bool:
    if isinstance(value, bool):
        return value
    key = str(value).strip().lower() if isinstance(value, str | int) else None
    if key not in _LABELS:
        raise DataError(
            f"{where}: field {schema.label('label')} must be true/false or 1/0, got {value!r}"
        )
    return _LABELS[key]


def parse_row(row: Any, schema: Schema, where: str, default_id: str) -> Parsed:
    """One row as a `Parsed` Example; raises DataError "WHERE: problem" on a bad row."""
    if not isinstance(row, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for name in schema.required:
        if _get(row, schema, name) is None:
            raise DataError(f"{where}: missing required field {schema.label(name)}")
    names = ("solution", "chosen", "rejected", "completion") if schema.chat else ("solution",)
    texts = {n: _completion(row, schema, n, where) for n in names}
    present = {n for n, (text, _) in texts.items() if text is not None}
    has_label = schema.chat and _get(row, schema, "label") is not None

    # the prompt: the messages' last user turn, else the prompt column (text or messages),
    # else the conversation before a completion given as messages; a final assistant turn
    # of the messages is the solution (with a label: the labeled completion)
    turns = Turns(None, None, [], None)
    if schema.chat and _get(row, schema, "messages") is not None:
        what = schema.label("messages")
        turns = _turns(_get(row, schema, "messages"), where, what, schema)
        if turns.final is not None:
            if present:
                raise DataError(
                    f"{where}: field {what} ends with an assistant turn and the row also has "
                    f"{sorted(present)[0]!r}; keep one"
                )
            name = "completion" if has_label else "solution"
            texts[name] = (turns.final, None)
            present.add(name)
    kind = _kind(present, has_label, schema, where)
    raw = _get(row, schema, "prompt")
    if turns.prompt is None and raw is not None:
        what = schema.label("prompt")
        if isinstance(raw, str):
            turns = Turns(turns.system, raw, turns.history, None)
        elif schema.chat and isinstance(raw, list | tuple):
            got = _turns(raw, where, what, schema)
            if got.final is not None:
                raise DataError(f"{where}: field {what}: messages end with an assistant turn")
            turns = Turns(turns.system or got.system, got.prompt, got.history, None)
        else:
            allowed = "a non-empty string" + (" or chat messages" if schema.chat else "")
            raise DataError(f"{where}: field {what} must be {allowed}")
    if turns.prompt is None:
        for name in ("solution", "chosen", "completion"):
            got = texts.get(name, (None, None))[1]
            if got is not None and got.prompt is not None:
                turns = Turns(turns.system or got.system, got.prompt, got.history, None)
                break
    if turns.prompt is None:
        raise DataError(f"{where}: missing required field {schema.label('prompt')}")
    if not turns.prompt.strip():
        raise DataError(f"{where}: field {schema.label('prompt')} must be a non-empty string")
    if kind == "pair":
        a, b = texts["chosen"][1], texts["rejected"][1]
        both = a is not None and b is not None and a.prompt is not None and b.prompt is not None
        if both and (a.system, a.history, a.prompt) != (b.system, b.history, b.prompt):
            raise DataError(f"{where}: 'chosen' and 'rejected' continue different conversations")

    answer = _get(row, schema, "answer")
    answer = "" if answer is None else answer
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        raise DataError(f"{where}: field {schema.label('answer')} must be a string or a number")
    wrong = _get(row, schema, "wrong")
    wrong = [] if wrong is None else wrong
    if not isinstance(wrong, list | tuple) or not all(isinstance(w, str) for w in wrong):
        raise DataError(f"{where}: field {schema.label('wrong')} must be a list of strings")
    row_id = _get(row, schema, "id")
    if row_id is not None and (isinstance(row_id, bool) or not isinstance(row_id, str | int)):
        raise DataError(f"{where}: field {schema.label('id')} must be a string or an integer")

    meta: dict[str, Any] = {}
    if schema.chat:
        system = _get(row, schema, "system")
        if system is not None and not isinstance(system, str):
            raise DataError(f"{where}: field {schema.label('system')} must be a string")
        if system or turns.system:
            meta["system"] = system or turns.system
        if turns.history:
            meta["history"] = turns.history
    used = {schema.columns[n] for n in (FIELDS if schema.chat else JSONL_FIELDS)}
    meta.update({k: v for k, v in row.items() if k not in used})

    solution, label, wrong = texts["solution"][0], None, tuple(wrong)
    if kind == "pair":
        solution, wrong = texts["chosen"][0], (texts["rejected"][0], *wrong)
    elif kind == "labeled":
        label = _label(_get(row, schema, "label"), where, schema)
        solution = texts["completion"][0]
    ex = Example(
        id=str(default_id if row_id is None else row_id),
        prompt=turns.prompt,
        answer=str(answer),
        solution=solution,
        wrong=wrong,
        meta=meta,
    )
    return Parsed(ex, kind, label)


def group_labeled(parsed: list[Parsed]) -> list[Example]:
    """The Examples of parsed rows in order, labeled completions grouped by (prompt, system).

    A group gives one Example per desirable completion (as its solution) whose `wrong` holds
    every undesirable completion of the prompt, so the `pairs` source (a solution against a
    wrong one) trains KTO or DPO on it; a prompt with undesirable completions only gives one
    Example without a solution (which no `pairs` item can use), one with desirable ones only
    gives demonstrations. Ids: the row's id when the group has one desirable completion,
    else the group's first row's id with "#k" for the k-th.
    """
    order: list[Example | tuple] = []
    groups: dict[tuple, list[Parsed]] = {}
    for p in parsed:
        if p.label is None:
            order.append(p.example)
            continue
        key = (p.example.prompt, p.example.meta.get("system"))
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(p)
    out: list[Example] = []
    for entry in order:
        if isinstance(entry, Example):
            out.append(entry)
            continue
        members = groups[entry]
        good = [p.example for p in members if p.label]
        wrong = tuple(p.example.solution or "" for p in members if not p.label)
        first = members[0].example
        if not good:
            out.append(replace(first, solution=None, wrong=wrong))
        for k, ex in enumerate(good, start=1):
            ex_id = ex.id if len(good) == 1 else f"{first.id}#{k}"
            out.append(replace(ex, id=ex_id, wrong=wrong))
    return out


# ---------------------------------------------------------------------------------- reading


def read_jsonl(path: Path, label: str = "") -> Iterator[tuple[str, Any, str]]:
    """(where, record or a DataError, default id) for each non-blank line of a JSONL file;
    `where` is "FILE:N", or "FILE:line N" with label "line "."""
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{label}{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                record = DataError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})")
            yield where, record, f"{path.name}:{lineno}"


@contextlib.contextmanager
def _offline() -> Iterator[Any]:
    """The `datasets` module with hub access and progress bars off (restored afterwards)."""
    import datasets
    from datasets import utils as hf_utils

    offline, bars = datasets.config.HF_HUB_OFFLINE, hf_utils.are_progress_bars_disabled()
    datasets.config.HF_HUB_OFFLINE = True
    hf_utils.disable_progress_bars()
    try:
        yield datasets
    finally:
        datasets.config.HF_HUB_OFFLINE = offline
        if not bars:
            hf_utils.enable_progress_bars()


def detect(path: Path, fmt: str | None, field: str = "path") -> tuple[str, list[Path]]:
    """(format, files) of a data path: a file, a saved dataset, a directory of shards (read
    in name order) or a glob of files (``data/train-*.parquet``)."""
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"task.params.format: must be one of {list(FORMATS)}, got {fmt!r}")
    if any(c in path.name for c in "*?["):  # a glob: data/train-*.parquet
        shards = sorted(p for p in path.parent.glob(path.name) if p.is_file())
        if not shards:
            raise ConfigError(f"task.params.{field}: no file matches {path}")
        return _of_format(path, shards, fmt, field)
    if not path.exists():
        raise ConfigError(f"task.params.{field}: file not found: {path}")
    if path.is_file():
        fmt = fmt or _SUFFIXES.get(path.suffix.lower())
        if fmt is None or fmt == "saved":
            raise ConfigError(
                f"task.params.format: cannot tell the format of {path} from its suffix; "
                f"set it to one of {[f for f in FORMATS if f != 'saved']}"
            )
        return fmt, [path]
    if fmt in (None, "saved") and any(
        (path / marker).is_file() for marker in ("dataset_dict.json", "state.json")
    ):
        return "saved", [path]
    if fmt == "saved":
        raise ConfigError(f"task.params.{field}: {path} is not a save_to_disk directory")
    shards = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    return _of_format(path, shards, fmt, field)


def _of_format(path: Path, shards: list[Path], fmt: str | None, field: str) -> tuple[str, list]:
    """(format, the shards of that format): `fmt`, or the one data format among `shards`."""
    kinds = {_SUFFIXES[p.suffix.lower()] for p in shards if p.suffix.lower() in _SUFFIXES}
    if fmt is None:
        if len(kinds) != 1:
            raise ConfigError(
                f"task.params.format: {path} holds {sorted(kinds) or 'no data files'}; "
                f"set format to one of {list(FORMATS)}"
            )
        fmt = kinds.pop()
    files = [p for p in shards if _SUFFIXES.get(p.suffix.lower()) == fmt]
    if not files:
        raise ConfigError(f"task.params.{field}: no {fmt} files in {path}")
    return fmt, files


def _load_hf(
    file: Path, fmt: str, split: str | None, cache_dir: str | None, split_key: str
) -> tuple[Any, str]:
    """(a `datasets.Dataset`, its name in errors) of one file or saved directory; saved
    directories and Arrow stream files are memory-mapped in place, other formats are
    converted once into Arrow files under `cache_dir`."""
    with _offline() as datasets:
        if fmt == "saved":
            ds = datasets.load_from_disk(str(file))
            if not isinstance(ds, datasets.DatasetDict):
                return ds, str(file)
            if split is None or split not in ds:
                raise ConfigError(
                    f"task.params.{split_key}: {file} holds splits {list(ds)}; "
                    f"got {split!r}, name one of them"
                )
            return ds[split], f"{file}[{split}]"
        if fmt == "arrow":
            with contextlib.suppress(Exception):  # an IPC stream: memory-mapped, no copy
                return datasets.Dataset.from_file(str(file)), str(file)
        kwargs: dict[str, Any] = {}
        if fmt == "csv":  # every cell as its text: "3.50" stays "3.50", "NA" stays "NA"
            with file.open(encoding="utf-8", newline="") as fh:
                header = next(csv.reader(fh), [])
            kwargs = {
                "features": datasets.Features(dict.fromkeys(header, datasets.Value("string")))
            }
            kwargs["na_filter"] = False
        try:
            ds = datasets.load_dataset(
                fmt, data_files=str(file), split="train", cache_dir=cache_dir, **kwargs
            )
        except Exception as exc:  # pyarrow / datasets parse errors: name the file
            message = " ".join(str(exc).split())[:300]
            raise DataError(
                f"{file}: cannot read as {fmt}: {type(exc).__name__}: {message}"
            ) from None
        return ds, str(file)


def _csv_cell(value: Any, lists: bool) -> Any:
    """A CSV cell as tandem reads it: an empty cell is missing; with `lists`, JSON list text
    (chat messages, wrong completions) is decoded, since a CSV cell cannot hold a list."""
    if value == "":
        return None
    if lists and isinstance(value, str) and value.lstrip().startswith("["):
        with contextlib.suppress(json.JSONDecodeError):
            decoded = json.loads(value)
            if isinstance(decoded, list):
                return decoded
    return value


def read_rows(
    path: Path,
    fmt: str | None,
    split: str | None,
    cache_dir: str | None,
    schema: Schema,
    keys: tuple[str, str] = ("path", "split"),
    default_split: str | None = None,
) -> Iterator[tuple[str, str, Any, str]]:
    """(file, where, row or a DataError, default id) for every row of `path`; `split` names
    the split of a saved DatasetDict (`default_split` when None); `keys` are the params that
    named the path and the split (for errors)."""
    fmt, files = detect(path, fmt, keys[0])
    if split is not None and fmt != "saved":
        raise ConfigError(
            f"task.params.{keys[1]}: only for a saved DatasetDict directory; {path} is {fmt}"
        )
    split = split or default_split
    mapped = {schema.columns[n] for n in FIELDS}
    lists = {schema.columns[n] for n in FIELDS if n not in ("id", "answer", "label", "system")}
    for file in files:
        if fmt == "jsonl":
            for where, record, default_id in read_jsonl(file, "line "):
                yield str(file), where, record, default_id
            continue
        ds, name = _load_hf(file, fmt, split, cache_dir, keys[1])
        cols = ds.column_names
        _check_columns(cols, schema, file)
        n = 0
        for batch in ds.iter(batch_size=1024):
            for values in zip(*(batch[c] for c in cols), strict=True):
                n += 1
                row = dict(zip(cols, values, strict=True))
                if fmt == "csv":
                    row = {
                        k: _csv_cell(v, k in lists) if k in mapped else v for k, v in row.items()
                    }
                yield str(file), f"{name}:row {n}", row, f"{file.name}:{n}"


def _check_columns(columns: list[str], schema: Schema, file: Path) -> None:
    listing = ", ".join(columns)
    for name in sorted(schema.explicit):
        if schema.columns[name] not in columns:
            raise ConfigError(
                f"task.params.fields.{name}: no column {schema.columns[name]!r} in {file}; "
                f"columns: {listing}"
            )
    sources = ("prompt", "messages", "solution", "chosen", "completion")
    if not any(schema.columns[n] in columns for n in sources):
        raise ConfigError(
            f"task.params.fields.prompt: {file} has no prompt column (looked for "
            f"{[schema.columns[n] for n in sources]}); columns: {listing}"
        )


def load_examples(
    rows: Iterator[tuple[str, str, Any, str]],
    schema: Schema,
    on_bad_row: str = "error",
    skipped: dict[str, int] | None = None,
) -> tuple[list[Example], dict[str, int]]:
    """Parse rows into Examples (labeled completions grouped, `group_labeled`); returns
    (examples, rows per kind). With on_bad_row "skip" a bad row is counted in `skipped`
    (by file) and one warning per file names the count and the first problem."""
    parsed: list[Parsed] = []
    kinds: dict[str, int] = {}
    first: dict[str, str] = {}
    for file, where, row, default_id in rows:
        try:
            if isinstance(row, DataError):
                raise row
            p = parse_row(row, schema, where, default_id)
        except DataError as exc:
            if on_bad_row != "skip":
                raise
            if skipped is not None:
                skipped[file] = skipped.get(file, 0) + 1
            first.setdefault(file, str(exc))
            continue
        parsed.append(p)
        kinds[p.kind] = kinds.get(p.kind, 0) + 1
    for file, problem in first.items():
        n = skipped[file] if skipped is not None else 0
        warnings.warn(
            f"{file}: skipped {n} bad row(s) (task.params.on_bad_row: skip); first: {problem}",
            TandemWarning,
            stacklevel=3,
        )
    return group_labeled(parsed), kinds


# ----------------------------------------------------------------------------------- splits


def split_pools(
    main: list[Example], eval_pool: list[Example] | None, ood: list[Example] | None
) -> dict[str, list[Example]]:
    """train / eval / ood pools: with `eval_pool`, train is `main` minus any prompt in it;
    without, a stable hash of the prompt puts about 20% of `main` in eval. ood defaults to
    eval."""
    if eval_pool is not None:
        eval_prompts = {ex.prompt for ex in eval_pool}
        train = [ex for ex in main if ex.prompt not in eval_prompts]
    else:
        train = [ex for ex in main if not is_eval_key(ex.prompt)]
        eval_pool = [ex for ex in main if is_eval_key(ex.prompt)]
    return {"train": train, "eval": eval_pool, "ood": eval_pool if ood is None else ood}


def draw(pools: dict[str, list[Example]], task: str, split: Split, n: int, seed: int) -> list:
    """`n` examples of `split`, the pool shuffled by `seed` and repeated (reshuffled) as needed."""
    check_split(split, n)
    pool = pools[split]
    if n and not pool:
        raise DataError(f"{task}: the {split} split is empty (too few rows in the data?)")
    rng = random.Random(f"tandem.{task}:{split}:{seed}")
    out: list[Example] = []
    while len(out) < n:
        out += rng.sample(pool, len(pool))
    return out[:n]


def verifier_of(params: dict) -> tuple[str, Any]:
    """(name, function) of the `verifier` param (default 'exact'); raises ConfigError."""
    name = params.get("verifier", "exact")
    if name not in VERIFIERS:
        raise ConfigError(f"task.params.verifier: must be one of {list(VERIFIERS)}, got {name!r}")
    return name, VERIFIERS[name]


# ------------------------------------------------------------------------------------- task


class DatasetTask:
    """Examples from local datasets (see the module docstring).

    Attributes:
        pools: the train / eval / ood examples.
        kinds: rows read per kind (problem, demo, pair, labeled), over every file.
        skipped: bad rows skipped (``on_bad_row: skip``), over every file.
        skipped_by_file: the same, by file.
    """

    name = "dataset"

    def __init__(self, params: dict | None = None) -> None:
        params = check_params("dataset", params, PARAMS)
        if "path" not in params:
            raise ConfigError("task.params.path: required for task 'dataset' (a file or folder)")
        verifier, self.verifier = verifier_of(params)
        on_bad_row = params.get("on_bad_row", "error")
        if on_bad_row not in BAD_ROW:
            raise ConfigError(
                f"task.params.on_bad_row: must be one of {list(BAD_ROW)}, got {on_bad_row!r}"
            )
        schema = make_schema(params.get("fields"), multi_turn=params.get("multi_turn", "error"))
        cache_dir = params.get("cache_dir")
        self.skipped_by_file: dict[str, int] = {}
        self.kinds: dict[str, int] = {}

        def load(path_key: str, split_key: str) -> list[Example]:
            path = Path(params.get(path_key) or params["path"])
            keys = (path_key if path_key in params else "path", split_key)
            default = "train" if path_key == "path" else None
            fmt = params.get("format")
            rows = read_rows(path, fmt, params.get(split_key), cache_dir, schema, keys, default)
            exs, kinds = load_examples(rows, schema, on_bad_row, self.skipped_by_file)
            for k, v in kinds.items():
                self.kinds[k] = self.kinds.get(k, 0) + v
            if not exs:
                raise DataError(f"{path}: no examples (no rows, or every row was bad)")
            return exs

        main = load("path", "split")
        held: dict[str, list[Example] | None] = {}
        for part in ("eval", "ood"):
            path_key, split_key = f"{part}_path", f"{part}_split"
            given = params.get(path_key) or params.get(split_key)
            held[part] = load(path_key, split_key) if given else None
        self.pools = split_pools(main, held["eval"], held["ood"])
        self.description = f"{len(main)} examples from {params['path']} ({verifier} verifier)"

    @property
    def skipped(self) -> int:
        """Bad rows skipped over every file (``on_bad_row: skip``)."""
        return sum(self.skipped_by_file.values())

    def examples(self, split: Split, n: int, seed: int = 0) -> list[Example]:
        """`n` examples of `split`, shuffled by `seed`, repeating the pool when needed."""
        return draw(self.pools, "dataset", split, n, seed)

    def score(self, example: Example, completion: str) -> Score:
        """The verifier on `completion` and the answer; 0 when the row had no answer."""
        if not example.answer:
            return Score(0.0, "no reference answer")
        return self.verifier(completion, example.answer)
