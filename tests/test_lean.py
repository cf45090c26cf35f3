"""lean_modules (RMSNorm and SwiGLU keeping fewer tensors for backward) gives the same outputs
and gradients as the transformers modules, and restores them on exit."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

from tandem.model import build_tiny, onednn
from tandem.model.lean import lean_modules


def _loss_and_grads(model, ids, ctx) -> tuple[torch.Tensor, torch.Tensor]:
    model.zero_grad()
    with ctx():
        logits = model(input_ids=ids).logits.float()
    w = torch.linspace(-1, 1, logits.shape[-1])
    loss = (logits * w).sum() + logits.pow(2).mean()
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("bf16", [False, True])
def test_same_outputs_and_gradients(bf16):
    model, tok = build_tiny(seed=5)
    model.train()
    ids = torch.tensor(
        [tok.encode("12+34=46 and 7*8=56"), tok.encode("What is 99-9? It is 90")[:19]]
    )

    def amp():
        return torch.autocast("cpu", enabled=bf16, dtype=torch.bfloat16)

    @contextlib.contextmanager
    def amp_lean():
        with amp(), lean_modules(model):
            yield

    plain = _loss_and_grads(model, ids, amp)
    lean = _loss_and_grads(model, ids, amp_lean)
    tol = dict(atol=1e-2, rtol=1e-2) if bf16 else dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lean[0], plain[0], **tol)
    torch.testing.assert_close(lean[1], plain[1], **tol)
    assert lean[1].abs().sum() > 0


def test_patches_only_inside_the_block_and_only_with_grad():
    model, _ = build_tiny()
    norm, mlp = model.model.norm, model.model.layers[0].mlp
    with lean_modules(model):
        assert "forward" in norm.__dict__ and "forward" in mlp.__dict__
    assert "forward" not in norm.__dict__ and "forward" not in mlp.__dict__
    with torch.no_grad(), lean_modules(model):
        assert "forward" not in norm.__dict__


def test_onednn_linear_matches_f_linear_with_all_gradients():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 11, 24, generator=g, requires_grad=True)
    w = torch.randn(40, 24, generator=g, requires_grad=True)
    b = torch.randn(40, generator=g, requires_grad=True)
    gy = torch.randn(3, 11, 40, generator=g)
    ref = F.linear(x, w, b)
    ref_grads = torch.autograd.grad(ref, (x, w, b), gy)
    out = onednn.linear(x, w, b)
    grads = torch.autograd.grad(out, (x, w, b), gy)
    assert onednn.available()  # the CPU build ships oneDNN; if not, the test checks the fallback
    assert out.grad_fn is not None and "_Linear" in type(out.grad_fn).__name__
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)
    # bf16 and autocast take F.linear unchanged
    wb = w.detach().bfloat16()
    assert torch.equal(
        onednn.linear(x.detach().bfloat16(), wb), F.linear(x.detach().bfloat16(), wb)
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert onednn.linear(x, w).dtype == torch.bfloat16


def test_onednn_linears_patch_with_and_without_grad_and_restore():
    model, _ = build_tiny()
    q = model.model.layers[0].self_attn.q_proj
    with torch.no_grad(), lean_modules(model):
        assert "forward" in q.__dict__
        assert "forward" not in model.model.norm.__dict__  # lean norm only with grad
    assert "forward" not in q.__dict__


def test_onednn_probe_is_not_fooled_by_autocast():
    onednn.available.cache_clear()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert onednn.available()
    finally:
        onednn.available.cache_clear()
