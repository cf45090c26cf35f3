"""How the GRPO step cost grows with samples per prompt and completion length, tandem vs TRL.

Same harness as `grpo_vs_trl.py` (SmolLM2-135M-Instruct, two-digit addition in chat form,
beta = 0, one update per batch), with two prompts per step and every completion forced to run to
exactly N tokens (TRL: `generation_kwargs={"min_new_tokens": N}`; tandem: no EOS id), so that
the length axis really is the length. Grid: G in (4, 8, 16) samples per prompt at N = 32, and
N in (32, 128, 512) at G = 8. Both tools in bf16 (tandem `model.autocast_bf16=true`, TRL
`bf16=True`), each tool's faster setting in `grpo_vs_trl.py`.

    python bench/scaling.py --quick    # G in (4, 8), N in (32, 128), one repeat
    python bench/scaling.py            # the whole grid, one repeat (see --repeats)

Prints, per setting, seconds per step for both tools and the RESULT line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_allocator_args, child_print, compare, machine, use_allocators  # noqa: E402
from grpo_vs_trl import child_tandem, child_trl  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    add_allocator_args(ap)
    a = ap.parse_args()
    if a.child is not None:
        tool, p, g, n, dtype, warmup, steps = a.child
        fn = child_tandem if tool == "tandem" else child_trl
        child_print(fn(int(p), int(g), int(n), dtype, int(warmup), int(steps), fixed_len=True))
        return
    groups = (4, 8) if a.quick else (4, 8, 16)
    lengths = (32, 128) if a.quick else (32, 128, 512)
    grid = [(2, g, 32) for g in groups] + [(2, 8, n) for n in lengths if n != 32]
    print(f"machine: {machine()}")
    print(use_allocators(a))
    lines = []
    for p, g, n in grid:
        steps = 2 if g * n >= 1024 else 3
        args = [str(p), str(g), str(n), a.dtype, "1", str(steps)]
        lines.append(compare(Path(__file__), f"scale_{p}x{g}x{n}_{a.dtype}", args, a.repeats))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
