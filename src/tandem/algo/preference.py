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


def _log_odds(avg_logp: Tensor) -> Tensor:
    """log(P̄ / (1 − P̄)) of P̄ = exp(avg-logp), with avg-logp clamped as in `orpo_odds`."""
    a = avg_logp.clamp(max=ORPO_MAX_AVG_LOGP)
    return a - torch.log(-torch.expm1(a))


def asft(
    logp_w_P: Tensor,
    logp_l_P: Tensor,
    len_w_P: Tensor,
    len_l_P: Tensor,
    beta: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """ASFT's alignment term (arXiv 2409.10571; turbo-alignment `ASFTLoss`, 72e737d):
    ℓ = −log σ(β·lo(y_w)) − log σ(−β·lo(y_l)), lo(y) = log-odds of P̄(y) = exp(avg-logp(y)).

    Pointwise, not a Bradley–Terry pair: each side is pushed on its own (the chosen response's
    absolute likelihood up, the rejected one's down). The full loss is c_ce·NLL(y_w) + λ·ℓ: an
    `nll` term on the chosen rows (seq-mean-token-mean, avg-logp) and this term with
    coefficient λ. No reference model. Margin: lo(y_w) − lo(y_l).
    """
    lo_w = _log_odds(logp_w_P / len_w_P.clamp(min=1))
    lo_l = _log_odds(logp_l_P / len_l_P.clamp(min=1))
    loss_P = -F.logsigmoid(beta * lo_w) - F.logsigmoid(-beta * lo_l)
    return loss_P, (lo_w - lo_l).detach()


# ------------------------------------------------------------------------ sequence losses
# Per-sequence scores (N,) of single responses (not pairs): ``logp_N`` summed log-probs,
# ``ref_N`` the reference's, ``len_N`` token counts, ``desirable_N`` a 0/1 label.


def kto_reference_point(old_logp_N: Tensor, ref_N: Tensor) -> Tensor:
    """KTO's z_0 = max(0, mean_batch(log π(y|x) − log π_ref(y|x))), detached: the policy's KL
    to the reference as measured on the batch before the update (a scalar)."""
    if not old_logp_N.numel():
        return torch.zeros((), dtype=old_logp_N.dtype, device=old_logp_N.device)
    return (old_logp_N - ref_N).detach().mean().clamp(min=0.0)


def kto(
    logp_N: Tensor,
    ref_N: Tensor,
    desirable_N: Tensor,
    z0: Tensor | float,
    beta: float = 0.1,
    lambda_d: float = 1.0,
    lambda_u: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """KTO (arXiv 2402.01306; TRL `kto_trainer.py::kto_loss`, f2cd577), per response:
    desirable: λ_D·(1 − σ(β(Δ − z_0))); undesirable: λ_U·(1 − σ(β(z_0 − Δ))), Δ = logp − ref
    (sums). The loss is averaged over all responses of the batch, as TRL's mean over the
    concatenated losses. Returns (loss_N, reward_N = β·Δ detached)."""
    delta_N = logp_N - ref_N
    des = desirable_N.bool()
    loss_N = torch.where(
        des,
        lambda_d * (1.0 - torch.sigmoid(beta * (delta_N - z0))),
        lambda_u * (1.0 - torch.sigmoid(beta * (z0 - delta_N))),
    )
    return loss_N, (beta * delta_N).detach()


def poft(logp_N: Tensor, ref_N: Tensor, len_N: Tensor) -> tuple[Tensor, Tensor]:
    """PoFT (arXiv 2412.12865), a Bradley–Terry preference of the trained model over a frozen
    scorer model on the same demonstration: ℓ = −log σ(avg-logp_θ(y) − sg(avg-logp_ref(y))).

    Its gradient is the NLL's times σ(avg_ref − avg_θ): demonstrations the scorer finds likely
    but the model does not weigh most. RECON from the abstract (no code found): one scorer (the
    run's reference model), token-averaged log-probs, no temperature. Returns (loss_N, margin_N =
    avg_θ − avg_ref detached)."""
    n = len_N.clamp(min=1)
    z_N = logp_N / n - (ref_N / n).detach()
    return -F.logsigmoid(z_N), z_N.detach()


__all__ = [
    "ORPO_MAX_AVG_LOGP",
    "asft",
    "dpo",
    "ipo",
    "kto",
    "kto_reference_point",
    "orpo_odds",
    "poft",
    "simpo",
]
