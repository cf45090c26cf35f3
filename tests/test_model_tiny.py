import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tandem.model import build_tiny


def test_tokenizer_round_trip() -> None:
    _, tok = build_tiny()
    for text in ["What is 12 + 3? 15", "  two  spaces\nnew line!", "a<b>{c}~`|\\"]:
        ids = tok.encode(text)
        assert len(ids) == len(text)  # one token per character, no BOS
        assert tok.decode(ids) == text
    assert tok.decode(tok.encode("x") + [tok.eos_token_id], skip_special_tokens=True) == "x"
    assert tok.pad_token_id == 0 and tok.eos_token_id == 1
    assert tok.encode("é") == [tok.unk_token_id]


def test_deterministic_under_seed() -> None:
    a, _ = build_tiny(seed=3)
    b, _ = build_tiny(seed=3)
    c, _ = build_tiny(seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_save_reload(tmp_path) -> None:
    model, tok = build_tiny()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model2 = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True)
    tok2 = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = "What is 12 + 3? 15"
    assert tok2.encode(text) == tok.encode(text)
    assert tok2.decode(tok2.encode(text)) == text
    assert tok2.eos_token_id == tok.eos_token_id and tok2.pad_token_id == tok.pad_token_id
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model2.eval()(ids).logits)
