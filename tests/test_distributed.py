"""Data parallelism (`distributed.strategy: ddp`) on CPU: 2 gloo ranks against 1 process.

The equality runs use float64 weights (`model.dtype=fp64`): a 2-rank run sums the same terms
in another order, and in float32 Adam's g / (sqrt(v) + eps) turns that rounding into
full-size updates where a gradient is near zero (docs/LOG.md, tenth session); in float64 the
rounding is far below eps. Tolerance: relative 1e-5 on every logged loss and statistic, and
on each updated weight tensor, max |w2 - w1| <= 1e-5 * max |w1|.

The tests that start processes are marked `distributed` (`python -m pytest -q -m distributed`,
about 7 min on 2 cores); the default run has the ones that do not.

Ranks are launched two ways: `torchrun` (tests/dist_driver.py runs several runs in one
process group) and plain processes with torchrun's environment variables, where a test needs
each rank's pid (a signal to one rank, a rank that dies or hangs).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tandem.config import load_config
from tandem.errors import TandemError
from tandem.experience import Item, collate
from tandem.report.metrics import read_metrics
from tandem.train.checkpoint import (
    RunLock,
    latest_checkpoint,
    load_trainer_state,
    verify_checkpoint,
)
from tandem.train.dist import Dist, init_dist
from tandem.train.loop import build_state, train

from .conftest import TINY
from .test_train import PRESET_ARGS, PRESETS

ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).resolve().parent / "dist_driver.py"
# name -> (preset, extra overrides): the six of issue 15, and DPO on a LoRA adapter (the
# reference is the base with the adapter off)
SIX = ["sft", "grpo", "chord", "luffy", "dpo", "ppo"]
EQUAL = {m: (m, []) for m in SIX}
EQUAL["dpo_lora"] = ("dpo", ["model.lora.r=4", "model.lora.alpha=8"])
EQUAL |= {f"{m}_fsdp2": (m, ["distributed.strategy=fsdp2"]) for m in SIX}
# Logged values that are not the run's math: timings, and the sampler-vs-trainer log-prob
# mismatch, which measures rounding itself.
NOT_MATH = ("perf/", "dist/", "rollout/logp_mismatch")


def _env(world: int, rank: int, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(
    runs: list[list[str]], tmp: Path, world: int = 2, timeout: float = 900, skew_rank=None
) -> str:
    """Every run of `runs` (override lists) on `world` gloo ranks under torchrun; the output
    (`skew_rank`: tests/dist_driver.py's fault)."""
    spec = tmp / f"spec-{time.monotonic_ns()}.json"
    spec.write_text(json.dumps({"runs": runs, "skew_rank": skew_rank}))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={world}",
        str(DRIVER),
        str(spec),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    out = res.stdout + res.stderr
    if res.returncode != 0:  # the first rank's error is what matters; it is often not the last
        (tmp / "torchrun.log").write_text(out)
        first = next((i for i, x in enumerate(out.splitlines()) if "Error" in x), 0)
        lines = out.splitlines()[max(0, first - 30) : first + 10]
        raise AssertionError("\n".join(lines) + f"\n(whole output: {tmp / 'torchrun.log'})")
    return out


def launch(
    args: list[str], world: int = 2, per_rank: dict[int, list[str]] | None = None
) -> list[subprocess.Popen]:
    """`tandem train ARGS` as `world` plain processes that find each other like torchrun's
    (`per_rank`: more arguments for some ranks)."""
    port = _free_port()
    return [
        subprocess.Popen(
            [sys.executable, "-m", "tandem.cli", "train", *args, *(per_rank or {}).get(r, [])],
            env=_env(world, r, port),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]


def _read_until(proc: subprocess.Popen, needle: str, timeout: float = 300) -> str:
    """The process's output up to the first line holding `needle`."""
    seen = []
    t0 = time.monotonic()
    for line in proc.stdout:
        seen.append(line)
        if needle in line:
            return "".join(seen)
        assert time.monotonic() - t0 < timeout, "".join(seen)[-3000:]
    raise AssertionError(f"never saw {needle!r}: " + "".join(seen)[-3000:])


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The last checkpoint's trained weights (a LoRA run's: the adapter's)."""
    ckpt = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    if (ckpt / "adapter").is_dir():
        return load_file(ckpt / "adapter" / "adapter_model.safetensors")
    return load_file(ckpt / "model" / "model.safetensors")


def assert_same_run(one: Path, two: Path, rtol: float = 1e-5) -> None:
    """Equal logged math (relative `rtol`) and equal final weights (tensor-relative `rtol`)."""

    def rows(run: Path) -> dict:  # (step, "train" | "eval") -> the row
        return {
            (r["step"], "train" if "loss/total" in r else "eval"): r
            for r in read_metrics(run / "metrics.jsonl")
        }

    ra, rb = rows(one), rows(two)
    assert {k for k in ra if k[1] == "train"} == {k for k in rb if k[1] == "train"}
    for key in sorted(ra.keys() & rb.keys()):  # a resumed run also evaluated where it stopped
        x, y = ra[key], rb[key]
        keys = {k for k in {*x, *y} if not k.startswith(NOT_MATH)}
        for k in sorted(keys):
            assert k in x and k in y, f"step {x['step']}: {k} only in one run"
            # abs 1e-7: a value that is 0 by the math is logged as its rounding remainder
            # (GRPO's ratio-1 loss/pg is -mean(A): -1.3e-8 on one side, -1.9e-8 on the other)
            assert y[k] == pytest.approx(x[k], rel=rtol, abs=1e-7), f"step {x['step']} {k}"
    wa, wb = weights(one), weights(two)
    assert wa.keys() == wb.keys()
    for name, a in wa.items():
        scale = float(a.double().abs().max()) or 1.0
        diff = float((wb[name].double() - a.double()).abs().max())
        assert diff <= rtol * scale, f"{name}: max |diff| {diff:.3g} vs max |w| {scale:.3g}"


def equal_args(method: str, warm: Path, out: Path, *extra: str) -> list[str]:
    return [
        *TINY,
        f"method={method}",
        f"model.name={warm}",
        "model.dtype=fp64",
        "steps=3",
        "lr=5e-4",
        "eval.prompts=6",
        "eval.batch_size=4",  # two evaluation chunks: one per rank
        "eval.pass_k=[2]",
        "eval.pass_samples=2",
        f"output_dir={out}",
        *PRESET_ARGS[method],
        *extra,
    ]


# ------------------------------------------------------------------------- the deal of rows


def _batch(groups: list[int], pairs: list[int], lengths: list[int]):
    items = [
        Item.of([1, 2], list(range(3, 3 + n)), "sampled", "s", group=g, pair=p, chosen=i % 2 == 0)
        for i, (g, p, n) in enumerate(zip(groups, pairs, lengths))
    ]
    return collate(items, pad_id=0)


def test_ranks_get_whole_groups_and_pairs_and_about_equal_tokens():
    groups = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, -1, -1, -1, -1]
    pairs = [-1] * 10 + [0, 0, 1, 1]
    lengths = [5, 3, 4, 2, 9, 9, 9, 9, 1, 1, 6, 6, 2, 2]
    units = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [10, 11], [12, 13]]
    batch = _batch(groups, pairs, lengths)
    for world in (1, 2, 3):
        deals = [Dist(rank=r, world=world).own_rows(batch) for r in range(world)]
        assert sorted(i for d in deals for i in d) == list(range(batch.size))  # a partition
        owner = {i: r for r, d in enumerate(deals) for i in d}
        for u in units:  # a group or a pair is never split
            assert len({owner[i] for i in u}) == 1, (world, u, deals)
        tokens = [int(batch.attention_mask_BT[d].sum()) for d in deals]
        assert max(tokens) - min(tokens) <= 4 * 11, (world, tokens)  # at most one unit apart
    two = [Dist(rank=r, world=2).own_rows(batch) for r in range(2)]
    assert [int(batch.attention_mask_BT[d].sum()) for d in two] == [50, 46]  # 44+6 vs 22+16+8


