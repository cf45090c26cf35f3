"""Checkpoints that a crash or kill cannot corrupt.

Layout of RUN_DIR/checkpoints/step_000010/:
  model/        `save_pretrained` output (safetensors + tokenizer): transformers loads it directly
  adapter/      instead of model/ in a LoRA run (`model.lora`): the trained adapter as a PEFT
                adapter directory (+ tokenizer; `reference/` inside holds the moved reference's
                adapter); `tandem export` merges it into a plain model
  trainer.pt    optimizer, LR schedule, controller state, data positions, RNG states, step
  config.yaml   the resolved config
  ref_model/    the reference model, only when it is no longer the initial model (a stage
                with `reference: stage_start`)
  value_head.safetensors   the PPO value head, when the run has one
  optimizer/    under FSDP2 (`distributed.strategy: fsdp2`), instead of trainer.pt's optimizer
                state: `torch.distributed.checkpoint` files, one `__<rank>_0.distcp` per rank
                and `.metadata`, keyed by parameter name (a run resumes on any number of ranks)

  manifest.json  every other file's size and SHA-256, written last

A checkpoint is written into a temporary directory and renamed into place (atomic on POSIX);
then the one-line `latest` file is replaced the same way. A crash at any moment leaves either
the previous checkpoint or the new one as `latest`, never a half-written one. On load the
manifest is checked: a checkpoint whose files are missing, truncated or changed on disk is
skipped, with a message, for the newest one that checks out (`latest_checkpoint`). A save that
fails (a full disk) removes its temporary directory and raises `CheckpointError`; the
checkpoints already there are untouched.

`RunLock` keeps a second process from training into the same run directory.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tandem.errors import TandemError
from tandem.model.lora import is_lora, save_adapters

CKPT_DIR = "checkpoints"
MANIFEST = "manifest.json"


class CheckpointError(TandemError):
    """A checkpoint could not be written (the previous ones are intact)."""


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


def checkpoint_name(step: int) -> str:
    """The folder name of step `step`'s checkpoint under RUN_DIR/checkpoints."""
    return f"step_{step:06d}"


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
    folders: dict[str, Path] | None = None,
) -> Path:
    """Write step `step`'s checkpoint (the layout above) and point `latest` at it. `folders`:
    {name: folder} written beforehand (every rank's optimizer shards under FSDP2), moved into
    the checkpoint under `name` before its manifest, so the manifest covers their files."""
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        if is_lora(model):
            save_adapters(model, tmp / "adapter", reference=ref_model is not None)
            tokenizer.save_pretrained(tmp / "adapter")
        else:
            model.save_pretrained(tmp / "model", safe_serialization=True)
            tokenizer.save_pretrained(tmp / "model")
        if ref_model is not None and not is_lora(model):
            ref_model.save_pretrained(tmp / "ref_model", safe_serialization=True)
            tokenizer.save_pretrained(tmp / "ref_model")
        if value_head is not None:
            from safetensors.torch import save_file

            save_file(value_head.state_dict(), tmp / "value_head.safetensors")
        torch.save({"step": step, **trainer_state, "rng": rng_state()}, tmp / "trainer.pt")
        (tmp / "config.yaml").write_text(config_yaml)
        for sub, folder in (folders or {}).items():  # (their emptied staging folders: _prune)
            Path(folder).rename(tmp / sub)
        _write_manifest(tmp)
    except OSError as e:  # a full disk, a quota, a vanished directory: the old ones stay
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"saving checkpoint {name} failed ({e}); {last_good(run_dir)}") from e
    if final.exists():  # re-saving the same step (e.g. after a resume): replace it
        old = root / f".old-{name}-{os.getpid()}"
        final.rename(old)  # `latest` briefly names a missing folder: loading falls back
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    _atomic_write_text(root / "latest", name + "\n")
    _prune(root, keep, protect=name)
    return final


def last_good(run_dir: Path) -> str:
    """What a failed save leaves to resume from, in words."""
    last = latest_checkpoint(run_dir, log=lambda s: None)
    return f"the last good checkpoint is {last}" if last else "there is no earlier checkpoint"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_manifest(ckpt: Path) -> None:
    """manifest.json: {relative path: [size, sha256]} of every file, fsynced before the
    checkpoint is renamed into place."""
    files = sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {}
    for p in files:
        with p.open("rb") as f:
            os.fsync(f.fileno())
        entries[str(p.relative_to(ckpt))] = [p.stat().st_size, _sha256(p)]
    _atomic_write_text(ckpt / MANIFEST, json.dumps(entries, indent=1) + "\n")


def verify_checkpoint(ckpt: Path) -> str | None:
    """What is wrong with this checkpoint on disk (a missing, truncated or changed file), or
    None when every file matches its manifest."""
    ckpt = Path(ckpt)
    try:
        entries = json.loads((ckpt / MANIFEST).read_text())
    except FileNotFoundError:
        if (ckpt / "trainer.pt").is_file() and (ckpt / "model").is_dir():  # (no LoRA then)
            return None  # written before manifests existed: complete (it was renamed into place)
        return "no manifest.json and no trainer.pt"
    except (OSError, ValueError) as e:
        return f"unreadable manifest.json ({e})"
    if "trainer.pt" not in entries:
        return "the manifest lists no trainer.pt"
    for rel, (size, digest) in entries.items():
        p = ckpt / rel
        if not p.is_file():
            return f"{rel} is missing"
        if p.stat().st_size != size:
            return f"{rel} has {p.stat().st_size} bytes, the manifest says {size}"
        if _sha256(p) != digest:
            return f"{rel} does not match its checksum"
    return None


def _prune(root: Path, keep: int, protect: str) -> None:
    ckpts = sorted(p for p in root.glob("step_*") if p.is_dir())
    for p in ckpts[:-keep]:
        if p.name != protect:
            shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".tmp-*"):  # leftovers of a crashed save
        shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(run_dir: Path, log: Callable[[str], None] = print) -> Path | None:
    """The newest checkpoint of the run that checks out against its manifest: the one `latest`
    names, else (saying why) the newest older one. None when the run has no checkpoint;
    raises when it has checkpoints and none of them is intact."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return None
    pointer = root / "latest"
    named = pointer.read_text().strip() if pointer.exists() else None
    found = sorted((p for p in root.glob("step_*") if p.is_dir()), reverse=True)
    order = [root / named] if named else []
    order += [p for p in found if p.name != named]
    if not found and not named:
        return None
    problems = []
    for ckpt in order:
        problem = "missing" if not ckpt.is_dir() else verify_checkpoint(ckpt)
        if problem is None:
            if problems:
                log(f"resume: using {ckpt.name}; skipped " + "; ".join(problems))
            return ckpt
        problems.append(f"{ckpt.name} ({problem})")
    raise TandemError(f"no intact checkpoint in {root}: " + "; ".join(problems))


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    # map to CPU: a checkpoint written on a GPU loads anywhere; the optimizers move their state
    # to their parameters' device in load_state_dict
    return torch.load(Path(ckpt) / "trainer.pt", weights_only=False, map_location="cpu")


class RunLock:
    """An exclusive lock on RUN_DIR/.lock for as long as a run trains there (`fcntl.flock`:
    released by the kernel when the process dies, so a killed run leaves no stale lock)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise TandemError(
                f"{self.path.parent} is in use: a run is training there (pid {holder}); "
                "wait for it to finish or stop it, or use another output_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
