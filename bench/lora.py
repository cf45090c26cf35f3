"""LoRA (`model.lora`) against full fine-tuning on SmolLM2-135M: seconds per step, peak RSS and
checkpoint size, for SFT and for GRPO, each run in a fresh process, the two alternated.

    python bench/lora.py                      # fp32, r=16 on all linears, 2 rounds
    python bench/lora.py --dtype bf16 --rounds 3

Prints per method a line `RESULT <method> speedup=<full s / lora s> mem_ratio=<lora GB / full
GB>` plus the checkpoint sizes. GRPO: 2 prompts x 8 samples x 32 new tokens (every completion
runs to 32 tokens, so both sides do the same work); SFT: 16 demonstrations per step.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import child_print, machine, median, run_child, timed_steps  # noqa: E402

SCRIPT = Path(__file__).resolve()


def config(method: str, lora: bool, dtype: str, r: int):
    from tandem.config import load_config

    return load_config(
        None,
        [
            f"method={method}",
            "model.name=smollm2-135m",
            f"model.autocast_bf16={'true' if dtype == 'bf16' else 'false'}",
            "task.name=add",
            "task.params.digits=2",
            "prompts_per_step=2",
            "samples_per_prompt=8",
            "demos_per_step=16",
            "max_new_tokens=32",
            "lr=1e-5",
            "tensorboard=false",
            "progress=false",
            *([f"model.lora.r={r}", f"model.lora.alpha={2 * r}"] if lora else []),
        ],
    )


def child(method: str, lora: bool, dtype: str, r: int, warmup: int, steps: int) -> dict:
    from tandem.train.checkpoint import save_checkpoint
    from tandem.train.loop import _trainer_state, build_state
    from tandem.train.step import train_step

    st = build_state(config(method, lora, dtype, r), log=lambda s: None)
    st.backend.eos_ids = [-1]  # an id that never occurs: every completion runs to 32 tokens
    k = [0]

    def step() -> None:
        train_step(st, k[0])
        k[0] += 1

    times = timed_steps(step, warmup, steps)
    with tempfile.TemporaryDirectory() as d:
        ck = save_checkpoint(Path(d), k[0], st.model, st.tokenizer, _trainer_state(st), "{}\n")
        size = sum(p.stat().st_size for p in ck.rglob("*") if p.is_file())
    return {
        "step_s": median(times),
        "times": times,
        "trainable": sum(p.numel() for p in st.model.parameters() if p.requires_grad),
        "ckpt_mb": size / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--child", nargs=3, metavar=("TOOL", "METHOD", "LORA"))
    a = ap.parse_args()
    if a.child:
        _, method, lora = a.child
        child_print(child(method, lora == "1", a.dtype, a.r, 1, a.steps))
        return
    print(f"# {machine()}; SmolLM2-135M {a.dtype}, LoRA r={a.r} alpha={2 * a.r} all-linear")
    for method in ("sft", "grpo"):
        got: dict[str, list[dict]] = {"full": [], "lora": []}
        for _ in range(a.rounds):
            for side, flag in (("full", "0"), ("lora", "1")):
                extra = ["--dtype", a.dtype, "--r", str(a.r), "--steps", str(a.steps)]
                res = run_child(SCRIPT, ["tandem", method, flag, *extra], side="tandem")
                got[side].append(res)
                print(f"# {method} {side}: {json.dumps(res)}", flush=True)
        s = {k: median([x["step_s"] for x in v]) for k, v in got.items()}
        gb = {k: median([x["peak_rss_gb"] for x in v]) for k, v in got.items()}
        mb = {k: v[0]["ckpt_mb"] for k, v in got.items()}
        n = {k: v[0]["trainable"] for k, v in got.items()}
        print(
            f"RESULT {method} speedup={s['full'] / s['lora']:.2f} mem_ratio={gb['lora'] / gb['full']:.2f}"
            f" (lora {s['lora']:.2f} s, {gb['lora']:.2f} GB, checkpoint {mb['lora']:.1f} MB, "
            f"{n['lora']:,} trainable; full {s['full']:.2f} s, {gb['full']:.2f} GB, checkpoint "
            f"{mb['full']:.1f} MB, {n['full']:,} trainable)",
            flush=True,
        )


if __name__ == "__main__":
    main()
