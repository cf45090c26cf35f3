"""`tandem eval`: one model on several tasks and splits, a table on screen and JSON on disk.

The model is `tiny`, `smollm2-135m`, any local Hugging Face model directory, a tandem run
directory (its newest intact checkpoint's ``model/``, `tandem.train.checkpoint.
latest_checkpoint`; a LoRA run's ``adapter/`` merged into its base model by
`tandem.export.model_of_run`) or one checkpoint directory (``RUN/checkpoints/step_000010``,
full fine-tuning only unless it is the newest). For a run,
the task, its params, the prior, the system prompt, ``eval.condition`` and max_new_tokens
default to the run's ``config.yaml``.

A task is given as ``NAME`` or ``'NAME key=value ...'`` (values parsed as YAML: ``3``,
``true``, ``[1, 2]``); `TaskSpec.parse` reads it. Results are keyed by the task's label: its
name, or the whole spec when the same name appears twice with other params.

JSON layout (`run_eval`'s return value, written atomically to the ``out`` path)::

    {"model": ..., "model_path": ..., "run_dir": ... | null, "checkpoint": ... | null,
     "settings": {"splits", "prompts", "max_new_tokens", "temperature", "samples", "pass_k",
                  "maj_k", "seed", "prior", "system_prompt", "condition"},
     "tasks": {LABEL: {"name": ..., "params": {...}}},
     "results": {LABEL: {SPLIT: {"prompts": n, "accuracy": ..., "pass@K": ..., "maj@K": ...,
                                 "len_mean": ..., "seconds": ...}}}}
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tandem.errors import ConfigError, TandemError


@dataclass(frozen=True)
class TaskSpec:
    """A task to evaluate: its registry `name` and `params`; `text` is how it was given."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> TaskSpec:
        """``'NAME key=value ...'`` -> TaskSpec; raises ConfigError on a malformed token."""
        from tandem.config import _parse_value

        try:
            tokens = shlex.split(text)
        except ValueError as exc:
            raise ConfigError(f"--task {text!r}: {exc}") from None
        if not tokens or "=" in tokens[0]:
            raise ConfigError(f"--task {text!r}: must start with a task name (tandem tasks)")
        params = {}
        for tok in tokens[1:]:
            key, eq, value = tok.partition("=")
            if not eq or not key:
                raise ConfigError(f"--task {text!r}: {tok!r} must look like key=value")
            params[key] = _parse_value(value)
        return cls(tokens[0], params, text.strip())


def add_params(specs: list[TaskSpec], assignments: list[str]) -> list[TaskSpec]:
    """Apply ``--param`` values: ``key=value`` (only with one task) or ``TASK.key=value``."""
    from tandem.config import _parse_value

    specs = list(specs)
    for item in assignments:
        target, eq, value = item.partition("=")
        if not eq or not target:
            raise ConfigError(f"--param {item!r}: must look like key=value or TASK.key=value")
        task, dot, key = target.rpartition(".")
        if dot:
            hits = [i for i, s in enumerate(specs) if s.name == task]
            if not hits:
                names = ", ".join(s.name for s in specs)
                raise ConfigError(f"--param {item!r}: no --task {task!r}; tasks given: {names}")
        elif len(specs) == 1:
            hits = [0]
        else:
            raise ConfigError(
                f"--param {item!r}: with several --task, name the task: --param TASK.{target}=..."
            )
        for i in hits:
            s = specs[i]
            specs[i] = TaskSpec(s.name, {**s.params, key: _parse_value(value)}, s.text)
    return specs


def labels(specs: list[TaskSpec]) -> list[str]:
    """Result keys: each task's name, or its full spec when the name is given more than once."""
    names = [s.name for s in specs]
    out = []
    for s in specs:
        if names.count(s.name) == 1:
            out.append(s.name)
        else:
            extra = " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(s.params.items()))
            out.append(f"{s.name} {extra}".strip())
    if len(set(out)) != len(out):
        raise ConfigError("--task: the same task with the same params is given twice")
    return out


