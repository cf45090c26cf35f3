"""Evaluation: accuracy (mean verifier reward, greedy decoding) and unbiased pass@k.

pass@k follows Chen et al. 2021 (HumanEval): with n samples of which c are correct,
pass@k = 1 - C(n-c, k) / C(n, k), averaged over prompts. A sample counts as correct when its
reward is >= 0.5 (rewards are in [0, 1]; binary verifiers give 0 or 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from tandem.encode import Encoder
from tandem.model.sampler import keep_packed, sample
from tandem.rewards.safe import score_batch
from tandem.tasks.base import Example, Task


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one prompt with n samples, c of them correct."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def evaluate(
    model,
    encoder: Encoder,
    task: Task,
    examples: list[Example],
    *,
    max_new_tokens: int,
    eos_token_ids: list[int],
    batch_size: int = 64,
    pass_k: list[int] = (),
    pass_samples: int = 8,
    temperature: float = 1.0,
    seed: int = 0,
    ctx: Callable = None,
    prefix: str = "eval",
) -> dict[str, float]:
    """Return `{prefix}/accuracy`, `{prefix}/len_mean` and `{prefix}/pass@k` for each k.

    The weights are packed for the sampler once for the whole evaluation (`keep_packed`).
    """
    if not examples:
        return {}
    model.eval()
    with keep_packed(model):
        out: dict[str, float] = {}
        rewards: list[float] = []
        lengths: list[int] = []
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            with ctx() if ctx else torch.no_grad():
                res = sample(
                    model,
                    [encoder.prompt(ex) for ex in chunk],
                    max_new_tokens=max_new_tokens,
                    temperature=0.0,
                    eos_token_ids=eos_token_ids,
                    pad_token_id=encoder.pad_id,
                    generator=torch.Generator().manual_seed(seed),
                )
            scores, _ = score_batch(task, chunk, [encoder.decode(c) for c in res.completions])
            rewards += [s.reward for s in scores]
            lengths += [len(c) for c in res.completions]
        out[f"{prefix}/accuracy"] = sum(rewards) / len(rewards)
        out[f"{prefix}/len_mean"] = sum(lengths) / len(lengths)

        if pass_k:
            n = max(pass_samples, max(pass_k))
            per_prompt = max(1, batch_size // n)
            totals = {k: 0.0 for k in pass_k}
            for i in range(0, len(examples), per_prompt):
                chunk = examples[i : i + per_prompt]
                rep = [ex for ex in chunk for _ in range(n)]
                with ctx() if ctx else torch.no_grad():
                    res = sample(
                        model,
                        [encoder.prompt(ex) for ex in rep],
                        max_new_tokens=max_new_tokens,
                        temperature=temperature,
                        eos_token_ids=eos_token_ids,
                        pad_token_id=encoder.pad_id,
                        generator=torch.Generator().manual_seed(seed + 1 + i),
                    )
                scores, _ = score_batch(task, rep, [encoder.decode(c) for c in res.completions])
                for j in range(len(chunk)):
                    c = sum(s.reward >= 0.5 for s in scores[j * n : (j + 1) * n])
                    for k in pass_k:
                        totals[k] += pass_at_k(n, c, k)
            for k in pass_k:
                out[f"{prefix}/pass@{k}"] = totals[k] / len(examples)
        return out
