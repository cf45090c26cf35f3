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
