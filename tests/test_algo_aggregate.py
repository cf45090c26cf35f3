"""tandem.algo.aggregate: each mode by hand, and invariance to micro-batching / accumulation / DP."""

import pytest
import torch

from tandem.algo.aggregate import AGG_MODES, Normalizer, aggregate, make_normalizer
from tandem.algo.terms import clipped_pg, nll
from tandem.errors import ConfigError

TOL = 1e-6
F64 = torch.float64

# loss = [[1, 2, 3],      mask = [[1, 1, 0],
#         [4, 5, inf]]            [1, 0, 0]]
# Σ m·ℓ = 1 + 2 + 4 = 7; n_tokens = 3; n_seqs = 2; T = 3. The inf sits in padding and must not leak.
LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, float("inf")]], dtype=F64)
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)


@pytest.mark.parametrize(
    ("mode", "const_len", "expected"),
    [
        ("token-mean", None, 7 / 3),  # 7 / 3 = 2.333333
        ("seq-mean-token-mean", None, 2.75),  # (3/2 + 4/1) / 2 = (1.5 + 4) / 2
        ("seq-mean-token-sum", None, 3.5),  # 7 / 2
        ("seq-mean-token-sum-norm", None, 7 / 6),  # 7 / (2 seqs · 3 padded len) = 1.166667
        ("seq-mean-token-sum-norm", 10, 0.35),  # 7 / (2 · 10)
    ],
)
def test_modes_by_hand(mode, const_len, expected):
    norm = make_normalizer(MASK, mode, const_len)
    assert (norm.n_tokens, norm.n_seqs) == (3.0, 2.0)
    assert abs(aggregate(LOSS, MASK, norm).item() - expected) < TOL


def test_empty_row_not_counted():
    # Row 2 has no valid token: n_seqs = 1, and it contributes 0.
    # seq-mean-token-mean: (1+2)/2 / 1 = 1.5; seq-mean-token-sum: 3 / 1 = 3; token-mean: 3/2.
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    got = {m: aggregate(LOSS, mask, make_normalizer(mask, m)).item() for m in AGG_MODES}
    assert make_normalizer(mask, "token-mean").n_seqs == 1.0
    assert abs(got["seq-mean-token-mean"] - 1.5) < TOL
    assert abs(got["seq-mean-token-sum"] - 3.0) < TOL
    assert abs(got["token-mean"] - 1.5) < TOL
    assert abs(got["seq-mean-token-sum-norm"] - 1.0) < TOL  # 3 / (1 · 3)


def test_float_mask_same_as_bool():
    norm = make_normalizer(MASK.double(), "seq-mean-token-mean")
    assert abs(aggregate(LOSS, MASK.double(), norm).item() - 2.75) < TOL


@pytest.mark.parametrize("mode", AGG_MODES)
def test_empty_batch_gives_zero_with_grad(mode):
    loss = torch.ones(2, 3, dtype=F64, requires_grad=True)
    mask = torch.zeros(2, 3)
    out = aggregate(loss, mask, make_normalizer(mask, mode))
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.equal(loss.grad, torch.zeros(2, 3, dtype=F64))


def test_unknown_mode():
    with pytest.raises(ConfigError, match="token-mean"):
        make_normalizer(MASK, "sum")
    with pytest.raises(ConfigError):
        aggregate(LOSS, MASK, Normalizer("mean", 3.0, 2.0, 3.0))


# ---- invariance -------------------------------------------------------------------------------

B, T, D, V = 4, 5, 3, 7


def _setup():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(D, V, dtype=F64, generator=g).requires_grad_(True)
    x_BTD = torch.randn(B, T, D, dtype=F64, generator=g)
    y_BT = torch.randint(0, V, (B, T), generator=g)
    lengths = torch.tensor([5, 2, 0, 3])  # varied lengths, one empty row
    mask_BT = torch.arange(T)[None, :] < lengths[:, None]
    adv_BT = torch.tensor([1.0, -0.5, 2.0, -1.5], dtype=F64)[:, None].expand(B, T)
    with torch.no_grad():
        old_BT = _logp(weight, x_BTD, y_BT) + 0.3 * torch.randn(B, T, dtype=F64, generator=g)
    return weight, x_BTD, y_BT, mask_BT, adv_BT, old_BT


