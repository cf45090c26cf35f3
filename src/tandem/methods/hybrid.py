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
    "interleave",
    "RL with one SFT step every k RL steps on a fixed schedule (the general form of ReLIFT)",
    "ReLIFT arXiv 2506.07527 (interleaving); Metis-RISE arXiv 2506.13056",
)
def interleave() -> dict:
    """Interleaved RL and SFT on a fixed schedule: the `every` controller (`periodic`, period
    k + 1) is 1 on one step in k + 1 and 0 on the others; it is the coefficient of the `sft`
    term (NLL on gold solutions) and 1 minus it that of the RL terms, so a step is either a
    GRPO step or an SFT step and draws only the data its branch trains on. k = 3 by default
    (`objective.controllers.every.period=4`). ReLIFT's interleaving is data-driven (SFT on a
    buffer of the prompts RL fails on, when full: the `relift` preset); this is the plain
    schedule that comparisons hold it against. The SFT steps share the RL optimizer.
    """
    return {
        "objective": {
            "sources": {"rollouts": {"kind": "rollouts"}, "demos": {"kind": "demos"}},
            "controllers": {"every": {"kind": "periodic", "period": 4}},
            "advantage": {"kind": "grpo"},
            "terms": {
                "pg": {"kind": "pg", "sources": ["rollouts"], "coef": "1-every"},
                "sft": {"kind": "nll", "sources": ["demos"], "coef": "every"},
            },
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


@preset(
    "hpt",
    "HPT: per prompt, SFT on the demonstration when at most `gate` rollouts succeed, else RL",
    "HPT arXiv 2509.04419; TsinghuaC3I/Unify-Post-Training",
)
def hpt() -> dict:
    """HPT, Hybrid Post-Training (arXiv 2509.04419), checked against the authors' code
    (TsinghuaC3I/Unify-Post-Training ae332f5, `mix_trainer.py::select_on_off_ada_balance`,
    `mix_actor.py`, `exp_scripts/train.sh`) and RLLaVA's plugin (`rllava/ppo/plugins`, 9a69627):
    each prompt's 8 rollouts are scored; when at most switch_gate (0) are correct the prompt's
    rollouts leave the batch and its demonstration joins it (`group_demos` with a gate, then the
    `replaced_groups` filter); otherwise the prompt is trained by RL. Loss: the PG term on the
    rollouts (Dr. GRPO advantages, no clip, sum over tokens / max length) + sft_loss_coef (1.0)
    × token-mean NLL on the demonstrations − 0.001 × entropy. KL off. Deviations: the PG sum is
    also divided by the number of sequences (`tandem.algo.aggregate`); the paper's "soft"
    coefficients are a lookup table the released actor never reads (dead code), so only the
    switch is implemented; `adaptive_mix` is tandem's interpolating form.
    """
    agg = "seq-mean-token-sum-norm"
    return {
        "objective": {
            "sources": {
                "rollouts": {"kind": "rollouts"},
                "gated": {"kind": "group_demos", "watch": "rollouts", "weighting": "gate"},
            },
            "advantage": {"kind": "dr_grpo"},
            "filters": {
                "switch": {"kind": "replaced_groups", "sources": ["rollouts"], "by": "gated"}
            },
            "terms": {
                "pg": {"kind": "pg", "sources": ["rollouts"], "clip": False, "agg": agg},
                "sft": {"kind": "nll", "sources": ["gated"], "coef": 1.0},
                "entropy": {"kind": "entropy", "sources": ["rollouts"], "coef": 0.001, "agg": agg},
            },
        }
    }


@preset(
    "adaptive_mix",
    "per-prompt SFT weight 1 − group success rate on its demonstration, plus GRPO (tandem's own)",
    "tandem (beyond the papers; compare HPT arXiv 2509.04419, CHORD arXiv 2508.11408)",
)
def adaptive_mix() -> dict:
    """Not from a paper: the SFT weight on each prompt's demonstration follows that prompt's own
    group success rate s, w = 1 − s (all rollouts fail: imitate fully; all pass: no SFT, explore
    only; in between: interpolate), instead of CHORD's one global μ schedule or HPT's 0/1
    switch. The RL term (GRPO, token-mean) keeps every group. Terms: `pg` on the rollouts and
    `sft` (token-mean NLL, each demonstration's loss times its weight) on `mixed`. It composes
    with any RL preset: add the `group_demos` source (weighting linear) and an NLL term on it.
    """
    return {
        "objective": {
            "sources": {
                "rollouts": {"kind": "rollouts"},
                "mixed": {"kind": "group_demos", "watch": "rollouts", "weighting": "linear"},
            },
            "advantage": {"kind": "grpo"},
            "terms": {
                "pg": {"kind": "pg", "sources": ["rollouts"]},
                "sft": {"kind": "nll", "sources": ["mixed"], "coef": 1.0},
            },
        }
    }


@preset(
    "srft",
    "SRFT: one stage, SFT and RL on demonstrations and own samples weighted by entropy",
    "SRFT arXiv 2506.19767; TsinghuaC3I/Unify-Post-Training train_srft.sh; RLLaVA srft loss",
)
def srft() -> dict:
    """SRFT (arXiv 2506.19767). No authors' code was found; checked against the
    re-implementation in TsinghuaC3I/Unify-Post-Training (ae332f5, `exp_scripts/train_srft.sh`,
    `mix_core_alg.py`) and RLLaVA's `srft` loss (9a69627), which agree: each group holds 7 own
    samples and the gold solution (`demo_in_group`), Dr. GRPO advantages over all 8; H̄_i is a
    row's token-mean entropy (detached). RL term, one normalizer (sum / max length) over both
    kinds of rows: a correct own sample gets −0.1·exp(H̄_i)·log p, a wrong one +log p (the
    group advantage is not used on own samples), the demonstration LUFFY's −A·p/(p + 0.1).
    SFT term: token-mean of −0.5·exp(−H̄_i)·log p on the demonstration. Entropy bonus 0.001, no
    KL. The third-party note of the paper writes the RL weight as exp(−H); both codes, and the
    paper's prose (more weight when entropy is high), use exp(+H), as here.
    """
    agg = "seq-mean-token-sum-norm"
    return {
        "objective": {
            "sources": {"rollouts": {"kind": "demo_in_group", "demos": 1}},
            "advantage": {"kind": "dr_grpo"},
            "terms": {
                "rl": {"kind": "srft_rl", "sources": ["rollouts"], "agg": agg},
                "sft": {
                    "kind": "entropy_nll",
                    "sources": ["rollouts"],
                    "roles": ["demo"],
                    "scale": 0.5,
                    "sign": -1,
                },
                "entropy": {"kind": "entropy", "sources": ["rollouts"], "coef": 0.001, "agg": agg},
            },
        }
    }


@preset(
    "uft",
    "UFT: a solution hint in the prompt, annealed to nothing, with an SFT term on the hint",
    "UFT arXiv 2505.16984; liumy2010/UFT",
)
def uft() -> dict:
    """UFT (arXiv 2505.16984), checked against the authors' code (liumy2010/UFT ad3c8ec,
    `run.py`, `rl_dataset.py`, `dp_actor.py`): each prompt's hint is the first k of up to 5
    pieces of its solution, k ~ Binomial(5, p(t)), p(t) = 0.05 + 0.45·(1 + cos(π t / T_hint)),
    no hint after T_hint (300 in the paper; scale `objective.sources.rollouts.hint_steps` to
    the run); the policy continues after the hint. RL on the continuation: GRPO (std), PPO
    clip 0.2, token-mean, entropy 0.001, k3 KL 0.001 to the initial model; SFT: token-mean NLL
    on the hint tokens with β = 0.001 (`sft_loss_coef`; RLLaVA's port uses 1.0 with a
    different schedule). Deviation: pieces are token spans, not reasoning steps.
    """
    src = "rollouts"
    return {
        "objective": {
            "sources": {src: {"kind": "hinted_rollouts"}},
            "advantage": {"kind": "grpo"},
            "terms": {
                "pg": {"kind": "pg", "sources": [src], "roles": ["sampled"]},
                "sft": {"kind": "nll", "sources": [src], "roles": ["prefix"], "coef": 0.001},
                "kl": {
                    "kind": "kl",
                    "sources": [src],
                    "roles": ["sampled"],
                    "coef": 0.001,
                    "estimator": "k3",
                },
                "entropy": {
                    "kind": "entropy",
                    "sources": [src],
                    "roles": ["sampled"],
                    "coef": 0.001,
                },
            },
        }
    }


@preset(
    "visurf",
    "ViSurf: the gold solution joins each group as a member; GRPO over G+1, PPO clip",
    "ViSurf arXiv 2510.10606 (abstract-level)",
)
def visurf() -> dict:
    """ViSurf (arXiv 2510.10606), at the abstract's level, for text tasks: one stage; the
    ground-truth solution is injected into each RLVR group as one more member, scored by the
    verifier, and GRPO's advantage (std-normalized) is computed over the G + 1 items; the gold
    tokens get the same PPO-clip term as the samples (with one update per batch its ratio is 1,
    so its gradient is −A·∇log p: SFT weighted by how much better gold is than the group).
    Reward control (the abstract's "three strategies", RECON): a group where an own sample
    already succeeds gets no ground truth (`demo_when_solved: drop`), so the expert signal only
    acts where the model fails. Token-mean, no KL. The paper's format/thinking alignment of the
    ground truth and its reward smoothing are not implemented (unverified details).
    """
    terms = {
        "pg": {"kind": "pg", "sources": ["rollouts"], "off_policy": "ratio"},
        "kl": {"kind": "kl", "sources": ["rollouts"], "coef": 0.0, "estimator": "k3"},
        "entropy": {"kind": "entropy", "sources": ["rollouts"], "coef": 0.0},
    }
    return {
        "objective": {
            "sources": {
                "rollouts": {"kind": "demo_in_group", "demos": 1, "demo_when_solved": "drop"}
            },
            "advantage": {"kind": "grpo"},
            "terms": terms,
        }
    }


@preset(
    "amft",
    "AMFT: SFT warm-up, then (1 − μ)·GRPO + μ·SFT with μ learned by a look-ahead "
    "meta-gradient on held-out NLL and an entropy rule",
    "AMFT arXiv 2508.06944; TSYJ-He/AMFT",
)
def amft() -> dict:
    """AMFT (arXiv 2508.06944; withdrawn by its authors in v3, so read as a method, not a
    result), checked against TSYJ-He/AMFT (0e030f4), whose code is a sketch (its rollouts
    return random tensors; it does not run), so the update rule is taken from
    `adaptive_weight_controller.py` and the loss from `amft_trainer.py`:

    - `warmup`: SFT for 50 steps (`warmup_steps` 50).
    - `adaptive`: L = (1 − μ)·[PG − 0.01·H] + μ·NLL(demos), μ from the `amft` controller
      (init 0.5, clipped to [0.05, 0.95]): every 20 steps the look-ahead meta-gradient
      μ ← μ + η_μ·α·g_val·(g_SFT − g_RL) on the token-mean NLL of held-out demonstrations
      (the `held_out` stream: about 1/8 of the demonstrations, which the `fit` and
      `fit_demos` streams the training sources draw from never contain), and every step
      μ += 5e-4·(H_target − H), H the rollouts' entropy and H_target its value at the
      stage's first step.

    η_μ = 1e-4 as the authors' (for a 7B model); the tiny model's gradient dot products are far
    smaller, so its learning test sets its own (docs/methods.md). Deviations: GRPO advantages
    instead of the code's PPO with a value head and GAE; μ descends the held-out loss (the
    code's update climbs it, see `tandem.algo.controllers.Amft`); the look-ahead uses the PG
    term's gradient without the entropy bonus.
    """
    return {
        "stages": {
            "warmup": {"method": "sft", "steps": 50},
            "adaptive": {
                "method": "grpo",
                "reset_optimizer": False,
                "objective": {
                    "sources": {
                        "rollouts": {"kind": "rollouts", "stream": "fit"},
                        "demos": {"kind": "demos", "stream": "fit_demos"},
                        "val": {"kind": "demos", "stream": "held_out"},
                    },
                    "controllers": {"mu": {"kind": "amft"}},
                    "terms": {
                        "pg": {"coef": "1-mu"},
                        "entropy": {"coef": "0.01-0.01*mu"},
                        "sft": {"kind": "nll", "sources": ["demos"], "coef": "mu"},
                    },
                },
            },
        }
    }
