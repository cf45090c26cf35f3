"""The GPU check: one script that runs tandem's CUDA path on a CUDA machine in about 4 minutes
and prints clearly labelled results (docs/gpu.md).

  (i)   tests: `pytest tests/test_devices.py` (CPU and CUDA); and last, as (i-b), for the
        record, the engine tests and the golden first losses of every preset as they run there
        (model.device auto, so CUDA with bf16 autocast: the golden values are CPU fp32 ones, so
        this group's failures measure drift, not necessarily bugs; not counted in the verdict);
  (ii)  a short hybrid run: CHORD, 8 steps on a random-init model of SmolLM2-135M's shape, with
        per-step seconds, loss, gradient norm and peak CUDA memory; then a resume from the
        step-4 checkpoint, whose metrics and final weights must match the uninterrupted run's;
  (iii) a GRPO step timing, 2 prompts x 8 samples x 32 new tokens, both with bf16 autocast:
        tandem vs TRL's GRPOTrainer on the same model (saved as a HF directory), plain-text
        prompts, reward = the arithmetic verifier `last_number` on both sides (as in
        bench/grpo_vs_trl.py). Each side runs in its own process: warm-up steps, then timed
        steps (CUDA synchronized around each). Prints `RESULT gpu-grpo-2x8x32 speedup=<TRL
        s/step / tandem s/step>`. TRL's side is skipped, with a message, if trl is missing.

On the GPU machine (after `bash bench/gpu_wheels.sh` here and the pip install line there):

    python bench/gpu_check.py --out gpu_check.txt

A dry run on a CPU (tiny model, fewer steps, only tests/test_devices.py):

    OMP_NUM_THREADS=1 python bench/gpu_check.py --device cpu --quick

The exit status is 0 when every part that counts passed (skipped parts do not fail it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))  # the tree being checked (tandem is not installed on the GPU machine)

QUIET = lambda s: None  # noqa: E731


class Out:
    """Print to stdout and, with --out, to a file too; flushed line by line (a run cut off at a
    time limit keeps what it printed)."""

    def __init__(self, path: str | None) -> None:
        self.file = open(path, "w") if path else None  # noqa: SIM115

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        if self.file:
            self.file.write(text + "\n")
            self.file.flush()

    def section(self, title: str) -> None:
        self(f"\n=== {title} ===")


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
    env.update(
        {
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        }
    )
    return env


def has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    try:
        return v(dist)
    except PackageNotFoundError:
        return "absent"


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        a, r = torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30
        return f"peak CUDA memory {a:.2f} GiB allocated ({r:.2f} GiB reserved)"
    return f"peak RSS of this process so far {peak_gb(device):.2f} GiB (CPU run: no CUDA memory)"


def peak_gb(device: str) -> float:
    """Peak CUDA memory allocated, or on CPU the peak RSS of this process (VmHWM: ru_maxrss
    would include the parent's peak, which Linux carries over into a child process)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# ----------------------------------------------------------------------------- environment
def environment(out: Out, device: str) -> bool:
    import torch

    out.section("environment")
    out(f"python {platform.python_version()} ({sys.executable}), {os.cpu_count()} CPU cores")
    out(
        f"torch {torch.__version__} (CUDA build {torch.version.cuda}), cuda available: "
        f"{torch.cuda.is_available()}"
    )
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out(
            f"GPU 0: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, "
            f"capability {p.major}.{p.minor}, bf16 supported: {torch.cuda.is_bf16_supported()}"
        )
    names = ["transformers", "huggingface_hub", "tokenizers", "accelerate", "safetensors",
             "pydantic", "pydantic_core", "typing_extensions", "trl", "datasets", "pyarrow",
             "gguf", "math-verify", "reasoning_gym"]  # fmt: skip
    out("packages: " + ", ".join(f"{n} {version(n)}" for n in names))
    out(f"tandem from {SRC}; PYTHONPATH={os.environ.get('PYTHONPATH', '')}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        out(
            f"FAIL: --device {device} but torch.cuda.is_available() is False (use --device cpu "
            "for a dry run)"
        )
        return False
    return True


# ----------------------------------------------------------------------------- (i) tests
SUMMARY_RE = re.compile(r"\b\d+ (passed|failed|error|errors|skipped)\b")


def run_tests(out: Out, files: list[str], label: str, timeout: int) -> str:
    """Run pytest on `files` in a subprocess; print its summary and failures; PASS/FAIL."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", "--tb=line"]
    t = time.perf_counter()
    try:
        p = subprocess.run(
            [*cmd, *files],
            cwd=ROOT,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        tail = (e.stdout or b"")[-2000:]
        out(f"TESTS {label}: TIMEOUT after {timeout} s")
        out(tail.decode() if isinstance(tail, bytes) else tail)
        return "FAIL"
    secs = time.perf_counter() - t
    lines = p.stdout.splitlines()
    summary = next((ln for ln in reversed(lines) if SUMMARY_RE.search(ln)), "(no summary line)")
    out(f"TESTS {label}: {summary.strip('= ')} [{secs:.0f} s, exit {p.returncode}]")
    for ln in lines:
        if ln.startswith(("FAILED", "ERROR")):
            out("  " + ln[:400])
    if p.returncode not in (0, 1):  # 1: tests failed; others: collection or usage errors
        out((p.stdout[-3000:] + p.stderr[-3000:]).rstrip())
    return "PASS" if p.returncode == 0 else "FAIL"


# ----------------------------------------------------------------------------- (ii) hybrid
def strip_perf(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def compare_rows(a: list[dict], b: list[dict], exact: bool) -> tuple[bool, str]:
    """(match, description): the same rows and keys, values equal (exact) or within 1e-4
    relative / 1e-6 absolute."""
    if [(r["step"], sorted(r)) for r in a] != [(r["step"], sorted(r)) for r in b]:
        return False, "the rows or their keys differ"
    worst, where, bitwise, bad = 0.0, "", True, []
    for ra, rb in zip(a, b):
        for k, va in ra.items():
            vb = rb[k]
            if va == vb:
                continue
            bitwise = False
            if va is None or vb is None:
                bad.append(f"step {ra['step']} {k}: {va} vs {vb}")
                continue
            rel = abs(va - vb) / max(abs(va), abs(vb), 1e-12)
            if rel > worst:
                worst, where = rel, f"step {ra['step']} {k}: {va!r} vs {vb!r}"
            if exact or not math.isclose(va, vb, rel_tol=1e-4, abs_tol=1e-6):
                bad.append(f"step {ra['step']} {k}: {va!r} vs {vb!r}")
    n = sum(len(r) for r in a)
    desc = f"{n} values, bitwise equal: {'yes' if bitwise else 'no'}"
    if not bitwise:
        desc += f", largest relative difference {worst:.2e} ({where})"
    if bad:
        desc += f"; {len(bad)} outside tolerance, first: {bad[0]}"
    return not bad, desc


def link_or_copy(src: str, dst: str) -> None:
    try:  # a hard link: the checkpoint is ~1.6 GB on the SmolLM2-shaped model; nothing writes
        os.link(src, dst)  # into a checkpoint's files in place (new ones are renamed in)
    except OSError:
        shutil.copy2(src, dst)


# columns of the per-step table (perf/* in seconds)
TABLE = [
    "step",
    "perf/step_s",
    "perf/sample_s",
    "perf/train_s",
    "loss/total",
    "optim/grad_norm",
    "reward/mean",
    "coef/mu",
]


def hybrid(out: Out, device: str, quick: bool, model: str, work: Path) -> str:
    import torch

    from tandem.config import load_config
    from tandem.report.metrics import read_metrics
    from tandem.train.checkpoint import latest_checkpoint
    from tandem.train.loop import train

    steps, save_every = (4, 2) if quick else (8, 4)
    warmup, decay = (1, 3) if quick else (2, 6)
    out.section(f"(ii) hybrid run: chord, {steps} steps, {model}, {device}")
    overrides = [
        "method=chord",
        f"model.name={model}",
        f"model.device={device}",
        "task.name=add",
        "task.params.style=plain",
        "task.params.digits=2",
        "prompts_per_step=4",
        "samples_per_prompt=8",
        "max_new_tokens=16",
        f"objective.controllers.mu.warmup_steps={warmup}",
        f"objective.controllers.mu.decay_steps={decay}",
        "tensorboard=false",
        "progress=false",
        "eval.prompts=16",
        "eval.ood_prompts=0",
        f"steps={steps}",
        f"save_every={save_every}",
    ]
    full, resumed = work / "hybrid_full", work / "hybrid_resumed"
    cfg = load_config(None, [*overrides, f"output_dir={full}"])
    out("overrides: " + " ".join(overrides))
    out(f"autocast bf16: {cfg.model.autocast_bf16} (null: on for CUDA, off for CPU)")
    reset_peak(device)
    t = time.perf_counter()
    summary = train(cfg, log=QUIET)
    wall = time.perf_counter() - t
    mem = peak_memory(device)
    rows = read_metrics(full / "metrics.jsonl")
    out(" ".join(TABLE))
    ok = True
    nan = float("nan")
    for r in rows:
        if "loss/total" not in r:
            continue
        g = {k: nan if v is None else v for k, v in r.items()}.get
        cols = [g(k, nan) for k in TABLE[1:]]
        out(f"{r['step']:>4} " + " ".join(f"{v:>{len(k)}.4f}" for k, v in zip(TABLE[1:], cols)))
        ok &= all(math.isfinite(g(k, nan)) for k in ("loss/total", "optim/grad_norm"))
    evals = [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
    out(f"eval accuracy (step, value): {evals}")
    out(
        f"wall {wall:.1f} s for {steps} steps, 2 evaluations and {steps // save_every} "
        f"checkpoints; {mem}"
    )
    out(f"summary: accuracy {summary['accuracy_before']} -> {summary['accuracy_after']}")
    if not ok:
        out("FAIL: a loss or gradient norm is not finite")

    # resume from the mid checkpoint, in a copy of the run directory, and compare
    mid = full / "checkpoints" / f"step_{save_every:06d}"
    (resumed / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy2(full / name, resumed / name)  # real copies: the resumed run rewrites them
    shutil.copytree(mid, resumed / "checkpoints" / mid.name, copy_function=link_or_copy)
    (resumed / "checkpoints" / "latest").write_text(mid.name + "\n")
    cfg2 = load_config(resumed / "config.yaml", [f"output_dir={resumed}"], preset=False)
    logs: list[str] = []
    reset_peak(device)
    t = time.perf_counter()
    train(cfg2, resume=True, log=logs.append)
    out(
        f"resume: {next((s for s in logs if s.startswith('resumed')), '(no resume line!)')}; "
        f"{time.perf_counter() - t:.1f} s; {peak_memory(device)}"
    )
    a = strip_perf(read_metrics(full / "metrics.jsonl"))
    b = strip_perf(read_metrics(resumed / "metrics.jsonl"))
    exact = device == "cpu"
    match, desc = compare_rows(a, b, exact)
    out(
        f"resume metrics vs the uninterrupted run ({'exact' if exact else 'rel 1e-4'}): "
        f"{'MATCH' if match else 'MISMATCH'}: {desc}"
    )
    from safetensors.torch import load_file

    wm = load_file(mid / "model" / "model.safetensors")
    wa = load_file(latest_checkpoint(full) / "model" / "model.safetensors")
    wb = load_file(latest_checkpoint(resumed) / "model" / "model.safetensors")
    diff = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    update = max((wa[k].float() - wm[k].float()).abs().max().item() for k in wa)
    # the tolerance is a share of what the resumed steps changed (lr 1e-5: weights move ~1e-4)
    wmatch = wa.keys() == wb.keys() and (diff == 0 if exact else diff <= 1e-2 * update)
    out(
        f"resume final weights ({'exact' if exact else 'within 1% of the largest update'}): "
        f"{'MATCH' if wmatch else 'MISMATCH'}: largest absolute difference {diff:.3e}; largest "
        f"change of a weight from step {save_every} to {steps}: {update:.3e}"
    )
    del wm, wa, wb
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return "PASS" if ok and match and wmatch else "FAIL"


# ----------------------------------------------------------------------------- (iii) GRPO timing
LR = 1e-6


def child_tandem(spec: dict) -> dict:
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from common import median, timed_steps

    from tandem.config import load_config
    from tandem.train.loop import build_state
    from tandem.train.step import train_step

    p, g, n, device = spec["p"], spec["g"], spec["n"], spec["device"]
    cfg = load_config(
        None,
        [
            "method=grpo",
            f"model.name={spec['model_dir']}",
            f"model.device={device}",
            "model.autocast_bf16=true",
            "task.name=add",
            "task.params.style=plain",
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
    st = build_state(cfg, log=QUIET)
    ms: list[dict] = []

    def step() -> None:
        ms.append(train_step(st, len(ms)))
        sync(device)

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = timed_steps(step, spec["warmup"], spec["steps"])
    ms = ms[spec["warmup"] :]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "step_s": median(times),
        "times": times,
        "len_mean": mean([m["rollout/len_mean"] for m in ms]),
        "sample_s": mean([m["perf/sample_s"] for m in ms]),
        "train_s": mean([m["perf/train_s"] for m in ms]),
        "loss": [m["loss/total"] for m in ms],
        "peak_gb": peak_gb(device),
    }


def child_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    sys.path.insert(0, str(ROOT / "bench"))
    from common import median, trl_common_args

    from tandem.rewards.verifiers import last_number
    from tandem.tasks import get_task
    from tandem.tasks.chat import render_prompt

    p, g, n, device = spec["p"], spec["g"], spec["n"], spec["device"]
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"])  # fp32, as tandem's
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    exs = get_task("add", {"digits": 2, "style": "plain"}).examples("train", 512, seed=0)
    ds = Dataset.from_list(
        [{"prompt": render_prompt(tok, e.prompt), "answer": e.answer} for e in exs]
    )

    def reward(completions, answer, **kw):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [last_number(t, a).reward for t, a in zip(texts, answer)]

    times: list[float] = []
    lens: list[float] = []

    class Timer(TrainerCallback):  # CUDA synchronized at both ends of each optimizer step
        def on_step_begin(self, args, state, control, **kw):
            sync(device)
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            sync(device)
            times.append(time.perf_counter() - self.t)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lens.append(logs["completions/mean_length"])

    warmup, steps = spec["warmup"], spec["steps"]
    with tempfile.TemporaryDirectory() as d:
        common = trl_common_args(d, "bf16", warmup + steps)
        common["use_cpu"] = not device.startswith("cuda")
        args = GRPOConfig(
            per_device_train_batch_size=p * g,
            num_generations=g,
            max_completion_length=n,
            beta=0.0,
            num_iterations=1,
            learning_rate=LR,
            temperature=1.0,
            **common,
        )
        trainer = GRPOTrainer(
            model=model, reward_funcs=reward, args=args, train_dataset=ds, processing_class=tok
        )
        trainer.add_callback(Timer())
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        on = str(next(trainer.model.parameters()).device)
    return {
        "step_s": median(times[warmup:]),
        "times": times[warmup:],
        "len_mean": sum(lens[warmup:]) / max(1, len(lens[warmup:])),
        "peak_gb": peak_gb(device),
        "model_device": on,
    }


def run_child(tool: str, spec: dict, timeout: int) -> tuple[dict | None, str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", tool, json.dumps(spec)]
    try:
        p = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    if p.returncode != 0:
        return None, f"exit {p.returncode}:\n{p.stdout[-1500:]}{p.stderr[-3500:]}"
    return json.loads(p.stdout.strip().splitlines()[-1]), ""


def grpo_timing(out: Out, device: str, quick: bool, model: str, work: Path) -> str:
    from tandem.model.load import load_model

    p, g, n = 2, 8, 32
    warmup, steps = (1, 2) if quick else (2, 4)
    setting = f"{'gpu' if device.startswith('cuda') else 'cpu'}-grpo-{p}x{g}x{n}"
    out.section(f"(iii) GRPO step timing {setting}: tandem vs TRL, bf16 autocast, {model}")
    model_dir = work / "grpo_model"
    m, tok = load_model(model)
    m.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    del m
    spec = dict(p=p, g=g, n=n, device=device, model_dir=str(model_dir), warmup=warmup, steps=steps)
    out(
        f"the same model saved as a HF directory for both; plain-text prompts (two-digit "
        f"addition), reward last_number; {warmup} warm-up + {steps} timed steps each"
    )
    res: dict[str, dict] = {}
    tools = ["tandem", "trl"] if has("trl") and has("datasets") else ["tandem"]
    for tool in tools:
        r, err = run_child(tool, spec, timeout=300)
        if r is None:
            out(f"  {tool:6s}: FAILED ({err})")
            continue
        res[tool] = r
        extra = (
            f", sample {r['sample_s']:.3f} s + train {r['train_s']:.3f} s"
            if "sample_s" in r
            else f", model on {r.get('model_device')}"
        )
        out(
            f"  {tool:6s}: {r['step_s']:.3f} s/step (median of {[round(x, 3) for x in r['times']]})"
            f", mean completion {r['len_mean']:.1f} tokens, peak {r['peak_gb']:.2f} GiB{extra}"
        )
    if "trl" not in tools:
        out(
            "SKIP TRL side: trl (or datasets) is not importable here; install the `trl` set of "
            "bench/gpu_wheels.sh. No RESULT line."
        )
        return "PASS" if "tandem" in res else "FAIL"
    if len(res) < 2:
        return "FAIL"
    ratio = res["trl"]["step_s"] / res["tandem"]["step_s"]
    mem = res["tandem"]["peak_gb"] / res["trl"]["peak_gb"]
    out(
        f"RESULT {setting} speedup={ratio:.2f} mem_ratio={mem:.2f} "
        f"(tandem {res['tandem']['step_s']:.3f} s, TRL {res['trl']['step_s']:.3f} s per step)"
    )
    return "PASS"


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu (dry run)")
    ap.add_argument("--quick", action="store_true", help="tiny model, fewer steps, fewer tests")
    ap.add_argument("--out", help="also write the output to this file")
    ap.add_argument("--model", help="model of (ii) and (iii) (default: random:smollm2-135m; "
                    "with --quick: tiny)")  # fmt: skip
    ap.add_argument(
        "--skip",
        default="",
        help="comma-separated parts to skip: tests, hybrid, grpo, engine (i-b)",
    )
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        tool, spec = a.child[0], json.loads(a.child[1])
        fn = child_tandem if tool == "tandem" else child_trl
        print(json.dumps(fn(spec)), flush=True)
        return

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars at every checkpoint
    out = Out(a.out)
    t0 = time.perf_counter()
    model = a.model or ("tiny" if a.quick else "random:smollm2-135m")
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    out(
        f"tandem GPU check: device {a.device}, model {model}{', quick' if a.quick else ''}, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}"
    )
    verdict: dict[str, str] = {}
    if not environment(out, a.device):
        verdict["environment"] = "FAIL"
    else:
        if "tests" not in skip:
            out.section("(i) tests")
            verdict["tests/test_devices.py"] = run_tests(
                out, ["tests/test_devices.py"], "tests/test_devices.py", timeout=240
            )
        with tempfile.TemporaryDirectory(prefix="gpu_check-") as d:
            for part, fn in (("hybrid", hybrid), ("grpo", grpo_timing)):
                if part in skip:
                    verdict[part] = "SKIP"
                    continue
                t = time.perf_counter()
                try:
                    verdict[part] = fn(out, a.device, a.quick, model, Path(d))
                except Exception as e:  # report and go on with the next part
                    import traceback

                    out(f"FAIL: {type(e).__name__}: {e}")
                    out(traceback.format_exc()[-3000:])
                    verdict[part] = "FAIL"
                out(f"[{part}: {time.perf_counter() - t:.0f} s]")
        if not a.quick and "engine" not in skip:  # last: the part that may be cut off
            out.section("(i-b) for the record: engine tests and golden first losses")
            out(
                "model.device auto: CUDA with bf16 autocast on a GPU machine, while the golden "
                "values are CPU fp32 ones; failures here measure drift and are not counted"
            )
            verdict["engine + golden (informational, not counted)"] = run_tests(
                out,
                ["tests/test_engine.py", "tests/test_train.py::test_golden_first_losses"],
                "engine + golden (informational)",
                timeout=240,
            )
    out.section("verdict")
    for k, v in verdict.items():
        out(f"  {k}: {v}")
    counted = [v for k, v in verdict.items() if "not counted" not in k]
    ok = all(v in ("PASS", "SKIP") for v in counted)
    out(f"GPU CHECK {'PASS' if ok else 'FAIL'} in {time.perf_counter() - t0:.0f} s")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
