"""The run: build the parts, evaluate, step, checkpoint, resume, summarize.

Step numbering: `step` in metrics and checkpoints counts optimizer updates done. Evaluation at
step 0 is "before training". The controller for update k (0-based) sees k.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from tandem import allocator
from tandem.config import RunConfig, dump_config, load_config
from tandem.encode import Encoder
from tandem.errors import TandemError
from tandem.eval.evaluate import evaluate
from tandem.model.load import eos_token_ids, load_model
from tandem.model.lora import LoraReference, apply_lora, load_adapters
from tandem.model.value_head import ValueHead
from tandem.report.metrics import MetricsWriter, read_metrics
from tandem.report.plots import plot_curves
from tandem.report.samples import sample_rows
from tandem.rewards.pool import RewardPool
from tandem.tasks import get_task
from tandem.train.backend import Backend, resolve_device
from tandem.train.checkpoint import (
    CheckpointError,
    RunLock,
    checkpoint_name,
    last_good,
    latest_checkpoint,
    load_trainer_state,
    save_checkpoint,
    set_rng_state,
)
from tandem.train.dist import Dist, init_dist
from tandem.train.plan import Stage, build_stages, describe
from tandem.train.sources import conditioned, example_pools
from tandem.train.step import RunState, train_step


def _lr_lambda(cfg: RunConfig, stages: list[Stage]):
    """Multiplier of `lr` at step k: the stage's learning rate relative to `lr`, times the
    run's warm-up and constant or cosine schedule."""

    def f(k: int) -> float:
        stage = next((s for s in stages if s.start <= k < s.end), stages[-1])
        scale = stage.lr / cfg.lr
        if cfg.warmup_steps and k < cfg.warmup_steps:
            return scale * (k + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "cosine" and cfg.steps > cfg.warmup_steps:
            frac = (k - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
            return scale * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
        return scale

    return f


def _adamw(params, lr: float, cfg: RunConfig) -> torch.optim.Optimizer:
    # fused AdamW: one kernel over all parameters, ~10x faster than foreach on CPU (docs/LOG.md)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, fused=True)


def build_state(
    cfg: RunConfig, model_source: str | None = None, log=print, dist: Dist | None = None
) -> RunState:
    """Load model, task and data; build the stages (sources, terms, controllers), the extra
    models they need, the backend and the optimizers. Nothing is trained. With a `dist` of
    several ranks, each rank takes its own CUDA device and rank 0's initial weights."""
    dist = dist or Dist()
    if dist.shards and (cfg.model.lora is not None or cfg.rollout.backend != "local"):
        raise TandemError(
            "distributed.strategy=fsdp2 does not run with model.lora or rollout.backend=vllm "
            "yet; use distributed.strategy=ddp"
        )
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.model.device)
    if dist.on and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    lora = cfg.model.lora
    # A LoRA run resumes from its base model plus the checkpoint's adapter (`model_source`).
    model, tok = load_model(
        cfg.model.name if lora else model_source or cfg.model.name,
        dtype=cfg.model.dtype,
        seed=cfg.seed,
    )
    model.to(device)
    task = get_task(cfg.task.name, cfg.task.params)
    pool = task.examples("train", cfg.task.train_pool, seed=cfg.seed)
    stages = build_stages(cfg, example_pools(pool), task)
    holds_reference = any(s.holds_reference() for s in stages)
    reference = None
    if lora is not None:
        moving = holds_reference and any(s.config.reference == "stage_start" for s in stages)
        apply_lora(
            model,
            r=lora.r,
            alpha=lora.alpha,
            dropout=lora.dropout,
            target_modules=lora.target_modules,
            reference_adapter=moving,
        )
        model.to(device)
        if model_source is not None:
            load_adapters(model, Path(model_source))
        if holds_reference:  # the base with the adapter off: no second copy of the model
            reference = LoraReference(model)
    elif holds_reference:
        if model_source is None:
            reference = copy.deepcopy(model)
        else:  # resuming: the reference is the initial model, not the checkpoint
            reference, _ = load_model(cfg.model.name, dtype=cfg.model.dtype, seed=cfg.seed)
            reference.to(device)
        reference.eval().requires_grad_(False)
    value_head = None
    params = [p for p in model.parameters() if p.requires_grad]
    # the optimizer's parameters by name, as FSDP2's optimizer state keys them
    names = ["model." + n for n, p in model.named_parameters() if p.requires_grad]
    if any(s.holds_value_head() for s in stages):
        value_head = ValueHead(model.config.hidden_size).to(device)
        params += list(value_head.parameters())
        names += ["value_head." + n for n, _ in value_head.named_parameters()]
        if model_source is not None:  # resuming: the checkpoint's value head
            from safetensors.torch import load_file

            vh = Path(model_source).parent / "value_head.safetensors"
            value_head.load_state_dict(load_file(vh))
    dist.broadcast_params(model)  # every rank starts from rank 0's weights
    if value_head is not None:
        dist.broadcast_params(value_head)
    sharded = None
    if dist.shards:
        from tandem.train.fsdp import Sharded

        sharded = Sharded(model, value_head)
        params = sharded.parameters()
    opt = _adamw(params, cfg.lr, cfg)
    optimizers = {
        ph.optimizer: _adamw(params, ph.lr or s.lr, cfg)
        for s in stages
        for ph in s.updates
        if ph.optimizer != "main"
    }
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, stages))
    encoder = Encoder(tok, cfg.task.system_prompt, cfg.task.prior)
    autocast = cfg.model.autocast_bf16
    backend = Backend(
        model,
        device=device,
        autocast_bf16=(device.type == "cuda") if autocast is None else autocast,
        share_prompts=cfg.share_prompts,
        rollout=cfg.rollout.backend,
        rollout_options={
            "gpu_memory_utilization": cfg.rollout.gpu_memory_utilization,
            "max_model_len": cfg.rollout.max_model_len,
            "seed": cfg.seed,
        },
        eos_token_ids=eos_token_ids(tok, model),
        pad_token_id=encoder.pad_id,
        tokenizer=tok,
        sharded=sharded,
    )
    return RunState(
        cfg=cfg,
        model=model,
        tokenizer=tok,
        encoder=encoder,
        task=task,
        backend=backend,
        stages=stages,
        optimizer=opt,
        scheduler=sched,
        optimizers=optimizers,
        reference=reference,
        value_head=value_head,
        dist=dist,
        param_names=names,
    )


