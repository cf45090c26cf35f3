"""Never lose a run (docs/reliability.md): stop signals, kills at random moments, corrupt and
missing checkpoints, a failing save, the run lock, a changed config on resume, non-finite steps.
The kill tests drive the real `tandem train` command in subprocesses on the tiny model."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tandem.errors import TandemError
from tandem.report.metrics import read_metrics
from tandem.train import checkpoint as ck
from tandem.train.loop import train, train_from_files

from .conftest import TINY, tiny_config

BASE = [
    *TINY,
    "eval.prompts=0",
    "progress=false",
    "steps=8",
    "save_every=1",
    "prompts_per_step=4",
    "samples_per_prompt=4",
    "demos_per_step=8",
]


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tandem.cli", "train", *args]


def _rows(run: Path) -> list[dict]:
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith("perf/")}  # noqa: E731
    return [strip(r) for r in read_metrics(run / "metrics.jsonl")]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(ck.latest_checkpoint(run) / "model" / "model.safetensors")


def _step_rows(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _interrupt(cmd: list[str], run: Path, sig: int, after_rows: int, rng: random.Random) -> int:
    """Start `cmd`; once it has started training (its plan is printed: the signal handlers are
    in place and a resumed run has cut its metrics back to the checkpoint) and the run has
    logged `after_rows` rows, wait a random moment and send `sig`; returns the exit status."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    started = threading.Event()

    def read() -> None:
        for line in p.stdout:
            if line.startswith("per step:"):
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.time() + 120
    while p.poll() is None and time.time() < deadline:
        if started.is_set() and _step_rows(run) >= after_rows:
            break
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.25))
    if p.poll() is None:
        p.send_signal(sig)
    p.wait(timeout=120)
    reader.join(timeout=10)
    return p.returncode


