"""dataset task: every format, the field mapping, row kinds, chat messages, bad rows (file and
row, or skipped and counted), offline loading, and short sft / dpo / kto runs on parquet."""

from __future__ import annotations

import json
import math
import pickle
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.feather as feather
import pytest
from datasets import Dataset, DatasetDict

from tandem.config import load_config
from tandem.errors import ConfigError, DataError
from tandem.report.metrics import read_metrics
from tandem.tasks import get_task
from tandem.train.loop import train

from .conftest import TINY


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Loading must never reach a hub: any socket connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the dataset task opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def load(tmp_path: Path, path, **params):
    return get_task("dataset", {"path": str(path), "cache_dir": str(tmp_path / "cache"), **params})


def problems(n: int = 30) -> list[dict]:
    """Rows of kind problem and (every third) demo: 'What is i + 1?' -> i + 1."""
    rows = []
    for i in range(n):
        row = {"prompt": f"What is {i} + 1?", "answer": str(i + 1), "solution": None}
        if i % 3 == 0:
            row["solution"] = f"{i} + 1 = {i + 1}"
        rows.append(row)
    return rows


def every_example(task) -> list:
    return task.pools["train"] + task.pools["eval"]


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def write(fmt: str, rows: list[dict], data: Path) -> Path:
    """`rows` written in format `fmt` under the folder `data`; returns what `path` names."""
    data.mkdir(parents=True, exist_ok=True)
    ds = Dataset.from_list(rows)
    if fmt == "parquet":
        ds.to_parquet(str(data / "d.parquet"))
        return data / "d.parquet"
    if fmt == "saved":
        ds.save_to_disk(str(data / "saved"))
        return data / "saved"
    if fmt == "arrow_stream":  # the shard file save_to_disk writes
        ds.save_to_disk(str(data / "saved"))
        return next((data / "saved").glob("*.arrow"))
    if fmt == "arrow_file":  # Arrow IPC file (feather v2), as pyarrow writes it
        feather.write_feather(pa.Table.from_pylist(rows), str(data / "d.arrow"))
        return data / "d.arrow"
    if fmt == "csv":
        ds.to_csv(str(data / "d.csv"), index=False)
        return data / "d.csv"
    if fmt == "json":
        (data / "d.json").write_text(json.dumps(rows))
        return data / "d.json"
    if fmt == "jsonl":
        (data / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return data / "d.jsonl"
    if fmt == "shards":  # a folder of parquet shards, as a hub snapshot has them
        half = len(rows) // 2
        (data / "shards").mkdir()
        Dataset.from_list(rows[:half]).to_parquet(str(data / "shards" / "train-0.parquet"))
        Dataset.from_list(rows[half:]).to_parquet(str(data / "shards" / "train-1.parquet"))
        return data / "shards"
    if fmt == "glob":  # train shards next to a test shard: a glob picks the train ones
        write("shards", rows, data)
        Dataset.from_list(problems(40)[30:]).to_parquet(str(data / "shards" / "test-0.parquet"))
        return data / "shards" / "train-*.parquet"
    raise AssertionError(fmt)


FORMATS = [
    "parquet",
    "saved",
    "arrow_stream",
    "arrow_file",
    "csv",
    "json",
    "jsonl",
    "shards",
    "glob",
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format(tmp_path, fmt):
    rows = problems()
    path = write(fmt, rows, tmp_path / "data")
    before = files_under(tmp_path / "data")
    task = load(tmp_path, path)
    exs = every_example(task)
    assert sorted(e.prompt for e in exs) == sorted(r["prompt"] for r in rows)
    assert task.kinds == {"problem": 20, "demo": 10}
    by_prompt = {e.prompt: e for e in exs}
    for r in rows:
        ex = by_prompt[r["prompt"]]
        assert ex.answer == r["answer"] and ex.solution == r["solution"] and ex.wrong == ()
    assert not {e.prompt for e in task.pools["train"]} & {e.prompt for e in task.pools["eval"]}
    assert task.examples("train", 7, seed=3) == task.examples("train", 7, seed=3)
    assert len(task.examples("train", 100)) == 100  # the finite pool repeats
    assert files_under(tmp_path / "data") == before  # nothing written next to the data
    assert pickle.loads(pickle.dumps(task)).pools == task.pools  # reward workers get a copy
    ex = by_prompt["What is 4 + 1?"]
    assert task.score(ex, "5").reward == 1.0 and task.score(ex, "6").reward == 0.0


def test_field_mapping_and_meta(tmp_path):
    rows = [
        {"question": f"Q{i}?", "gold": i, "worked": f"A{i}", "topic": "t", "uid": f"u{i}"}
        for i in range(10)
    ]
    path = write("parquet", rows, tmp_path / "data")
    fields = {"prompt": "question", "answer": "gold", "solution": "worked", "id": "uid"}
    task = load(tmp_path, path, fields=fields, verifier="number")
    ex = next(e for e in every_example(task) if e.prompt == "Q3?")
    assert (ex.id, ex.answer, ex.solution, ex.meta) == ("u3", "3", "A3", {"topic": "t"})
    assert task.score(ex, "It is 3.").reward == 1.0
    with pytest.raises(ConfigError, match=r"fields\.prompt: no column 'query'.*columns: question"):
        load(tmp_path, path, fields={**fields, "prompt": "query"})
    with pytest.raises(ConfigError, match=r"fields\.question: unknown field; allowed: id"):
        load(tmp_path, path, fields={"question": "prompt"})
    with pytest.raises(ConfigError, match=r"fields\.prompt: .* has no prompt column"):
        load(tmp_path, path)  # no column is called prompt / messages / solution ...


def chat(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in turns]


def test_chat_messages(tmp_path):
    rows = [
        {"messages": chat(("system", "Be brief."), ("user", "Hi?"), ("assistant", "Hello."))},
        {"messages": chat(("user", "Sky colour?")), "answer": "blue"},
        {"prompt": "ignored text", "messages": chat(("user", "Messages win."))},
        {"prompt": "From the prompt column.", "messages": chat(("assistant", "A demo."))},
    ]
    task = load(tmp_path, write("jsonl", rows, tmp_path / "data"))
    by = {e.prompt: e for e in every_example(task)}
    assert set(by) == {"Hi?", "Sky colour?", "Messages win.", "From the prompt column."}
    assert by["Hi?"].solution == "Hello." and by["Hi?"].meta == {"system": "Be brief."}
    assert by["Sky colour?"].solution is None and by["Sky colour?"].answer == "blue"
    assert by["From the prompt column."].solution == "A demo."
    assert task.kinds == {"demo": 2, "problem": 2}
    # a demo without an answer: the verifier cannot score it
    assert task.score(by["Hi?"], "Hello.").reason == "no reference answer"

    # CSV cells hold the messages as JSON text
    csv_rows = [{"messages": json.dumps(r["messages"])} for r in rows[:2]]
    task = load(tmp_path, write("csv", csv_rows, tmp_path / "csv"))
    assert {e.prompt for e in every_example(task)} == {"Hi?", "Sky colour?"}

    # multi-turn history: an error unless multi_turn: last_turn
    long = [{"messages": chat(("user", "1+1?"), ("assistant", "2"), ("user", "times 3?"))}]
    path = write("parquet", long, tmp_path / "multi")
    with pytest.raises(DataError, match=r"d\.parquet:row 1: .*multi_turn: last_turn"):
        load(tmp_path, path)
    (ex,) = every_example(load(tmp_path, path, multi_turn="last_turn"))
    assert ex.prompt == "times 3?" and ex.meta["history"] == long[0]["messages"][:2]
    with pytest.raises(ConfigError, match=r"multi_turn: must be one of \['error', 'last_turn'\]"):
        load(tmp_path, path, multi_turn="all")


def test_preference_pairs(tmp_path):
    rows = [{"prompt": f"P{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(6)]
    task = load(tmp_path, write("parquet", rows, tmp_path / "data"))
    by = {e.prompt: e for e in every_example(task)}
    assert (by["P2"].solution, by["P2"].wrong) == ("good 2", ("bad 2",))
    assert task.kinds == {"pair": 6}
    # TRL's conversational form (list columns): the prompt is the conversation before the
    # completions ...
    sys_user = (("system", "S"), ("user", "Conv?"))
    conv = [
        {"chosen": chat(*sys_user, ("assistant", "yes")), "rejected": chat(("assistant", "no"))}
    ]
    (ex,) = every_example(load(tmp_path, write("parquet", conv, tmp_path / "conv")))
    assert (ex.prompt, ex.solution, ex.wrong, ex.meta) == ("Conv?", "yes", ("no",), {"system": "S"})
    # ... or a prompt column of messages; both sides must continue the same conversation
    conv = [{"prompt": chat(("user", "Q")), "chosen": "y", "rejected": "n"}]
    (ex,) = every_example(load(tmp_path, write("jsonl", conv, tmp_path / "conv2")))
    assert (ex.prompt, ex.solution, ex.wrong) == ("Q", "y", ("n",))
    conv = [
        {
            "chosen": chat(*sys_user, ("assistant", "y")),
            "rejected": chat(*sys_user[1:], ("assistant", "n")),
        }
    ]
    with pytest.raises(DataError, match=r"line 1: 'chosen' and 'rejected' continue different"):
        load(tmp_path, write("jsonl", conv, tmp_path / "conv3"))


def test_labeled_singletons_grouped_by_prompt(tmp_path):
    rows = [
        {"prompt": "A", "completion": "a1", "label": True},
        {"prompt": "B", "completion": "b-bad", "label": False},
        {"prompt": "A", "completion": "a-bad", "label": False},
        {"prompt": "A", "completion": "a2", "label": True},
        {"prompt": "C", "completion": "c1", "label": True},
    ]
    task = load(tmp_path, write("jsonl", rows, tmp_path / "data"))
    exs = sorted(every_example(task), key=lambda e: e.id)
    got = [(e.id, e.prompt, e.solution, e.wrong) for e in exs]
    assert got == [
        ("d.jsonl:1#1", "A", "a1", ("a-bad",)),  # every desirable completion of A ...
        ("d.jsonl:1#2", "A", "a2", ("a-bad",)),  # ... against A's undesirable ones
        ("d.jsonl:2", "B", None, ("b-bad",)),  # undesirable only: no pair can use it
        ("d.jsonl:5", "C", "c1", ()),  # desirable only: a demonstration
    ]
    assert task.kinds == {"labeled": 5}
    # chat form: the final assistant turn is the labeled completion
    conv = [
        {"messages": chat(("user", "Q"), ("assistant", text)), "label": ok}
        for text, ok in (("right", True), ("wrong", False))
    ]
    (ex,) = every_example(load(tmp_path, write("parquet", conv, tmp_path / "conv")))
    assert (ex.prompt, ex.solution, ex.wrong) == ("Q", "right", ("wrong",))
    # labels as CSV / integer text
    csv = [{"prompt": "A", "completion": "x", "label": v} for v in ("1", "false", "0")]
    exs = every_example(load(tmp_path, write("csv", csv, tmp_path / "csv")))
    assert [(e.solution, e.wrong) for e in exs] == [("x", ("x", "x"))]


def test_csv_cells_are_text(tmp_path):
    (tmp_path / "d.csv").write_text(
        'prompt,answer,wrong\nHalf of 7?,3.50,"[""3.5 apples"", ""4""]"\nUnknown?,NA,\n'
    )
    by = {e.prompt: e for e in every_example(load(tmp_path, tmp_path / "d.csv"))}
    assert (by["Half of 7?"].answer, by["Half of 7?"].wrong) == ("3.50", ("3.5 apples", "4"))
    assert (by["Unknown?"].answer, by["Unknown?"].wrong) == ("NA", ())  # empty cell: missing


BAD_ROWS = [
    ({"prompt": None, "answer": "1"}, "missing required field 'prompt'"),
    ({"prompt": "   ", "answer": "1"}, "'prompt' must be a non-empty string"),
    ({"prompt": "p", "chosen": "c"}, "missing required field 'rejected' of a pair"),
    ({"prompt": "p", "completion": "c"}, "missing required field 'label'"),
    ({"prompt": "p", "completion": "c", "label": "maybe"}, "must be true/false or 1/0"),
    ({"messages": chat(("assistant", "only"))}, "missing required field 'prompt'"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_ROWS)
def test_bad_row_names_file_and_row(tmp_path, bad, message):
    good = {"prompt": "ok", "answer": "1"}
    path = write("jsonl", [good, good, bad], tmp_path / "data")
    with pytest.raises(DataError, match=r"d\.jsonl:line 3: ") as info:
        load(tmp_path, path)
    assert message in str(info.value)


def test_bad_rows_in_parquet_and_skip(tmp_path):
    rows = [{"prompt": f"p{i}", "answer": str(i)} for i in range(10)]
    rows[3]["prompt"] = None
    rows[7]["prompt"] = ""
    path = write("parquet", rows, tmp_path / "data")
    with pytest.raises(DataError, match=r"d\.parquet:row 4: missing required field 'prompt'"):
        load(tmp_path, path)
    with pytest.warns(UserWarning, match=r"d\.parquet: skipped 2 bad row\(s\).*row 4"):
        task = load(tmp_path, path, on_bad_row="skip")
    assert task.skipped == 2 and len(every_example(task)) == 8
    with pytest.raises(ConfigError, match=r"on_bad_row: must be one of \['error', 'skip'\]"):
        load(tmp_path, path, on_bad_row="ignore")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a"}\n{oops\n')
    with pytest.warns(UserWarning, match="skipped 1"):
        assert load(tmp_path, tmp_path / "broken.jsonl", on_bad_row="skip").skipped == 1


def test_saved_splits_and_config_errors(tmp_path):
    train_rows, test_rows = problems(20), problems(25)[20:]
    dd = DatasetDict(train=Dataset.from_list(train_rows), test=Dataset.from_list(test_rows))
    dd.save_to_disk(str(tmp_path / "dd"))
    task = load(tmp_path, tmp_path / "dd", eval_split="test")
    assert len(task.pools["train"]) == 20 and len(task.pools["eval"]) == 5
    assert task.pools["ood"] == task.pools["eval"]
    with pytest.raises(ConfigError, match=r"split: .* holds splits \['train', 'test'\]"):
        load(tmp_path, tmp_path / "dd", split="validation")
    path = write("parquet", problems(), tmp_path / "data")
    with pytest.raises(ConfigError, match=r"split: only for a saved DatasetDict"):
        load(tmp_path, path, split="train")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"format: cannot tell the format"):
        load(tmp_path, tmp_path / "d.txt")
    with pytest.raises(ConfigError, match=r"format: must be one of \['saved', 'parquet'"):
        load(tmp_path, path, format="xlsx")
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path, tmp_path / "missing.parquet")
    with pytest.raises(ConfigError, match="path: required"):
        get_task("dataset", {})


def run_losses(tmp_path: Path, name: str, rows: list[dict], *overrides: str) -> list[float]:
    path = write("parquet", rows, tmp_path / name)
    tiny = [o for o in TINY if not o.startswith("task.")]  # the tiny model, no add task
    cfg = load_config(
        None,
        [
            *tiny,
            f"output_dir={tmp_path / f'run-{name}'}",
            "task.name=dataset",
            f"task.params.path={path}",
            f"task.params.cache_dir={tmp_path / 'cache'}",
            "steps=2",
            "eval.before=false",
            "eval.prompts=0",
            *overrides,
        ],
    )
    train(cfg, log=lambda s: None)
    metrics = read_metrics(tmp_path / f"run-{name}" / "metrics.jsonl")
    return [r["loss/total"] for r in metrics if "loss/total" in r]


def test_short_sft_dpo_kto_runs_on_parquet(tmp_path):
    sums = [(a, b) for a in range(10) for b in range(10)]
    demos = [{"prompt": f"{a}+{b}=", "solution": str(a + b), "answer": str(a + b)} for a, b in sums]
    losses = run_losses(tmp_path, "sft", demos, "method=sft")
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    pairs = [
        {"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)} for a, b in sums
    ]
    losses = run_losses(tmp_path, "dpo", pairs, "method=dpo")
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)  # policy = reference at step 1
    # KTO on labeled single completions, one row each (grouped by prompt into pairs' rows)
    labeled = [
        {"prompt": f"{a}+{b}=", "completion": str(a + b + d), "label": d == 0}
        for a, b in sums
        for d in (0, 1)
    ]
    losses = run_losses(tmp_path, "kto", labeled, "method=kto")
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)


def test_kto_on_unpaired_labels_with_one_kind_per_prompt(tmp_path):
    """pairs mode 'labeled': every labeled completion on its own, so prompts with only an
    undesirable completion train too and the desirable / undesirable counts differ."""
    sums = [(a, b) for a in range(10) for b in range(10)]
    rows = [  # a third of the prompts have only a wrong completion, the rest only a right one
        {"prompt": f"{a}+{b}=", "completion": str(a + b + (i % 3 == 0)), "label": i % 3 != 0}
        for i, (a, b) in enumerate(sums)
    ]
    losses = run_losses(
        tmp_path, "kto-labeled", rows, "method=kto", "objective.sources.pairs.mode=labeled"
    )
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    m = [
        r for r in read_metrics(tmp_path / "run-kto-labeled" / "metrics.jsonl") if "loss/total" in r
    ]
    for r in m:
        assert r["pairs/undesirable"] > 0 and r["pairs/desirable"] > r["pairs/undesirable"]
    with pytest.raises(ConfigError, match="mode 'labeled'"):
        run_losses(
            tmp_path, "dpo-labeled", rows, "method=dpo", "objective.sources.pairs.mode=labeled"
        )


def test_the_cli_prints_tandem_warnings_as_one_line():
    from tandem.cli import _format_warning
    from tandem.errors import TandemWarning

    assert _format_warning("d.parquet: skipped 2", TandemWarning, "x.py", 3) == (
        "tandem: warning: d.parquet: skipped 2\n"
    )
    assert "UserWarning" in _format_warning("other", UserWarning, "x.py", 3)
