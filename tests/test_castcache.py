"""Reusing the bf16 sampling copy in the autocast training forward (tandem.model.castcache)
gives the values and gradients of plain autocast, and the training step refreshes the copy."""

import contextlib
import copy

import pytest
import torch

import tandem.train.backend as backend_mod
import tandem.train.step as step_mod
from tandem.model import build_tiny
from tandem.model.castcache import bf16_weights
from tandem.model.logprobs import shared_prompt_logprobs
from tandem.train.loop import build_state
from tests.conftest import tiny_config


def _loss_and_grads(model, ids, ctx):
    model.zero_grad()
    mask = torch.ones_like(ids)
    with ctx(), torch.autocast("cpu", dtype=torch.bfloat16):
        logp, ent, *_ = shared_prompt_logprobs(model, ids, mask, mask, with_entropy=True)
    loss = (logp * torch.linspace(-1, 1, logp.shape[1])).sum() + ent.sum()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_cached_copy_gives_autocast_values_and_gradients():
    model, tok = build_tiny(seed=3)
    model.train()
    ids = torch.tensor([tok.encode("12+34=46 and 7*8=56")] * 3)
    shadow = copy.deepcopy(model).to(torch.bfloat16)
    pairs = [(p, c.detach()) for p, c in zip(model.parameters(), shadow.parameters())]
    plain = _loss_and_grads(model, ids, contextlib.nullcontext)
    cached = _loss_and_grads(model, ids, lambda: bf16_weights(pairs))
    torch.testing.assert_close(cached[0], plain[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(cached[1], plain[1]):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # a stale copy is really used (so the test above is not vacuous)
    with torch.no_grad():
        for c in shadow.parameters():
            c.mul_(1.5)
    stale = _loss_and_grads(model, ids, lambda: bf16_weights(pairs))
    assert not torch.allclose(stale[0], plain[0], rtol=1e-3)


@pytest.mark.filterwarnings(r"ignore:Seems like `optimizer.step\(\)` has been overridden")
def test_step_with_shared_copy_matches_plain_autocast(tmp_path, monkeypatch):
    """Three real SFT-then-GRPO steps under autocast (SFT steps do not use the copy; the GRPO
    step after two updates uses the copy its sampling refreshed): the same gradients as without
    the shared copy."""

    def step_grads(share: bool) -> list[torch.Tensor]:
        if not share:
            monkeypatch.setattr(backend_mod, "bf16_weights", lambda pairs: contextlib.nullcontext())
        st = build_state(
            tiny_config(
                tmp_path / str(share),
                "model.autocast_bf16=true",
                "grad_clip=0",
                "method=sft_then_grpo",
                "stages.sft.steps=2",
            )
        )
        got, real_step = [], st.optimizer.step

        def step_and_capture() -> None:
            got.append([p.grad.clone() for p in st.model.parameters()])
            real_step()

        st.optimizer.step = step_and_capture
        for k in range(3):
            step_mod.train_step(st, k)
        monkeypatch.undo()
        return got

    shared, plain = step_grads(True), step_grads(False)
    assert len(shared) == len(plain) == 3
    for gs, gp in zip(shared, plain):
        for a, b in zip(gs, gp):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
