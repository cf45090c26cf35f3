"""Where one `sample` call's time goes: decoder setup (weight packing + prefill), the prefill
alone, and the decode steps, for SmolLM2-135M-Instruct on one two-digit addition prompt per row.
Four calls in one process; the first includes one-time costs (first touches of the weights).

    python bench/sample_phases.py                 # fp32, batch 1, 64 new tokens
    python bench/sample_phases.py --dtype bf16 --batch 16
    python bench/sample_phases.py --profile       # then the top ops of 10 decode steps
"""

from __future__ import annotations

import argparse
import time

import torch

from tandem.encode import Encoder
from tandem.model import decoder
from tandem.model.load import load_model
from tandem.model.sampler import sample
from tandem.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--profile", action="store_true", help="profile 10 decode steps at the end")
    a = ap.parse_args()
    model, tok = load_model("smollm2-135m")
    if a.dtype == "bf16":
        model = model.to(torch.bfloat16)
    enc = Encoder(tok)
    exs = get_task("add", {"digits": 2}).examples("eval", a.batch, seed=0)
    prompts = [enc.prompt(e) for e in exs]
    spent: dict[str, float] = {}

    def timed(name: str, fn):
        def run(*args, **kw):
            t = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t

        return run

    Dec = decoder.LlamaDecoder
    Dec.__init__ = timed("setup (pack + prefill)", Dec.__init__)
    Dec._prefill = timed("prefill", Dec._prefill)
    Dec.step = timed("decode steps", Dec.step)
    g = torch.Generator().manual_seed(0)
    print(f"{a.dtype}, batch {a.batch}, {a.new_tokens} new tokens, prompt {len(prompts[0])} tokens")
    for call in range(4):
        spent.clear()
        t = time.perf_counter()
        sample(
            model,
            prompts,
            max_new_tokens=a.new_tokens,
            temperature=1.0,
            eos_token_ids=[-1],  # never occurs: every row runs to the limit
            pad_token_id=enc.pad_id,
            generator=g,
        )
        total = time.perf_counter() - t
        parts = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in spent.items())
        per_step = spent["decode steps"] / (a.new_tokens - 1) * 1e3
        print(
            f"call {call}: {total * 1e3:.0f} ms = {parts} ({per_step:.1f} ms per step); "
            f"{a.batch * a.new_tokens / total:.1f} new tokens/s"
        )
    if a.profile:
        with torch.inference_mode():
            dec = decoder.LlamaDecoder(model, prompts, a.new_tokens, enc.pad_id)
            tok_B = dec.logits_BV.argmax(-1)
            for _ in range(3):
                tok_B = dec.step(tok_B).argmax(-1)
            with torch.profiler.profile() as prof:
                for _ in range(10):
                    tok_B = dec.step(tok_B).argmax(-1)
        print("10 decode steps (greedy), by self CPU time:")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
