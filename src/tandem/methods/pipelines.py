"""Pipelines of stages in one run: Tulu 3 (SFT, DPO, RL with verifiable rewards) and SFT then
DPO. Each stage is a single-stage preset with its own data (its sources), learning rate and
fresh optimizer moments; the reference model moves to the previous stage's model where the
stage says `reference: stage_start`. Steps and learning rates are per stage
(`stages.<name>.steps`, `stages.<name>.lr`)."""

from __future__ import annotations

from tandem.methods import preset


@preset(
    "tulu3",
    "Tulu 3: SFT, then DPO (reference = the SFT model), then RL with verifiable rewards",
    "Tulu 3 arXiv 2411.15124",
)
def tulu3() -> dict:
    """Tulu 3 (arXiv 2411.15124) as a stage list: `sft` (token NLL on gold solutions), `dpo`
    (DPO on gold-vs-wrong pairs, β 0.1 here; Tulu 3 uses length-normalized DPO with β 5 on
    its own preference mix), then `rlvr` (GRPO on the verifier's reward with a k3 KL to the DPO
    model at 0.05; Tulu 3's RLVR is PPO with β 0.05, the `ppo` preset is the closer RL stage:
    `stages.rlvr.method=ppo`). Each stage starts with fresh optimizer moments and the reference
    set to the policy as it starts (the SFT model for DPO, the DPO model for RLVR). Learning
    rates: Tulu 3 uses 5e-6 / 5e-7 / 3e-7 for its 8B model; the bundled recipe sets ones for
    small models. The three stages draw from the run's one task; a stage's own data set is a
    per-stage task, not yet supported.
    """
    return {
        "stages": {
            "sft": {"method": "sft", "steps": 10},
            "dpo": {
                "method": "dpo",
                "steps": 10,
                "reset_optimizer": True,
                "reference": "stage_start",
            },
            "rlvr": {
                "method": "grpo",
                "reset_optimizer": True,
                "reference": "stage_start",
                "objective": {"terms": {"kl": {"coef": 0.05}}},
            },
        }
    }


@preset(
    "sft_then_dpo",
    "SFT, then DPO with the SFT model as reference (a budget split between the two)",
    "Balancing the Budget arXiv 2502.11284; DPO arXiv 2305.18290",
)
def sft_then_dpo() -> dict:
    """SFT then DPO in one run, the pipeline "Balancing the Budget" (arXiv 2502.11284, ACL
    2025) studies: how to split a fixed annotation budget between SFT and preference
    finetuning; it finds that even a small SFT share (<10%) before DPO avoids DPO's cold start
    on math. Stages: `sft` (NLL on gold
    solutions, 10 steps by default: `stages.sft.steps`), then `dpo` on gold-vs-wrong pairs with
    the SFT model as the frozen reference and fresh optimizer moments. Move the split with
    `stages.sft.steps` and the run's `steps`.
    """
    return {
        "stages": {
            "sft": {"method": "sft", "steps": 10},
            "dpo": {"method": "dpo", "reset_optimizer": True, "reference": "stage_start"},
        }
    }


@preset(
    "warmup_rl",
    "Warm-up SFT on worked Knights-and-Knaves solutions, then RL on the run's own task",
    "Warm Up Before You Train arXiv 2505.13718",
)
def warmup_rl() -> dict:
    """ "Warm Up Before You Train" (arXiv 2505.13718, EMNLP 2025): a short SFT warm-up on
    reasoning traces of a toy domain (Knights and Knaves), then RL with verifiable rewards on
    the target task. The paper distills long chains of thought from a reasoning model (QwQ-32B);
    none is at hand here, and reasoning-gym's knights_knaves gives answers, not traces, so the
    warm-up trains on procedural traces: `rg:knights_knaves` with `traces: true`
    (`tandem.tasks.traces.knights_knaves`: an exhaustive case analysis, each case's
    contradiction or consistency, then the answer line the dataset scores 1.0). They are short
    and mechanical, not the paper's long reflective traces (its short-CoT warm-up hurt MATH).
    Stages: `warmup` (SFT on its own task, 10 steps) and `rl` (GRPO on the run's `task`, fresh
    optimizer moments). Evaluation is on the run's task throughout.
    """
    return {
        "stages": {
            "warmup": {
                "method": "sft",
                "steps": 10,
                "task": {"name": "rg:knights_knaves", "params": {"traces": True}},
            },
            "rl": {"method": "grpo", "reset_optimizer": True},
        }
    }
