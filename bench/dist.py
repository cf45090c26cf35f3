"""Data parallelism on one CPU machine: one process with T threads against `torchrun` with 2
ranks of T/2 threads each (`distributed.strategy=ddp`, gloo), same global batch, same run.

    python bench/dist.py                     # SmolLM2-135M GRPO 4x8x32 fp32, 6 steps
    python bench/dist.py --method sft --steps 6
    python bench/dist.py --model tiny        # the tiny model: mostly communication

Each side is a fresh `tandem train` run; seconds per step is the median of `perf/step_s` after
the first step (rank 0's, which waits for the slowest rank at every collective). Prints
`RESULT <setting> speedup=<1-process s / 2-rank s> mem_ratio=<2-rank peak RSS (both ranks) /
1-process peak RSS>`. On a 2-core machine both sides use the same 2 cores: this measures what
sharding costs and saves there, not what a second machine would give.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402


def recipe(method: str, model: str, out: Path, steps: int) -> list[str]:
    return [
        f"method={method}",
        f"model.name={model}",
        "task.name=add",
        "task.params.digits=2",
        "prompts_per_step=4",
        "samples_per_prompt=8",
        "demos_per_step=32",
        "max_new_tokens=32",
        "lr=1e-5",
        f"steps={steps}",
        "eval.prompts=0",
        "eval.before=false",
        "save_every=0",
        "tensorboard=false",
        "progress=false",
        f"output_dir={out}",
    ]


def run(args: list[str], ranks: int, threads: int) -> tuple[float, float, float]:
    """(median s/step after the first, wall s, peak RSS GB summed over the processes)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TANDEM_ALLOCATOR": "system"}
    if ranks == 1:
        cmd = [sys.executable, "-m", "tandem.cli", "train", *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={ranks}",
            "-m",
            "tandem.cli",
            "train",
            *args,
            "distributed.strategy=ddp",
        ]
    # a wrapper process runs the command and reports the peak RSS of its largest descendant
    # (one rank); the ranks are alike, so the total is that times the rank count
    wrap = (
        "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
        "print('MAXRSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)"
    )
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", wrap, *cmd], capture_output=True, text=True, env=env
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"run failed: {' '.join(cmd)}")
    kib = next(int(x.split()[1]) for x in proc.stdout.splitlines() if x.startswith("MAXRSS"))
    out = Path(next(a.split("=", 1)[1] for a in args if a.startswith("output_dir=")))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [r["perf/step_s"] for r in rows if "perf/step_s" in r][1:]
    return statistics.median(times), wall, kib / 1024**2 * ranks


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--method", default="grpo")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    a = ap.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as d:
        one = run(recipe(a.method, a.model, Path(d) / "one", a.steps), 1, a.threads)
        two = run(recipe(a.method, a.model, Path(d) / "two", a.steps), 2, max(1, a.threads // 2))
    setting = f"{a.method}_{a.model}_4x8x32"
    print(f"  1 process x {a.threads} threads: {one[0]:.3f} s/step (wall {one[1]:.1f} s)")
    print(
        f"  2 ranks x {max(1, a.threads // 2)} threads: {two[0]:.3f} s/step (wall {two[1]:.1f} s)"
    )
    print(f"RESULT {setting} speedup={one[0] / two[0]:.2f} mem_ratio={two[2] / one[2]:.2f}")


if __name__ == "__main__":
    main()
