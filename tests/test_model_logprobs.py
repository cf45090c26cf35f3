import pytest
import torch

from tandem.model import build_tiny, token_logprobs
from tandem.model.logprobs import token_logprobs_reference


def _batch(left_pad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, T) ids, attention mask and a sparse target mask, with left or right padding.

    The rows' contents and targets are the same for both paddings, only shifted.
    """
    g = torch.Generator().manual_seed(0)
    lens = [12, 7, 9, 3]
    B, T = len(lens), max(lens)
    ids = torch.zeros(B, T, dtype=torch.long)
    attn = torch.zeros(B, T, dtype=torch.long)
    target = torch.zeros(B, T, dtype=torch.long)
    for i, n in enumerate(lens):
        sl = slice(T - n, T) if left_pad else slice(0, n)
        ids[i, sl] = torch.randint(3, 99, (n,), generator=g)
        attn[i, sl] = 1
        row_target = (torch.rand(n, generator=g) < 0.6).long()
        row_target[0] = 0  # the first real token has no prediction
        target[i, sl] = row_target if i != 3 else 0  # row 3 has no targets
    return ids, attn, target


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("left_pad", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_reference_with_grads(left_pad: bool, temperature: float) -> None:
    torch.manual_seed(0)
    model, _ = build_tiny()
    ids, attn, target = _batch(left_pad)
    results = []
    for fn in (token_logprobs, token_logprobs_reference):
        model.zero_grad()
        logp, ent, *_ = fn(
            model, ids, attn, target, temperature=temperature, with_entropy=True, chunk_tokens=5
        )
        (logp.sum() + 0.5 * ent.sum()).backward()
        results.append((logp.detach(), ent.detach(), _grads(model)))
    (lp, ent, grads), (lp_ref, ent_ref, grads_ref) = results
    assert lp.dtype == torch.float32 and lp.shape == ids.shape
    assert torch.allclose(lp, lp_ref, atol=1e-5)
    assert torch.allclose(ent, ent_ref, atol=1e-5)
    assert torch.all(lp[target == 0] == 0) and torch.all(ent[target == 0] == 0)
    assert torch.all(lp[target == 1] < 0)
    assert grads.keys() == grads_ref.keys() and len(grads) > 0
    for name in grads:
        assert torch.allclose(grads[name], grads_ref[name], atol=1e-5), name


def test_padding_side_does_not_matter() -> None:
    model, _ = build_tiny()
    with torch.no_grad():
        left = token_logprobs(model, *_batch(True))[0]
        right = token_logprobs(model, *_batch(False))[0]
    lens = [12, 7, 9, 3]
    for i, n in enumerate(lens):
        assert torch.allclose(left[i, -n:], right[i, :n], atol=1e-5)


def test_no_entropy_no_targets_and_autocast() -> None:
    model, _ = build_tiny()
    ids, attn, target = _batch(False)
    logp, ent, *_ = token_logprobs(model, ids, attn, target)
    assert ent is None
    empty, *_ = token_logprobs(model, ids, attn, torch.zeros_like(target))
    assert torch.all(empty == 0)
    empty.sum().backward()  # still differentiable
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp_bf16, ent_bf16, *_ = token_logprobs(model, ids, attn, target, with_entropy=True)
    assert logp_bf16.dtype == torch.float32
    assert torch.allclose(logp_bf16, logp.detach(), atol=0.05)
    logp_bf16.sum().backward()
