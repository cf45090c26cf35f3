"""Shared fixtures: a tiny-model run config, and a tiny model warmed up by SFT.

The tiny model is the built-in random-init Llama with a character vocabulary; the task is
one-digit addition in plain style ("3+4=" -> "7"), where a few dozen SFT steps reach a mixed
accuracy, so RL methods see groups with both right and wrong answers.

The warm model is a file, `tests/data/warm_tiny/` (430 KB): the `WARMUP` run's result
(`python -m tests.conftest tests/data/warm_tiny` writes it again; it was written on an AVX-512
CPU, start accuracy 0.42 on the 64 training prompts). It is not trained per session because
100 Adam steps turn the last-bit differences of another CPU's kernels (AVX2 vs AVX-512) into
another model: golden first losses came out up to 5% apart, and the learning tests, whose
thresholds were set on this model, missed 11 of 40 from AVX2's (start accuracy 0.47). From the
file, golden values agree to 1.4e-5 between kernels (docs/LOG.md, eleventh and twelfth
sessions).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from tandem.config import RunConfig, load_config

torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY = [
    "model.name=tiny",
    "model.device=cpu",  # on a GPU machine too (tests/test_devices.py covers the other devices)
    "task.name=add",
    "task.params.style=plain",
    "task.params.digits=1",
    "task.params.ood_digits=2",
    "max_new_tokens=4",
    "tensorboard=false",
    "progress=false",
    "eval.prompts=20",
    "eval.ood_prompts=0",
    "eval.every=0",
    "prompts_per_step=8",
    "samples_per_prompt=8",
    "demos_per_step=16",
    "lr=3e-3",
]


WARMUP = ["method=sft", "steps=100", "eval.before=false"]
WARM_DIR = Path(__file__).resolve().parent / "data" / "warm_tiny"


def tiny_config(out: Path, *overrides: str) -> RunConfig:
    return load_config(None, [*TINY, f"output_dir={out}", *overrides])


@pytest.fixture(scope="session")
def warm_tiny(tmp_path_factory) -> Path:
    """The warm model (a copy of tests/data/warm_tiny): 100 SFT steps on one-digit addition,
    train-prompt accuracy 0.42; the same on every CPU."""
    out = tmp_path_factory.mktemp("warm") / "model"
    shutil.copytree(WARM_DIR, out)
    return out


def make_warm(dest: Path) -> None:
    """Train the warm model (`WARMUP`) and write it to `dest` (its `model/` folder's files)."""
    import tempfile

    from tandem.train.checkpoint import latest_checkpoint
    from tandem.train.loop import train

    with tempfile.TemporaryDirectory() as d:
        train(tiny_config(Path(d), *WARMUP), log=lambda s: None)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(latest_checkpoint(Path(d)) / "model", dest)


def train_accuracy(model_dir: Path | str, n: int = 64, condition: str | None = None) -> float:
    """Greedy accuracy on the first n training prompts (what RL on those prompts optimizes),
    with `condition` before each question when given (a class-conditioned model, C-RLFT)."""
    from tandem.eval.evaluate import evaluate
    from tandem.train.loop import build_state
    from tandem.train.sources import conditioned

    st = build_state(tiny_config(Path("unused"), f"model.name={model_dir}"))
    exs = conditioned(st.task.examples("train", n, seed=0), condition)
    out = evaluate(
        st.model, st.encoder, st.task, exs, max_new_tokens=4, eos_token_ids=st.backend.eos_ids
    )
    return out["eval/accuracy"]


def pair_margin(model_dir: Path | str, n: int = 64) -> float:
    """Mean log π(gold) − log π(first wrong answer), summed over each response's tokens, on the
    first n training prompts: how much the model prefers the chosen side of the task's pairs."""
    from tandem.experience import Item, collate
    from tandem.model.logprobs import token_logprobs
    from tandem.train.loop import build_state

    st = build_state(tiny_config(Path("unused"), f"model.name={model_dir}"))
    exs = [ex for ex in st.task.examples("train", n, seed=0) if ex.wrong]
    enc = st.encoder
    items = [
        Item.of(enc.prompt(ex), side, "demo", "pairs")
        for ex in exs
        for side in (enc.demo(ex), enc.text(ex.wrong[0]))
    ]
    b = collate(items, enc.pad_id)
    with torch.no_grad():
        logp = token_logprobs(st.model, b.input_ids_BT, b.attention_mask_BT, b.target_mask_BT).logp
    seq = logp.sum(1)
    return float((seq[0::2] - seq[1::2]).mean())


if __name__ == "__main__":  # python -m tests.conftest tests/data/warm_tiny
    make_warm(Path(sys.argv[1]))