def _logp(weight, x_BTD, y_BT):
    """A tiny linear 'policy': log softmax(x W) gathered at the sampled token."""
    logits = x_BTD @ weight
    return torch.log_softmax(logits, dim=-1).gather(-1, y_BT[..., None]).squeeze(-1)


def _loss_rows(rows, weight, x, y, adv, old, term):
    logp = _logp(weight, x[rows], y[rows])
    if term == "pg":
        return clipped_pg(logp, old[rows], adv[rows], 0.2, 0.28, 3.0)
    return nll(logp)


@pytest.mark.parametrize("term", ["pg", "nll"])
@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("sizes", [[1, 2, 1], [2, 2], [1, 1, 1, 1], [3, 1]])
def test_microbatch_gradient_accumulation_invariance(term, mode, sizes):
    weight, x, y, mask, adv, old = _setup()
    norm = make_normalizer(mask, mode, const_len=8)
    full = aggregate(_loss_rows(slice(None), weight, x, y, adv, old, term), mask, norm)
    (grad_full,) = torch.autograd.grad(full, weight)

    # Gradient accumulation: backward() on each micro-batch, gradients add up in .grad.
    total = 0.0
    start = 0
    for size in sizes:
        rows = slice(start, start + size)
        part = aggregate(_loss_rows(rows, weight, x, y, adv, old, term), mask[rows], norm)
        part.backward()
        total += part.item()
        start += size
    assert abs(total - full.item()) < 1e-10
    torch.testing.assert_close(weight.grad, grad_full, atol=1e-10, rtol=0)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_data_parallel_invariance(mode):
    # Two "ranks" with rows permuted across them; counts are all-reduced (summed) before the step
    # and gradients summed: equals the single-process full batch.
    weight, x, y, mask, adv, old = _setup()
    full = aggregate(
        _loss_rows(slice(None), weight, x, y, adv, old, "pg"), mask, make_normalizer(mask, mode, 8)
    )
    (grad_full,) = torch.autograd.grad(full, weight)

    ranks = [torch.tensor([3, 0]), torch.tensor([2, 1])]
    local = [make_normalizer(mask[r], mode, 8) for r in ranks]
    norm = Normalizer(
        mode,
        n_tokens=sum(n.n_tokens for n in local),
        n_seqs=sum(n.n_seqs for n in local),
        const_len=8.0,
    )
    grads = []
    for r in ranks:
        part = aggregate(_loss_rows(r, weight, x, y, adv, old, "pg"), mask[r], norm)
        grads.append(torch.autograd.grad(part, weight)[0])
    torch.testing.assert_close(grads[0] + grads[1], grad_full, atol=1e-10, rtol=0)


def test_per_microbatch_normalizer_is_not_invariant():
    # Why the normalizer is global: normalizing each micro-batch by its own token count
    # weights the short rows' tokens more. Rows 0 (5 tokens) and 1 (2 tokens), token-mean:
    # full = (Σ₀ + Σ₁)/7, split = Σ₀/5 + Σ₁/2 — different for a non-zero loss.
    loss = torch.ones(2, T, dtype=F64)
    mask = torch.arange(T)[None, :] < torch.tensor([5, 2])[:, None]
    full = aggregate(loss, mask, make_normalizer(mask, "token-mean"))  # 7/7 = 1
    split = sum(
        aggregate(loss[i : i + 1], mask[i : i + 1], make_normalizer(mask[i : i + 1], "token-mean"))
        for i in range(2)
    )
    assert abs(full.item() - 1.0) < TOL and abs(split.item() - 2.0) < TOL
