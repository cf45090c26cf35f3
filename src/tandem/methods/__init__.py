"""Method presets: each method is a named setting of the one objective, never a trainer class.

A preset fills `RunConfig.objective` (and a few run defaults); everything it sets can be
overridden from a recipe or the command line. Adding a method = adding a `Preset` here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tandem.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    """One line for `tandem recipes`."""
    paper: str
    objective: dict
    run_defaults: dict = field(default_factory=dict)
    notes: str = ""
    """Deviations from the paper and choices made where the source is silent."""


PRESETS: dict[str, Preset] = {}


def register(p: Preset) -> Preset:
    PRESETS[p.name] = p
    return p


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"config error: method: got {name!r}; allowed: {', '.join(PRESETS)}")
    return PRESETS[name]


register(
    Preset(
        name="sft",
        summary="supervised fine-tuning: token-mean NLL on demonstrations (mu = 1, no rollouts)",
        paper="-",
        objective={"mu": {"kind": "constant", "value": 1.0}, "expert_loss": "nll"},
        run_defaults={"demos_per_step": 16},
    )
)

register(
    Preset(
        name="grpo",
        summary="GRPO: group z-score advantages, PPO clip, token-mean (DAPO/Dr.GRPO knobs exposed)",
        paper="DeepSeekMath arXiv 2402.03300; DAPO 2503.14476; Dr.GRPO 2503.20783",
        objective={
            "mu": {"kind": "constant", "value": 0.0},
            "advantage": "grpo",
            "pg_loss": "clip",
            "clip_low": 0.2,
            "clip_high": 0.2,
            "agg": "token-mean",
        },
        notes=(
            "Aggregation defaults to token-mean (verl's and DAPO's recommendation) instead of the "
            "paper's seq-mean-token-mean. KL is off (kl_coef=0, no reference model) as in DAPO "
            "and Dr.GRPO; set objective.kl_coef=0.04 for the paper's k3 penalty. "
            "DAPO: objective.clip_high=0.28 objective.drop_equal_groups=true. "
            "Dr.GRPO: objective.advantage=dr_grpo objective.agg=seq-mean-token-sum-norm."
        ),
    )
)

register(
    Preset(
        name="sft_then_grpo",
        summary="two stages in one run: SFT on demonstrations, then GRPO (stage-switch controller)",
        paper="ReFT arXiv 2401.08967 (SFT warm-up then RL); Tulu 3; AceReason",
        objective={
            "mu": {"kind": "stage", "switch_step": 10, "before": 1.0, "after": 0.0},
            "expert_loss": "nll",
            "advantage": "grpo",
            "pg_loss": "clip",
            "agg": "token-mean",
        },
        notes=(
            "ReFT's RL stage is PPO with a value head; here the RL stage is GRPO (no critic). "
            "The stage switch is by step count (objective.mu.switch_step); the optimizer state "
            "carries over between stages."
        ),
    )
)

register(
    Preset(
        name="chord",
        summary="CHORD: (1-mu)·GRPO + mu·phi-weighted NLL, mu warm-up then cosine decay",
        paper="CHORD arXiv 2508.11408; Trinity-RFT mix_chord",
        objective={
            "mu": {
                "kind": "warmup_cosine",
                "peak": 0.5,
                "valley": 0.02,
                "warmup_steps": 200,
                "decay_steps": 400,
            },
            "expert_loss": "chord_phi",
            "expert_agg": "token-mean",
            "advantage": "grpo",
            "pg_loss": "clip",
            "agg": "token-mean",
        },
        notes=(
            "Defaults are the paper's combined setting (W=200, D=400, peak 0.5, valley 0.02, "
            "phi on); scale warmup_steps/decay_steps to the length of your run. Each source is "
            "normalized over its own items (RL tokens, expert tokens), so mu means the same "
            "thing whatever the micro-batching, as Trinity's per-source rescaling intends. "
            "Expert items come from a separate demonstration stream (demos_per_step)."
        ),
    )
)

register(
    Preset(
        name="luffy",
        summary="LUFFY: one demonstration inside each group, mixed-group advantage, p/(p+0.1) shaping",
        paper="LUFFY arXiv 2504.14945; ElliottYan/LUFFY mix_core_alg.py",
        objective={
            "mu": {"kind": "constant", "value": 0.0},
            "demo_in_group": True,
            "advantage": "dr_grpo",
            "pg_loss": "none",
            "shaping_gamma": 0.1,
            "agg": "seq-mean-token-sum-norm",
            "entropy_coef": 0.001,
        },
        notes=(
            "As coded by the authors: grpo_use_std=False (dr_grpo), loss_remove_clip=True "
            "(pg_loss none), off-policy reshape p_div_p_0.1, loss_remove_token_mean=True "
            "(sum / max length; we also divide by the number of sequences, see aggregate). The "
            "demonstration is scored by the same verifier as rollouts."
        ),
    )
)
