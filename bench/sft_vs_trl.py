"""SFT throughput and peak memory: tandem vs TRL's SFTTrainer on SmolLM2-135M-Instruct.

16 short chat examples per step (two-digit addition: user question, assistant answer), loss on
the assistant tokens only (TRL: prompt-completion data, completion_only_loss), one optimizer step
per batch, same learning rate. Both tools see the same examples, so the step-time ratio is the
tokens-per-second ratio. dtype fp32 (both plain) and bf16 (tandem autocast, TRL `bf16=True`).

    python bench/sft_vs_trl.py --quick     # one repeat, 1 warm-up + 5 steps (~3 min)
    python bench/sft_vs_trl.py             # three repeats
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_allocator_args,
    child_print,
    compare,
    machine,
    median,
    timed_steps,
    trainer_timer,
    trl_common_args,
    use_allocators,
)

BATCH, LR = 16, 2e-5


def child_tandem(dtype: str, warmup: int, steps: int) -> dict:
    from tandem.config import load_config
    from tandem.train.loop import build_state
    from tandem.train.step import train_step

    cfg = load_config(
        None,
        [
            "method=sft",
            "model.name=smollm2-135m",
            f"model.autocast_bf16={'true' if dtype == 'bf16' else 'false'}",
            "task.name=add",
            "task.params.digits=2",
            f"demos_per_step={BATCH}",
            f"lr={LR}",
            "tensorboard=false",
            "progress=false",
        ],
    )
    st = build_state(cfg, log=lambda s: None)
    k = [0]
    toks: list[float] = []

    def step() -> None:
        m = train_step(st, k[0])
        k[0] += 1
        toks.append(m["perf/tokens_per_s"] * m["perf/train_s"])

    times = timed_steps(step, warmup, steps)
    return {"step_s": median(times), "tokens_per_step": sum(toks) / len(toks)}


def child_trl(dtype: str, warmup: int, steps: int) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from tandem.model.load import load_model
    from tandem.tasks import get_task

    model, tok = load_model("smollm2-135m")
    exs = get_task("add", {"digits": 2}).examples("train", 512, seed=0)
    ds = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": e.prompt}],
                "completion": [{"role": "assistant", "content": e.solution}],
            }
            for e in exs
        ]
    )
    times: list[float] = []

    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            per_device_train_batch_size=BATCH,
            learning_rate=LR,
            **trl_common_args(out, dtype, warmup + steps),
            dataloader_num_workers=0,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
        trainer.add_callback(trainer_timer(times))
        trainer.train()
    return {"step_s": median(times[warmup:])}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    add_allocator_args(ap)
    a = ap.parse_args()
    if a.child is not None:
        tool, dtype, warmup, steps = a.child
        fn = child_tandem if tool == "tandem" else child_trl
        child_print(fn(dtype, int(warmup), int(steps)))
        return
    repeats = 1 if a.quick else 3
    print(f"machine: {machine()}")
    print(use_allocators(a))
    lines = []
    for dtype in a.dtypes.split(","):
        lines.append(compare(Path(__file__), f"sft_b{BATCH}_{dtype}", [dtype, "1", "5"], repeats))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
