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
