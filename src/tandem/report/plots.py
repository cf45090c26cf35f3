"""curves.png: training reward, losses, and eval accuracy over steps, from metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from tandem.report.metrics import read_metrics


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
