"""shared_prompt_logprobs (one prompt pass per distinct prompt, KV cache expanded to its rows)
gives the same log-probs, entropies and gradients as the plain per-row computation."""

import functools

import pytest
import torch

from tandem.model import build_tiny
from tandem.model.logprobs import shared_prompt_logprobs, token_logprobs


def _batch(tok):
    # two groups of three rows sharing a prompt, plus a singleton; completions of varied length
    rows = [
        ("12+3=", "15"),
        ("12+3=", "1"),
        ("12+3=", "150x"),
        ("7+8=", "15"),
        ("7+8=", "16 "),
        ("7+8=", "9"),
        ("What is 1+1?", "2"),
    ]
    seqs = [(tok.encode(p), tok.encode(c)) for p, c in rows]
    T = max(len(p) + len(c) for p, c in seqs)
    B = len(seqs)
    ids = torch.zeros(B, T, dtype=torch.long)
    attn = torch.zeros(B, T, dtype=torch.long)
    tgt = torch.zeros(B, T)
    for i, (p, c) in enumerate(seqs):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        attn[i, : len(p) + len(c)] = 1
        tgt[i, len(p) : len(p) + len(c)] = 1
    return ids, attn, tgt


@pytest.mark.parametrize("pack_tokens", [1024, 12])  # 12: groups split over several rows
@pytest.mark.parametrize("with_entropy", [False, True])
def test_shared_prompt_matches_plain(with_entropy, pack_tokens):
    torch.manual_seed(0)
    model, tok = build_tiny(seed=0)
    ids, attn, tgt = _batch(tok)
    weights = torch.randn(ids.shape)  # an arbitrary loss mixing every token
    results = []
    shared = functools.partial(shared_prompt_logprobs, pack_tokens=pack_tokens)
    for fn in (token_logprobs, shared):
        model.zero_grad()
        logp, ent, *_ = fn(model, ids, attn, tgt, with_entropy=with_entropy, chunk_tokens=5)
        loss = (logp * weights).sum() + (ent.sum() if with_entropy else 0.0)
        loss.backward()
        # the tied embedding's sparse lookup gradient is folded into a dense .grad
        assert not model.get_input_embeddings().weight.grad.is_sparse
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        results.append((logp.detach(), None if ent is None else ent.detach(), grads))
    (lp_a, en_a, g_a), (lp_b, en_b, g_b) = results
    torch.testing.assert_close(lp_b, lp_a, atol=1e-5, rtol=1e-5)
    if with_entropy:
        torch.testing.assert_close(en_b, en_a, atol=1e-5, rtol=1e-5)
    assert (lp_a[tgt == 0] == 0).all() and (lp_b[tgt == 0] == 0).all()
    torch.testing.assert_close(g_b, g_a, atol=1e-5, rtol=1e-4)


def test_long_groups_split_into_balanced_parts_within_the_cap():
    from tandem.model.logprobs import _balanced_parts

    # 8 x 128 completion tokens behind a 46-token prompt, cap 1024: two parts of 4, not 7 + 1
    assert _balanced_parts(list(range(8)), [128] * 8, 46, 1024) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert _balanced_parts(list(range(8)), [20] * 8, 46, 1024) == [list(range(8))]
    # a lone row longer than the cap is its own part
    assert _balanced_parts([0, 1, 2], [30, 1, 1], 2, 12) == [[0], [1, 2]]
    lens = [100, 20, 30, 128, 5, 128, 60, 90]
    parts = _balanced_parts(list(range(8)), lens, 46, 300)
    assert [b for p in parts for b in p] == list(range(8))  # order kept, nothing lost
    assert all(46 + sum(lens[b] for b in p) <= 300 for p in parts)


@pytest.mark.parametrize("shared", [False, True])
def test_tied_embedding_gradient_bitwise(shared: bool) -> None:
    """The tied lookup adds its rows into the fused head's dense gradient in place
    (`head.TiedGrad`): .grad is bitwise what autograd's own dense + sparse sum gives, over two
    accumulated backward passes, with padding ids in the batch (their row gets no gradient)."""
    torch.manual_seed(0)
    model, tok = build_tiny(seed=0)
    emb = model.get_input_embeddings()
    assert emb.weight is model.get_output_embeddings().weight
    pad = emb.padding_idx if emb.padding_idx is not None else 0
    emb.padding_idx = pad
    fn = shared_prompt_logprobs if shared else token_logprobs
    ids, attn, tgt = _batch(tok)
    ids[attn.bool() & (tgt == 0)] = pad  # the prompts' tokens become padding ids
    grads = []
    for sparse in (True, False):  # True: the lookup gradient is sparse, autograd adds it
        emb.sparse = sparse
        model.zero_grad(set_to_none=True)
        for k in range(2):
            logp = fn(model, ids, attn, tgt).logp
            (logp * (k + 1.5)).sum().backward()
        emb.sparse = False
        assert not emb.weight.grad.is_sparse
        assert (emb.weight.grad[pad] == model.get_output_embeddings().weight.grad[pad]).all()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.equal(a, b)
