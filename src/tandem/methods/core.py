"""The first presets: SFT, GRPO (with its DAPO and Dr. GRPO settings), CHORD, LUFFY and the
SFT-then-GRPO pipeline."""

from __future__ import annotations

from tandem.methods import preset


def rl_terms(source: str, agg: str = "token-mean", **pg: object) -> dict:
    """The policy-gradient term with a KL and an entropy term at coefficient 0 (set
    `terms.kl.coef` or `terms.entropy.coef` to turn them on; at 0 no reference model is held)."""
    return {
        "pg": {"kind": "pg", "sources": [source], "agg": agg, **pg},
        "kl": {"kind": "kl", "sources": [source], "coef": 0.0, "agg": agg, "estimator": "k3"},
        "entropy": {"kind": "entropy", "sources": [source], "coef": 0.0, "agg": agg},
    }


@preset("sft", "supervised fine-tuning: token-mean NLL on demonstrations", "-")
def sft() -> dict:
    """Token-mean NLL on the task's gold solutions (`demos_per_step` per step)."""
    return {
        "objective": {
            "sources": {"demos": {"kind": "demos"}},
            "terms": {"sft": {"kind": "nll", "sources": ["demos"]}},
        },
        "run_defaults": {"demos_per_step": 16},
    }


@preset(
    "grpo",
    "GRPO: group z-score advantages, PPO clip, token-mean (DAPO/Dr.GRPO knobs exposed)",
    "DeepSeekMath arXiv 2402.03300; DAPO 2503.14476; Dr.GRPO 2503.20783",
)
def grpo() -> dict:
    """GRPO (DeepSeekMath, arXiv 2402.03300) as in verl `compute_grpo_outcome_advantage`.

    Aggregation defaults to token-mean (verl's and DAPO's recommendation) instead of the paper's
    seq-mean-token-mean. KL is off (coefficient 0, no reference model) as in DAPO and Dr.GRPO;
    `objective.terms.kl.coef=0.04` gives the paper's k3 penalty. DAPO:
    `objective.terms.pg.clip_high=0.28` and the `equal_groups` filter (recipe grpo_dapo).
    Dr.GRPO: `objective.advantage=dr_grpo objective.terms.pg.agg=seq-mean-token-sum-norm`
    (recipe grpo_dr). One update per batch: the ratio is 1 in value (TRL's num_iterations=1).
    """
    return {
        "objective": {
            "sources": {"rollouts": {"kind": "rollouts"}},
            "advantage": {"kind": "grpo"},
            "terms": rl_terms("rollouts", clip_low=0.2, clip_high=0.2),
        }
    }


@preset(
    "chord",
    "CHORD: (1-mu)·GRPO + mu·phi-weighted NLL, mu warm-up then cosine decay",
    "CHORD arXiv 2508.11408; Trinity-RFT mix_chord",
)
def chord() -> dict:
    """CHORD (arXiv 2508.11408), checked against Trinity-RFT `chord_policy_loss.py` (0414330).

    Defaults are the paper's combined setting (W=200, D=400, peak 0.5, valley 0.02, phi on);
    scale `controllers.mu.warmup_steps` / `decay_steps` to the length of your run. Each source is
    normalized over its own items (RL tokens, expert tokens), so mu means the same thing
    whatever the micro-batching, as Trinity's per-source rescaling intends. Expert items come
    from a separate demonstration stream (`demos_per_step`), not a fixed expert_data_ratio of
    the batch. Trinity's optional cutoff_prob clamp is not implemented (its default is a no-op).
    """
    rl = rl_terms("rollouts")
    rl["pg"]["coef"] = "1-mu"
    sft = {"kind": "chord_phi", "sources": ["demos"], "coef": "mu", "agg": "token-mean"}
    return {
        "objective": {
            "sources": {"rollouts": {"kind": "rollouts"}, "demos": {"kind": "demos"}},
            "advantage": {"kind": "grpo"},
            "controllers": {
                "mu": {
                    "kind": "warmup_cosine",
                    "peak": 0.5,
                    "valley": 0.02,
                    "warmup_steps": 200,
                    "decay_steps": 400,
                }
            },
            "terms": {"pg": rl["pg"], "sft": sft, "kl": rl["kl"], "entropy": rl["entropy"]},
        }
    }


@preset(
    "luffy",
    "LUFFY: one demonstration inside each group, mixed-group advantage, p/(p+0.1) shaping",
    "LUFFY arXiv 2504.14945; ElliottYan/LUFFY mix_core_alg.py",
)
def luffy() -> dict:
    """LUFFY (arXiv 2504.14945), as coded by the authors (ElliottYan/LUFFY 01f4ae0,
    `compute_token_on_off_policy_loss`, `exp_scripts/train.sh`): grpo_use_std=False (dr_grpo),
    loss_remove_clip=True (pg clip false), off_policy_reshape p_div_p_0.1 (off_policy shaped),
    loss_remove_token_mean=True (sum / max length; tandem also divides by the number of
    sequences, see `tandem.algo.aggregate`), entropy 0.001. The demonstration is scored by the
    same verifier as the rollouts. LUFFY's optional off_max_clip / off_min_clip are not
    implemented.
    """
    agg = "seq-mean-token-sum-norm"
    terms = rl_terms("rollouts", agg=agg, clip=False, off_policy="shaped", shaping_gamma=0.1)
    terms["entropy"]["coef"] = 0.001
    return {
        "objective": {
            "sources": {"rollouts": {"kind": "demo_in_group", "demos": 1}},
            "advantage": {"kind": "dr_grpo"},
            "terms": terms,
        }
    }


@preset(
    "sft_then_grpo",
    "two stages in one run: SFT on demonstrations, then GRPO",
    "ReFT arXiv 2401.08967 (SFT warm-up then RL); Tulu 3; AceReason",
)
def sft_then_grpo() -> dict:
    """A pipeline: stage `sft` (the sft preset, 10 steps by default: `stages.sft.steps`), then
    stage `rl` (grpo) with fresh optimizer moments and the SFT model as its KL reference
    (`reference: stage_start`, used when `stages.rl.objective.terms.kl.coef` > 0). Give the RL
    stage its own learning rate with `stages.rl.lr` (ReFT: 1e-5 for SFT, 3e-7 for RL).
    ReFT's RL stage is PPO with a value head: that is the `reft` preset.
    """
    return {
        "stages": {
            "sft": {"method": "sft", "steps": 10},
            "rl": {"method": "grpo", "reset_optimizer": True, "reference": "stage_start"},
        }
    }
