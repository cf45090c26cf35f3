"""Loss aggregation: the one place where a per-token loss (B, T) becomes a scalar.

A term gives ℓ_{i,t} for every token; `aggregate` masks it and divides by a normalizer. The
normalizer is computed **once per optimizer step, on the whole batch of the term's items**
(`make_normalizer`), then every micro-batch contributes

    aggregate(ℓ[rows], mask[rows], norm)

and the contributions are summed (or their gradients accumulated). Because the denominators
are fixed before the split, the sum over any partition of the rows equals the full-batch value:
the loss, and hence the gradient, does not depend on micro-batch size or on gradient
accumulation. With data parallelism, all-reduce the *sums* ``n_tokens`` and ``n_seqs`` over
ranks before the step (build the Normalizer from the reduced counts) and all-reduce gradients
with SUM (or with MEAN and multiply by world size, as verl's ``dp_size`` factor does); the
result is then also independent of the number of ranks.

Modes (ALGORITHMS.md §2.4; m = 0/1 mask, N_tok = Σ m over the batch, N_seq = rows with ≥ 1
valid token, L = const_len):

=========================  =====================================  ==========================
mode                       formula                                 used by
=========================  =====================================  ==========================
token-mean                 Σ_{i,t} m·ℓ / N_tok                     DAPO, verl default
seq-mean-token-mean        Σ_i [Σ_t m·ℓ / Σ_t m] / N_seq           original GRPO, GSPO
seq-mean-token-sum         Σ_{i,t} m·ℓ / N_seq                     –
seq-mean-token-sum-norm    Σ_{i,t} m·ℓ / (N_seq · L)               Dr. GRPO, LUFFY
=========================  =====================================  ==========================

Length bias: seq-mean-token-mean gives each *sequence* the same total weight, so a token of a
long response weighs 1/|y| as much as one of a short response. With A < 0 the penalty per token
of a long wrong answer is diluted, which favours long wrong answers (the Dr. GRPO critique,
arXiv 2503.20783). token-mean weighs every token equally within the batch (but the weight of
the batch still depends on how many tokens it has); seq-mean-token-sum-norm divides by a
constant, so every token carries the same weight in every step. Recommended default for RLVR:
token-mean or seq-mean-token-sum-norm.

Deviation from verl: in ``seq-mean-token-sum-norm`` verl divides Σ m·ℓ by L only; tandem also
divides by N_seq (TRL's ``dr_grpo`` convention, Σ m·ℓ / (B · max_completion_length)), so the
loss is a per-sequence average and the learning rate means the same thing whatever the batch
size. The two differ by the constant factor N_seq, which Adam mostly absorbs, but not SGD or
gradient clipping.

Empty rows: a row whose mask is all zero contributes 0 in every mode and is not counted in
N_seq (as verl's ``seq_mask``), so padding rows or fully filtered items do not dilute the
loss. An empty batch (N_tok = 0) yields a zero loss that still carries a (zero) gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tandem.errors import ConfigError

AGG_MODES = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)


@dataclass(frozen=True)
class Normalizer:
    """Denominators of `aggregate`, fixed for one optimizer step.

    mode: one of `AGG_MODES`.
    n_tokens: number of valid (mask = 1) tokens in the whole batch of this term's items.
    n_seqs: number of rows of that batch with at least one valid token.
    const_len: the constant L of ``seq-mean-token-sum-norm`` (e.g. max_new_tokens); unused by
        the other modes.
    """

    mode: str
    n_tokens: float
    n_seqs: float
    const_len: float


def _check_mode(mode: str) -> None:
    if mode not in AGG_MODES:
        raise ConfigError(f"unknown loss aggregation mode {mode!r}; allowed: {list(AGG_MODES)}")


def make_normalizer(mask_BT: Tensor, mode: str, const_len: float | None = None) -> Normalizer:
    """Count the denominators on the whole (global) batch; call once per optimizer step.

    n_tokens = Σ m; n_seqs = #rows with Σ_t m > 0; const_len defaults to the padded length
    T = mask_BT.shape[1] (callers should pass max_new_tokens so that it is the same every step).
    For data parallelism, sum n_tokens and n_seqs over ranks and rebuild with `Normalizer(...)`.

    Shapes: mask_BT (B, T), 0/1 (bool or float).
    """
    _check_mode(mode)
    if mask_BT.dim() != 2:
        raise ValueError(f"mask must be (B, T), got shape {tuple(mask_BT.shape)}")
    m_BT = mask_BT.bool()
    length = float(mask_BT.shape[1]) if const_len is None else float(const_len)
    if length <= 0:
        raise ConfigError(f"const_len must be > 0, got {length}")
    return Normalizer(
        mode=mode,
        n_tokens=float(m_BT.sum().item()),
        n_seqs=float(m_BT.any(dim=1).sum().item()),
        const_len=length,
    )


def aggregate(loss_BT: Tensor, mask_BT: Tensor, norm: Normalizer) -> Tensor:
    """Contribution of these rows to the batch loss (a scalar); see the module docstring.

    token-mean:               Σ m·ℓ / n_tokens
    seq-mean-token-mean:      Σ_i (Σ_t m·ℓ / Σ_t m) / n_seqs   (empty rows contribute 0)
    seq-mean-token-sum:       Σ m·ℓ / n_seqs
    seq-mean-token-sum-norm:  Σ m·ℓ / (n_seqs · const_len)

    Summing this over any split of the batch rows (same ``norm``) gives the full-batch value.
    Masked positions are selected with ``torch.where``, so inf/NaN in padding does not leak into
    the value. A zero denominator returns a zero with grad instead of NaN.

    Shapes: loss_BT (B, T), mask_BT (B, T) 0/1 (bool or float). Returns a 0-dim tensor.
    """
    _check_mode(norm.mode)
    m_BT = mask_BT.bool()
    masked_BT = torch.where(m_BT, loss_BT, torch.zeros_like(loss_BT))
    if norm.mode == "token-mean":
        denom = norm.n_tokens
        total = masked_BT.sum()
    elif norm.mode == "seq-mean-token-mean":
        count_B = m_BT.sum(dim=1).to(loss_BT.dtype).clamp(min=1.0)  # empty rows: 0 / 1 = 0
        total = (masked_BT.sum(dim=1) / count_B).sum()
        denom = norm.n_seqs
    elif norm.mode == "seq-mean-token-sum":
        total = masked_BT.sum()
        denom = norm.n_seqs
    else:  # seq-mean-token-sum-norm
        total = masked_BT.sum()
        denom = norm.n_seqs * norm.const_len
    if denom <= 0:
        return total * 0.0
    return total / denom


__all__ = ["AGG_MODES", "Normalizer", "aggregate", "make_normalizer"]