@pytest.mark.parametrize(
    "method", ["grpo", "chord", "relift"]
)  # a plain preset, a hybrid with a controller, one with a buffer and a second optimizer
def test_kills_at_random_moments_then_resume_are_exact(method, tmp_path):
    args = [*BASE, f"method={method}"]
    if method == "chord":
        args += [
            "objective.controllers.mu.warmup_steps=2",
            "objective.controllers.mu.decay_steps=4",
        ]
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run(_cmd(*args, f"output_dir={full}"), check=True, capture_output=True)
    rng = random.Random(method)
    plan = [(signal.SIGKILL, 2), (signal.SIGTERM, 3), (signal.SIGKILL, 5), (signal.SIGTERM, 6)]
    codes = []
    for i, (sig, rows) in enumerate(plan):
        cmd = _cmd(*args, f"output_dir={cut}") if i == 0 else _cmd("--resume", str(cut))
        codes.append(_interrupt(cmd, cut, sig, rows, rng))
    done = subprocess.run(_cmd("--resume", str(cut)), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    # SIGKILL: -9; SIGTERM: 0 (finished the step, saved, said how to resume) unless the run had
    # already ended
    assert codes[0] == -signal.SIGKILL and codes[1] == 0, codes
    assert _rows(cut) == _rows(full)
    a, b = _weights(full), _weights(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_saves_says_how_to_resume_and_exits_0(tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen(
        _cmd(*BASE, "method=grpo", "steps=500", "save_every=0", f"output_dir={run}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    while _step_rows(run) < 3:
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0, out[-2000:]
    assert f"continue with: tandem train --resume {run}" in out
    ckpt = ck.latest_checkpoint(run)
    assert ckpt is not None and ck.verify_checkpoint(ckpt) is None
    assert int(ckpt.name.split("_")[1]) == _step_rows(run)  # no finished step lost


def test_second_signal_abandons_the_step_and_keeps_the_last_checkpoint(tmp_path):
    """The second SIGINT is sent as soon as the run says it got the first (POSIX signals sent
    back to back arrive as one), inside a step of about a second."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [*BASE, "method=grpo", "steps=500", "save_every=1", f"output_dir={run}"]
    cmd += ["prompts_per_step=16", "samples_per_prompt=16", "max_new_tokens=48"]
    p = subprocess.Popen(
        _cmd(*cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    lines: list[str] = []

    def read() -> None:
        for line in p.stdout:
            lines.append(line)
            if line.startswith("SIGINT: finishing"):
                p.send_signal(signal.SIGINT)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while _step_rows(run) < 2 and p.poll() is None:
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    p.wait(timeout=120)
    reader.join(timeout=10)
    out = "".join(lines)
    assert p.returncode == 2 and "abandoned" in out, out[-2000:]
    assert "Traceback" not in out and "stopped by SIGINT" not in out
    ckpt = ck.latest_checkpoint(run)
    assert ckpt is not None and ck.verify_checkpoint(ckpt) is None


def _two_checkpoints(tmp_path) -> Path:
    run = tmp_path / "run"
    train(
        tiny_config(run, "method=sft", "steps=2", "save_every=1", "eval.prompts=0"),
        log=lambda s: None,
    )
    return run


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    run = _two_checkpoints(tmp_path)
    newest = run / "checkpoints" / "step_000002"
    weights = newest / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated on disk
    said = []
    assert ck.latest_checkpoint(run, log=said.append).name == "step_000001"
    assert "step_000002" in said[0] and "model.safetensors" in said[0]
    train_from_files(None, ["steps=3"], resume_dir=str(run))  # resumes from step 1
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]
    # a flipped byte (same size) is caught by the checksum
    ckpt = ck.latest_checkpoint(run)
    t = ckpt / "trainer.pt"
    data = bytearray(t.read_bytes())
    data[len(data) // 2] ^= 0xFF
    t.write_bytes(bytes(data))
    assert "checksum" in ck.verify_checkpoint(ckpt)


def test_latest_naming_a_missing_folder_falls_back(tmp_path):
    run = _two_checkpoints(tmp_path)
    (run / "checkpoints" / "latest").write_text("step_000009\n")
    assert ck.latest_checkpoint(run, log=lambda s: None).name == "step_000002"
    # what a kill during a save leaves: a temporary folder; ignored, then pruned by the next save
    (run / "checkpoints" / ".tmp-step_000003-999").mkdir()
    assert ck.latest_checkpoint(run, log=lambda s: None).name == "step_000002"
    train_from_files(None, ["steps=3"], resume_dir=str(run))
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_no_intact_checkpoint_is_an_error_naming_each(tmp_path):
    run = _two_checkpoints(tmp_path)
    for p in (run / "checkpoints").glob("step_*"):
        (p / "trainer.pt").unlink()
    with pytest.raises(TandemError, match="no intact checkpoint.*step_000002.*step_000001"):
        ck.latest_checkpoint(run)


def test_a_failing_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """The disk fills during the second save (torch.save raises ENOSPC): the save fails with a
    clear error, its temporary folder is gone, and step 1's checkpoint still loads."""
    import errno

    run = tmp_path / "run"
    real = torch.save
    calls = []

    def full_disk(obj, f, *a, **kw):
        calls.append(f)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(ck.CheckpointError, match="No space left.*step_000001"):
        train(
            tiny_config(run, "method=sft", "steps=3", "save_every=1", "eval.prompts=0"),
            log=lambda s: None,
        )
    assert ck.latest_checkpoint(run).name == "step_000001"
    assert ck.verify_checkpoint(run / "checkpoints" / "step_000001") is None
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_two_processes_cannot_train_into_one_run_directory(tmp_path):
    run = tmp_path / "run"
    with ck.RunLock(run):
        with pytest.raises(TandemError, match=f"pid {os.getpid()}"):
            train(tiny_config(run, "method=sft", "steps=1"), log=lambda s: None)
    assert not (run / "metrics.jsonl").exists()  # nothing written by the refused run
    train(tiny_config(run, "method=sft", "steps=1", "eval.prompts=0"), log=lambda s: None)


def test_resume_with_a_changed_config_is_refused_with_the_changes(tmp_path):
    run = _two_checkpoints(tmp_path)
    before = (run / "config.yaml").read_text()
    with pytest.raises(TandemError, match=r"lr: 0\.003 -> 0\.001; seed: 0 -> 1 \(pass --accept"):
        train_from_files(None, ["steps=3", "lr=1e-3", "seed=1"], resume_dir=str(run))
    assert (run / "config.yaml").read_text() == before  # nothing overwritten
    train_from_files(None, ["steps=3", "save_every=2"], resume_dir=str(run))  # free to change
    train_from_files(None, ["steps=4", "lr=1e-3"], resume_dir=str(run), accept_config_change=True)
    assert "lr: 0.001" in (run / "config.yaml").read_text()


def test_non_finite_steps_are_skipped_then_the_run_stops_intact(tmp_path):
    """A model with an inf weight: every loss is NaN, so no update is applied (the weights and
    the optimizer state stay as loaded); after max_bad_steps in a row the run stops with a clear
    message and a checkpoint that loads."""
    from tandem.model.tiny import build_tiny

    model, tok = build_tiny(seed=0)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("inf")
    src = tmp_path / "bad_model"
    model.save_pretrained(src)
    tok.save_pretrained(src)
    run = tmp_path / "run"
    cfg = tiny_config(
        run, f"model.name={src}", "method=sft", "steps=10", "max_bad_steps=3", "eval.prompts=0"
    )
    with pytest.raises(TandemError, match=r"stopped: 3 steps in a row \(1-3\).*non-finite"):
        train(cfg, log=lambda s: None)
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["optim/skipped_updates"] for r in rows] == [1.0, 1.0, 1.0]
    ckpt = ck.latest_checkpoint(run)
    assert ckpt.name == "step_000003" and ck.verify_checkpoint(ckpt) is None
    saved = load_file(ckpt / "model" / "model.safetensors")
    ref = load_file(src / "model.safetensors")
    assert all(torch.equal(saved[k], ref[k]) for k in ref)  # no update reached the weights


def test_kill_during_checkpoint_writes_leaves_the_newest_complete_one(tmp_path):
    """SIGKILL at random moments of a run that saves after every step (so a kill often lands
    inside a save: seen by the temporary folder it leaves): after each kill the newest complete
    checkpoint loads and checks out against its manifest, and the next resume goes on from it."""
    run = tmp_path / "run"
    rng = random.Random(7)
    args = [*BASE, "method=sft", "steps=2000", "demos_per_step=1", f"output_dir={run}"]
    mid_save = 0
    for i in range(8):
        cmd = _cmd(*args) if i == 0 else _cmd("--resume", str(run))
        code = _interrupt(cmd, run, signal.SIGKILL, 2 + 2 * i, rng)
        assert code == -signal.SIGKILL
        mid_save += bool(list((run / "checkpoints").glob(".tmp-*")))
        ckpt = ck.latest_checkpoint(run, log=lambda s: None)
        assert ckpt is not None and ck.verify_checkpoint(ckpt) is None
    print(f"\nRELIABILITY 8 kills during a save-every-step run: {mid_save} landed inside a save")
