"""Malformed input, table-driven: configs, overrides, recipe files, data files, model
directories, task names, reward functions and checkpoint directories. Each gives one line on
stderr that names the problem (and what is allowed where there is a list), exit status 2, no
traceback, and changes nothing on disk: an existing run's files are byte-identical afterwards
and no new run directory is left with checkpoints."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tandem.cli import main
from tandem.train.loop import train

from .conftest import TINY, tiny_config

RUN = ["model.name=tiny", "task.name=add", "steps=1", "eval.prompts=0"]
RUN += ["progress=false", "tensorboard=false", "max_new_tokens=4", "rewards.workers=0"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    run = d / "existing"
    train(
        tiny_config(run, "method=sft", "steps=2", "save_every=1", "eval.prompts=0"),
        log=lambda s: None,
    )
    corrupt = d / "corrupt"
    shutil.copytree(run, corrupt)
    for p in (corrupt / "checkpoints").glob("step_*"):
        (p / "model" / "model.safetensors").write_bytes(b"junk")
    no_ckpt = d / "no_ckpt"
    no_ckpt.mkdir()
    (no_ckpt / "config.yaml").write_text((run / "config.yaml").read_text())
    empty_model = d / "empty_model"
    empty_model.mkdir()
    bad_model = d / "bad_model"
    bad_model.mkdir()
    (bad_model / "config.json").write_text("{not json")
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "syntax.yaml").write_text("steps: 3\nlr: [1, 2\n")
    (d / "unknown.yaml").write_text("method: sft\nstepz: 3\n")
    (d / "bad_json.jsonl").write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": \n')
    (d / "no_answer.jsonl").write_text('{"prompt": "1+1="}\n')
    (d / "bad_answer.jsonl").write_text('{"prompt": "1+1=", "answer": [2]}\n')
    (d / "blank_prompt.jsonl").write_text('{"prompt": "  ", "answer": "2"}\n')
    (d / "empty.jsonl").write_text("")
    (d / "syntax_reward.py").write_text("def reward(p, c, a):\n  return (\n")
    (d / "reward.py").write_text("def reward(p, c, a):\n    return 1.0\nvalue = 3\n")
    return {
        "d": d,
        "run": run,
        "corrupt": corrupt,
        "no_ckpt": no_ckpt,
        "empty_model": empty_model,
        "bad_model": bad_model,
    }


def _jsonl(name: str) -> list[str]:
    return ["task.name=jsonl", f"task.params.path={{d}}/{name}"]


# (case id, argv after `tandem`, a piece the one-line message must contain)
CASES = [
    # config values and overrides
    (
        "agg",
        ["train", *RUN, "objective.terms.pg.agg=mean"],
        "objective.terms.pg.agg: got 'mean'; allowed",
    ),
    ("unknown-field", ["train", *RUN, "stepz=3"], "stepz: unknown field"),
    ("negative-steps", ["train", *RUN, "steps=-1"], "steps"),
    ("lr-text", ["train", *RUN, "lr=fast"], "lr"),
    ("zero-lr", ["train", *RUN, "lr=0"], "lr"),
    ("method", ["train", *RUN, "method=nope"], "nope"),
    ("device", ["train", *RUN, "model.device=tpu"], "model.device"),
    ("dtype", ["train", *RUN, "model.dtype=fp8"], "fp8"),
    (
        "term-kind",
        ["train", *RUN, "objective.terms.pg.kind=nope"],
        "objective.terms.pg.kind: got 'nope'",
    ),
    ("source-kind", ["train", *RUN, "objective.sources.rollouts.kind=nope"], "allowed"),
    (
        "controller-kind",
        ["train", *RUN, "method=chord", "objective.controllers.mu.kind=nope"],
        "allowed",
    ),
    ("coefficient", ["train", *RUN, "objective.terms.pg.coef=2+mu"], "coefficient '2+mu'"),
    ("unknown-controller", ["train", *RUN, "objective.terms.pg.coef=mu"], "mu"),
    ("selector", ["train", *RUN, "objective.sources.rollouts.select={{kind: nope}}"], "allowed"),
    (
        "term-source",
        ["train", *RUN, "method=sft", "objective.terms.sft.sources=[nope]"],
        "unknown source",
    ),
    ("luffy-sizes", ["train", *RUN, "method=luffy", "samples_per_prompt=1"], "samples_per_prompt"),
    ("on-error", ["train", *RUN, "rewards.on_error=skip"], "rewards.on_error: got 'skip'; allowed"),
    ("workers", ["train", *RUN, "rewards.workers=-1"], "rewards.workers"),
    (
        "stage-method",
        ["train", *RUN, "method=remix", "stages.mix.method=null"],
        "stages.mix.method",
    ),
    ("bad-override", ["train", *RUN, "justaword"], "justaword"),
    # recipe files
    ("no-recipe", ["train", "{d}/missing.yaml"], "recipe not found"),
    ("recipe-list", ["train", "{d}/list.yaml"], "list.yaml"),
    ("recipe-syntax", ["train", "{d}/syntax.yaml"], "syntax.yaml"),
    ("recipe-field", ["train", "{d}/unknown.yaml", "output_dir={d}/r"], "stepz: unknown field"),
    # tasks and data files
    ("task", ["train", *RUN, "task.name=nope"], "nope"),
    ("task-param", ["train", *RUN, "task.params.digitz=2"], "task.params.digitz"),
    ("rgym-dataset", ["train", *RUN, "task.name=rg:nope"], "nope"),
    (
        "jsonl-missing",
        ["train", *RUN, "task.name=jsonl", "task.params.path={d}/nope.jsonl"],
        "file not found",
    ),
    ("jsonl-json", ["train", *RUN, *_jsonl("bad_json.jsonl")], "bad_json.jsonl:2"),
    (
        "jsonl-answer",
        ["train", *RUN, *_jsonl("no_answer.jsonl")],
        "no_answer.jsonl:1: missing required field 'answer'",
    ),
    ("jsonl-answer-type", ["train", *RUN, *_jsonl("bad_answer.jsonl")], "bad_answer.jsonl:1"),
    ("jsonl-blank", ["train", *RUN, *_jsonl("blank_prompt.jsonl")], "blank_prompt.jsonl:1"),
    ("jsonl-empty", ["train", *RUN, *_jsonl("empty.jsonl")], "empty.jsonl"),
    # model directories
    ("model-missing", ["train", *RUN, "model.name={d}/nope"], "unknown model"),
    ("model-empty", ["train", *RUN, "model.name={empty_model}"], "could not load a HF model"),
    ("model-config", ["train", *RUN, "model.name={bad_model}"], "could not load a HF model"),
    # reward functions
    ("reward-file", ["train", *RUN, "rewards.function={d}/nope.py:reward"], "rewards.function"),
    ("reward-no-name", ["train", *RUN, "rewards.function={d}/reward.py"], "rewards.function"),
    (
        "reward-missing-name",
        ["train", *RUN, "rewards.function={d}/reward.py:nope"],
        "rewards.function",
    ),
    (
        "reward-not-callable",
        ["train", *RUN, "rewards.function={d}/reward.py:value"],
        "rewards.function",
    ),
    (
        "reward-syntax",
        ["train", *RUN, "rewards.function={d}/syntax_reward.py:reward"],
        "rewards.function",
    ),
    # checkpoint and run directories
    ("resume-missing", ["train", "--resume", "{d}/nope"], "--resume"),
    ("resume-no-ckpt", ["train", "--resume", "{no_ckpt}"], "no checkpoint"),
    ("resume-corrupt", ["train", "--resume", "{corrupt}"], "no intact checkpoint"),
    ("resume-changed", ["train", "--resume", "{run}", "steps=3", "lr=1e-3"], "lr: 0.003 -> 0.001"),
    ("existing-run", ["train", *TINY, "method=sft", "output_dir={run}"], "already holds a run"),
]


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_the_table_has_at_least_30_cases():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case, argv, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_line_and_changes_nothing(case, argv, needle, files, capsys):
    subst = {k: str(v) for k, v in files.items()}
    out_dir = files["d"] / f"out-{case}"
    argv = [a.format(**subst) for a in argv]
    if argv[1] != "--resume" and not any(a.startswith("output_dir=") for a in argv):
        argv.append(f"output_dir={out_dir}")
    before = {k: _tree(files[k]) for k in ("run", "corrupt", "no_ckpt")}
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("tandem: ") and needle.format(**subst) in err, err
    assert {k: _tree(files[k]) for k in before} == before
    assert not (out_dir / "checkpoints").exists()
