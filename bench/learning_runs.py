"""Learning-test runs with any settings: the setup of tests/test_learning_methods.py (the tiny
model warmed by 100 SFT steps, one-digit addition, 60 steps, lr 5e-4, 16 prompts per step), for
seeds 0-2, with extra overrides. Prints one JSON line: the rise of greedy accuracy on the 64
fixed training prompts per seed, the rise of the fixed gold-vs-wrong pair margin, and the run
means of a few mechanism metrics. The sweeps behind docs/methods.md's footnotes and docs/LOG.md
were made with it, e.g.:

    python bench/learning_runs.py dpo objective.terms.dpo.beta=0.5 lr=1e-4
    python bench/learning_runs.py spin stages.iteration.steps=20 lr=5e-4

Later arguments override earlier ones (`steps=40` shortens the run).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tandem.report.metrics import read_metrics  # noqa: E402
from tandem.train.checkpoint import latest_checkpoint  # noqa: E402
from tandem.train.loop import train  # noqa: E402
from tests.conftest import WARMUP, pair_margin, tiny_config, train_accuracy  # noqa: E402

MECHANISM = (
    "margin",
    "buffer/sft_steps",
    "switches",
    "rationalized",
    "prefix/len",
    "clip_frac",
    "self/kept",
    "optim/updates",
    "loss/value",
    "self/",
    "adv/",
    "loss/anchor",
    "mix/",
)


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    method, overrides = sys.argv[1], sys.argv[2:]
    root = Path(tempfile.mkdtemp(prefix="tandem-learning-"))
    t0 = time.perf_counter()
    try:
        train(tiny_config(root / "warm", *WARMUP), log=lambda s: None)
        warm = latest_checkpoint(root / "warm") / "model"
        acc0, margin0 = train_accuracy(warm), pair_margin(warm)
        rises, margins, mech = [], [], []
        for seed in (0, 1, 2):
            out = root / str(seed)
            cfg = tiny_config(
                out,
                f"method={method}",
                f"model.name={warm}",
                "steps=60",
                "lr=5e-4",
                "prompts_per_step=16",
                "eval.prompts=0",
                f"seed={seed}",
                *overrides,
            )
            train(cfg, log=lambda s: None)
            final = latest_checkpoint(out) / "model"
            rises.append(round(train_accuracy(final) - acc0, 3))
            margins.append(round(pair_margin(final) - margin0, 3))
            rows = [r for r in read_metrics(out / "metrics.jsonl") if "perf/step_s" in r]
            keys = sorted({k for r in rows for k in r if any(x in k for x in MECHANISM)})
            mech.append({k: round(sum(r.get(k) or 0 for r in rows) / len(rows), 3) for k in keys})
        print(
            json.dumps(
                {
                    "method": method,
                    "overrides": overrides,
                    "accuracy_before": round(acc0, 3),
                    "accuracy_rise": rises,
                    "mean_rise": round(sum(rises) / 3, 3),
                    "pair_margin_rise": margins,
                    "mechanism_means": mech,
                    "seconds": round(time.perf_counter() - t0),
                }
            )
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