def describe_sizes(st: RunState) -> str:
    """The derived batch sizes, stages and extra models, printed once at start."""
    cfg = st.cfg
    extra = [
        n for n, m in (("reference", st.reference), ("value head", st.value_head)) if m is not None
    ]
    if isinstance(st.reference, LoraReference):
        extra[0] = "reference (the base with the adapter off; no copy)"
    if cfg.model.lora is not None:
        lo = cfg.model.lora
        n_train = sum(p.numel() for p in st.model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in st.model.parameters())
        extra.append(
            f"LoRA r={lo.r} alpha={lo.alpha:g} on {lo.target_modules} "
            f"({n_train:,} of {n_all:,} parameters train)"
        )
    lines = [
        f"method {cfg.method} | task {cfg.task.name} | model {cfg.model.name} | steps {cfg.steps}"
        f" | device {st.backend.device} | rollout {cfg.rollout.backend}",
        f"per step: {cfg.prompts_per_step} prompts_per_step x {cfg.samples_per_prompt} "
        f"samples_per_prompt; {cfg.demos_per_step} demos_per_step; {cfg.pairs_per_step} "
        f"pairs_per_step (each source draws only what its kind uses)",
        f"max_new_tokens {cfg.max_new_tokens} | tokens_per_microbatch {cfg.tokens_per_microbatch}"
        f" | lr {cfg.lr} | extra models: {', '.join(extra) or 'none'}",
        *describe(st.stages),
        f"malloc {allocator.in_use()} (TANDEM_ALLOCATOR; see tandem.allocator)",
    ]
    if st.dist.on:
        lines.append(
            f"distributed: {cfg.distributed.strategy} on {st.dist.world} ranks; the sizes above "
            "are global, each rank samples and trains on its share of whole prompt groups"
        )
    return "\n".join(lines)


