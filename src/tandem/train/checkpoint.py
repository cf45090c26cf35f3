"""Checkpoints that a crash or kill cannot corrupt.

Layout of RUN_DIR/checkpoints/step_000010/:
  model/        `save_pretrained` output (safetensors + tokenizer): transformers loads it directly
  trainer.pt    optimizer, LR schedule, controller state, data positions, RNG states, step
  config.yaml   the resolved config
  ref_model/    the reference model, only when it is no longer the initial model (a stage
                with `reference: stage_start`)
  value_head.safetensors   the PPO value head, when the run has one

A checkpoint is written into a temporary directory and renamed into place (atomic on POSIX);
then the one-line `latest` file is replaced the same way. A crash at any moment leaves either the
previous checkpoint or the new one as `latest`, never a half-written one.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tandem.errors import TandemError

CKPT_DIR = "checkpoints"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: Path,
    step: int,
    model,
    tokenizer,
    trainer_state: dict[str, Any],
    config_yaml: str,
    keep: int = 2,
    ref_model=None,
    value_head=None,
) -> Path:
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:06d}"
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    model.save_pretrained(tmp / "model", safe_serialization=True)
    tokenizer.save_pretrained(tmp / "model")
    if ref_model is not None:
        ref_model.save_pretrained(tmp / "ref_model", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "ref_model")
    if value_head is not None:
        from safetensors.torch import save_file

        save_file(value_head.state_dict(), tmp / "value_head.safetensors")
    torch.save({"step": step, **trainer_state, "rng": rng_state()}, tmp / "trainer.pt")
    (tmp / "config.yaml").write_text(config_yaml)
    if final.exists():  # re-saving the same step (e.g. after a resume): replace it
        old = root / f".old-{name}-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    _atomic_write_text(root / "latest", name + "\n")
    _prune(root, keep, protect=name)
    return final


def _prune(root: Path, keep: int, protect: str) -> None:
    ckpts = sorted(p for p in root.glob("step_*") if p.is_dir())
    for p in ckpts[:-keep]:
        if p.name != protect:
            shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".tmp-*"):  # leftovers of a crashed save
        shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = Path(run_dir) / CKPT_DIR
    pointer = root / "latest"
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    if not (path / "trainer.pt").exists():
        raise TandemError(f"checkpoint {path} named by {pointer} is incomplete")
    return path


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    # map to CPU: a checkpoint written on a GPU loads anywhere; the optimizers move their state
    # to their parameters' device in load_state_dict
    return torch.load(Path(ckpt) / "trainer.pt", weights_only=False, map_location="cpu")