def test_slices_cover_the_rows_in_order():
    for n in (0, 1, 5, 8):
        for world in (1, 2, 3):
            parts = [Dist(rank=r, world=world).slice(n) for r in range(world)]
            assert [x for a, b in parts for x in range(a, b)] == list(range(n))


def test_launch_settings_that_cannot_run_are_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TandemError, match="distributed.strategy is none; set distributed"):
        init_dist("none", 60, "cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not init_dist("ddp", 60, "cpu").on  # the same recipe on one process
    fsdp2 = Dist(rank=0, world=2, shards=True)
    cfg = load_config(None, [*TINY, "model.lora.r=4"])
    with pytest.raises(TandemError, match="fsdp2 does not run with model.lora or rollout"):
        build_state(cfg, dist=fsdp2)


# -------------------------------------------------------------- 2 ranks equal to 1 process


@pytest.fixture(scope="module")
def whole_ppo(warm_tiny, tmp_path_factory) -> Path:
    """PPO for 4 steps in one process: what every resumed run must equal."""
    whole = tmp_path_factory.mktemp("dist-whole")
    train(load_config(None, equal_args("ppo", warm_tiny, whole, "steps=4")), log=lambda s: None)
    return whole


@pytest.fixture(scope="module")
def equal_runs(warm_tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist-equal")

    def args(name: str, ranks: int) -> list[str]:
        method, extra = EQUAL[name]
        return equal_args(method, warm_tiny, tmp / f"{name}-{ranks}", *extra)

    for name in EQUAL:  # (the one-process run ignores distributed.strategy)
        if not name.endswith("_fsdp2"):
            train(load_config(None, args(name, 1)), log=lambda s: None)
    out = torchrun([args(name, 2) for name in EQUAL], tmp)
    return tmp, out


@pytest.mark.distributed
@pytest.mark.parametrize("method", list(EQUAL))
def test_two_ranks_match_one_process(method, equal_runs):
    tmp, out = equal_runs
    assert_same_run(tmp / f"{method.removesuffix('_fsdp2')}-1", tmp / f"{method}-2")
    if method == "ppo_fsdp2":  # the value head, sharded in its own unit
        vh = [
            load_file(
                sorted((tmp / r / "checkpoints").glob("step_*"))[-1] / "value_head.safetensors"
            )
            for r in ("ppo-1", "ppo_fsdp2-2")
        ]
        for name, a in vh[0].items():
            assert float((vh[1][name] - a).abs().max()) <= 1e-5 * float(a.abs().max()), name
    assert "[rank 1/2] step 3/3" in out  # every rank's progress is in the log
    rows = read_metrics(tmp / f"{method}-2" / "metrics.jsonl")
    assert sum("loss/total" in r for r in rows) == 3  # one writer: one row per step
    assert json.loads((tmp / f"{method}-2" / "summary.json").read_text())["ranks"] == 2


@pytest.mark.distributed
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_every_preset_runs_three_steps_on_two_ranks(strategy, warm_tiny, tmp_path):
    tmp = tmp_path
    runs = [
        [
            *TINY,
            f"method={m}",
            f"model.name={warm_tiny}",
            "steps=3",
            "eval.prompts=4",
            "lr=5e-4",
            f"output_dir={tmp / m}",
            f"distributed.strategy={strategy}",
            *PRESET_ARGS[m],
        ]
        for m in sorted(PRESETS)
    ]
    torchrun(runs, tmp)
    for m in sorted(PRESETS):
        rows = [r for r in read_metrics(tmp / m / "metrics.jsonl") if "loss/total" in r]
        assert [r["step"] for r in rows] == [1, 2, 3], m
        assert all(math.isfinite(r["loss/total"]) for r in rows), m
        assert (tmp / m / "checkpoints" / "step_000003").is_dir(), m
        with RunLock(tmp / m):  # released at the end
            pass


# ---------------------------------------------------------------- resume, stop, lost ranks


@pytest.mark.distributed
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
@pytest.mark.parametrize("before,after", [(2, 1), (1, 2), (2, 2)])
def test_resume_on_another_number_of_ranks(before, after, strategy, warm_tiny, whole_ppo, tmp_path):
    """The optimizer state of a one-process or DDP checkpoint is trainer.pt's, keyed by
    position; an FSDP2 one is `torch.distributed.checkpoint` shards, one file per rank, keyed by
    parameter name: each resumes into the other (PPO: the value head and its moments too)."""
    part = tmp_path / "part"
    first = equal_args("ppo", warm_tiny, part, "steps=2", f"distributed.strategy={strategy}")
    if before == 1:
        train(load_config(None, first), log=lambda s: None)
    else:
        torchrun([first], tmp_path)
    ckpt = latest_checkpoint(part)
    sharded = before == 2 and strategy == "fsdp2"
    files = json.loads((ckpt / "manifest.json").read_text())
    shards = {"optimizer/.metadata", "optimizer/__0_0.distcp", "optimizer/__1_0.distcp"}
    assert shards <= set(files) if sharded else not any(f.startswith("optimizer/") for f in files)
    assert (load_trainer_state(ckpt)["optimizer"] is None) == sharded
    if sharded:  # the manifest covers the shard files: a changed one fails the check
        copy = tmp_path / "copy"
        shutil.copytree(ckpt, copy)
        shard = copy / "optimizer" / "__1_0.distcp"
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 1
        shard.write_bytes(bytes(data))
        assert verify_checkpoint(copy) == "optimizer/__1_0.distcp does not match its checksum"
    resume = ["--resume", str(part), "steps=4", f"distributed.strategy={strategy}"]
    if after == 1:
        subprocess.run(
            [sys.executable, "-m", "tandem.cli", "train", *resume], check=True, capture_output=True
        )
    else:
        procs = launch(resume)
        outs = [p.communicate(timeout=600)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
    assert_same_run(whole_ppo, part)


@pytest.mark.distributed
def test_sigterm_to_one_rank_stops_every_rank_after_the_same_step(warm_tiny, tmp_path):
    out = tmp_path / "run"
    args = [*TINY, "method=grpo", f"model.name={warm_tiny}", "steps=200", "eval.prompts=0"]
    procs = launch([*args, f"output_dir={out}", "distributed.strategy=ddp"])
    _read_until(procs[1], "[rank 1/2] step 2/200")
    # one lock for the run, held by rank 0: a second run in the directory is refused
    assert (out / ".lock").read_text().strip() == str(procs[0].pid)
    with pytest.raises(TandemError, match="is in use: a run is training there"):
        RunLock(out).__enter__()
    procs[1].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert len(ckpts) == 1, ckpts
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_by"] == "SIGTERM (rank 1)"
    assert ckpts[0] == f"step_{summary['stopped_at_step']:06d}"
    assert "stopped by SIGTERM (rank 1)" in outs[1]
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "loss/total" in r]
    assert rows[-1]["step"] == summary["stopped_at_step"]


@pytest.mark.distributed
@pytest.mark.parametrize("how", ["killed", "hung"])
def test_a_lost_rank_makes_the_others_exit_with_a_message(how, warm_tiny, tmp_path):
    args = [*TINY, "method=grpo", f"model.name={warm_tiny}", "steps=200", "eval.prompts=0"]
    procs = launch(
        [
            *args,
            f"output_dir={tmp_path / 'run'}",
            "distributed.strategy=ddp",
            "distributed.timeout_s=10",
        ]
    )
    _read_until(procs[1], "[rank 1/2] step 2/200")
    t0 = time.monotonic()
    procs[1].send_signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
    try:
        out0 = procs[0].communicate(timeout=120)[0]
    finally:
        procs[1].kill()
        procs[1].communicate()
    assert procs[0].returncode != 0
    assert time.monotonic() - t0 < 90
    assert "rank 0 of 2:" in out0 and "did not complete" in out0, out0[-3000:]
    assert "Traceback" not in out0, out0[-3000:]


@pytest.mark.distributed
def test_ranks_started_with_other_configs_are_refused(warm_tiny, tmp_path):
    args = [*TINY, "method=grpo", f"model.name={warm_tiny}", "steps=2", "eval.prompts=0"]
    procs = launch(
        [*args, f"output_dir={tmp_path / 'run'}", "distributed.strategy=ddp"],
        per_rank={1: ["seed=1"]},
    )
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode != 0 for p in procs), outs
    for out in outs:
        assert "rank 1 was started with another config than rank 0 (seed: 0 -> 1)" in out, out
    assert not (tmp_path / "run").exists()


@pytest.mark.distributed
def test_ranks_that_diverge_are_stopped_at_the_checkpoint(warm_tiny, tmp_path):
    """The replicated state (sources, buffers, controllers, LR schedule, RNG) is compared over
    ranks at each checkpoint: a rank whose RNG drifts (one extra draw per step, injected by the
    test driver) is caught there, with a message naming what differs."""
    run = [
        *TINY,
        "method=grpo",
        f"model.name={warm_tiny}",
        "steps=2",
        "eval.prompts=0",
        f"output_dir={tmp_path / 'run'}",
    ]
    with pytest.raises(AssertionError):
        torchrun([run], tmp_path, skew_rank=1)
    out = (tmp_path / "torchrun.log").read_text()
    assert "step 2: the torch RNG differs between rank 0 and ranks [1]" in out, out[-3000:]
    assert not (tmp_path / "run" / "checkpoints").exists()


def _pids_with_env(*pairs: str) -> list[int]:
    """Processes of this user whose environment holds every `KEY=value` of `pairs`."""
    found = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            items = set(env.read_bytes().split(b"\0"))
        except OSError:
            continue
        if all(p.encode() in items for p in pairs):
            found.append(int(env.parent.name))
    return found


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.distributed
def test_a_torchrun_restart_resumes_from_the_latest_checkpoint(warm_tiny, tmp_path):
    """`torchrun --max-restarts 1`: rank 1 is killed mid-run, the agent stops rank 0 and starts
    the group again with the same command line, which resumes from the run's latest checkpoint
    (TORCHELASTIC_RESTART_COUNT > 0) instead of refusing the directory, and finishes the run."""
    out = tmp_path / "run"
    tag = f"TANDEM_TEST_RUN={out}"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "--max-restarts=1",
        "-m",
        "tandem.cli",
        "train",
        *TINY,
        "method=grpo",
        f"model.name={warm_tiny}",
        "steps=40",
        "save_every=2",
        "eval.prompts=0",
        f"output_dir={out}",
        "distributed.strategy=ddp",
        "distributed.timeout_s=30",
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        tag.split("=")[0]: str(out),
    }
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _read_until(proc, "[rank 1/2] step 3/40")
        pids = _pids_with_env(tag, "LOCAL_RANK=1", "TORCHELASTIC_RESTART_COUNT=0")
        # the rank itself, not its reward workers (which inherit its environment)
        (victim,) = [p for p in pids if _parent(p) not in pids]
        os.kill(victim, signal.SIGKILL)
        rest = proc.communicate(timeout=600)[0]
    finally:
        proc.kill()
    (tmp_path / "torchrun.log").write_text(rest)
    assert proc.returncode == 0, rest[-3000:]
    assert "torchrun restart 1: resuming" in rest, rest[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 40 and summary.get("stopped_by") is None, summary
    assert latest_checkpoint(out).name == "step_000040"
