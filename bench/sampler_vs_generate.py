"""Sampling throughput: tandem's sampler vs transformers' `model.generate`, SmolLM2-135M-Instruct.

Same prompts (two-digit addition in chat form), temperature 1, top-p 1, a fixed number of new
tokens (EOS is disabled for both, so both produce exactly N tokens per row), batch 1, 16 and 64.
Settings: fp32 (both on the fp32 model) and bf16 (both on the model cast to bf16 weights), plus
`best` = tandem in bf16 against `generate` in fp32, its default (no extra runs: the rates of the
two settings, so it compares two processes and is rough). New tokens per second including the prefill, median over repeats;
the speed of both tools is measured in one process, in alternating calls (the speedup is the
median of the per-round ratios, so this VM's drift from one process to the next cancels), and
each tool's peak RSS in its own process. The paired speed runs use tandem's allocator for both
tools; `--peer-allocator` applies to the peer's memory run.

tandem's sampler runs its static-cache Llama decoder (tandem.model.decoder): the prompts' common
prefix (the chat template's system turn) and repeated prompts are prefilled once. Its calls run
inside `keep_packed(model)`, as tandem's evaluator does: the weights are packed for oneDNN once,
not at every call (`--repack` packs them at every call, as a training step's sampling does).

    python bench/sampler_vs_generate.py --quick    # N=32, two rounds
    python bench/sampler_vs_generate.py            # N=64, five rounds
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
    keep = contextlib.nullcontext() if repack or tool == "generate" else keep_packed(model)

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

    fns = {"tandem": run_tandem, "generate": run_generate}
    tools = ["tandem", "generate"] if tool == "pair" else [tool]
    rates: dict[str, list[float]] = {t: [] for t in tools}
    with keep:
        for t in tools:
            fns[t]()  # warm-up
        for r in range(repeats):
            for t in tools if r % 2 == 0 else tools[::-1]:  # alternate who goes first
                t0 = time.perf_counter()
                new = fns[t]()
                rates[t].append(new / (time.perf_counter() - t0))
    if tool != "pair":
        return {}  # a memory run: only its peak RSS counts
    ratios = [a / b for a, b in zip(rates["tandem"], rates["generate"])]
    return {
        "tandem_tps": median(rates["tandem"]),
        "generate_tps": median(rates["generate"]),
        "speedup": median(ratios),
    }


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
    reps = 2 if a.quick else 5
    print(f"machine: {machine()}")
    print(use_allocators(a))
    print(f"tandem packs the weights {'at every call' if a.repack else 'once (keep_packed)'}")
    print(
        f"speed: both tools in one process on tandem's allocator, {reps} alternating rounds after "
        "a warm-up; peak RSS: one call per tool in its own process, on its own allocator"
    )
    res: dict[tuple[str, int], dict] = {}
    dtypes = a.dtypes.split(",")
    script = Path(__file__)
    for dtype in dtypes:
        for b in (1, 16, 64):
            rest = [str(b), str(n), dtype]
            r = run_child(script, ["pair", *rest, str(reps), str(int(a.repack))], side="tandem")
            for tool in ("tandem", "generate"):
                m = run_child(script, [tool, *rest, "0", str(int(a.repack))])
                r[f"{tool}_gb"], r[f"{tool}_malloc"] = m["peak_rss_gb"], m["malloc"]
            res[dtype, b] = r
            print(
                f"  batch {b:2d} {dtype}: tandem {r['tandem_tps']:.1f}, generate "
                f"{r['generate_tps']:.1f} new tokens/s (speedup {r['speedup']:.2f}); peak "
                f"{r['tandem_gb']:.2f} GB ({r['tandem_malloc']}) / {r['generate_gb']:.2f} GB "
                f"({r['generate_malloc']})",
                flush=True,
            )
    lines = []
    for dtype in dtypes:
        for b in (1, 16, 64):
            r = res[dtype, b]
            lines.append(_line(f"sample_b{b}_n{n}_{dtype}", r["speedup"], r, r))
    if {"fp32", "bf16"} <= set(dtypes):  # tandem bf16 vs generate fp32: across the two runs
        for b in (1, 16, 64):
            t, g = res["bf16", b], res["fp32", b]
            lines.append(_line(f"sample_b{b}_n{n}_best", t["tandem_tps"] / g["generate_tps"], t, g))
    print("\n".join(lines))


def _line(setting: str, speedup: float, t: dict, g: dict) -> str:
    return (
        f"RESULT {setting} speedup={speedup:.2f} mem_ratio={t['tandem_gb'] / g['generate_gb']:.2f} "
        f"(tandem {t['tandem_tps']:.1f} tokens/s, {t['tandem_gb']:.2f} GB; "
        f"peer {g['generate_tps']:.1f} tokens/s, {g['generate_gb']:.2f} GB)"
    )


if __name__ == "__main__":
    main()
