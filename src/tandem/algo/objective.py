"""The term catalogue: every kind of loss term a method can put in its objective (`TERMS`).

A method's objective is a sum of named terms, each with its own coefficient and its own
normalizer (ALGORITHMS.md §1):

    L = Σ_terms coef_term(k) · AGG_term(w_item · ℓ_term)

A term kind is registered with its spec (the settings it takes from the config, documented
once), its level and what it needs the step to compute:

- **token** terms map (B, T) tensors to a per-token loss (B, T) that `aggregate` masks and
  normalizes (`agg`, counted once on the whole batch): pg, nll, dft, chord_phi, kl, entropy,
  value.
- **pair** terms map per-pair sequence scores (P,) to a per-pair loss, averaged over the pairs
  of the whole batch: dpo, ipo, simpo, orpo, asft.
- **seq** terms map per-response sequence scores (N,) to a per-response loss, averaged over the
  responses of the whole batch: kto, poft. A term kind may have a `prepare` function that
  computes batch-wide statistics once, before the first update (KTO's reference point z_0),
  passed to every micro-batch's call, so the micro-batch split does not change them.

Needs (`NEEDS`) are filled once per batch and only when an active term asks: ``old_logp``
(the policy before the update: a no-grad forward when the batch gets several updates, else
the current log-probs detached, ratio 1), ``ref_logp`` (the reference model), ``entropy``,
``values``/``old_values``/``returns`` (the value head and the advantage estimator), ``adv``
(an advantage estimator must be configured), ``vocab_logp``/``ref_vocab_logp`` (the policy's
and the reference's whole distribution at each token: vocab_kl), ``old_logp_batch`` (the
policy's log-probs on the whole batch before the update even with one update: a `prepare`
reads them), ``ift_inputs`` (the policy's greedy prediction at each trained token, from one
no-grad forward; the training forward of the term's rows then runs on IFT's mixed input
embeddings).

Every term reads its tokens through `mask` (its sources, roles and pair side); the math itself
is in the pure functions of `tandem.algo.terms`, `.preference` and `.value`, which the adapters
below call with explicit scalars. A term may also return per-token or per-pair statistics that
the step logs as ``<term>/<stat>`` (the PG clip fraction, the pairs' margin).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from tandem.algo import preference, value
from tandem.algo.aggregate import AGG_MODES
from tandem.algo.terms import (
    KL_ESTIMATORS,
    chord_phi_nll,
    clipped_pg,
    dft_nll,
    gspo_pg,
    kl_penalty,
    mix_ppg,
    nll,
    one_token_rollout,
    shaped_pg,
    unclipped_pg,
    vocab_kl,
)
from tandem.experience import ROLE_ID, ROLES
from tandem.registry import Registry, Spec

NEEDS = (
    "old_logp",
    "ref_logp",
    "entropy",
    "values",
    "old_values",
    "returns",
    "adv",
    "vocab_logp",
    "ref_vocab_logp",
    "old_logp_batch",
    "ift_inputs",
)

Role = Literal[ROLES]  # type: ignore[valid-type]
AggMode = Literal[AGG_MODES]  # type: ignore[valid-type]
KlEstimator = Literal[tuple(KL_ESTIMATORS)]  # type: ignore[valid-type]


@dataclass
class TokenInputs:
    """What a token term may read, all (B, T) over one micro-batch (None when not computed)."""

    logp: Tensor
    """log π_θ(y_t | s_t), with grad."""
    old_logp: Tensor
    """log π_old, no grad (the policy before this batch's first update)."""
    adv: Tensor
    role: Tensor
    """Role id of each token (`tandem.experience.ROLE_ID`)."""
    ref_logp: Tensor | None = None
    entropy: Tensor | None = None
    values: Tensor | None = None
    old_values: Tensor | None = None
    returns: Tensor | None = None
    vocab_logp: Tensor | None = None
    """(B, T, V) the policy's log-softmax over the vocabulary at each target token, with grad."""
    ref_vocab_logp: Tensor | None = None
    """(B, T, V) the reference's, no grad."""
    mask: Tensor | None = None
    """(B, T) 0/1, the tokens this term trains on (a sequence-level ratio averages over it)."""
    reward: Tensor | None = None
    """(B,) each row's reward (NaN: not scored)."""
    behav_logp: Tensor | None = None
    """log π_behav: the sampler's own log-prob of each sampled token, no grad (old_logp where
    the sampler's is not known: demonstrations)."""


@dataclass
class PairInputs:
    """Sequence scores of the pairs of one micro-batch: sums of the term's token log-probs of
    the chosen (w) and rejected (l) row of each pair, their token counts, and the reference's
    sums (None without a reference). All (P,)."""

    logp_w: Tensor
    logp_l: Tensor
    len_w: Tensor
    len_l: Tensor
    ref_w: Tensor | None = None
    ref_l: Tensor | None = None


@dataclass
class SeqInputs:
    """Sequence scores of the responses of one micro-batch (N,): sums of the term's token
    log-probs, token counts, the reference's sums (None without a reference) and the label
    `desirable` (an item's `chosen`: a verified or gold response)."""

    logp: Tensor
    len: Tensor
    desirable: Tensor
    ref: Tensor | None = None


@dataclass
class BatchScores:
    """What a term's `prepare` reads, over all of its rows in the whole batch (N,)."""

    old_logp: Tensor | None
    ref: Tensor | None
    len: Tensor
    desirable: Tensor


@dataclass(frozen=True)
class TermKind:
    fn: Callable[..., Tensor | tuple[Tensor, dict[str, Tensor]]]
    level: Literal["token", "pair", "seq"]
    needs: frozenset[str]
    prepare: Callable[[BatchScores], dict[str, Tensor]] | None = None
    """Batch-wide statistics, computed once before the first update and passed to `fn` as
    keyword arguments (KTO's z_0)."""


class TermSpec(Spec):
    """Settings every term has."""

    sources: list[str] = Field(min_length=1)
    """Names of the sources whose items this term trains on (a single name is short for a
    list of one)."""
    coef: float | str = Field(1.0, json_schema_extra={"ref": "controller"})
    """Its coefficient: a number, the name of a controller (`controllers:`), or `1-<name>`."""
    roles: list[Role] | None = None
    """Token roles it trains on (default: the trained roles sampled, demo, prefix)."""
    rows: Literal["all", "chosen", "rejected"] = "all"
    """Which rows of its sources: all, or one side of the preference pairs."""


class TokenTermSpec(TermSpec):
    agg: AggMode = "token-mean"
    """How its per-token losses are normalized (`tandem.algo.aggregate`)."""
    const_len: int | None = Field(None, ge=1)
    """The constant length of `seq-mean-token-sum-norm`; default: max_new_tokens."""


TERMS: Registry[TermKind] = Registry("term")

_COMMON = set(TokenTermSpec.model_fields) | {"kind"}


def params_of(spec: Spec) -> dict:
    """A spec's kind-specific settings (what the term's function takes as keyword arguments)."""
    return {k: v for k, v in spec.model_dump().items() if k not in _COMMON}


def _term(
    name: str,
    spec: type[Spec],
    level: str,
    needs: tuple[str, ...],
    summary: str,
    prepare: Callable | None = None,
):
    def deco(fn):
        TERMS.add(name, TermKind(fn, level, frozenset(needs), prepare), spec, summary)
        return fn

    return deco


# ------------------------------------------------------------------------------ token terms


class PgSpec(TokenTermSpec):
    """Policy gradient on sampled tokens, with the demonstration and prefix tokens of the same
    items (LUFFY, Prefix-RFT) handled by `off_policy`."""

    clip: bool = True
    """PPO clip (GRPO, DAPO); false: the unclipped importance-weighted term −A·ρ (LUFFY)."""
    clip_low: float = Field(0.2, ge=0.0)
    clip_high: float = Field(0.2, ge=0.0)
    """Clip range [1 − clip_low, 1 + clip_high]; DAPO's clip-higher uses 0.28."""
    clip_ratio_c: float | None = 3.0
    """Dual-clip bound for negative advantages (verl default 3.0); null disables it (token
    ratios only)."""
    ratio_level: Literal["token", "sequence"] = "token"
    """`sequence`: GSPO's ratio, the sequence's mean log-ratio for every token, clipped as a
    whole (arXiv 2507.18071; its clip range is small, e.g. 3e-4 / 4e-4)."""
    off_policy: Literal["ratio", "shaped"] = "ratio"
    """Demonstration and prefix tokens: `ratio` = the same term as sampled tokens (ratio to
    the policy before the update, Prefix-RFT as coded); `shaped` = LUFFY's policy shaping
    −A·p/(p + shaping_gamma) with no clip."""
    shaping_gamma: float = Field(0.1, gt=0.0)
    prefix_entropy_keep: float = Field(1.0, gt=0.0, le=1.0)
    """Prefix-RFT: only this fraction of each row's prefix tokens, those of highest entropy,
    keep their advantage (the paper keeps 0.2); 1.0 keeps all."""
    behaviour: bool = False
    """ReMix's Mix-PPG: the ratio is to the policy that sampled each token (replayed samples
    come from earlier policies) and the clip is centred at π_old/π_behav instead of 1."""

    def extra_needs(self) -> set[str]:
        return {"entropy"} if self.prefix_entropy_keep < 1.0 else set()


def _top_per_row(mask_BT: Tensor, score_BT: Tensor, keep: float) -> Tensor:
    """Per row, 1 on the ceil(keep · n) highest-scoring entries of `mask_BT` (n = its count)."""
    ent = torch.where(mask_BT, score_BT.detach(), torch.full_like(score_BT, -torch.inf))
    n_B = mask_BT.sum(1)
    k_B = torch.ceil(n_B.double() * keep).long()
    rank_BT = ent.argsort(1, descending=True).argsort(1)
    return mask_BT & (rank_BT < k_B[:, None])


@_term("pg", PgSpec, "token", ("old_logp", "adv"), "policy gradient (PPO clip or unclipped)")
def _pg(
    x: TokenInputs,
    *,
    clip: bool,
    clip_low: float,
    clip_high: float,
    clip_ratio_c: float | None,
    ratio_level: str,
    off_policy: str,
    shaping_gamma: float,
    prefix_entropy_keep: float,
    behaviour: bool,
):
    adv = x.adv
    if behaviour:
        loss = mix_ppg(x.logp, x.old_logp, x.behav_logp, adv, clip_low, clip_high, clip_ratio_c)
        ratio = torch.exp(x.logp.detach() - x.behav_logp)
        centre = torch.exp(x.old_logp - x.behav_logp)
        clipped = ((ratio < centre - clip_low) & (adv < 0)) | (
            (ratio > centre + clip_high) & (adv > 0)
        )
        return loss, {"clip_frac": clipped.float(), "behav_ratio": centre}
    if prefix_entropy_keep < 1.0:  # Prefix-RFT: low-entropy prefix tokens get no advantage
        prefix = x.role == ROLE_ID["prefix"]
        keep = _top_per_row(prefix, x.entropy, prefix_entropy_keep)
        adv = torch.where(prefix & ~keep, torch.zeros_like(adv), adv)
    if clip and ratio_level == "sequence":
        loss = gspo_pg(x.logp, x.old_logp, adv, x.mask, clip_low, clip_high)
        m = x.mask.to(x.logp.dtype)
        log_s = ((x.logp.detach() - x.old_logp) * m).sum(1) / m.sum(1).clamp(min=1)
        ratio = torch.exp(log_s)[:, None].expand_as(x.logp)
        clipped = ((ratio < 1 - clip_low) & (adv < 0)) | ((ratio > 1 + clip_high) & (adv > 0))
    elif clip:
        loss = clipped_pg(x.logp, x.old_logp, adv, clip_low, clip_high, clip_ratio_c)
        ratio = torch.exp(x.logp.detach() - x.old_logp)
        clipped = ((ratio < 1 - clip_low) & (adv < 0)) | ((ratio > 1 + clip_high) & (adv > 0))
    else:
        loss = unclipped_pg(x.logp, x.old_logp, adv)
        clipped = torch.zeros_like(loss, dtype=torch.bool)
    if off_policy == "shaped":
        off = (x.role == ROLE_ID["demo"]) | (x.role == ROLE_ID["prefix"])
        loss = torch.where(off, shaped_pg(x.logp, adv, shaping_gamma), loss)
    return loss, {"clip_frac": clipped.float()}


class NllSpec(TokenTermSpec):
    """Token log-likelihood of the term's tokens (SFT)."""


@_term("nll", NllSpec, "token", (), "negative log-likelihood (SFT)")
def _nll(x: TokenInputs):
    return nll(x.logp)


@_term("dft", NllSpec, "token", (), "DFT: −sg(p)·log p (arXiv 2508.05629)")
def _dft(x: TokenInputs):
    return dft_nll(x.logp)


@_term("chord_phi", NllSpec, "token", (), "CHORD-φ: −sg(p(1−p))·log p (arXiv 2508.11408)")
def _chord_phi(x: TokenInputs):
    return chord_phi_nll(x.logp)


def _row_mean_entropy(x: TokenInputs) -> Tensor:
    """(B, 1) each row's token-mean entropy over the term's tokens, detached."""
    m = x.mask.to(x.entropy.dtype)
    return ((x.entropy.detach() * m).sum(1) / m.sum(1).clamp(min=1))[:, None]


class EntropyNllSpec(TokenTermSpec):
    """NLL weighted per sequence by its entropy: w_i = scale·exp(sign·H̄_i), H̄_i the row's
    token-mean entropy over the term's tokens, detached (SRFT's SFT weight: 0.5·exp(−H))."""

    scale: float = Field(0.5, gt=0.0)
    sign: Literal[-1, 1] = -1


@_term(
    "entropy_nll", EntropyNllSpec, "token", ("entropy",), "NLL × scale·exp(±H̄) per sequence (SRFT)"
)
def _entropy_nll(x: TokenInputs, *, scale: float, sign: int):
    return -scale * torch.exp(sign * _row_mean_entropy(x)) * x.logp


class SrftRlSpec(TokenTermSpec):
    """SRFT's RL term over a group's own samples and its in-group demonstration."""

    rl_scale: float = Field(0.1, gt=0.0)
    """Correct own samples are weighted rl_scale·exp(H̄_i)."""
    shaping_gamma: float = Field(0.1, gt=0.0)
    """Demonstration tokens: LUFFY's −A·p/(p + γ)."""
    success_reward: float = 1.0


@_term(
    "srft_rl",
    SrftRlSpec,
    "token",
    ("entropy", "adv"),
    "SRFT: −w·log p on correct / +log p on wrong own samples, shaped PG on demonstrations",
)
def _srft_rl(x: TokenInputs, *, rl_scale: float, shaping_gamma: float, success_reward: float):
    ok = (x.reward >= success_reward)[:, None]
    a = torch.where(ok, rl_scale * torch.exp(_row_mean_entropy(x)), -torch.ones_like(x.logp))
    own = -a * x.logp
    demo = x.role == ROLE_ID["demo"]
    return torch.where(demo, shaped_pg(x.logp, x.adv, shaping_gamma), own)


class KlSpec(TokenTermSpec):
    """KL(π_θ ‖ π_ref) estimated from the sampled token, in the loss (GRPO style)."""

    estimator: KlEstimator = "k3"
    """k1, k2, k3 (low-variance), or straight-through k1+ / k3+ (`tandem.algo.terms`)."""


@_term("kl", KlSpec, "token", ("ref_logp",), "KL to the reference model (k1/k2/k3/k1+/k3+)")
def _kl(x: TokenInputs, *, estimator: str):
    return kl_penalty(x.logp, x.ref_logp, estimator)


class KlOldSpec(TokenTermSpec):
    """KL(π_θ ‖ π_old) to the policy before this batch's first update, from the sampled token."""

    estimator: KlEstimator = "k3"


@_term("kl_old", KlOldSpec, "token", ("old_logp",), "KL to the policy before the update (ReMix)")
def _kl_old(x: TokenInputs, *, estimator: str):
    """The second part of ReMix's KL-convex constraint (arXiv 2507.06892): λ·KL(π_θ‖π_base) +
    (1 − λ)·KL(π_θ‖π_{k−1}), π_{k−1} here the policy before the step's first update (the one
    that sampled its fresh groups). Zero in value and gradient on a batch's first update."""
    return kl_penalty(x.logp, x.old_logp, estimator)


class EntropySpec(TokenTermSpec):
    """Entropy bonus: the term is −H(π_θ(·|s_t)), so a positive coefficient raises entropy.
    Logged `loss/<name>` is therefore minus the mean entropy."""


@_term("entropy", EntropySpec, "token", ("entropy",), "entropy bonus (−H)")
def _entropy(x: TokenInputs):
    return -x.entropy


class ValueSpec(TokenTermSpec):
    """PPO's value loss on the value head's estimates (ReFT, PPO)."""

    clip: float | None = Field(0.2, gt=0.0)
    """Value clipping range around the old values (ReFT 0.2); null: no clipping."""


@_term(
    "value",
    ValueSpec,
    "token",
    ("values", "old_values", "returns"),
    "clipped value loss ½·max((V−R)², (clip(V)−R)²)",
)
def _value(x: TokenInputs, *, clip: float | None):
    return value.clipped_value_loss(x.values, x.old_values, x.returns, clip)


class VocabKlSpec(TokenTermSpec):
    """KL(π_ref ‖ π_θ) over the whole vocabulary at each token (Anchored SFT's anchor); holds
    (tokens x vocabulary) log-probs of the policy and the reference while it runs."""


@_term(
    "vocab_kl",
    VocabKlSpec,
    "token",
    ("vocab_logp", "ref_vocab_logp"),
    "KL(π_ref ‖ π_θ) over the full vocabulary (Anchored SFT)",
)
def _vocab_kl(x: TokenInputs):
    return vocab_kl(x.vocab_logp, x.ref_vocab_logp)


class SsTokenSpec(TokenTermSpec):
    """NLL on the most learnable tokens of each response: ssToken's self-modulated selection."""

    keep: float = Field(0.6, gt=0.0, le=1.0)
    """ρ: the fraction of each response's tokens trained on (the top by REL)."""


@_term(
    "sstoken",
    SsTokenSpec,
    "token",
    ("ref_logp",),
    "NLL on the top-ρ tokens by retrospective excess loss log π_θ − log π_ref (ssToken)",
)
def _sstoken(x: TokenInputs, *, keep: float):
    """ssToken (arXiv 2510.18250, jianke0604/ssToken): a token's retrospective excess loss
    REL = log π_θ(y_t) − log π_his(y_t) (the history model: here the run's reference, the
    frozen initial model, the paper's default); NLL is taken only on the ceil(ρ·n) tokens of
    each response with the highest REL (detached). Deviations: the paper scores γ·norm(REL) +
    (1 − γ)·attention importance; tandem's fused forward exposes no attention weights, so
    γ = 1 (the paper's "self-modulated only" variant). The selection is per response (so the
    micro-batch split cannot change it) and the loss is normalized over all of the term's
    tokens (a constant factor ρ from a mean over the selected ones)."""
    rel = x.logp.detach() - x.ref_logp
    keep_BT = _top_per_row(x.mask.bool(), rel, keep)
    return -x.logp * keep_BT.to(x.logp.dtype)


class IftSpec(TokenTermSpec):
    """IFT on demonstrations: NLL from a forward on inputs mixed with the model's own
    predictions, weighted by the discounted future loss."""

    mix: float = Field(0.2, ge=0.0, le=1.0)
    """λ: the share of the predicted token's embedding in each response input (IFT 0.2)."""
    gamma: float = Field(0.95, ge=0.0, le=1.0)
    """Discount of the propagated loss weights (IFT 0.95)."""


@_term(
    "ift",
    IftSpec,
    "token",
    ("ift_inputs",),
    "IFT: NLL on mixed-embedding inputs, weighted by the discounted future loss",
)
def _ift(x: TokenInputs, *, mix: float, gamma: float):
    """IFT, Intuitive Fine-Tuning (arXiv 2405.11870), as TsinghuaC3I/Intuitive-Fine-Tuning
    `src/trainers.py` (03adb93, `loss_config.name == 'ift'`, `get_cumsum_weight`): x.logp is
    log p'_t of the gold token from the forward on mixed inputs e'_i = (1 − λ)E(y*_i) +
    λE(ŷ_i) (ŷ_i the greedy prediction for position i, `mix` = λ); c_t = −log p'_t / |y|;
    W_t = Σ_{k≥t} γ^{k−t} c_k, rescaled so that Σ_t W_t = |y| (L1 norm); ℓ_t = W_t·(−log p'_t).
    As in the authors' code the weights are not detached. Aggregate seq-mean-token-mean for
    the paper's mean_seq[Σ_t W_t·(−log p'_t) / |y|]."""
    m = x.mask.to(x.logp.dtype)
    n_B = m.sum(1, keepdim=True).clamp(min=1)
    c_BT = -x.logp * m / n_B
    w = torch.zeros_like(c_BT[:, 0])
    cols = []
    for t in range(c_BT.shape[1] - 1, -1, -1):  # right to left, masked positions skipped
        on = m[:, t] > 0
        w = torch.where(on, c_BT[:, t] + gamma * w, w)
        cols.append(torch.where(on, w, torch.zeros_like(w)))
    W_BT = torch.stack(cols[::-1], 1)
    W_BT = W_BT * n_B / W_BT.sum(1, keepdim=True).clamp(min=1e-12)
    return -W_BT * x.logp


class OtrSpec(TokenTermSpec):
    """One-Token Rollout on demonstration tokens, in expectation over the sampled token."""

    temperature: float = Field(1.0, gt=0.0)
    """τ of the one-token sampling distribution q = softmax(log π / τ)."""
    beta: float = Field(0.1, ge=0.0)
    """Penalty weight on probability the policy puts on wrong tokens."""


@_term(
    "otr",
    OtrSpec,
    "token",
    ("vocab_logp",),
    "One-Token Rollout: −[q(y)·log π(y) − β·Σ_{v≠y} q(v)·log π(v)] (arXiv 2509.26313)",
)
def _otr(x: TokenInputs, *, temperature: float, beta: float):
    return one_token_rollout(x.logp, x.vocab_logp, temperature, beta)


# ------------------------------------------------------------------------------- pair terms


class DpoSpec(TermSpec):
    """DPO on preference pairs (also SPIN's loss, with the previous iterate as reference)."""

    beta: float = Field(0.1, gt=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)


@_term("dpo", DpoSpec, "pair", ("ref_logp",), "DPO: −log σ(β(Δ_w − Δ_l)) (arXiv 2305.18290)")
def _dpo(x: PairInputs, *, beta: float, label_smoothing: float):
    loss, margin = preference.dpo(x.logp_w, x.logp_l, x.ref_w, x.ref_l, beta, label_smoothing)
    return loss, {"margin": margin}


class IpoSpec(TermSpec):
    """IPO on preference pairs, length-averaged log-ratios."""

    beta: float = Field(0.1, gt=0.0)


@_term("ipo", IpoSpec, "pair", ("ref_logp",), "IPO: ((Δ_w/|y_w| − Δ_l/|y_l|) − 1/2β)²")
def _ipo(x: PairInputs, *, beta: float):
    loss, margin = preference.ipo(x.logp_w, x.logp_l, x.ref_w, x.ref_l, x.len_w, x.len_l, beta)
    return loss, {"margin": margin}


class SimpoSpec(TermSpec):
    """SimPO on preference pairs: average log-probs, no reference model."""

    beta: float = Field(2.0, gt=0.0)
    gamma: float = 0.5
    """Absolute target margin γ (TRL's simpo_gamma)."""
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)


