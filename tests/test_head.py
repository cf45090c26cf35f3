"""The fused LM head (tandem.model.head) gives the log-probs, entropies and gradients of the plain
autograd formula log_softmax((h @ W.T + b) / T), in float32 and under bf16 autocast, for one
vocabulary slice or several (the 256-column minimum gives three slices of V = 600)."""

import pytest
import torch

from tandem.model.head import head_logp_entropy


def _plain(h, w, b, t, temperature, with_entropy):
    z = torch.nn.functional.linear(h, w, b).float() / temperature
    logp = torch.log_softmax(z, -1)
    lp = logp.gather(-1, t[:, None])[:, 0]
    ent = -(logp.exp() * logp).sum(-1) if with_entropy else torch.zeros_like(lp)
    return lp, ent


def _run(fn, h0, w0, b0, t, a, c):
    h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
    b = None if b0 is None else b0.clone().requires_grad_()
    lp, ent = fn(h, w, b, t)
    loss = (lp * a).sum() + (ent * c).sum()
    loss.backward()
    return lp.detach(), ent.detach(), h.grad, w.grad, None if b is None else b.grad


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("with_entropy,bias,temperature,block", [
    (False, False, 1.0, 1 << 20), (True, False, 0.7, 1), (True, True, 1.3, 13 * 4 * 100), (False, True, 1.0, 1),
])  # fmt: skip
def test_matches_plain_autograd(bf16, with_entropy, bias, temperature, block):
    g = torch.Generator().manual_seed(1)
    N, H, V = 13, 16, 600
    h0, w0 = torch.randn(N, H, generator=g), torch.randn(V, H, generator=g) * 0.5
    b0 = torch.randn(V, generator=g) if bias else None
    t = torch.randint(0, V, (N,), generator=g)
    a, c = torch.randn(N, generator=g), torch.randn(N, generator=g)
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def fused(h, w, b, t):
        with amp:
            return head_logp_entropy(
                h, w, b, t, temperature=temperature, with_entropy=with_entropy, block_bytes=block
            )

    def plain(h, w, b, t):
        with amp:
            return _plain(h, w, b, t, temperature, with_entropy)

    got, want = _run(fused, h0, w0, b0, t, a, c), _run(plain, h0, w0, b0, t, a, c)
    tol = dict(atol=3e-2, rtol=3e-2) if bf16 else dict(atol=1e-5, rtol=1e-5)
    for x, y in zip(got, want):
        if y is None:
            assert x is None
        else:
            torch.testing.assert_close(x, y, **tol)
    assert got[3].abs().sum() > 0 and got[3].dtype == torch.float32


def test_no_grad_and_empty():
    h, w, t = torch.randn(4, 8), torch.randn(10, 8), torch.tensor([1, 2, 3, 9])
    with torch.no_grad():
        lp, _ = head_logp_entropy(h, w, None, t)
    torch.testing.assert_close(lp, _plain(h, w, None, t, 1.0, False)[0])
    with pytest.raises(ValueError, match="at least one row"):
        head_logp_entropy(h[:0], w, None, t[:0])
