"""Preference presets: DPO, IPO, SimPO, ORPO on pairs, and SPIN (iterated self-play DPO).

Pairs come from the `pairs` source: `mode: data` (the task's gold solution vs one of its wrong
solutions, the default), `mode: online` (the best vs the worst of the model's own samples,
ranked by the verifier), or `mode: self_play` (gold vs a sample of the reference model: SPIN).
Every preset's pair term logs `<term>/margin` (the quantity inside its sigmoid or square) and
`<term>/accuracy` (the fraction of pairs with a positive margin).
"""

from __future__ import annotations

from tandem.methods import preset

PAIRS = {"pairs": {"kind": "pairs", "mode": "data"}}


@preset(
    "dpo", "DPO on preference pairs: −log σ(β(Δ_w − Δ_l)), frozen reference", "DPO arXiv 2305.18290"
)
def dpo() -> dict:
    """DPO (arXiv 2305.18290), checked against TRL `dpo_trainer.py::_compute_loss` (f2cd577),
    loss_type "sigmoid": ℓ = −(1 − ε)·log σ(β·z) − ε·log σ(−β·z), z = Δ_w − Δ_l, Δ = the
    response's summed log-prob under the policy minus under the frozen reference (the initial
    model). β = 0.1, ε = 0 (TRL's defaults). Pairs: `objective.sources.pairs.mode` data (gold vs
    wrong, default) or online (own samples ranked by the verifier). The loss is a mean over the
    pairs of the batch (TRL: over the pairs of each device batch). TRL's other DPO loss types,
    ld_alpha and WPO weighting are not implemented.
    """
    return {
        "objective": {
            "sources": PAIRS,
            "terms": {"dpo": {"kind": "dpo", "sources": ["pairs"], "beta": 0.1}},
        }
    }


@preset(
    "ipo",
    "IPO on preference pairs: squared length-averaged log-ratio margin",
    "IPO arXiv 2310.12036",
)
def ipo() -> dict:
    """IPO (arXiv 2310.12036) as TRL's loss_type "ipo": ℓ = ((Δ_w/|y_w| − Δ_l/|y_l|) −
    1/(2β))², with length-averaged log-ratios (TRL's comment says the IPO authors confirmed this
    normalization). β = 0.1 (TRL's default; the paper's τ).
    """
    return {
        "objective": {
            "sources": PAIRS,
            "terms": {"ipo": {"kind": "ipo", "sources": ["pairs"], "beta": 0.1}},
        }
    }


@preset(
    "simpo", "SimPO: −log σ(β·avg_w − β·avg_l − γ), no reference model", "SimPO arXiv 2405.14734"
)
def simpo() -> dict:
    """SimPO (arXiv 2405.14734), as TRL CPO's loss_type "simpo" (`cpo_alpha=0`) and
    princeton-nlp/SimPO `scripts/simpo_config.py` defaults: β = 2.0, γ/β = 0.25, so the absolute
    margin γ = 0.5 (TRL's `simpo_gamma` is absolute). No reference model is held. SimPO's
    optional SFT term (sft_weight, default 0) is an `nll` term on the chosen rows if wanted.
    """
    return {
        "objective": {
            "sources": PAIRS,
            "terms": {"simpo": {"kind": "simpo", "sources": ["pairs"], "beta": 2.0, "gamma": 0.5}},
        }
    }


@preset(
    "orpo",
    "ORPO: NLL on the chosen + λ·odds-ratio term, no reference model",
    "ORPO arXiv 2403.07691",
)
def orpo() -> dict:
    """ORPO (arXiv 2403.07691), checked against TRL `orpo_trainer.py::odds_ratio_loss`:
    L = NLL(y_w) − λ·log σ(log-odds(y_w) − log-odds(y_l)), log-odds from length-averaged
    log-probs; λ = 0.1 (TRL's `beta`). In tandem two terms: `sft` (token-mean NLL on the chosen
    rows) and `orpo` with coefficient λ. No reference model.
    """
    return {
        "objective": {
            "sources": PAIRS,
            "terms": {
                "sft": {"kind": "nll", "sources": ["pairs"], "rows": "chosen"},
                "orpo": {"kind": "orpo", "sources": ["pairs"], "coef": 0.1},
            },
        }
    }


@preset(
    "kto",
    "KTO: unpaired desirable / undesirable responses against the reference point z_0",
    "KTO arXiv 2402.01306; TRL kto_trainer.py",
)
def kto() -> dict:
    """KTO (arXiv 2402.01306), checked against TRL `kto_trainer.py::kto_loss` (f2cd577):
    desirable responses λ_D·(1 − σ(β(Δ − z_0))), undesirable λ_U·(1 − σ(β(z_0 − Δ))),
    Δ = log π_θ(y|x) − log π_ref(y|x) summed over the response, β = 0.1, λ_D = λ_U = 1, mean over
    all responses of the batch. z_0 = max(0, mean of Δ over the batch) under the policy before
    the update, detached, computed once per batch (a no-grad forward). The responses are the
    `pairs` source's rows used one by one (the gold solution desirable, the wrong one
    undesirable), so n_D = n_U; labelled single responses (task `dataset` with `completion` and
    `label` columns) train one by one with `objective.sources.pairs.mode=labeled`, where a
    prompt may have only one kind and n_D ≠ n_U (TRL then asks λ_D·n_D / (λ_U·n_U) in [1, 4/3]).
    Deviation: TRL estimates z_0 on mismatched (x, y') pairs of the batch (another prompt's
    response); here on the matched responses themselves, the same KL estimate without the
    extra forward of shuffled pairs.
    """
    return {
        "objective": {
            "sources": PAIRS,
            "terms": {"kto": {"kind": "kto", "sources": ["pairs"], "beta": 0.1}},
        }
    }


@preset(
    "spin",
    "SPIN: iterations of DPO, gold vs the previous iterate's samples, reference = that iterate",
    "SPIN arXiv 2401.01335; uclaml/SPIN",
)
def spin() -> dict:
    """SPIN (arXiv 2401.01335), checked against uclaml/SPIN `spin/alignment/trainer.py::spin_loss`
    (a12ba80): ℓ = −log σ(β[(log π_θ(y_real) − log π_t(y_real)) − (log π_θ(y_gen) −
    log π_t(y_gen))]) with summed log-probs, β = 0.1, i.e. DPO with the gold solution as chosen
    and the opponent π_t (the previous iterate) both writing the rejected answer and serving as
    the reference.

    A pipeline: the stage `iteration` repeats 3 times (`stages.iteration.repeat`), each a DPO
    stage with `pairs` in mode self_play, `reference: stage_start` (the opponent becomes the
    policy as the iteration starts) and fresh optimizer moments, as SPIN's iterations restart
    training from the previous checkpoint. Deviations: the opponent samples each step's rejected
    answers when the step needs them (SPIN generates the whole iteration's data once at its
    start: the same distribution, since the opponent is fixed within an iteration), with the
    run's chat template and temperature (SPIN samples at temperature 1 with its own prompt
    format); SPIN's mixing of the previous iteration's synthetic pairs into the next is not done.
    """
    return {
        "stages": {
            "iteration": {
                "method": "dpo",
                "steps": 10,
                "repeat": 3,
                "reference": "stage_start",
                "reset_optimizer": True,
                "objective": {"sources": {"pairs": {"mode": "self_play"}}},
            }
        }
    }