def _eval_all(st: RunState, step: int, evals: dict[str, list]) -> dict[str, float]:
    cfg = st.cfg
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    with st.backend.eval_policy() as policy:
        for prefix, exs in evals.items():
            out.update(
                evaluate(
                    policy,
                    st.encoder,
                    st.task,
                    exs,
                    max_new_tokens=cfg.eval.max_new_tokens or cfg.max_new_tokens,
                    eos_token_ids=st.backend.eos_ids,
                    batch_size=cfg.eval.batch_size,
                    pass_k=cfg.eval.pass_k,
                    maj_k=cfg.eval.maj_k,
                    pass_samples=cfg.eval.pass_samples,
                    temperature=cfg.temperature if cfg.temperature > 0 else 1.0,
                    seed=cfg.seed,
                    ctx=lambda: _no_grad(st.backend.autocast()),
                    prefix=prefix,
                    pool=st.eval_pool,
                    dist=st.dist,
                )
            )
    out["perf/eval_s"] = time.perf_counter() - t0
    return out


@contextlib.contextmanager
def _no_grad(ctx):
    with torch.no_grad(), ctx:
        yield


def _load_optimizer_state(st: RunState, opt: torch.optim.Optimizer, state: dict) -> None:
    """Load a saved optimizer state keyed by position (one process, DDP) or by parameter name
    (FSDP2) into `opt`, whichever this run uses: a run resumes on another strategy too."""
    by_name = any(isinstance(k, str) for k in state["state"]) or any(
        isinstance(p, str) for g in state["param_groups"] for p in g["params"]
    )
    sharded = st.backend.sharded
    if sharded is not None:
        sharded.load_optimizer_state(opt, state if by_name else _keyed(state, st.param_names))
    else:
        opt.load_state_dict(_positional(state, st.param_names) if by_name else state)


def _keyed(state: dict, names: list[str]) -> dict:
    return {
        "state": {names[i]: v for i, v in state["state"].items()},
        "param_groups": [
            {**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]
        ],
    }


def _positional(state: dict, names: list[str]) -> dict:
    index = {n: i for i, n in enumerate(names)}
    return {
        "state": {index[n]: v for n, v in state["state"].items()},
        "param_groups": [
            {**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]
        ],
    }


OPTIMIZER_SHARDS = "optimizer"  # the checkpoint folder of FSDP2's optimizer state


def _optimizers(st: RunState) -> dict[str, torch.optim.Optimizer]:
    return {"main": st.optimizer, **st.optimizers}


def _trainer_state(st: RunState) -> dict[str, Any]:
    """What trainer.pt holds. Under FSDP2 the optimizers' state is not in it: every rank
    writes its shards into the checkpoint's `optimizer/` folder (`_save_shards`)."""
    sharded = st.backend.sharded is not None
    return {
        "optimizer": None if sharded else st.optimizer.state_dict(),
        "scheduler": st.scheduler.state_dict(),
        "optimizers": {n: None if sharded else o.state_dict() for n, o in st.optimizers.items()},
        "optimizer_shards": OPTIMIZER_SHARDS if sharded else None,
        "stages": {s.name: s.state_dict() for s in st.stages},
        "ref_step": st.ref_step,
    }


def _save_shards(st: RunState, run_dir: Path, step: int) -> Path:
    """Every rank writes its optimizer shards (`torch.distributed.checkpoint`) into a staging
    folder that rank 0's `save_checkpoint` then moves into the checkpoint, before its
    manifest (a collective). A failed write raises `CheckpointError` on every rank."""
    from tandem.train.fsdp import save_optimizer_shards

    stage = run_dir / "checkpoints" / f".tmp-{checkpoint_name(step)}-shards"
    if st.dist.main:
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
    st.dist.barrier("the checkpoint's shard folder")
    try:
        save_optimizer_shards(st.backend.sharded.root, _optimizers(st), stage / OPTIMIZER_SHARDS)
    except Exception as e:  # DCP raises the same CheckpointException on every rank
        if st.dist.main:
            shutil.rmtree(stage, ignore_errors=True)
        raise CheckpointError(
            f"saving the optimizer shards of {checkpoint_name(step)} failed ({e}); "
            + last_good(run_dir)
        ) from e
    return stage


