"""RL presets beyond GRPO: RLOO, REINFORCE++ (and its baseline variant), GSPO and DAPO in full.

Each is GRPO's objective with another advantage estimator, ratio or source setting: the
policy-gradient term `pg` on `rollouts`, a KL term and an entropy term at coefficient 0 (turn
them on with `objective.terms.kl.coef`, `objective.terms.entropy.coef`).
"""

from __future__ import annotations

from tandem.methods import preset
from tandem.methods.core import rl_terms

ROLLOUTS = {"rollouts": {"kind": "rollouts"}}


@preset(
    "rloo",
    "RLOO: leave-one-out baseline r_i − mean_{j≠i} r_j, PPO clip, token-mean",
    "RLOO arXiv 2402.14740; verl compute_rloo_outcome_advantage",
)
def rloo() -> dict:
    """RLOO (arXiv 2402.14740), advantages as verl `compute_rloo_outcome_advantage`:
    A_i = r_i − mean_{j≠i} r_j = n/(n − 1)·(r_i − mean_g), unnormalized (TRL RLOOConfig
    normalize_advantages False). The loss is the PPO-clip term aggregated token-mean, as TRL's
    RLOOTrainer; KL is off (TRL's beta 0.05 is `objective.terms.kl.coef=0.05`). Deviation: a
    group of one gets A = 0 (verl keeps the raw reward).
    """
    return {
        "objective": {
            "sources": ROLLOUTS,
            "advantage": {"kind": "rloo"},
            "terms": rl_terms("rollouts"),
        }
    }


@preset(
    "reinforce_pp",
    "REINFORCE++: returns with KL in the reward, whitened over the whole batch, PPO clip",
    "REINFORCE++ arXiv 2501.03262; verl compute_reinforce_plus_plus_outcome_advantage",
)
def reinforce_pp() -> dict:
    """REINFORCE++ (arXiv 2501.03262), as verl `compute_reinforce_plus_plus_outcome_advantage`:
    the score on the last token minus β·k1(π_old, π_ref) on every token, discounted returns
    G_t (γ = 1), whitened over all tokens of the batch (global mean and variance, no group
    baseline); PPO-clip term, token-mean. β = 0.01 with the initial model as reference (the
    paper's setting is 0.01 with a k1 estimator, verl's example `kl_coef` 0.001); with
    `objective.advantage.kl_coef=0` no reference model is held. One update per batch keeps
    π_old = π_θ, so the KL in the reward is measured at the current policy.
    """
    return {
        "objective": {
            "sources": ROLLOUTS,
            "advantage": {"kind": "reinforce_pp", "gamma": 1.0, "kl_coef": 0.01},
            "terms": rl_terms("rollouts"),
        }
    }


@preset(
    "reinforce_pp_baseline",
    "REINFORCE++-baseline: r − mean_g, then whitened over the whole batch, PPO clip",
    "REINFORCE++ arXiv 2501.03262; verl compute_reinforce_plus_plus_baseline_outcome_advantage",
)
def reinforce_pp_baseline() -> dict:
    """REINFORCE++-baseline (arXiv 2501.03262 v3+), as verl
    `compute_reinforce_plus_plus_baseline_outcome_advantage`: each response's reward minus its
    group's mean, broadcast to its tokens and whitened over all tokens of the batch (so a group's
    spread does not set the scale, unlike GRPO's per-group std). KL as a loss term (verl's
    recipe uses k2 at 0.001; here off by default: `objective.terms.kl.coef`). PPO clip,
    token-mean.
    """
    return {
        "objective": {
            "sources": ROLLOUTS,
            "advantage": {"kind": "reinforce_pp_baseline"},
            "terms": rl_terms("rollouts"),
        }
    }


@preset(
    "gspo",
    "GSPO: sequence-level importance ratio and clip, GRPO advantages, 2 updates per batch",
    "GSPO arXiv 2507.18071; verl compute_policy_loss_gspo",
)
def gspo() -> dict:
    """GSPO (arXiv 2507.18071), checked against verl `compute_policy_loss_gspo`: the ratio of a
    response is s_i = exp(mean_t(log π_θ − log π_old)), every token's ratio is s_i in value
    (with the token's own gradient), clipped to [1 − 3e-4, 1 + 4e-4] (verl's example ranges),
    aggregated seq-mean-token-mean (verl forces it), no dual clip; GRPO advantages. The ratio
    differs from 1 only on a second update of the same batch, so the preset makes two (2
    mini-batches, one epoch: the old log-probs are one no-grad forward before the first);
    with one update GSPO's gradient is GRPO's with seq-mean-token-mean.
    """
    terms = rl_terms(
        "rollouts",
        agg="seq-mean-token-mean",
        ratio_level="sequence",
        clip_low=3e-4,
        clip_high=4e-4,
        clip_ratio_c=None,
    )
    return {
        "objective": {
            "sources": ROLLOUTS,
            "advantage": {"kind": "grpo"},
            "terms": terms,
            "updates": [{"epochs": 1, "minibatches": 2}],
        }
    }


