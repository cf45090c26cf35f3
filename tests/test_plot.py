"""`tandem plot` / plot_runs: several runs overlaid into one PNG per panel.

Two real tiny-model runs of different lengths (GRPO 3 steps, SFT 5 steps, eval every step) are
plotted through the function and the CLI; the figures are checked through their matplotlib
objects (legend texts, axis labels, line data), the files by reading them back as images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tandem.cli import main
from tandem.errors import TandemError
from tandem.report.plots import _moving_average, build_figures, load_runs, plot_runs

from .conftest import tiny_config

FILES = {"reward", "eval_accuracy", "loss", "coef", "entropy", "length"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    from tandem.train.loop import train

    root = tmp_path_factory.mktemp("plot_runs")
    each = ("eval.prompts=4", "eval.every=1")
    grpo, sft = root / "grpo", root / "sft"
    train(
        tiny_config(
            grpo, "method=grpo", "steps=3", "prompts_per_step=4", "samples_per_prompt=4", *each
        ),
        log=lambda s: None,
    )
    train(tiny_config(sft, "method=sft", "steps=5", *each), log=lambda s: None)
    return grpo, sft


def _axes(fig) -> dict[str, object]:
    """Visible axes of a figure by metric name (the y label, without its unit)."""
    return {ax.get_ylabel().split(" (")[0]: ax for ax in fig.axes if ax.get_visible()}


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_plot_runs_writes_readable_pngs(runs, tmp_path):
    paths = plot_runs(runs, tmp_path / "out")
    assert {p.stem for p in paths} == FILES  # both runs log all six groups between them
    assert sorted(paths) == sorted((tmp_path / "out").glob("*.png"))
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG"
            w, h = im.size
            pixels = np.asarray(im.convert("L"))
        assert 450 <= w <= 2000 and 350 <= h <= 2000, (p.name, im.size)
        assert pixels.std() > 5  # something drawn, not a blank canvas
    with Image.open(tmp_path / "out" / "loss.png") as im:
        assert im.size[0] >= 1400  # loss/pg, loss/sft, loss/total side by side


def test_figures_overlay_runs_of_different_lengths(runs):
    figs = build_figures(load_runs(runs))
    assert set(figs) == FILES
    for fig in figs.values():
        assert "grpo vs sft" in fig.get_suptitle()
        for key, ax in _axes(fig).items():
            assert ax.get_xlabel() == "step"
            assert ax.get_title().startswith(key)
            assert set(_legend(ax)) <= {"grpo", "sft"}

    loss = _axes(figs["loss"])
    assert list(loss) == ["loss/pg", "loss/sft", "loss/total"]  # the terms, then the total
    total = loss["loss/total"]
    assert _legend(total) == ["grpo", "sft"]
    steps = {ln.get_label(): list(ln.get_xdata()) for ln in total.get_lines()}
    assert steps == {"grpo": [1, 2, 3], "sft": [1, 2, 3, 4, 5]}  # each run on its own steps
    # a line's colour names its run in every figure
    colors = {ln.get_label(): ln.get_color() for ln in total.get_lines()}
    acc = _axes(figs["eval_accuracy"])
    assert list(acc) == ["eval/accuracy"]  # no ood split, no pass@k in these runs
    for ln in acc["eval/accuracy"].get_lines():
        assert ln.get_color() == colors[ln.get_label()]
        assert list(ln.get_xdata()) == list(range(4 if ln.get_label() == "grpo" else 6))
    assert acc["eval/accuracy"].get_ylim() == (-0.02, 1.02)

    # SFT samples nothing: the reward panel has GRPO's line only, and says so
    reward = _axes(figs["reward"])["reward/mean"]
    assert _legend(reward) == ["grpo"]
    assert "not logged: sft" in reward.get_title()
    assert _axes(figs["length"])["rollout/len_mean"].get_ylabel() == "rollout/len_mean (tokens)"
    assert set(_axes(figs["coef"])) >= {"coef/pg", "coef/sft"}


def test_cli_plot_with_names(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["plot", *map(str, runs), "--out", str(out), "--names", "rl, sft-only"])
    assert rc == 0
    printed = capsys.readouterr().out.split()
    assert {Path(p).stem for p in printed} == FILES
    assert all(Path(p).parent == out and Path(p).is_file() for p in printed)
    # the same names reach the legends
    figs = build_figures(load_runs(runs, ["rl", "sft-only"]))
    assert _legend(_axes(figs["loss"])["loss/total"]) == ["rl", "sft-only"]


def test_missing_metrics_is_one_line_error(runs, tmp_path, capsys):
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    with pytest.raises(TandemError, match="not_a_run: no metrics.jsonl"):
        plot_runs([runs[0], empty], tmp_path / "out")
    assert main(["plot", str(runs[0]), str(empty), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not_a_run: no metrics.jsonl" in err
    assert not (tmp_path / "out").exists()  # nothing written when a run is missing
    with pytest.raises(TandemError, match=r"3 name\(s\) for 2 run directories"):
        load_runs(runs, ["a", "b", "c"])
    with pytest.raises(TandemError, match="must differ"):
        load_runs(runs, ["same", "same"])


def _write(run_dir: Path, rows: list[dict]) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


def test_only_panels_some_run_has_and_pass_at_k_order(tmp_path):
    # two runs with the same directory name: the legend adds the parent
    a = _write(tmp_path / "x" / "seed0", [{"step": 0, "eval/accuracy": 0.1, "ood/pass@4": 0.3}])
    b = _write(
        tmp_path / "y" / "seed0",
        [{"step": 0, "eval/pass@8": 0.5, "eval/pass@2": 0.4}, {"step": 1, "perf/step_s": 1.0}],
    )
    paths = plot_runs([a, b], tmp_path / "out")
    assert [p.name for p in paths] == ["eval_accuracy.png"]  # nothing else was logged
    fig = build_figures(load_runs([a, b]))["eval_accuracy"]
    axes = _axes(fig)
    assert list(axes) == ["eval/accuracy", "eval/pass@2", "eval/pass@8", "ood/pass@4"]
    assert _legend(axes["eval/accuracy"]) == ["x/seed0"]
    assert _legend(axes["eval/pass@2"]) == ["y/seed0"]
    nothing = _write(tmp_path / "z", [{"step": 1, "perf/step_s": 1.0}])
    with pytest.raises(TandemError, match="none of the runs"):
        plot_runs([nothing], tmp_path / "out2")


def test_moving_average():
    # window 2: [1, (1+2)/2, (2+3)/2, (3+7)/2]; window 3 at i=3: (2+3+7)/3 = 4
    assert _moving_average([1.0, 2.0, 3.0, 7.0], 2) == [1.0, 1.5, 2.5, 5.0]
    assert _moving_average([1.0, 2.0, 3.0, 7.0], 3) == [1.0, 1.5, 2.0, 4.0]


def test_smooth_keeps_one_legend_entry_per_run(tmp_path):
    run = _write(tmp_path / "r", [{"step": s, "loss/total": float(s % 2)} for s in range(1, 7)])
    (ax,) = _axes(build_figures(load_runs([run]), smooth=3)["loss"]).values()
    raw, smoothed = ax.get_lines()
    assert list(raw.get_ydata()) == [1, 0, 1, 0, 1, 0]
    assert list(smoothed.get_ydata()) == pytest.approx([1, 0.5, 2 / 3, 1 / 3, 2 / 3, 1 / 3])
    assert _legend(ax) == ["r"]
