"""PPO with a value head, and ReFT (SFT warm-up, then PPO)."""

from __future__ import annotations

from tandem.methods import preset


def _ppo_objective(vf_coef: float, kl_coef: float, epochs: int, minibatches: int) -> dict:
    agg = "seq-mean-token-mean"
    return {
        "sources": {"rollouts": {"kind": "rollouts"}},
        "advantage": {"kind": "gae", "gamma": 1.0, "lam": 0.95, "kl_coef": kl_coef},
        "terms": {
            "pg": {
                "kind": "pg",
                "sources": ["rollouts"],
                "clip_low": 0.2,
                "clip_high": 0.2,
                "agg": agg,
            },
            "value": {
                "kind": "value",
                "sources": ["rollouts"],
                "coef": vf_coef,
                "clip": 0.2,
                "agg": agg,
            },
            "entropy": {"kind": "entropy", "sources": ["rollouts"], "coef": 0.0, "agg": agg},
        },
        "updates": [{"epochs": epochs, "minibatches": minibatches}],
    }


@preset(
    "ppo",
    "PPO: value head, GAE(γ, λ), clipped policy and value losses, epochs over mini-batches",
    "PPO arXiv 1707.06347; GAE 1506.02438; as in ReFT 2401.08967",
)
def ppo() -> dict:
    """PPO with GAE, as ReFT codes it (`lqtrung1998/mwp_ReFT` `train_rl_reft.py`, bdc844e):
    a linear value head on the policy's last hidden state (shared trunk,
    `tandem.model.value_head`); the verifier's reward on the response's last token; GAE with
    γ = 1.0, λ = 0.95; advantages whitened over the batch; PPO clip 0.2 and value clip 0.2
    around the old values; per-sequence token mean, then the batch mean, for both losses
    (ReFT's aggregation). Each batch gets 2 epochs x 2 mini-batches = 4 optimizer updates; the
    old log-probs and values are one no-grad forward before the first, so the ratios of the
    later updates are real (`optim/updates`, `pg/clip_frac`). The value coefficient is 0.5 and
    there is no KL (the `reft` preset sets ReFT's 5 and 0.05). Deviations: the value head starts
    at zero and has no dropout; mini-batches keep each prompt's samples together.
    """
    return {"objective": _ppo_objective(vf_coef=0.5, kl_coef=0.0, epochs=2, minibatches=2)}


@preset(
    "reft",
    "ReFT: SFT warm-up, then PPO from it with a partial reward and a KL penalty to it",
    "ReFT arXiv 2401.08967; lqtrung1998/mwp_ReFT",
)
def reft() -> dict:
    """ReFT (arXiv 2401.08967), checked against `lqtrung1998/mwp_ReFT` (bdc844e): stage `sft`
    (10 steps by default; the paper warms up about two epochs), then stage `rl`, PPO from the
    SFT model with that model as the reference (`reference: stage_start`) and fresh optimizer
    moments. ReFT's reward: 1 for a correct answer, 0.1 for an extractable but wrong one
    (`wrong_answer_reward`, from the verifier's "wrong: ..." verdicts), 0 when no answer is
    found. The KL penalty is in the reward, −0.05·(log π_old − log π_ref) per token (ReFT's
    kl_coef for natural-language CoT), value coefficient 5, 2 PPO epochs of one mini-batch,
    per-sequence token-mean aggregation. Set the RL stage's learning rate with `stages.rl.lr`
    (ReFT: SFT 1e-5, PPO 3e-7). Deviations as in the `ppo` preset; ReFT samples one response
    per question, here `samples_per_prompt` (GAE needs no groups, so 1 works too).
    """
    rl = _ppo_objective(vf_coef=5.0, kl_coef=0.05, epochs=2, minibatches=1)
    rl["sources"]["rollouts"]["wrong_answer_reward"] = 0.1
    return {
        "stages": {
            "sft": {"method": "sft", "steps": 10},
            "rl": {
                "method": "ppo",
                "reset_optimizer": True,
                "reference": "stage_start",
                "objective": rl,
            },
        }
    }
