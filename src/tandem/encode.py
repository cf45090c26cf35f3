"""Turn task examples into token ids: the prompt (chat template applied when the model has one)
and a demonstration completion (solution + end-of-turn token)."""

from __future__ import annotations

from tandem.tasks.base import Example
from tandem.tasks.chat import render_prompt


class Encoder:
    """Caches prompt ids per example id; the same text always gives the same ids."""

    def __init__(self, tokenizer, system_prompt: str | None = None) -> None:
        self.tok = tokenizer
        self.system = system_prompt
        self._cache: dict[str, list[int]] = {}
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token")
        self.eos_id: int = int(tokenizer.eos_token_id)
        self.pad_id: int = int(
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        )

    def prompt(self, ex: Example) -> list[int]:
        key = ex.id + "\x00" + ex.prompt
        ids = self._cache.get(key)
        if ids is None:
            text = render_prompt(self.tok, ex.prompt, self.system)
            ids = self.tok(text, add_special_tokens=False)["input_ids"]
            self._cache[key] = ids
        return ids

    def demo(self, ex: Example) -> list[int]:
        """The demonstration's completion ids, ending with the eos token."""
        if ex.solution is None:
            raise ValueError(f"example {ex.id} has no gold solution to train on")
        return self.text(ex.solution)

    def text(self, completion: str) -> list[int]:
        """A completion's ids, ending with the eos token (a wrong solution, a hinted answer)."""
        return self.tok(completion, add_special_tokens=False)["input_ids"] + [self.eos_id]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)
