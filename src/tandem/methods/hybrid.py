"""Hybrids of SFT and RL on one schedule: Prefix-RFT, ReLIFT, SASR."""

from __future__ import annotations

from tandem.methods import preset


@preset(
    "prefix_rft",
    "Prefix-RFT: part of each group continues from a demo prefix whose length follows a schedule",
    "Prefix-RFT arXiv 2507.01679; ZeroYuHuang/prefix_rft",
)
def prefix_rft() -> dict:
    """Prefix-RFT (arXiv 2507.01679), checked against ZeroYuHuang/prefix_rft (5f5d2a1; its
    recipe imports a package missing from the repository, so it was read, not run).

    Each group of samples_per_prompt holds `prefixed` = 1 sample that continues from the first
    ⌊ratio·|demo|⌋ tokens of the gold solution; ratio = low + (high − low)·U with high = 0.95
    and low on a cosine from 0.95 to 0.05 over 200 steps (controller `low`; the paper's schedule;
    scale `controllers.low.steps` to your run). Prefix tokens are trained with the same clipped
    PG term as the sampled ones, against the policy before the update (as coded: no
    demonstrator probability), and only the 20% of each row's prefix tokens with the highest
    entropy keep their advantage (the paper's entropy mask). Dr. GRPO advantages over the whole
    group (prefixed and plain samples together), token-mean, entropy bonus 0.001 on the sampled
    tokens only (`entropy_mode=response_only`), no KL.

    Deviations, with reasons: the authors' advantage groups each prefixed sample with the
    samples sharing its prefix, so with one prefixed sample per prompt its continuation gets the
    uncentred reward (flagged by a comment in their code); here the advantage is over the whole
    group, as the paper describes it. The entropy mask ranks a row's own prefix tokens (the code
    ranks all prefix tokens of a micro-batch), which keeps the gradient independent of the
    micro-batch split.
    """
    return {
        "objective": {
            "sources": {
                "rollouts": {
                    "kind": "prefix_rollouts",
                    "prefixed": 1,
                    "ratio_low": "low",
                    "ratio_high": 0.95,
                }
            },
            "controllers": {"low": {"kind": "cosine", "start": 0.95, "end": 0.05, "steps": 200}},
            "advantage": {"kind": "dr_grpo"},
            "terms": {
                "pg": {
                    "kind": "pg",
                    "sources": ["rollouts"],
                    "off_policy": "ratio",
                    "prefix_entropy_keep": 0.2,
                    "agg": "token-mean",
                },
                "entropy": {
                    "kind": "entropy",
                    "sources": ["rollouts"],
                    "roles": ["sampled"],
                    "coef": 0.001,
                    "agg": "token-mean",
                },
            },
        }
    }


@preset(
    "relift",
    "ReLIFT: RL, plus SFT steps on a buffer of the prompts the model fails on entirely",
    "ReLIFT arXiv 2506.07527; TheRoadQaQ/ReLIFT",
)
def relift() -> dict:
    """ReLIFT (arXiv 2506.07527), checked against TheRoadQaQ/ReLIFT (eb95454): the RL step is
    GRPO without std (dr_grpo), without clip, sum / max length aggregation and entropy 0.001
    (`examples/math-7b/train.sh`). After each rollout every prompt whose whole group scored 0
    goes into a buffer with its gold solution (`tandem.train.sources.Buffer`); once the buffer
    holds `size` (ReLIFT: 128; here 8, scaled to small batches) the newest `size` are trained on
    in a second update of the same step, after the RL update, with a separate optimizer of its
    own moments (ReLIFT's `actor_sft_optimizer`): token-mean NLL minus 0.001·entropy. The buffer
    is in every checkpoint. Deviations: the SFT optimizer follows the stage's learning rate
    without a schedule (ReLIFT: a fixed 1e-6, the same as its RL lr) and its weight decay is the
    run's (ReLIFT: 0.01).
    """
    agg = "seq-mean-token-sum-norm"
    return {
        "objective": {
            "sources": {
                "rollouts": {"kind": "rollouts"},
                "buffer": {"kind": "buffer", "watch": "rollouts", "size": 8},
            },
            "advantage": {"kind": "dr_grpo"},
            "terms": {
                "pg": {"kind": "pg", "sources": ["rollouts"], "clip": False, "agg": agg},
                "entropy": {"kind": "entropy", "sources": ["rollouts"], "coef": 0.001, "agg": agg},
                "sft": {"kind": "nll", "sources": ["buffer"]},
                "sft_entropy": {"kind": "entropy", "sources": ["buffer"], "coef": 0.001},
            },
            "updates": [
                {"terms": ["pg", "entropy"]},
                {"terms": ["sft", "sft_entropy"], "optimizer": "sft"},
            ],
        }
    }


@preset(
    "sasr",
    "SASR: SFT warm-up, then each step SFT or GRPO, chosen by the SFT gradient norm",
    "SASR arXiv 2505.13026 (RECON: no public code)",
)
def sasr() -> dict:
    """SASR (arXiv 2505.13026). No public code was found; the rule is the RECON of
    ALGORITHMS.md and a third-party pseudocode of the paper's Algorithm 1
    (`tandem.algo.controllers.Sasr`): `warmup_steps` = 10 SFT steps, the last one's SFT gradient
    norm is G_0; then each step is an SFT step with probability G/(G + γ·G_0), G the SFT
    gradient norm of the most recent SFT step (γ = 1), else a GRPO step. The controller's value
    is the coefficient of the `sft` term and 1 minus it that of `pg`, so each step draws only
    the data its branch trains on. Unverified: the functional form of p, γ, the warm-up length,
    and the paper's trigger on the divergence from the initial model (not implemented).
    """
    return {
        "objective": {
            "sources": {"rollouts": {"kind": "rollouts"}, "demos": {"kind": "demos"}},
            "controllers": {"sft_step": {"kind": "sasr", "warmup_steps": 10, "gamma": 1.0}},
            "advantage": {"kind": "grpo"},
            "terms": {
                "pg": {"kind": "pg", "sources": ["rollouts"], "coef": "1-sft_step"},
                "sft": {"kind": "nll", "sources": ["demos"], "coef": "sft_step"},
            },
        }
    }