@_term("simpo", SimpoSpec, "pair", (), "SimPO: −log σ(β·avg_w − β·avg_l − γ), no reference")
def _simpo(x: PairInputs, *, beta: float, gamma: float, label_smoothing: float):
    loss, margin = preference.simpo(
        x.logp_w, x.logp_l, x.len_w, x.len_l, beta, gamma, label_smoothing
    )
    return loss, {"margin": margin}


class OrpoSpec(TermSpec):
    """ORPO's odds-ratio term; its coefficient is ORPO's λ (pair it with an `nll` term on the
    chosen rows)."""


@_term("orpo", OrpoSpec, "pair", (), "ORPO odds ratio: −log σ(log-odds_w − log-odds_l)")
def _orpo(x: PairInputs):
    loss, margin = preference.orpo_odds(x.logp_w, x.logp_l, x.len_w, x.len_l)
    return loss, {"margin": margin}


class AsftSpec(TermSpec):
    """ASFT's pointwise alignment term on preference pairs; its coefficient is ASFT's λ (pair it
    with an `nll` term on the chosen rows, seq-mean-token-mean: c_ce·avg-NLL)."""

    beta: float = Field(1.0, gt=0.0)


@_term("asft", AsftSpec, "pair", (), "ASFT: −log σ(β·lo(y_w)) − log σ(−β·lo(y_l)), no reference")
def _asft(x: PairInputs, *, beta: float):
    loss, margin = preference.asft(x.logp_w, x.logp_l, x.len_w, x.len_l, beta)
    return loss, {"margin": margin}


