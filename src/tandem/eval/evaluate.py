"""Evaluation: accuracy (greedy decoding), unbiased pass@k and maj@k, mean completion length.

For each prompt, accuracy is the verifier's reward of one greedy completion (rewards are in
[0, 1]; binary verifiers give 0 or 1), averaged over prompts; ``len_mean`` is the mean length
of those greedy completions in tokens.

pass@k and maj@k share one set of n sampled completions per prompt (n = max(pass_samples, the
largest k asked for), at `temperature`); a sample counts as correct when its reward is >= 0.5.

pass@k follows Chen et al. 2021 (HumanEval, arXiv 2107.03374): with n samples of which c are
correct, pass@k = 1 - C(n-c, k) / C(n, k), the chance that a uniformly random k-subset of the n
samples holds a correct one; averaged over prompts.

maj@k (majority voting, "maj1@k" in Lewkowycz et al. 2022, Minerva, arXiv 2206.14858; the
self-consistency of Wang et al. 2022, arXiv 2203.11171): draw k samples, take the most frequent
final answer, score 1 if it is correct. Each sample votes with `answer_key(example, completion)`
when the task defines it, else `tandem.tasks.answers.vote_answer` (the last ``\\boxed{}`` /
``<answer>`` content or the last number, normalized; None for no answer: such a sample is drawn
but never wins). A tie between the top answers gives each of them an equal chance (credit =
the fraction of the tied answers that are correct), and a group of samples that share an answer
is as correct as the mean of its members (one verdict per answer, if the verifier agrees with
the vote key). Like pass@k, the estimate is unbiased over n >= k samples: `maj_at_k` returns the
exact mean of majority-vote correctness over all C(n, k) k-subsets of the n samples (computed by
counting, not by enumerating them), which has lower variance than voting over the first k.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from tandem.encode import Encoder
from tandem.model.sampler import keep_packed, sample
from tandem.rewards.safe import score_batch
from tandem.tasks.answers import vote_answer
from tandem.tasks.base import Example, Task

if TYPE_CHECKING:
    from tandem.rewards.pool import RewardPool


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one prompt with n samples, c of them correct."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def maj_at_k(answers: Sequence[str | None], correct: Sequence[float], k: int) -> float:
    """Unbiased maj@k for one prompt: the mean over all k-subsets of its n samples of the
    majority answer's correctness (ties split evenly; None answers never win).

    answers[i] is sample i's vote key, correct[i] its correctness (0 or 1; a float is allowed).
    Samples with equal keys form a group of size m_g and correctness q_g (mean over the group).
    For a group g to be among the winners with v votes, every other group must draw <= v
    votes; with t other groups at exactly v, g wins with chance 1/(t+1). So

        maj@k = sum_g q_g sum_v C(m_g, v) sum_t W_g,v(k - v, t) / (t + 1) / C(n, k)

    where W_g,v(s, t) counts the ways to draw s samples from the other groups (and from the
    abstaining None samples, which have no cap) with each group <= v and t groups at v,
    computed group by group; only groups with q_g > 0 need it. Cost: about G k^3 per
    correct group, for G groups.
    """
    n = len(answers)
    if len(correct) != n:
        raise ValueError(f"{n} answers but {len(correct)} correctness values")
    if not 1 <= k <= n:
        raise ValueError(f"maj@{k} needs at least {k} samples, got {n}")
    groups: dict[str, list[float]] = {}
    for a, c in zip(answers, correct):
        if a is not None:
            groups.setdefault(a, []).append(float(c))
    abstain = sum(a is None for a in answers)
    sizes = [len(v) for v in groups.values()]
    quality = [sum(v) / len(v) for v in groups.values()]
    total = 0.0
    for g, (m_g, q_g) in enumerate(zip(sizes, quality)):
        if q_g == 0.0:
            continue
        others = [m for h, m in enumerate(sizes) if h != g]
        for v in range(1, min(m_g, k) + 1):
            rest = k - v  # draws left for the other groups and the abstentions
            t_max = min(len(others), rest // v)  # each tied group takes v of them
            # ways[s][t]: draws of s samples from the groups seen so far, each <= v, t at v
            ways = [[0] * (t_max + 1) for _ in range(rest + 1)]
            ways[0][0] = 1
            for m_h in others:
                new = [[0] * (t_max + 1) for _ in range(rest + 1)]
                for s, row in enumerate(ways):
                    for t, w in enumerate(row):
                        if not w:
                            continue
                        for x in range(0, min(m_h, v, rest - s) + 1):
                            if x == v and t == t_max:
                                continue  # impossible: more ties than draws allow
                            new[s + x][t + (x == v)] += w * math.comb(m_h, x)
                ways = new
            # abstentions: any number of them, uncapped
            tied = [0] * (t_max + 1)
            for s, row in enumerate(ways):
                for t, w in enumerate(row):
                    tied[t] += w * math.comb(abstain, k - v - s)
            wins = sum(w / (t + 1) for t, w in enumerate(tied))
            total += q_g * math.comb(m_g, v) * wins
    return total / math.comb(n, k)


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
    maj_k: list[int] = (),
    pool: RewardPool | None = None,
    dist: Any = None,
) -> dict[str, float]:
    """Return `{prefix}/accuracy`, `{prefix}/len_mean`, `{prefix}/pass@k` for each k in
    `pass_k` and `{prefix}/maj@k` for each k in `maj_k` (see module docstring).

    The weights are packed for the sampler once for the whole evaluation (`keep_packed`).
    Completions are scored by `pool` (default: the active one, `tandem.rewards.safe`); a run
    with `rewards.checks` passes one that scores with the task's verifier, so that accuracy
    keeps meaning "correct".

    With `dist` (a `tandem.train.dist.Dist` of several ranks) the chunks are dealt to the
    ranks and their results gathered: every rank returns what one process computes.
    """
    if not examples:
        return {}
    model.eval()
    with keep_packed(model):
        out: dict[str, float] = {}

        def greedy(i: int) -> tuple[list[float], list[int]]:
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
            scores, _ = score_batch(
                task, chunk, [encoder.decode(c) for c in res.completions], pool=pool
            )
            return [s.reward for s in scores], [len(c) for c in res.completions]

        rewards: list[float] = []
        lengths: list[int] = []
        for chunk_rewards, chunk_lengths in _dealt(
            range(0, len(examples), batch_size), greedy, dist
        ):
            rewards += chunk_rewards
            lengths += chunk_lengths
        out[f"{prefix}/accuracy"] = sum(rewards) / len(rewards)
        out[f"{prefix}/len_mean"] = sum(lengths) / len(lengths)

        if pass_k or maj_k:
            n = max(pass_samples, *pass_k, *maj_k)
            per_prompt = max(1, batch_size // n)
            key_of = getattr(task, "answer_key", None)

            def sampled(i: int) -> list[tuple[list[float], list[float]]]:
                """Each prompt's pass@k and maj@k terms, of the chunk at i."""
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
                texts = [encoder.decode(c) for c in res.completions]
                scores, _ = score_batch(task, rep, texts, pool=pool)
                terms = []
                for j, ex in enumerate(chunk):
                    ok = [float(s.reward >= 0.5) for s in scores[j * n : (j + 1) * n]]
                    c = int(sum(ok))
                    maj: list[float] = []
                    if maj_k:
                        mine = texts[j * n : (j + 1) * n]
                        keys = [key_of(ex, t) if key_of else vote_answer(t) for t in mine]
                        maj = [maj_at_k(keys, ok, k) for k in maj_k]
                    terms.append(([pass_at_k(n, c, k) for k in pass_k], maj))
                return terms

            pass_totals = {k: 0.0 for k in pass_k}
            maj_totals = {k: 0.0 for k in maj_k}
            for terms in _dealt(range(0, len(examples), per_prompt), sampled, dist):
                for p_terms, m_terms in terms:
                    for k, v in zip(pass_k, p_terms):
                        pass_totals[k] += v
                    for k, v in zip(maj_k, m_terms):
                        maj_totals[k] += v
            for k in pass_k:
                out[f"{prefix}/pass@{k}"] = pass_totals[k] / len(examples)
            for k in maj_k:
                out[f"{prefix}/maj@{k}"] = maj_totals[k] / len(examples)
        return out


def _dealt(starts: range, fn: Callable, dist: Any) -> list:
    """fn(i) for every chunk start i, in order; with several ranks, chunk c runs on rank
    c mod world and the results are gathered."""
    if dist is None or not dist.on:
        return [fn(i) for i in starts]
    mine = {c: fn(i) for c, i in enumerate(starts) if c % dist.world == dist.rank}
    got: dict[int, Any] = {}
    for part in dist.gather(mine, "the evaluation gather"):
        got.update(part)
    return [got[c] for c in range(len(starts))]
