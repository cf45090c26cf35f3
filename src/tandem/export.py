"""`tandem export RUN_DIR OUT_DIR`: a run's newest intact checkpoint as a plain Hugging Face
model directory that `transformers` loads with no tandem and no PEFT installed.

A LoRA run's checkpoint holds only its adapter (`model.lora`): the base model named in the
run's config is loaded, the adapter applied and merged into the base weights (PEFT's
`merge_and_unload`), and the result saved. A full fine-tuning run's `model/` is saved again as
it is. The directory is written next to OUT_DIR and renamed into place, so a failed export
leaves nothing half-written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tandem.config import load_config
from tandem.errors import TandemError
from tandem.model.load import load_model
from tandem.model.lora import apply_lora, load_adapters, merged
from tandem.train.checkpoint import latest_checkpoint


def model_of_run(run_dir: str | Path, log=print):
    """(model, tokenizer, checkpoint) of a run's newest intact checkpoint; a LoRA run's model
    comes back with its adapter merged into the base weights."""
    run_dir = Path(run_dir)
    ckpt = latest_checkpoint(run_dir, log=log)
    if ckpt is None:
        raise TandemError(f"{run_dir}: no checkpoint (is it a tandem run directory?)")
    if (ckpt / "model").is_dir():
        model, tok = load_model(str(ckpt / "model"))
        return model, tok, ckpt
    if not (ckpt / "adapter").is_dir():
        raise TandemError(f"{ckpt}: neither model/ nor adapter/ inside")
    cfg = load_config(ckpt / "config.yaml", preset=False)
    lo = cfg.model.lora
    if lo is None:
        raise TandemError(f"{ckpt}: an adapter/ but no model.lora in its config.yaml")
    model, _ = load_model(cfg.model.name, dtype=cfg.model.dtype, seed=cfg.seed)
    apply_lora(model, r=lo.r, alpha=lo.alpha, dropout=lo.dropout, target_modules=lo.target_modules)
    load_adapters(model, ckpt / "adapter")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ckpt / "adapter"))
    return merged(model), tok, ckpt


def export_run(run_dir: str | Path, out_dir: str | Path, log=print) -> Path:
    """Write the run's model (adapter merged) to `out_dir` (which must not exist yet)."""
    out = Path(out_dir)
    if out.exists():
        raise TandemError(f"{out} exists; export writes a new directory")
    model, tok, ckpt = model_of_run(run_dir, log=log)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"exported {ckpt} to {out}")
    return out


__all__ = ["export_run", "model_of_run"]