# --------------------------------------------------------------------------- sequence terms


class KtoSpec(TermSpec):
    """KTO on single responses labelled desirable (an item's `chosen`) or undesirable."""

    beta: float = Field(0.1, gt=0.0)
    lambda_d: float = Field(1.0, ge=0.0)
    """Weight of desirable responses (λ_D)."""
    lambda_u: float = Field(1.0, ge=0.0)
    """Weight of undesirable responses (λ_U); TRL warns unless λ_D·n_D / (λ_U·n_U) is in
    [1, 4/3]."""


def _kto_prepare(b: BatchScores) -> dict[str, Tensor]:
    return {"z0": preference.kto_reference_point(b.old_logp, b.ref)}


@_term(
    "kto",
    KtoSpec,
    "seq",
    ("ref_logp", "old_logp_batch"),
    "KTO: λ·(1 − σ(±β(Δ − z_0))) on unpaired responses (arXiv 2402.01306)",
    prepare=_kto_prepare,
)
def _kto(x: SeqInputs, *, beta: float, lambda_d: float, lambda_u: float, z0: Tensor):
    loss, reward = preference.kto(x.logp, x.ref, x.desirable, z0, beta, lambda_d, lambda_u)
    return loss, {"reward": reward, "z0": z0.expand_as(reward)}


class PoftSpec(TermSpec):
    """PoFT: prefer the trained model over the reference (the scorer) on the same response."""


@_term(
    "poft",
    PoftSpec,
    "seq",
    ("ref_logp",),
    "PoFT: −log σ(avg-logp_θ(y) − avg-logp_ref(y)) on demonstrations",
)
def _poft(x: SeqInputs):
    loss, margin = preference.poft(x.logp, x.ref, x.len)
    return loss, {"margin": margin}


def term_needs(spec: TermSpec) -> frozenset[str]:
    """What a term needs the step to compute, given its settings."""
    return TERMS.get(spec.kind).needs | spec.extra_needs()  # type: ignore[attr-defined]


__all__ = [
    "NEEDS",
    "TERMS",
    "BatchScores",
    "PairInputs",
    "SeqInputs",
    "TermKind",
    "TermSpec",
    "TokenInputs",
    "TokenTermSpec",
    "params_of",
    "term_needs",
]