def _check_replicated(st: RunState, state: dict[str, Any], step: int) -> None:
    """Every rank must hold the same replicated state (each stage's sources, buffers and
    controllers, the LR schedule, the RNG that sampling draws from): they are built from the
    gathered experience, so a difference is a bug in tandem that makes the ranks train on
    different data. Compared at each checkpoint, before it is written; raises naming the
    parts that differ (one name is enough for a bug report; the values are not printed)."""
    from tandem.train.dist import digest

    parts = {f"stage {n}": v for n, v in state["stages"].items()}
    parts["the LR schedule"] = state["scheduler"]
    parts["the torch RNG"] = torch.get_rng_state()
    mine = {k: digest(v) for k, v in parts.items()}
    seen = st.dist.gather(mine, "the replicated-state check")
    differ = sorted({k for other in seen for k in mine if other[k] != seen[0][k]})
    if differ:
        ranks = [r for r, other in enumerate(seen) if other != seen[0]]
        raise TandemError(
            f"step {step}: {', '.join(differ)} {'differs' if len(differ) == 1 else 'differ'} "
            f"between rank 0 and ranks {ranks} (built "
            "from the same gathered experience, they must be equal: this is a bug, please "
            "report it); this step's checkpoint was not written, the last one is intact"
        )


def _restore_shards(st: RunState, path: Path) -> None:
    """Load FSDP2 optimizer shards into this run, on any number of ranks and any strategy."""
    from tandem.train.fsdp import TrainModule, load_optimizer_shards

    sharded = st.backend.sharded
    if sharded is not None:  # every rank reads the pieces of its own shards
        load_optimizer_shards(sharded.root, _optimizers(st), path, no_dist=False)
    else:  # whole tensors, under the same names (TrainModule's FQNs)
        root = TrainModule(st.model, st.value_head)
        load_optimizer_shards(root, _optimizers(st), path, no_dist=True)


def _restore(st: RunState, ckpt: Path) -> int:
    """Load a checkpoint's trainer state into `st`; returns its step."""
    state = load_trainer_state(ckpt)
    if state.get("optimizer_shards"):
        _restore_shards(st, ckpt / state["optimizer_shards"])
    else:
        _load_optimizer_state(st, st.optimizer, state["optimizer"])
        for name, opt in st.optimizers.items():
            _load_optimizer_state(st, opt, state["optimizers"][name])
    st.scheduler.load_state_dict(state["scheduler"])
    for s in st.stages:
        if s.name not in state["stages"]:
            raise TandemError(f"cannot resume: checkpoint {ckpt} has no state for stage {s.name}")
        s.load_state_dict(state["stages"][s.name])
    set_rng_state(state["rng"])
    if state.get("ref_step") is not None:  # the reference was set from the policy at a stage
        if isinstance(st.reference, LoraReference):  # its adapter came with the policy's
            st.reference.moved = True
        else:
            st.reference.load_state_dict(load_model(str(ckpt / "ref_model"))[0].state_dict())
        st.ref_step = state["ref_step"]
    return int(state["step"])  # (the value head was loaded with the model, `build_state`)


# Fields a resume may change without `accept_config_change`: they do not change what the run
# computes (how long it runs, where and how it reports and saves).
RESUME_FREE = (
    "steps",
    "log",
    "output_dir",
    "progress",
    "tensorboard",
    "save_every",
    "keep_checkpoints",
    "max_bad_steps",
    "distributed",  # the same math on any number of ranks (docs/distributed.md)
)


class Abandoned(TandemError):
    """A second stop signal: the current step is dropped, nothing more is written."""


