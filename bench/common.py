"""Shared benchmark plumbing: run each measurement in a fresh subprocess (so peak RSS is that
run's own), alternate tandem and the peer, take medians, print RESULT lines.

Every benchmark prints, per setting, one line:
    RESULT <setting> speedup=<peer time / tandem time> mem_ratio=<tandem peak RSS / peer peak RSS>
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent

# The malloc each side's child process starts on (tandem.allocator): tandem's as the `tandem`
# command picks it (auto: tcmalloc, else jemalloc, else glibc); the peer's as it ships (glibc) or
# the same as tandem's. Set from the command line by `use_allocators`.
ALLOCATORS = {"tandem": "auto", "peer": "system"}


def add_allocator_args(ap) -> None:
    from tandem import allocator

    ap.add_argument(
        "--allocator",
        default="auto",
        choices=allocator.CHOICES,
        help="malloc of the tandem runs, as TANDEM_ALLOCATOR (default auto: what the `tandem` "
        "command uses: tcmalloc, else jemalloc, else glibc's)",
    )
    ap.add_argument(
        "--peer-allocator",
        default="system",
        choices=("system", "same"),
        help="malloc of the peer's runs: system (glibc, as it ships; default) or the same as tandem's",
    )


def use_allocators(a) -> str:
    """Record the command line's allocator choices; return a line saying what each side runs on."""
    from tandem import allocator

    ALLOCATORS["tandem"] = a.allocator
    ALLOCATORS["peer"] = a.allocator if a.peer_allocator == "same" else "system"
    names = {k: allocator.resolve(v)[0] for k, v in ALLOCATORS.items()}
    return f"malloc: tandem {names['tandem']}, peer {names['peer']}"


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def run_child(script: Path, args: list[str], timeout: int = 3600, side: str | None = None) -> dict:
    """Run `python script --child ARGS` (ARGS[0] the tool) on that side's allocator (`side`:
    "tandem" or "peer", by default from ARGS[0]) and parse the last stdout line as JSON."""
    from tandem import allocator

    side = side or ("tandem" if args[0] == "tandem" else "peer")
    env = allocator.preload_env(ALLOCATORS[side])
    env.update({"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"})
    proc = subprocess.run(
        [sys.executable, str(script), "--child", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"child run failed: {script.name} {' '.join(args)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_print(result: dict) -> None:
    from tandem import allocator

    result["peak_rss_gb"] = peak_rss_gb()
    result["malloc"] = allocator.in_use()
    print(json.dumps(result), flush=True)


def timed_steps(step: Callable[[], object], warmup: int, steps: int) -> list[float]:
    """Seconds of each measured call after `warmup` unmeasured ones."""
    for _ in range(warmup):
        step()
    out = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        out.append(time.perf_counter() - t)
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def machine() -> str:
    import platform

    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def result_line(
    setting: str, tandem_s: float, peer_s: float, tandem_gb: float, peer_gb: float
) -> str:
    return (
        f"RESULT {setting} speedup={peer_s / tandem_s:.2f} mem_ratio={tandem_gb / peer_gb:.2f} "
        f"(tandem {tandem_s:.2f} s, {tandem_gb:.2f} GB; peer {peer_s:.2f} s, {peer_gb:.2f} GB)"
    )


def compare(
    script: Path,
    setting: str,
    child_args: Callable[[str], list[str]],
    repeats: int,
    peer: str = "trl",
) -> str:
    """Run tandem and the peer `repeats` times each, alternating which goes first; print each
    run; return the RESULT line built from the medians."""
    res: dict[str, list[dict]] = {"tandem": [], peer: []}
    for r in range(repeats):
        for tool in ("tandem", peer) if r % 2 == 0 else (peer, "tandem"):
            out = run_child(script, [tool, *child_args])
            res[tool].append(out)
            extra = f", mean completion {out['len_mean']:.1f} tokens" if "len_mean" in out else ""
            if "mfu_train" in out:
                extra += (
                    f" (sample {out['sample_s']:.2f} s + train {out['train_s']:.2f} s; MFU train"
                    f" {out['mfu_train']:.0%}, whole step {out['mfu_step']:.0%} of a measured"
                    f" {out['peak_tflops']:.2f} TFLOP/s)"
                )
            print(
                f"  {tool:8s} {setting}: {out['step_s']:.3f} s, peak {out['peak_rss_gb']:.2f} GB"
                f" ({out['malloc']}){extra}",
                flush=True,
            )

    def med(tool: str, key: str) -> float:
        return median([o[key] for o in res[tool]])

    return result_line(
        setting,
        med("tandem", "step_s"),
        med(peer, "step_s"),
        med("tandem", "peak_rss_gb"),
        med(peer, "peak_rss_gb"),
    )


def trainer_timer(times: list[float], lengths: list[float] | None = None):
    """A transformers TrainerCallback that appends each optimizer step's seconds to `times` (and,
    for TRL's GRPO, the logged mean completion length to `lengths`)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)

        def on_log(self, args, state, control, logs=None, **kw):
            if lengths is not None and logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    return StepTimer()


def measured_peak_flops(dtype: str, seconds: float = 2.0, n: int = 2048) -> float:
    """This machine's matmul peak in FLOP/s for 'bf16' or 'fp32', measured now (n x n x n
    matmuls for about `seconds` per kernel), the denominator of the MFU figures. The best of
    PyTorch's default matmul and oneDNN's (`tandem.model.onednn`; for fp32 on AMD CPUs the
    default MKL kernel reaches about half of oneDNN's rate)."""
    import torch

    from tandem.model import onednn

    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    kernels = [lambda: a @ b]
    if onednn.available():
        kernels.append(lambda: onednn._mm(a, b))
    return max(2 * n**3 / seconds_per_call(mm, seconds) for mm in kernels)


def seconds_per_call(fn: Callable[[], object], budget_s: float, warmup: int = 2) -> float:
    """Mean seconds per call of `fn`, calling it repeatedly for about `budget_s` after warm-up."""
    for _ in range(warmup):
        fn()
    k, t = 0, time.perf_counter()
    while time.perf_counter() - t < budget_s:
        fn()
        k += 1
    return (time.perf_counter() - t) / k


def forward_flops(config, tokens: float, head_tokens: float) -> float:
    """Model FLOPs of one forward pass: 2 x (matmul weights of the transformer layers) per token
    run, plus 2 x hidden x vocab per token that goes through the LM head. Attention scores
    (quadratic in context) are left out: under 3% at these lengths for SmolLM2-135M."""
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    dh = getattr(config, "head_dim", None) or h // heads
    per_layer = h * heads * dh * 2 + 2 * h * kv * dh + 3 * h * inter  # q, o, k, v, mlp
    return 2 * layers * per_layer * tokens + 2 * h * config.vocab_size * head_tokens


def trl_common_args(output_dir: str, dtype: str, max_steps: int) -> dict:
    """Trainer settings both TRL harnesses share: CPU, bf16 only for the bf16 setting, a log
    line per step (for the timer), nothing saved or reported, seed 0."""
    return {
        "output_dir": output_dir,
        "max_steps": max_steps,
        "logging_steps": 1,
        "report_to": "none",
        "save_strategy": "no",
        "bf16": dtype == "bf16",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
    }
