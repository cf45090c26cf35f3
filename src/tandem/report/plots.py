"""Plots from metrics.jsonl.

`plot_curves`: a run's own curves.png (training reward, loss terms, eval accuracy), drawn at the
end of training. `plot_runs`: several runs overlaid, one PNG per panel (`tandem plot`); metric
names as in docs/METRICS.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tandem.errors import TandemError
from tandem.report.metrics import read_metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_curves(metrics_path: Path, out_path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for key in ("reward/mean",):
        axes[0].plot(*series(key), label=key)
    axes[0].set_title("training reward")
    terms = sorted({k for r in rows for k in r if k.startswith("loss/") and k != "loss/total"})
    for key in terms[:8]:
        xs, ys = series(key)
        if xs:
            axes[1].plot(xs, ys, label=key)
    axes[1].set_title("loss terms")
    for key in ("eval/accuracy", "ood/accuracy"):
        xs, ys = series(key)
        if xs:
            axes[2].plot(xs, ys, marker="o", label=key)
    axes[2].set_title("held-out accuracy (greedy)")
    axes[2].set_ylim(-0.02, 1.02)
    for ax in axes:
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


# ---- several runs overlaid: `tandem plot RUN_DIR [RUN_DIR ...]` ------------------------------


@dataclass(frozen=True)
class Panel:
    """One PNG: every metric `match` accepts gets its own axes, with one line per run."""

    file: str
    title: str
    match: Callable[[str], bool]
    eval_points: bool = False  # sparse evaluation points: markers, y in [0, 1], never smoothed


PANELS = (
    Panel("reward", "training reward", lambda k: k == "reward/mean" or k.endswith("/reward/mean")),
    Panel(
        "eval_accuracy",
        "held-out accuracy",
        lambda k: bool(re.fullmatch(r"(eval|ood)/(accuracy|pass@\d+)", k)),
        eval_points=True,
    ),
    Panel("loss", "loss terms", lambda k: k.startswith("loss/")),
    Panel("coef", "coefficients", lambda k: k.startswith("coef/")),
    Panel("entropy", "sampling entropy", lambda k: k == "rollout/entropy"),
    Panel("length", "completion length", lambda k: k == "rollout/len_mean"),
)
_UNITS = {"rollout/len_mean": "tokens", "rollout/entropy": "nats/token"}

Run = tuple[str, list[dict]]  # (legend name, metrics.jsonl rows)


def _order(key: str) -> tuple:
    # eval before ood, accuracy before pass@k (by k), loss/total after the terms
    k = int(key.rsplit("@", 1)[1]) if "pass@" in key else 0
    return (key == "loss/total", key.startswith("ood/"), "pass@" in key, k, key)


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = sorted((r["step"], r[key]) for r in rows if r.get(key) is not None)
    return [p[0] for p in pts], [p[1] for p in pts]


def _moving_average(ys: list[float], window: int) -> list[float]:
    """Trailing mean over the last `window` logged points (fewer at the start)."""
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y - (ys[i - window] if i >= window else 0.0)
        out.append(acc / min(i + 1, window))
    return out


def load_runs(run_dirs: Sequence[Path | str], names: Sequence[str] | None = None) -> list[Run]:
    """Each run's metrics.jsonl with its legend name: `names`, else the directory's name (with its
    parent's when two runs share one)."""
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise TandemError("tandem plot: give at least one RUN_DIR")
    if names is None:
        names = [d.resolve().name for d in dirs]
        if len(set(names)) < len(names):
            names = [f"{d.resolve().parent.name}/{d.resolve().name}" for d in dirs]
    if len(names) != len(dirs):
        raise TandemError(
            f"--names gives {len(names)} name(s) for {len(dirs)} run director{'y' if len(dirs) == 1 else 'ies'}"
        )
    if len(set(names)) < len(names):
        raise TandemError(f"run names must differ (got {', '.join(names)}); set them with --names")
    runs = []
    for name, d in zip(names, dirs):
        path = d / "metrics.jsonl"
        if not path.is_file():
            raise TandemError(
                f"{d}: no metrics.jsonl (not a run directory, or the run never logged)"
            )
        try:
            runs.append((name, read_metrics(path)))
        except (ValueError, KeyError) as e:
            raise TandemError(f"{path}: not a metrics file ({e})") from None
    return runs


def build_figures(runs: Sequence[Run], smooth: int = 0) -> dict[str, Figure]:
    """One Figure per panel of PANELS that some run has a metric for, keyed by the panel's file
    stem. Each run keeps its colour across all figures; x is each row's own `step`, so runs of
    different lengths overlay on one axis. `smooth` > 1 adds a trailing moving average over that
    many logged points (the raw line stays, faint) to the per-step panels."""
    from matplotlib.figure import Figure  # imported here: `import tandem.train` stays light
    from matplotlib.ticker import MaxNLocator

    colors = [f"C{i % 10}" for i in range(len(runs))]
    figures = {}
    for panel in PANELS:
        keys = sorted(
            {k for _, rows in runs for r in rows for k in r if panel.match(k)}, key=_order
        )
        if not keys:
            continue
        ncols = min(3, len(keys))
        nrows = -(-len(keys) // ncols)
        fig = Figure(figsize=(5 * ncols, 3.6 * nrows + 0.6), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, key in zip(axes, keys):
            missing = []
            for (name, rows), color in zip(runs, colors):
                xs, ys = _series(rows, key)
                if not xs:
                    missing.append(name)
                    continue
                marker = "o" if panel.eval_points or len(xs) <= 30 else None
                if smooth > 1 and not panel.eval_points:
                    ax.plot(xs, ys, color=color, alpha=0.25, linewidth=1)
                    ax.plot(xs, _moving_average(ys, smooth), color=color, label=name)
                else:
                    ax.plot(xs, ys, color=color, marker=marker, markersize=3, label=name)
            ax.set_title(key + (f"  (not logged: {', '.join(missing)})" if missing else ""))
            ax.set_xlabel("step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(f"{key} ({_UNITS[key]})" if key in _UNITS else key)
            if panel.eval_points:
                ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        for ax in axes[len(keys) :]:
            ax.set_visible(False)
        note = (
            f", moving average of {smooth} points" if smooth > 1 and not panel.eval_points else ""
        )
        fig.suptitle(f"{panel.title}: {' vs '.join(n for n, _ in runs)}{note}")
        figures[panel.file] = fig
    return figures


def plot_runs(
    run_dirs: Sequence[Path | str],
    out_dir: Path | str,
    names: Sequence[str] | None = None,
    smooth: int = 0,
) -> list[Path]:
    """Overlay the runs' metrics into OUT_DIR/{reward,eval_accuracy,loss,coef,entropy,length}.png
    (only the panels some run has); returns the files written."""
    runs = load_runs(run_dirs, names)
    figures = build_figures(runs, smooth)
    if not figures:
        metrics = ", ".join(p.file for p in PANELS)
        raise TandemError(f"none of the runs has logged a metric to plot ({metrics})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, fig in figures.items():
        path = out / f"{stem}.png"
        fig.savefig(path, dpi=100)
        written.append(path)
    return written