class _StopSignals:
    """SIGTERM / SIGINT during a run: the first asks the loop to finish the current step, save
    a checkpoint and return; a second abandons the step at once (`Abandoned`). Only installed
    in the main thread; the previous handlers come back on exit."""

    def __init__(self, log) -> None:
        self.log, self.got, self.old = log, None, {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.got is not None:
            raise Abandoned(
                f"{name} again: abandoned the current step; the last checkpoint is kept"
            )
        self.got = name
        self.log(f"{name}: finishing this step, then saving a checkpoint ({name} again: stop now)")

    def __exit__(self, *exc: object) -> None:
        for sig, h in self.old.items():
            signal.signal(sig, h)


def _config_changes(old_yaml: str, new_yaml: str, free: Collection[str] = RESUME_FREE) -> list[str]:
    """`field: old -> new` for every leaf that differs (the `free` sections left out)."""
    import yaml

    def flat(x, pre=""):
        if isinstance(x, dict):
            out = {}
            for k, v in x.items():
                out |= flat(v, f"{pre}{k}.")
            return out or {pre[:-1]: {}}
        return {pre[:-1]: x}

    a, b = flat(yaml.safe_load(old_yaml) or {}), flat(yaml.safe_load(new_yaml) or {})
    keys = sorted(set(a) | set(b))
    return [
        f"{k}: {a.get(k, '<unset>')} -> {b.get(k, '<unset>')}"
        for k in keys
        if a.get(k) != b.get(k) and k.split(".")[0] not in free
    ]


def train(
    cfg: RunConfig, *, resume: bool = False, accept_config_change: bool = False, log=print
) -> dict[str, Any]:
    """Run (or resume) a training run; return the summary also written to summary.json.

    A stop signal (SIGTERM, SIGINT) ends the run after the current step with a checkpoint
    (summary `stopped_by`); a second one abandons the step. While it trains, the run directory
    is locked against a second process.

    Under `torchrun` with `distributed.strategy: ddp` every rank calls this; rank 0 holds the
    lock and writes, the others log their progress with their rank (`tandem.train.dist`)."""
    run_dir = cfg.run_dir()
    device_type = resolve_device(cfg.model.device).type
    dist = init_dist(cfg.distributed.strategy, cfg.distributed.timeout_s, device_type)
    try:
        _check_same_config(cfg, dist)
        with contextlib.ExitStack() as lock:
            failed = None
            if dist.main:
                try:
                    lock.enter_context(RunLock(run_dir))
                except TandemError as e:
                    failed = str(e)
            failed = dist.broadcast(failed, "the run-lock check")  # one lock per run
            if failed:
                raise TandemError(failed)
            with (
                _StopSignals(log if dist.main else _tagged(log, dist)) as stop,
                RewardPool.from_config(cfg.rewards) as rewards,  # a bad function fails here
                contextlib.ExitStack() as closing,  # the metric sinks, however the run ends
            ):
                if dist.main:
                    log(rewards.describe())
                return _train(cfg, run_dir, resume, accept_config_change, stop, closing, log, dist)
    finally:
        dist.close()


def _check_same_config(cfg: RunConfig, dist: Dist) -> None:
    """Every rank must run the same config (a node started with another recipe or override
    would train on other data, or write elsewhere): compared over ranks before anything runs."""
    if not dist.on:
        return
    configs = dist.gather(dump_config(cfg), "the config check")
    for rank, other in enumerate(configs):
        changes = _config_changes(configs[0], other, free=set())
        if changes:
            raise TandemError(
                f"rank {rank} was started with another config than rank 0 ("
                + "; ".join(changes)
                + "): every rank must run the same recipe and overrides"
            )


def _tagged(log, dist: Dist):
    return lambda text: log(dist.tag() + text)


class _NoWriter:
    """The metric sinks of a rank other than 0: it writes nothing."""

    def write(self, step: int, m: dict) -> None:
        pass

    def write_samples(self, step: int, rows: list) -> None:
        pass

    def truncate_after(self, step: int) -> None:
        pass

    def close(self) -> None:
        pass


def _train(
    cfg, run_dir: Path, resume: bool, accept_config_change: bool, stop, closing, log, dist: Dist
):
    rank_log = _tagged(log, dist)  # what every rank says
    log = log if dist.main else (lambda text: None)  # what only rank 0 says
    t_start = time.perf_counter()
    start = 0
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)
    if not resume and restarts and any((run_dir / "checkpoints").glob("step_*")):
        # `torchrun --max-restarts N` started the group again after a rank died: go on from
        # the run's latest checkpoint (the same command line, so the same config)
        log(f"torchrun restart {restarts}: resuming {run_dir} from its latest checkpoint")
        resume = True
    ckpt = latest_checkpoint(run_dir, log=log) if resume else None
    if resume and ckpt is None:
        raise TandemError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
    if (
        not resume
        and (run_dir / "checkpoints").is_dir()
        and any((run_dir / "checkpoints").glob("step_*"))
    ):
        raise TandemError(
            f"{run_dir} already holds a run; use `tandem train --resume {run_dir}` or another output_dir"
        )
    if ckpt is not None:
        changes = _config_changes((ckpt / "config.yaml").read_text(), dump_config(cfg))
        if changes and not accept_config_change:
            raise TandemError(
                f"--resume: the config differs from checkpoint {ckpt.name}'s: "
                + "; ".join(changes)
                + " (pass --accept-config-change to resume with the new values)"
            )
        if changes:
            log("resuming with a changed config: " + "; ".join(changes))
    weights = "adapter" if cfg.model.lora is not None else "model"
    st = build_state(cfg, model_source=str(ckpt / weights) if ckpt else None, log=log, dist=dist)
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)  # only once the model, task and data are good
        (run_dir / "config.yaml").write_text(dump_config(cfg))
    wandb = None
    if cfg.log.wandb:
        wandb = {
            "project": cfg.log.wandb_project,
            "mode": cfg.log.wandb_mode,
            "name": run_dir.name,
            "config": cfg.model_dump(mode="json"),
        }
    writer: Any = (
        MetricsWriter(run_dir, tensorboard=cfg.tensorboard, wandb=wandb)
        if dist.main
        else _NoWriter()
    )
    closing.callback(writer.close)
    if cfg.rewards.checks:  # evaluation scores correctness: the task's verifier, not the checks
        st.eval_pool = RewardPool(
            workers=cfg.rewards.workers,
            timeout_s=cfg.rewards.timeout_s,
            memory_mb=cfg.rewards.memory_mb,
        )
        closing.callback(st.eval_pool.close)
    if ckpt is not None:
        start = _restore(st, ckpt)
        writer.truncate_after(start)
        log(f"resumed from {ckpt} at step {start}")
    elif dist.main:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        (run_dir / "samples.jsonl").unlink(missing_ok=True)
    log(describe_sizes(st))
    if start >= cfg.steps and resume:
        log(f"nothing to do: the run is at step {start} of {cfg.steps} (raise `steps` to go on)")

    evals = {
        "eval": st.task.examples("eval", cfg.eval.prompts, seed=cfg.seed)
        if cfg.eval.prompts
        else [],
        "ood": st.task.examples("ood", cfg.eval.ood_prompts, seed=cfg.seed)
        if cfg.eval.ood_prompts
        else [],
    }
    evals = {k: conditioned(v, cfg.eval.condition) for k, v in evals.items() if v}
    if start == 0 and cfg.eval.before and evals:
        em = _eval_all(st, 0, evals)
        writer.write(0, em)
        log("eval step 0: " + _fmt(em))

    from tandem.report.progress import StepProgress

    def save(step: int) -> Path:
        shards = _save_shards(st, run_dir, step) if st.backend.sharded is not None else None
        state = _trainer_state(st)
        model = st.backend.plain_policy()  # (under FSDP2 a gather: every rank calls it)
        value_head = st.value_head
        if value_head is not None and st.backend.sharded is not None:
            value_head = st.backend.sharded.full_value_head()
        if dist.on:
            _check_replicated(st, state, step)
        if not dist.main:  # rank 0 holds the same weights and state, and writes them
            return run_dir / "checkpoints" / checkpoint_name(step)
        return save_checkpoint(
            run_dir,
            step,
            model,
            st.tokenizer,
            state,
            dump_config(cfg),
            cfg.keep_checkpoints,
            ref_model=st.reference if st.ref_step is not None else None,
            value_head=value_head,
            folders={OPTIMIZER_SHARDS: shards / OPTIMIZER_SHARDS} if shards else None,
        )

    bad: list[int] = []  # consecutive steps with a skipped (non-finite) update
    stopped_at = None
    stop_by = None
    with StepProgress(
        cfg.steps, start, enabled=cfg.progress and sys.stdout.isatty(), log=log
    ) as bar:
        for k in range(start, cfg.steps):
            m = train_step(st, k)
            step = k + 1
            stop_by = stop.got
            if dist.on:  # a stop signal on any rank stops every rank after this step
                seen = dist.gather((stop.got, m["perf/step_s"]), "the stop-signal check")
                stop_by = next((f"{g} (rank {r})" for r, (g, _) in enumerate(seen) if g), None)
                m["dist/step_s_max"] = max(t for _, t in seen)
                m["dist/step_s_min"] = min(t for _, t in seen)
                if not dist.main:
                    rank_log(
                        f"step {step}/{cfg.steps}: {m['perf/step_s']:.2f} s, "
                        f"loss {m.get('loss/total', float('nan')):.4f}"
                    )
            writer.write(step, m)
            if cfg.log.samples_every and (step % cfg.log.samples_every == 0 or step == 1):
                writer.write_samples(
                    step, sample_rows(st.last_items, st.tokenizer, cfg.log.samples)
                )
            bar.update(step, m)
            bad = [*bad, step] if m.get("optim/skipped_updates") else []
            last = step == cfg.steps
            if evals and ((cfg.eval.every and step % cfg.eval.every == 0) or last):
                em = _eval_all(st, step, evals)
                _controllers_read_eval(st, k, em)
                writer.write(step, em)
                bar.log(f"eval step {step}: " + _fmt(em))
            if len(bad) >= cfg.max_bad_steps:
                writer.close()
                path = save(step)
                raise TandemError(
                    f"stopped: {len(bad)} steps in a row ({bad[0]}-{bad[-1]}) had a non-finite "
                    f"loss or gradient, and their updates were skipped; {path} holds the weights "
                    f"of step {bad[0] - 1} (lower lr, or look at the data of those steps)"
                )
            if stop_by is not None:
                path = save(step)
                stopped_at = step
                (bar.log if dist.main else rank_log)(
                    f"stopped by {stop_by} at step {step}; checkpoint {path.name} saved; "
                    f"continue with: tandem train --resume {run_dir}"
                )
                break
            if (cfg.save_every and step % cfg.save_every == 0) or last:
                save(step)
    writer.close()
    if not dist.main:  # rank 0's summary, once it has written everything
        return dist.broadcast(None, "the end-of-run summary")
    summary = summarize(cfg, run_dir, wall=time.perf_counter() - t_start)
    if stopped_at is not None:
        summary["stopped_by"] = stop_by
        summary["stopped_at_step"] = stopped_at
    if dist.on:
        summary["ranks"] = dist.world
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    try:
        plot_curves(
            run_dir / "metrics.jsonl",
            run_dir / "curves.png",
            title=f"{cfg.method} on {cfg.task.name}",
        )
    except Exception as e:  # a plotting problem must not lose a finished run
        log(f"warning: could not draw curves.png: {e}")
    return dist.broadcast(summary, "the end-of-run summary")


