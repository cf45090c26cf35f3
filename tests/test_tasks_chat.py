"""Prompt / completion rendering with fake tokenizers (no downloads)."""

from tandem.tasks import render_completion, render_prompt


class PlainTok:
    chat_template = None
    eos_token = "</s>"


class ChatTok:
    chat_template = "{{ messages }}"
    eos_token = "<|im_end|>"

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert add_generation_prompt and not tokenize
        body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return body + "<|im_start|>assistant\n"


def test_render_prompt():
    assert render_prompt(PlainTok(), "23+45=") == "23+45="
    text = render_prompt(ChatTok(), "What is 2 + 2?", system="Be brief.")
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert "system" not in render_prompt(ChatTok(), "hi")


def test_render_completion():
    assert render_completion(ChatTok(), "4") == "4<|im_end|>"
    assert render_completion(ChatTok(), "4<|im_end|>") == "4<|im_end|>"
    tok = PlainTok()
    tok.eos_token = None
    assert render_completion(tok, "68") == "68"


def test_a_rows_own_system_message_and_history_reach_the_prompt(tmp_path):
    """Task `dataset` keeps a chat row's system turn and (multi_turn: last_turn) its earlier
    turns in meta; the encoder renders them through the chat template before the user turn."""
    import json

    from tandem.encode import Encoder
    from tandem.model.tiny import build_tiny_tokenizer
    from tandem.tasks import get_task

    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "1+1?"},
                {"role": "assistant", "content": "2"},
                {"role": "user", "content": "and 2+2?"},
                {"role": "assistant", "content": "4"},
            ]
        },
        {"messages": [{"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = get_task("dataset", {"path": str(path), "multi_turn": "last_turn"})
    exs = {ex.solution: ex for split in ("train", "eval") for ex in task.pools[split]}
    tok = build_tiny_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    enc = Encoder(tok, system_prompt="Run default.")
    text = tok.decode(enc.prompt(exs["4"]))
    assert text == "<system>Be brief.\n<user>1+1?\n<assistant>2\n<user>and 2+2?\n<assistant>"
    assert tok.decode(enc.prompt(exs["6"])) == "<system>Run default.\n<user>3+3?\n<assistant>"
