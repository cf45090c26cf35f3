"""Metric sinks: JSONL (always), TensorBoard (`tensorboard`, on by default) and Weights &
Biases (`log.wandb`, when the `wandb` package is installed), under stable names.

Namespaces (documented in docs/METRICS.md): loss/*, coef/*, reward/*, rollout/*, eval/*,
ood/*, optim/*, perf/*. Each JSONL line is `{"step": k, name: value, ...}`. Sample completions
(`tandem.report.samples`) go to samples.jsonl, TensorBoard text and a W&B table.

Why these: TensorBoard is the format every trainer writes and reads offline (torch's own
SummaryWriter, no account, no server); W&B is what many research groups compare runs in, and its
offline mode (`log.wandb_mode: offline`, the default) writes the run to RUN_DIR/wandb for a
later `wandb sync`, so a run never needs the network.
"""

from __future__ import annotations

import json
import math
import secrets
from pathlib import Path
from typing import Any

from tandem.errors import ConfigError


class MetricsWriter:
    def __init__(
        self,
        run_dir: Path,
        tensorboard: bool = True,
        wandb: dict[str, Any] | None = None,
    ) -> None:
        """`wandb`: None (off), or the keyword arguments of `wandb.init` (project, mode, name,
        config); the run's id is kept in RUN_DIR/wandb_id so a resumed run continues it."""
        self.path = run_dir / "metrics.jsonl"
        self.samples_path = run_dir / "samples.jsonl"
        self._tb = self._wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            self._tb = SummaryWriter(log_dir=str(run_dir / "tb"))
        if wandb is not None:
            self._wandb = _start_wandb(run_dir, wandb)

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines logged after the checkpoint's step (they will be redone)."""
        for path in (self.path, self.samples_path):
            if not path.exists():
                continue
            keep = [
                ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step
            ]
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(ln + "\n" for ln in keep))
            tmp.replace(path)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **clean}) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                if v is not None:
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in clean.items() if v is not None}, step=step)

    def write_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Sample completions of `step` (`tandem.report.samples.sample_rows`)."""
        if not rows:
            return
        with self.samples_path.open("a") as f:
            for r in rows:
                f.write(json.dumps({"step": step, **r}) + "\n")
        by_source: dict[str, list] = {}
        for r in rows:
            by_source.setdefault(r["source"], []).append(r)
        if self._tb is not None:
            from tandem.report.samples import as_markdown

            for src, rs in by_source.items():
                self._tb.add_text(f"samples/{src}", as_markdown(rs), step)
            self._tb.flush()
        if self._wandb is not None:
            import wandb

            cols = ["step", "source", "prompt", "completion", "role", "reward"]
            table = wandb.Table(
                columns=cols, data=[[step, *(r[c] for c in cols[1:])] for r in rows]
            )
            self._wandb.log({"samples": table}, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _start_wandb(run_dir: Path, settings: dict[str, Any]):
    try:
        import wandb
    except ImportError:
        raise ConfigError(
            "config error: log.wandb: the wandb package is not installed "
            "(pip install 'tandem-rl[wandb]'), or set log.wandb=false"
        ) from None
    id_file = run_dir / "wandb_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
    id_file.write_text(run_id + "\n")
    return wandb.init(dir=str(run_dir), id=run_id, resume="allow", **settings)


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