def _controllers_read_eval(st: RunState, k: int, em: dict[str, float]) -> None:
    """The evaluation after step k reaches the controllers of step k's stage (TLDR), before
    the checkpoint of that step, so a resumed run has the same controller state."""
    stage = st.stage_at(k)
    for ctl in stage.controllers.values():
        ctl.eval_update(k - stage.start, em)


def _fmt(m: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.3f}" for k, v in m.items() if not k.startswith("perf/"))


def summarize(cfg: RunConfig, run_dir: Path, wall: float) -> dict[str, Any]:
    rows = read_metrics(run_dir / "metrics.jsonl")
    evals = [r for r in rows if "eval/accuracy" in r or "ood/accuracy" in r]

    def first_last(key: str) -> tuple[float | None, float | None]:
        vals = [r[key] for r in evals if r.get(key) is not None]
        return (vals[0], vals[-1]) if vals else (None, None)

    acc0, acc1 = first_last("eval/accuracy")
    ood0, ood1 = first_last("ood/accuracy")
    return {
        "recipe": cfg.method,
        "task": cfg.task.name,
        "model": cfg.model.name,
        "steps": cfg.steps,
        "eval_prompts": cfg.eval.prompts,
        "ood_prompts": cfg.eval.ood_prompts,
        "accuracy_before": acc0,
        "accuracy_after": acc1,
        "ood_accuracy_before": ood0,
        "ood_accuracy_after": ood1,
        "wall_seconds": round(wall, 1),
        "run_dir": str(run_dir),
    }


def train_from_files(
    recipe: str | None,
    overrides: list[str],
    resume_dir: str | None = None,
    accept_config_change: bool = False,
) -> dict:
    if resume_dir is not None:
        cfg_path = Path(resume_dir) / "config.yaml"
        if not cfg_path.exists():
            raise TandemError(f"--resume: {cfg_path} not found (is {resume_dir} a run directory?)")
        cfg = load_config(cfg_path, [*overrides, f"output_dir={resume_dir}"], preset=False)
        return train(cfg, resume=True, accept_config_change=accept_config_change)
    return train(load_config(recipe, overrides))
