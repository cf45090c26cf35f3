"""What a run writes for people: sample completions (samples.jsonl and TensorBoard text) and a
Weights & Biases run in offline mode (no account, no network)."""

from __future__ import annotations

import json
import sys

import pytest

from tandem.errors import ConfigError
from tandem.report.metrics import read_metrics
from tandem.train.loop import train, train_from_files

from .conftest import tiny_config

RUN = ["method=grpo", "prompts_per_step=2", "samples_per_prompt=4", "eval.prompts=4"]


def test_sample_completions_go_to_jsonl_and_tensorboard_text(tmp_path):
    cfg = tiny_config(
        tmp_path, *RUN, "steps=4", "tensorboard=true", "log.samples_every=2", "log.samples=3"
    )
    train(cfg, log=lambda s: None)
    rows = read_metrics(tmp_path / "samples.jsonl")
    assert sorted({r["step"] for r in rows}) == [1, 2, 4]  # the first step, then every 2
    for step in (1, 2, 4):
        mine = [r for r in rows if r["step"] == step]
        assert len(mine) == 3 and {r["source"] for r in mine} == {"rollouts"}
    assert all(r["prompt"].strip() and r["role"] == "sampled" for r in rows)
    assert all(r["reward"] in (0.0, 1.0) for r in rows)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    assert "samples/rollouts/text_summary" in acc.Tags()["tensors"]
    texts = acc.Tensors("samples/rollouts/text_summary")
    assert [t.step for t in texts] == [1, 2, 4]
    shown = texts[-1].tensor_proto.string_val[0].decode()
    last = [r for r in rows if r["step"] == 4]
    assert last[0]["prompt"] in shown and last[0]["completion"] in shown


def test_resume_keeps_the_samples_of_the_steps_it_keeps(tmp_path):
    args = [*RUN, "log.samples_every=1", "log.samples=1"]
    train(tiny_config(tmp_path / "full", *args, "steps=3"), log=lambda s: None)
    train(tiny_config(tmp_path / "part", *args, "steps=2", "save_every=1"), log=lambda s: None)
    train_from_files(None, ["steps=3"], resume_dir=str(tmp_path / "part"))
    a = read_metrics(tmp_path / "full" / "samples.jsonl")
    assert a == read_metrics(tmp_path / "part" / "samples.jsonl")


def test_wandb_offline_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_config(tmp_path, *RUN, "steps=2", "log.wandb=true", "log.samples_every=1")
    train(cfg, log=lambda s: None)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    run_id = (tmp_path / "wandb_id").read_text().strip()
    assert runs[0].name.endswith(run_id)
    log = next(runs[0].glob("run-*.wandb")).read_bytes()
    for key in (b"reward/mean", b"loss/total", b"eval/accuracy"):
        assert key in log, key
    tables = sorted((runs[0] / "files" / "media" / "table").glob("samples_*.table.json"))
    assert len(tables) == 2
    data = json.loads(tables[-1].read_text())
    assert data["columns"][:4] == ["step", "source", "prompt", "completion"]
    completions = {r["completion"] for r in read_metrics(tmp_path / "samples.jsonl")}
    assert {row[3] for row in data["data"]} <= completions


def test_wandb_missing_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(ConfigError, match="log.wandb"):
        train(tiny_config(tmp_path, *RUN, "steps=1", "log.wandb=true"), log=lambda s: None)
