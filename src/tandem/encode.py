"""Turn task examples into token ids: the prompt (chat template applied when the model has one)
and a demonstration completion (solution + end-of-turn token)."""

from __future__ import annotations

from tandem.errors import ConfigError
from tandem.tasks.base import Example
from tandem.tasks.chat import render_prompt

# Prior prompts ("Prior Prompt Engineering for Reinforcement Fine-Tuning", arXiv 2505.14157):
# an instruction prepended to every question, in training and evaluation, that asks for a way
# of answering. The paper's five: reasoning (from chain-of-thought), planning (plan-and-solve),
# code-based reasoning (program-of-thought), knowledge recall (generated knowledge) and
# null-example (null-shot: the model writes its own illustrative examples first). The paper
# also asks for XML tags (<think>...</think><answer>...</answer>) and rewards the format; these
# are one-line instructions without tags, so a task's own verifier still applies.
PRIORS: dict[str, str] = {
    "reasoning": "Think step by step before you answer.\n{prompt}",
    "planning": "First make a short plan, then follow it to the answer.\n{prompt}",
    "code": "Write the computation as a short program, then give its result.\n{prompt}",
    "knowledge": "First recall the facts or rules this question needs, then answer.\n{prompt}",
    "null_example": "First write one or two examples of similar questions with their "
    "answers, then answer this one.\n{prompt}",
}


def prior_template(prior: str | None) -> str | None:
    """The template of a prior: a name in `PRIORS`, a custom template with `{prompt}`, or None."""
    if prior is None or prior in PRIORS:
        return None if prior is None else PRIORS[prior]
    if "{prompt}" not in prior:
        raise ConfigError(
            f"config error: task.prior: got {prior!r}; allowed: {', '.join(PRIORS)}, "
            "or a template containing {prompt}"
        )
    return prior


class Encoder:
    """Caches prompt ids per example id; the same text always gives the same ids."""

    def __init__(
        self, tokenizer, system_prompt: str | None = None, prior: str | None = None
    ) -> None:
        self.tok = tokenizer
        self.system = system_prompt
        self.prior = prior_template(prior)
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
            question = ex.prompt if self.prior is None else self.prior.format(prompt=ex.prompt)
            # a row's own system message and earlier turns (task `dataset`) over the run's
            system = ex.meta.get("system") or self.system
            text = render_prompt(self.tok, question, system, ex.meta.get("history"))
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
