"""Self-improvement by verified own samples: rejection-sampling fine-tuning (RFT) and STaR."""

from __future__ import annotations

from tandem.methods import preset


@preset(
    "rft",
    "RFT: SFT on the gold data plus the model's own samples that the verifier accepts",
    "Yuan et al. arXiv 2308.01825",
)
def rft() -> dict:
    """Rejection-sampling fine-tuning (Yuan et al., arXiv 2308.01825; abstract-level): sample
    samples_per_prompt answers per training prompt, keep those the verifier accepts (each
    distinct completion once per prompt: the paper keeps distinct reasoning paths), and train
    token-mean NLL on them together with the task's gold solutions (`demos`). Deviation: the
    paper samples once, offline, from the SFT model and dedupes by equation lists; here the
    current model samples online each step and dedupes by exact text.
    """
    return {
        "objective": {
            "sources": {"demos": {"kind": "demos"}, "own": {"kind": "self_verified"}},
            "terms": {"sft": {"kind": "nll", "sources": ["demos", "own"]}},
        }
    }


@preset(
    "star",
    "STaR: SFT on verified own rationales; failed prompts are retried with the answer as a hint",
    "STaR arXiv 2203.14465; ezelikman/STaR",
)
def star() -> dict:
    """STaR (arXiv 2203.14465), checked against ezelikman/STaR (6ffd3c4): a prompt's samples
    that verify are kept; a prompt with none is sampled again with the answer given as a hint
    (the paper: "(CORRECT)" on the right choice, or the answer appended), and a hinted solution
    that verifies is kept as the answer to the original, hint-free prompt (`rationalize`;
    the hint text: `objective.sources.own.hint`). Token-mean NLL on what was kept.
    Deviations: online, each step from the current model (STaR fine-tunes from the base model
    on all kept rationales each outer iteration, sampling near-greedily at temperature 0.01);
    sampling at the run's temperature.
    """
    return {
        "objective": {
            "sources": {"own": {"kind": "self_verified", "rationalize": True}},
            "terms": {"sft": {"kind": "nll", "sources": ["own"]}},
        }
    }


@preset(
    "superhf",
    "SuperHF: best-of-n by reward, SFT on the winners plus a KL prior to the initial model",
    "SuperHF arXiv 2310.16763 (abstract-level)",
)
def superhf() -> dict:
    """SuperHF (arXiv 2310.16763), at the abstract's level (ALGORITHMS.md's RECON): sample a
    "superbatch" of samples_per_prompt completions per prompt, keep the top-1 by reward
    (`keep: best`, ties to the first; with a 0/1 verifier a wrong answer is kept when no
    sample is right, as a reward model's top-1 always is: `min_reward` 0), and fine-tune
    token-mean NLL on them with a KL prior β·KL(π_θ ‖ π_0) on the same tokens (k1 estimate,
    β = 0.1, the frozen initial model). The paper uses a reward model and β ≈ 0.35 on a 7B
    model; β here is for small models, unverified.
    """
    own = {"kind": "self_verified", "keep": "best", "min_reward": 0.0, "distinct": False}
    return {
        "objective": {
            "sources": {"own": own},
            "terms": {
                "sft": {"kind": "nll", "sources": ["own"]},
                "kl": {"kind": "kl", "sources": ["own"], "coef": 0.1, "estimator": "k1"},
            },
        }
    }


@preset(
    "s3ft",
    "S3FT: SFT on the initial model's own answer where it verifies, else on the gold solution",
    "S3FT arXiv 2502.08130 (abstract-level)",
)
def s3ft() -> dict:
    """S3FT, selective self-to-supervised fine-tuning (arXiv 2502.08130), at the abstract's
    level: the initial model answers each prompt (`model: reference`, one sample at temperature
    0, greedy); where the verifier judges the answer equivalent to the gold one it is the target,
    otherwise the gold solution is (`fallback: demo`); token-mean NLL. The verifier stands in
    for the paper's judge (heuristic or LLM); its paraphrase-of-gold option is not implemented.
    Deviation: answers are generated per step when a prompt is drawn (S3FT generates them once
    before training: the same answers, since the initial model is fixed and decoding greedy).
    """
    own = {
        "kind": "self_verified",
        "model": "reference",
        "temperature": 0.0,
        "fallback": "demo",
        "distinct": True,
    }
    return {
        "objective": {
            "sources": {"own": own},
            "terms": {"sft": {"kind": "nll", "sources": ["own"]}},
        },
        "run_defaults": {"samples_per_prompt": 1},
    }


@preset(
    "metis_rise",
    "Metis-RISE: RL first, then SFT on own correct answers (partly solved) and gold (unsolved)",
    "Metis-RISE arXiv 2506.13056 (abstract-level)",
)
def metis_rise() -> dict:
    """Metis-RISE (arXiv 2506.13056), at the abstract's level: stage `rl` (GRPO with DAPO's
    clip-higher, no SFT cold start), then stage `sft`: each prompt is sampled
    samples_per_prompt times by the RL model; prompts it always solves are skipped, partly
    solved ones (0 < pass rate < 1) are trained on one of their own correct answers
    (self-distillation: `keep: best`), unsolved ones on the gold solution (`fallback: demo`,
    the expert set); token-mean NLL, fresh optimizer moments. Thresholds (0 and 1) are the
    abstract's wording; the paper's exact ones are unverified.
    """
    own = {
        "kind": "self_verified",
        "keep": "best",
        "fallback": "demo",
        "skip_solved": True,
    }
    return {
        "stages": {
            "rl": {
                "method": "grpo",
                "steps": 30,
                "objective": {"terms": {"pg": {"clip_high": 0.28}}},
            },
            "sft": {
                "method": "sft",
                "reset_optimizer": True,
                "objective": {
                    "sources": {"demos": None, "own": own},
                    "terms": {"sft": {"sources": ["own"]}},
                },
            },
        }
    }
