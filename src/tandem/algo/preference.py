"""Preference losses on pairs of sequence scores: DPO, IPO, SimPO, ORPO's odds-ratio term.

Pure functions of per-pair tensors (P,) with explicit scalar arguments. Notation
(ALGORITHMS.md §4): w = the chosen response y_w, l = the rejected one y_l;
``logp_w_P`` = log π_θ(y_w | x) summed over the response's trained tokens (with grad),
``ref_w_P`` = the same under π_ref (no grad), ``len_w_P`` = number of those tokens;
Δ_w = logp_w − ref_w. Each returns ``(loss_P, margin_P)``: the per-pair loss and the quantity
inside the sigmoid (or the square), detached, which the step logs as the pairs' margin.

Sources: TRL `trl/trainer/dpo_trainer.py::_compute_loss` (DPO "sigmoid" with label smoothing,
IPO), `trl/experimental/cpo/cpo_trainer.py` (SimPO as `loss_type="simpo"`),
`trl/experimental/orpo/orpo_trainer.py::odds_ratio_loss` (ORPO), at commit f2cd577.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# ORPO's log(1 - P̄) needs P̄ = exp(avg-logp) < 1: the average log-prob is clamped to at most
# this value (a response of probability 1 would give -inf odds).
ORPO_MAX_AVG_LOGP = -1e-6


def _sigmoid_loss(logits_P: Tensor, label_smoothing: float) -> Tensor:
    """−(1 − ε)·log σ(z) − ε·log σ(−z) (TRL's "sigmoid" loss; ε = 0 is plain DPO)."""
    loss_P = -F.logsigmoid(logits_P) * (1.0 - label_smoothing)
    if label_smoothing:
        loss_P = loss_P - F.logsigmoid(-logits_P) * label_smoothing
    return loss_P


def dpo(
    logp_w_P: Tensor,
    logp_l_P: Tensor,
    ref_w_P: Tensor,
    ref_l_P: Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """DPO (arXiv 2305.18290): ℓ = −log σ(β·(Δ_w − Δ_l)), sums of token log-probs.

    With label smoothing ε (the "robust" variant's conservative form, cDPO):
    ℓ = −(1 − ε)·log σ(βz) − ε·log σ(−βz), z = Δ_w − Δ_l. Also SPIN's loss (arXiv 2401.01335),
    with the previous iterate as π_ref. Margin: β·z.
    """
    z_P = (logp_w_P - ref_w_P) - (logp_l_P - ref_l_P)
    return _sigmoid_loss(beta * z_P, label_smoothing), (beta * z_P).detach()


def ipo(
    logp_w_P: Tensor,
    logp_l_P: Tensor,
    ref_w_P: Tensor,
    ref_l_P: Tensor,
    len_w_P: Tensor,
    len_l_P: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """IPO (arXiv 2310.12036): ℓ = ((Δ_w/|y_w| − Δ_l/|y_l|) − 1/(2β))², β = τ.

    Length-averaged log-ratios, as TRL (whose comment says the normalization was confirmed with
    the IPO authors). Margin: Δ_w/|y_w| − Δ_l/|y_l|.
    """
    z_P = (logp_w_P - ref_w_P) / len_w_P.clamp(min=1) - (logp_l_P - ref_l_P) / len_l_P.clamp(min=1)
    return (z_P - 1.0 / (2.0 * beta)) ** 2, z_P.detach()


def simpo(
    logp_w_P: Tensor,
    logp_l_P: Tensor,
    len_w_P: Tensor,
    len_l_P: Tensor,
    beta: float = 2.0,
    gamma: float = 0.5,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """SimPO (arXiv 2405.14734): ℓ = −log σ(β·avg-logp(y_w) − β·avg-logp(y_l) − γ).

    No reference model; γ is the absolute target margin (TRL's ``simpo_gamma``, default 0.5;
    princeton-nlp/SimPO defaults β = 2.0, γ/β = 0.25, i.e. γ = 0.5). Margin: the sigmoid's
    argument.
    """
    z_P = beta * (logp_w_P / len_w_P.clamp(min=1) - logp_l_P / len_l_P.clamp(min=1)) - gamma
    return _sigmoid_loss(z_P, label_smoothing), z_P.detach()


def orpo_odds(
    logp_w_P: Tensor, logp_l_P: Tensor, len_w_P: Tensor, len_l_P: Tensor
) -> tuple[Tensor, Tensor]:
    """ORPO's odds-ratio term (arXiv 2403.07691): ℓ = −log σ(log-odds(y_w) − log-odds(y_l)),
    log-odds(y) = a − log(1 − exp(a)) with a = avg-logp(y).

    The full ORPO loss is NLL(y_w) + λ·ℓ: in tandem two terms, an `nll` term on the chosen rows
    and this one with coefficient λ (TRL's ``beta``, default 0.1). No reference model.
    a is clamped to ≤ `ORPO_MAX_AVG_LOGP` so that log(1 − exp(a)) stays finite (TRL does not
    clamp). Margin: log-odds(y_w) − log-odds(y_l).
    """
    a_w = (logp_w_P / len_w_P.clamp(min=1)).clamp(max=ORPO_MAX_AVG_LOGP)
    a_l = (logp_l_P / len_l_P.clamp(min=1)).clamp(max=ORPO_MAX_AVG_LOGP)
    z_P = (a_w - torch.log(-torch.expm1(a_w))) - (a_l - torch.log(-torch.expm1(a_l)))
    return -F.logsigmoid(z_P), z_P.detach()


__all__ = ["ORPO_MAX_AVG_LOGP", "dpo", "ipo", "orpo_odds", "simpo"]
