"""Turn task text into model text: chat-template the prompt, end a demonstration with EOS."""

from __future__ import annotations

from typing import Any


def render_prompt(
    tokenizer: Any, prompt: str, system: str | None = None, history: list[dict] | None = None
) -> str:
    """The text the model is conditioned on for `prompt`.

    With a chat template (``tokenizer.chat_template`` set): the rendered [system,] earlier turns
    (`history`: ``{"role", "content"}`` messages of a multi-turn row), then the user turn plus
    the assistant generation prompt. Without one (base / tiny models): `prompt` unchanged
    (`system` and `history` are then ignored: such models have no notion of turns).
    """
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}] if system else []
        messages += [{"role": m["role"], "content": m["content"]} for m in history or ()]
        messages.append({"role": "user", "content": prompt})
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return prompt


def render_completion(tokenizer: Any, text: str) -> str:
    """The target text of a demonstration: `text` followed by the end-of-turn (EOS) token.

    Chat models are trained to stop with their EOS token (for SmolLM2/Qwen instruct models this
    is the end-of-turn token ``<|im_end|>``). Nothing is appended if the tokenizer has no EOS
    token or `text` already ends with it.
    """
    eos = getattr(tokenizer, "eos_token", None)
    if not eos or text.endswith(eos):
        return text
    return text + eos
