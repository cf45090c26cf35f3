"""lean_modules (RMSNorm and SwiGLU keeping fewer tensors for backward) gives the same outputs
and gradients as the transformers modules, and restores them on exit."""

import contextlib

import pytest
import torch

from tandem.model import build_tiny
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
