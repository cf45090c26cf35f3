import pytest
import torch

from tandem.model import SampleOutput, build_tiny, sample, token_logprobs
from tandem.model.sampler import sample_reference

PROMPTS = ["What is 12 + 3?", "Hi", "abc def ghi jkl mno", "x = 7;"]


@pytest.fixture(scope="module")
def tiny():
    model, tok = build_tiny(seed=0)
    return model, tok, [tok.encode(p) for p in PROMPTS]


def _run(fn, model, prompts, eos, **kw) -> SampleOutput:
    g = torch.Generator().manual_seed(1234)
    return fn(model, prompts, eos_token_ids=eos, pad_token_id=0, generator=g, **kw)


def _check_against_logprobs(model, prompts, out: SampleOutput, temperature: float) -> None:
    """The sampler's log-probs equal token_logprobs of prompt + completion (right-padded)."""
    seqs = [p + c for p, c in zip(prompts, out.completions)]
    B, T = len(seqs), max(len(s) for s in seqs)
    ids = torch.zeros(B, T, dtype=torch.long)
    attn = torch.zeros(B, T, dtype=torch.long)
    target = torch.zeros(B, T, dtype=torch.long)
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
        target[i, len(p) : len(s)] = 1
    with torch.no_grad():
        logp = token_logprobs(model, ids, attn, target, temperature=temperature or 1.0).logp
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        assert torch.allclose(out.logprobs[i], logp[i, len(p) : len(s)], atol=1e-4)


@pytest.mark.parametrize(
    ("temperature", "top_p", "eos"),
    [(1.0, 1.0, [1, 41, 43]), (1.0, 0.9, [1, 41, 43]), (0.7, 0.5, [1])],
)
def test_sample_matches_reference(tiny, temperature: float, top_p: float, eos: list[int]) -> None:
    model, _, prompts = tiny
    kw = dict(max_new_tokens=24, temperature=temperature, top_p=top_p)
    out = _run(sample, model, prompts, eos, **kw)
    ref = _run(sample_reference, model, prompts, eos, **kw)
    assert out.completions == ref.completions
    assert out.finished == ref.finished
    for lp, lp_ref, c in zip(out.logprobs, ref.logprobs, out.completions):
        assert lp.dtype == torch.float32 and lp.shape == (len(c),)
        assert torch.allclose(lp, lp_ref, atol=1e-4)
    for c, done in zip(out.completions, out.finished):
        assert done == (c[-1] in eos)
        assert all(t not in eos for t in c[:-1])
        assert done or len(c) == 24
    if len(eos) > 1:  # with many EOS ids some rows stop early, some do not
        assert any(out.finished) and not all(out.finished)
    _check_against_logprobs(model, prompts, out, temperature)


def test_greedy_matches_reference_and_stops(tiny) -> None:
    model, _, prompts = tiny
    free = _run(sample, model, prompts, [1], max_new_tokens=12, temperature=0.0)
    # Make a token that row 1 emits greedily at step 3 an EOS: row 1 must stop right there.
    eos = [free.completions[1][3]]
    out = _run(sample, model, prompts, eos, max_new_tokens=12, temperature=0.0)
    ref = _run(sample_reference, model, prompts, eos, max_new_tokens=12, temperature=0.0)
    assert out.completions == ref.completions and out.finished == ref.finished
    assert out.finished[1] and len(out.completions[1]) <= 4
    assert out.completions[1] == free.completions[1][: len(out.completions[1])]
    for lp, lp_ref in zip(out.logprobs, ref.logprobs):
        assert torch.allclose(lp, lp_ref, atol=1e-4)
    _check_against_logprobs(model, prompts, out, 0.0)


def test_all_finish_early_and_max_new_tokens(tiny) -> None:
    model, _, prompts = tiny
    first = _run(sample, model, prompts, [1], max_new_tokens=1, temperature=0.0)
    assert all(len(c) == 1 for c in first.completions)
    eos = sorted({c[0] for c in first.completions})
    out = _run(sample, model, prompts, eos, max_new_tokens=50, temperature=0.0)
    assert out.finished == [True] * len(prompts)
    assert out.completions == first.completions
    capped = _run(sample, model, prompts, [1], max_new_tokens=5, temperature=1.0)
    assert all(len(c) <= 5 for c in capped.completions)


def test_same_seed_same_samples(tiny) -> None:
    model, _, prompts = tiny
    a = _run(sample, model, prompts, [1], max_new_tokens=10)
    b = _run(sample, model, prompts, [1], max_new_tokens=10)
    assert a.completions == b.completions


def test_padded_gives_ids_mask_and_logprobs(tiny) -> None:
    model, _, prompts = tiny
    out = _run(sample, model, prompts, [1, 40, 41, 42, 43, 44], max_new_tokens=8)
    ids, mask, logp = out.padded(pad_token_id=0)
    lens = [len(c) for c in out.completions]
    assert ids.shape == (len(prompts), max(lens))
    assert mask.sum(1).tolist() == [float(n) for n in lens]
    for i, c in enumerate(out.completions):
        assert ids[i, : len(c)].tolist() == c
        assert torch.equal(logp[i, : len(c)], out.logprobs[i])
        assert (logp[i, len(c) :] == 0).all() and (ids[i, len(c) :] == 0).all()


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.5, 1.0), (1.0, 0.7)])
def test_token_choice_follows_the_distribution(temperature: float, top_p: float) -> None:
    """The inverse-CDF choice draws tokens with softmax(logits / temperature) probabilities,
    renormalized over the top-p set (20000 draws; each frequency within 5 standard errors)."""
    from tandem.model.sampler import _pick, _uniform

    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0, 0.5, -3.0]])
    g = torch.Generator().manual_seed(0)
    n = 20000
    u = _uniform((n,), g, torch.device("cpu"))
    tok, _ = _pick(logits.expand(n, -1), u, temperature, top_p)
    freq = torch.bincount(tok, minlength=6).double() / n
    p = torch.softmax(logits[0].double() / temperature, -1)
    order = p.argsort(descending=True)
    keep = (p[order].cumsum(0) - p[order]) <= top_p  # the top-p set, in probability order
    mask = torch.zeros(6, dtype=torch.bool)
    mask[order[keep]] = True
    want = torch.where(mask, p, torch.zeros_like(p))
    want = want / want.sum()
    se = (want * (1 - want) / n).sqrt().clamp_min(1e-12)
    assert freq[~mask].sum() == 0
    assert ((freq - want).abs() <= 5 * se + 1e-12).all(), (freq, want)


@pytest.mark.parametrize("fn", [sample, sample_reference])
def test_shards_sample_what_the_whole_batch_samples(tiny, fn) -> None:
    """Data-parallel shards (`shard=(offset, total)`) with the same generator seed give each
    row the tokens it gets in one call on the whole batch, whatever the split and however
    early a shard's rows finish."""
    model, _, prompts = tiny
    eos, kw = [1, 41, 43], dict(max_new_tokens=24, temperature=1.0, top_p=0.9)
    rows = prompts * 2  # 8 rows
    whole = _run(fn, model, rows, eos, **kw)
    assert any(whole.finished) and not all(whole.finished)
    for cut in ([0, 4, 8], [0, 1, 8], [0, 3, 5, 8]):
        got = []
        for a, b in zip(cut, cut[1:]):
            got += _run(fn, model, rows[a:b], eos, shard=(a, len(rows)), **kw).completions
        assert got == whole.completions, cut
    with pytest.raises(ValueError, match="exceed"):
        _run(fn, model, rows[:4], eos, shard=(6, 8), **kw)