@dataclass
class ResolvedModel:
    """Where the weights to evaluate are: `path` for `load_model`, plus the run it came from."""

    spec: str
    path: str
    run_dir: Path | None = None
    checkpoint: Path | None = None
    run_config: dict = field(default_factory=dict)
    lora: bool = False  # the checkpoint holds adapter/ only: load via `tandem.export.model_of_run`


def resolve_model(spec: str, log=None) -> ResolvedModel:
    """A model name, HF directory, run directory or checkpoint directory -> `ResolvedModel`.

    A run directory has ``checkpoints/`` (and ``config.yaml``); its newest intact checkpoint is
    used. A checkpoint holding only ``adapter/`` (a LoRA run) is marked ``lora``: `run_eval`
    loads it through `tandem.export.model_of_run` (the base model with the adapter merged).
    """
    from tandem.train.checkpoint import CKPT_DIR, latest_checkpoint

    log = log or (lambda s: print(s, file=sys.stderr))
    path = Path(spec).expanduser()
    if not path.is_dir():
        return ResolvedModel(spec, spec)
    if (path / CKPT_DIR).is_dir() or (
        (path / "config.yaml").is_file() and not (path / "config.json").is_file()
    ):
        run_dir = path
        ckpt = latest_checkpoint(run_dir, log=log)
        if ckpt is None:
            raise TandemError(f"{run_dir} is a run directory without checkpoints ({CKPT_DIR}/)")
    elif (path / "trainer.pt").is_file() and (
        (path / "model").is_dir() or (path / "adapter").is_dir()
    ):
        ckpt, run_dir = path, path.parent.parent
    else:
        return ResolvedModel(spec, str(path))
    cfg_file = ckpt / "config.yaml" if (ckpt / "config.yaml").is_file() else run_dir / "config.yaml"
    run_config = yaml.safe_load(cfg_file.read_text()) if cfg_file.is_file() else {}
    lora = (ckpt / "adapter").is_dir() and not (ckpt / "model").is_dir()
    if lora and ckpt.parent.name == CKPT_DIR and ckpt != latest_checkpoint(run_dir, log=log):
        raise TandemError(
            f"{ckpt} holds a LoRA adapter: give its run directory (its newest checkpoint is "
            "loaded with the adapter merged), or export this one first (tandem export)"
        )
    path = str(ckpt / "adapter") if lora else str(ckpt / "model")
    return ResolvedModel(spec, path, run_dir, ckpt, run_config or {}, lora)