@preset(
    "dapo",
    "DAPO: clip-higher, token-mean, dynamic sampling to a full batch of informative groups, "
    "overlong shaping",
    "DAPO arXiv 2503.14476; verl docs/algo/dapo.md, DAPORewardManager",
)
def dapo() -> dict:
    """DAPO (arXiv 2503.14476), as verl's recipe (`docs/algo/dapo.md`, `DAPORewardManager`):
    clip-higher ε_lo 0.2 / ε_hi 0.28, token-mean, no KL, GRPO advantages; dynamic sampling:
    groups whose rewards are all equal are dropped and prompts_per_step more prompts are drawn
    until the step holds prompts_per_step informative groups (then truncated to it), at most 4
    draws (verl's max_num_gen_batches; ≤0 there is unlimited, here a cap is required), logged as
    `rollout/draws`, `rollout/extra_prompts` and `rollout/draw_cap_hit`; overlong reward shaping
    over the last 20% of max_new_tokens (DAPO: 4096 of 20480) with penalty 1. Deviation: when the
    cap is hit the step trains on the informative groups it has (verl raises an error).
    """
    terms = rl_terms("rollouts", clip_low=0.2, clip_high=0.28)
    return {
        "objective": {
            "sources": {
                "rollouts": {
                    "kind": "rollouts",
                    "informative_groups": "all",
                    "max_draws": 4,
                    "overlong_buffer": 0.2,
                    "overlong_penalty": 1.0,
                }
            },
            "advantage": {"kind": "grpo"},
            "terms": terms,
        }
    }


def _remix_objective(replay: float, minibatches: int, beta: float) -> dict:
    terms = rl_terms("rollouts", behaviour=True)
    terms["kl"] = {  # λ·KL(π_θ‖π_base) + (1 − λ)·KL(π_θ‖π_old), scaled by β
        "kind": "kl",
        "sources": ["rollouts"],
        "coef": f"{beta}*lam",
        "estimator": "k3",
    }
    terms["kl_old"] = {
        "kind": "kl_old",
        "sources": ["rollouts"],
        "coef": f"{beta}-{beta}*lam",
        "estimator": "k3",
    }
    return {
        "sources": {"rollouts": {"kind": "replay_rollouts", "replay": replay, "window": 2}},
        "advantage": {"kind": "grpo"},
        "controllers": {"lam": {"kind": "step_decay", "delay": 50, "every": 10, "by": 0.1}},
        "terms": terms,
        "updates": [{"epochs": 1, "minibatches": minibatches}],
    }


@preset(
    "remix",
    "ReMix: replayed groups of the last 2 steps with Mix-PPG, 2 updates per batch, KL-convex "
    "constraint, then on-policy GRPO from a reincarnated reference",
    "Squeeze the Soaked Sponge arXiv 2507.06892",
)
def remix() -> dict:
    """ReMix (arXiv 2507.06892, "Squeeze the Soaked Sponge"). The authors' repository
    (AnitaLeungxx/ReMix-Off-Policy-RFT at 95f7396) holds evaluation scripts only, no training
    code; this follows the paper's equations as summarized in public notes, so read it as a
    reconstruction. Two stages:

    - `mix` (the first T = 50 steps, `stages.mix.steps`): 40% of each step's groups are
      replayed from the groups sampled in the last 2 steps (`replay_rollouts`), 60% fresh;
      Mix-PPG (`pg` with `behaviour: true`): ratio π_θ/π_behav to the policy that sampled each
      token, clip [c − 0.2, c + 0.2] around c = π_old/π_behav, dual clip 3; update-to-data
      ratio 2 (two mini-batch updates per batch); the KL-convex constraint
      β·[λ·KL(π_θ‖π_base) + (1 − λ)·KL(π_θ‖π_old)] with λ = 1 until step 50, then 0.1 lower
      every 10 steps to 0.5 (`step_decay`), β = 0.01 (not given in the notes: chosen).
    - `on_policy` (policy reincarnation): the reference becomes the policy at step T
      (`reference: stage_start`) and training is on-policy GRPO (no replay, one update per
      batch) with the same constraint; optimizer moments are kept.

    GRPO advantages, token-mean. Deviations: π_{k−1} of the constraint is the policy before the
    step's first update (the one that sampled the fresh groups), not a separate copy of the
    previous step's model; replay is by whole groups (see `replay_rollouts`). The behaviour
    log-probs are the sampler's at its temperature: keep the temperature at 1.
    """
    return {
        "stages": {
            "mix": {"method": "grpo", "steps": 50, "objective": _remix_objective(0.4, 2, 0.01)},
            "on_policy": {
                "method": "grpo",
                "reference": "stage_start",
                "reset_optimizer": False,
                "objective": _remix_objective(0.0, 1, 0.01),
            },
        }
    }
