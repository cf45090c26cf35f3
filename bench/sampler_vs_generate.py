"""Sampling throughput: tandem's sampler vs transformers' `model.generate`, SmolLM2-135M-Instruct.

Same prompts (two-digit addition in chat form), temperature 1, top-p 1, a fixed number of new
tokens (EOS is disabled for both, so both produce exactly N tokens per row), batch 1, 16 and 64.
Settings: fp32 (both on the fp32 model) and bf16 (both on the model cast to bf16 weights), plus
`best` = tandem in bf16 against `generate` in fp32, its default (no extra runs: the numbers are
those of the two settings). New tokens per second including the prefill, median over repeats;
each measurement in its own subprocess.

tandem's sampler runs its static-cache Llama decoder (tandem.model.decoder): the prompts' common
prefix (the chat template's system turn) and repeated prompts are prefilled once. Its calls run
inside `keep_packed(model)`, as tandem's evaluator does: the weights are packed for oneDNN once,
not at every call (`--repack` packs them at every call, as a training step's sampling does).

    python bench/sampler_vs_generate.py --quick    # N=32, one repeat (~4 min)
    python bench/sampler_vs_generate.py            # N=64, three repeats
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_allocator_args,
    child_print,
    machine,
    median,
    result_line,
    run_child,
    use_allocators,
)


def child(tool: str, batch: int, n: int, dtype: str, repeats: int, repack: bool) -> dict:
    import torch

    from tandem.encode import Encoder
    from tandem.model.load import load_model
    from tandem.model.sampler import keep_packed, sample
    from tandem.tasks import get_task

    model, tok = load_model("smollm2-135m")
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    enc = Encoder(tok)
    exs = get_task("add", {"digits": 2}).examples("eval", batch, seed=0)
    prompts = [enc.prompt(e) for e in exs]
    no_eos = [-1]  # an id that never occurs: every row runs to n tokens
    ctx = contextlib.nullcontext
    keep = contextlib.nullcontext() if repack or tool != "tandem" else keep_packed(model)

    def run_tandem() -> int:
        with ctx():
            out = sample(
                model,
                prompts,
                max_new_tokens=n,
                temperature=1.0,
                eos_token_ids=no_eos,
                pad_token_id=enc.pad_id,
                generator=torch.Generator().manual_seed(0),
            )
        return sum(len(c) for c in out.completions)

    def run_generate() -> int:
        tok.padding_side = "left"
        batch_enc = tok.pad({"input_ids": prompts}, return_tensors="pt")
        with ctx(), torch.no_grad():
            out = model.generate(
                **batch_enc,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                pad_token_id=enc.pad_id,
            )
        return (out.shape[1] - batch_enc["input_ids"].shape[1]) * out.shape[0]

    fn = run_tandem if tool == "tandem" else run_generate
    rates = []
    with keep:
        fn()  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            new = fn()
            rates.append(new / (time.perf_counter() - t))
    return {"tokens_per_s": median(rates), "step_s": 1.0 / median(rates)}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--repack", action="store_true", help="tandem packs the weights at every call")
    ap.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    add_allocator_args(ap)
    a = ap.parse_args()
    if a.child is not None:
        tool, b, n, dtype, reps, repack = a.child
        child_print(child(tool, int(b), int(n), dtype, int(reps), repack == "1"))
        return
    n = 32 if a.quick else 64
    reps = 1 if a.quick else 3
    print(f"machine: {machine()}")
    print(use_allocators(a))
    print(f"tandem packs the weights {'at every call' if a.repack else 'once (keep_packed)'}")
    lines = []
    res: dict[tuple[str, str, int], dict] = {}
    dtypes = a.dtypes.split(",")
    for dtype in dtypes:
        for b in (1, 16, 64):
            for tool in ("tandem", "generate"):
                args = [tool, str(b), str(n), dtype, str(reps), str(int(a.repack))]
                r = run_child(Path(__file__), args)
                res[tool, dtype, b] = r
                print(
                    f"  {tool:8s} batch {b:2d} {dtype}: {r['tokens_per_s']:.1f} new tokens/s, "
                    f"peak {r['peak_rss_gb']:.2f} GB ({r['malloc']})",
                    flush=True,
                )
    pairs = [(d, d, d) for d in dtypes]
    if {"fp32", "bf16"} <= set(dtypes):
        pairs.append(("best", "bf16", "fp32"))
    for name, td, gd in pairs:
        for b in (1, 16, 64):
            t, g = res["tandem", td, b], res["generate", gd, b]
            setting = f"sample_b{b}_n{n}_{name}"
            lines.append(
                result_line(setting, t["step_s"], g["step_s"], t["peak_rss_gb"], g["peak_rss_gb"])
            )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