def default_out(model_spec: str, run_dir: str | Path | None) -> Path:
    """RUN_DIR/eval.json for a run, else ./eval-<model name>.json."""
    if run_dir is not None:
        return Path(run_dir) / "eval.json"
    stem = Path(model_spec.rstrip("/")).name or "model"
    return Path(f"eval-{re.sub(r'[^A-Za-z0-9_.-]+', '_', stem)}.json")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as JSON to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_eval(
    model_spec: str,
    tasks: list[TaskSpec],
    *,
    splits: list[str],
    prompts: int = 64,
    max_new_tokens: int | None = None,
    pass_k: list[int] = (),
    maj_k: list[int] = (),
    samples: int = 8,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    prior: str | None = None,
    system_prompt: str | None = None,
    device: str = "cpu",
    bf16: bool = False,
    log=None,
) -> dict[str, Any]:
    """Evaluate one model on every task x split; return the JSON document (module docstring).

    Unset `tasks`, `prior`, `system_prompt` and `max_new_tokens` come from the run's config
    when the model is a run, else tasks are required and max_new_tokens is 32.
    """
    import torch

    from tandem.encode import Encoder
    from tandem.eval.evaluate import evaluate
    from tandem.model.load import eos_token_ids, load_model
    from tandem.tasks import get_task

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    resolved = resolve_model(model_spec, log)
    cfg = resolved.run_config
    run_task = cfg.get("task") or {}
    if not tasks:
        if not run_task.get("name"):
            raise ConfigError("--task: required (a task name; `tandem tasks` lists them)")
        tasks = [TaskSpec(run_task["name"], dict(run_task.get("params") or {}), "")]
    if prior is None:
        prior = run_task.get("prior")
    if system_prompt is None:
        system_prompt = run_task.get("system_prompt")
    run_eval_cfg = cfg.get("eval") or {}
    if max_new_tokens is None:
        max_new_tokens = run_eval_cfg.get("max_new_tokens") or cfg.get("max_new_tokens") or 32
    condition = run_eval_cfg.get("condition")
    for split in splits:
        if split not in ("train", "eval", "ood"):
            raise ConfigError(f"--splits: unknown split {split!r}; allowed: train, eval, ood")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    keys = labels(tasks)
    built = [get_task(s.name, s.params) for s in tasks]  # bad names/params fail before loading

    where = f" ({resolved.checkpoint})" if resolved.checkpoint else ""
    log(f"tandem eval: loading {resolved.spec}{where}")
    if resolved.lora:
        from tandem.export import model_of_run

        model, tok, _ = model_of_run(resolved.run_dir, log=log)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    else:
        model, tok = load_model(resolved.path)
    model = model.to(device)
    enc = Encoder(tok, system_prompt=system_prompt, prior=prior)
    eos = eos_token_ids(tok, model)
    ctx = (lambda: torch.autocast(device.split(":")[0], dtype=torch.bfloat16)) if bf16 else None
    results: dict[str, dict[str, dict[str, float]]] = {}
    for key, task in zip(keys, built):
        results[key] = {}
        for split in splits:
            t0 = time.perf_counter()
            exs = task.examples(split, prompts, seed=seed)
            if condition:
                from tandem.train.sources import conditioned

                exs = conditioned(exs, condition)
            raw = evaluate(
                model,
                enc,
                task,
                exs,
                max_new_tokens=max_new_tokens,
                eos_token_ids=eos,
                batch_size=batch_size,
                pass_k=list(pass_k),
                pass_samples=samples,
                maj_k=list(maj_k),
                temperature=temperature,
                seed=seed,
                ctx=ctx,
                prefix=split,
            )
            row = {"prompts": len(exs)}
            row.update({name.split("/", 1)[1]: value for name, value in raw.items()})
            row["seconds"] = round(time.perf_counter() - t0, 3)
            results[key][split] = row
            log(f"tandem eval: {key} {split}: accuracy {row.get('accuracy', 0.0):.3f}")
    return {
        "model": resolved.spec,
        "model_path": resolved.path,
        "run_dir": str(resolved.run_dir) if resolved.run_dir else None,
        "checkpoint": str(resolved.checkpoint) if resolved.checkpoint else None,
        "settings": {
            "splits": list(splits),
            "prompts": prompts,
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "samples": max([samples, *pass_k, *maj_k]) if (pass_k or maj_k) else 0,
            "pass_k": list(pass_k),
            "maj_k": list(maj_k),
            "seed": seed,
            "prior": prior,
            "system_prompt": system_prompt,
            "condition": condition,
        },
        "tasks": {k: {"name": s.name, "params": s.params} for k, s in zip(keys, tasks)},
        "results": results,
    }


def render_table(doc: dict[str, Any], file=None) -> None:
    """Print `run_eval`'s results as a rich table: one row per task x split."""
    from rich.console import Console
    from rich.table import Table

    settings = doc["settings"]
    metrics = (
        ["accuracy"]
        + [f"pass@{k}" for k in settings["pass_k"]]
        + [f"maj@{k}" for k in settings["maj_k"]]
    )
    table = Table(title=f"tandem eval: {doc['model']}", title_justify="left")
    table.add_column("task", overflow="fold")
    table.add_column("split")
    table.add_column("prompts", justify="right")
    for m in metrics:
        table.add_column(m, justify="right")
    table.add_column("len_mean", justify="right")
    for key, per_split in doc["results"].items():
        for split, row in per_split.items():
            cells = [f"{row[m]:.3f}" if m in row else "-" for m in metrics]
            length = f"{row['len_mean']:.1f}" if "len_mean" in row else "-"
            table.add_row(key, split, str(row["prompts"]), *cells, length)
    Console(file=file or sys.stdout, width=120).print(table)
