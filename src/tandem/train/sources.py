"""Experience sources: registered functions that make a step's items, each with its own state.

A method's objective lists its sources by name (`objective.sources`); each is one of the kinds in
`SOURCES`:

============== ========================================================================
rollouts       prompts_per_step prompts x samples_per_prompt samples, scored by the task
demo_in_group  the same, with `demos` of each group's samples replaced by the prompt's gold
               solution, scored like the rollouts (LUFFY)
demos          demos_per_step gold solutions (SFT)
prefix_rollouts  groups where `prefixed` samples continue from a prefix of the gold solution
               whose length follows a schedule (Prefix-RFT)
pairs          preference pairs: `data` (gold vs a wrong solution of the task), `online`
               (best vs worst of the model's own scored samples), `self_play` (gold vs a
               sample of the reference model, SPIN's opponent)
self_verified  the model's own samples that the verifier accepts (RFT); with `rationalize`,
               failed prompts are retried with the answer as a hint (STaR)
buffer         prompts whose whole group failed in another source, kept with their gold
               solution; released `size` at a time once full (ReLIFT)
============== ========================================================================

Every source draws its examples from its own deterministic stream (`stream`: "train" for
prompts, "demos" for examples with a gold solution) whose position, like any other state of the
source (a buffer's contents), is in `state_dict` and so in every checkpoint. A source is drawn
at a step only when a term that trains on it has a nonzero coefficient there, and (with `when`)
when the named controller's value is above 0. Sampling randomness is a pure function of
(seed, step, the source's place in the objective, the call), so a resumed run samples the same.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from pydantic import Field

from tandem.encode import Encoder
from tandem.errors import TandemError
from tandem.experience import Item, Span
from tandem.registry import Registry, Spec
from tandem.tasks.base import Example, Score, Task
from tandem.train.data import ExampleStream


def example_pools(train_pool: list[Example]) -> dict[str, list[Example]]:
    """The streams sources draw from, by name: `train` (every training example) and `demos`
    (those with a gold solution). A stream's order is a function of (seed, its name, epoch)."""
    return {"train": train_pool, "demos": [ex for ex in train_pool if ex.solution is not None]}


@dataclass(frozen=True)
class Sizes:
    """A stage's batch sizes, in their units (from the run config and the stage)."""

    prompts_per_step: int
    samples_per_prompt: int
    demos_per_step: int
    pairs_per_step: int
    max_new_tokens: int
    temperature: float
    top_p: float


@dataclass
class Rollout:
    """What a rollout engine returns for a list of prompts (one row each)."""

    completions: list[list[int]]
    logprobs: list[list[float]]
    finished: list[bool]


@dataclass
class DrawEnv:
    """What a source may use while drawing one step's items."""

    step: int
    sizes: Sizes
    encoder: Encoder
    task: Task
    coefs: dict[str, float]
    items: list[Item]
    """Items drawn by the sources listed before this one, this step."""
    generate: Callable[..., Rollout]
    """generate(prompts, *, max_new_tokens, temperature, call, model="policy") -> Rollout."""
    score: Callable[[list[Example], list[str]], tuple[list[Score], dict[str, int]]]


class SourceSpec(Spec):
    """Settings every source has."""

    stream: str | None = None
    """Its example stream: `train` (prompts) or `demos` (examples with a gold solution);
    default: the kind's."""
    when: str | None = Field(None, json_schema_extra={"ref": "controller"})
    """A controller name: the source is drawn only at steps where its value is above 0."""

    def check(self, sizes: dict[str, Any], earlier: list[str]) -> str | None:
        """A problem with these settings given the stage's sizes and the sources listed before
        this one, or None."""
        return None


SOURCES: Registry[type] = Registry("source")


class Source:
    """Base: a named, stateful maker of items (see the module docstring)."""

    default_stream = "train"
    needs_reference = False
    """True if it samples from the reference model (SPIN's opponent)."""

    def __init__(self, name: str, spec: SourceSpec, pools: dict[str, list[Example]], seed: int):
        self.name, self.spec, self.seed = name, spec, seed
        self.salt = 0  # set by the stage: 1000 x the source's place in the objective
        stream = spec.stream or self.default_stream
        if stream not in pools:
            raise TandemError(
                f"source {name}: unknown stream {stream!r}; allowed: {', '.join(pools)}"
            )
        if not pools[stream]:
            raise TandemError(
                f"source {name} needs examples with a gold solution, but the task has none"
            )
        self.stream = ExampleStream(pools[stream], seed, stream)

    def draw(self, env: DrawEnv) -> tuple[list[Item], dict[str, float]]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"stream": self.stream.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state["stream"])

    # helpers shared by the sampling sources
    def _sample(self, env: DrawEnv, prompts: list[list[int]], call: int = 0, **kw) -> Rollout:
        return env.generate(prompts, call=self.salt + call, **kw)


def _temperature(env: DrawEnv, setting: float | str | None) -> float:
    if setting is None:
        return env.sizes.temperature
    if isinstance(setting, str):
        return float(env.coefs[setting])
    return float(setting)


def _score_metrics(
    rewards: list[float], counts: dict[str, int], out: Rollout, t0: float
) -> dict[str, float]:
    """The standard rollout metrics (docs/METRICS.md)."""
    m: dict[str, float] = {}
    dt = time.perf_counter() - t0
    n_new = sum(len(c) for c in out.completions)
    m["perf/sample_s"] = dt
    m["perf/sample_tokens"] = float(n_new)
    m["perf/sample_tokens_per_s"] = n_new / max(dt, 1e-9)
    r = torch.tensor(rewards)
    m["reward/mean"] = r.mean().item()
    m["reward/std"] = r.std().item() if len(r) > 1 else 0.0
    m["reward/errors"] = float(counts["errors"])
    m["reward/timeouts"] = float(counts["timeouts"])
    lens = torch.tensor([len(c) for c in out.completions], dtype=torch.float32)
    m["rollout/len_mean"] = lens.mean().item()
    m["rollout/finished_frac"] = sum(out.finished) / len(out.finished)
    return m


def _groups_all_equal(items: list[Item]) -> float:
    """Number of groups whose rewards are all equal (zero group-relative advantage)."""
    by: dict[int, list[float]] = {}
    for it in items:
        if it.reward is not None and it.group >= 0:
            by.setdefault(it.group, []).append(it.reward)
    return float(sum(max(v) == min(v) for v in by.values()))


def _shaped(score: Score, wrong_answer_reward: float) -> float:
    """ReFT's partial credit: a verdict "wrong: ..." (an answer was found) gets
    `wrong_answer_reward` instead of 0 (the Score reasons are `tandem.tasks.base.Score`'s)."""
    if wrong_answer_reward and score.reward == 0.0 and score.reason.startswith("wrong"):
        return wrong_answer_reward
    return score.reward


# ----------------------------------------------------------------------------------- rollouts


class RolloutsSpec(SourceSpec):
    """Groups of sampled completions per prompt, scored by the task's verifier."""

    demos: int = Field(0, ge=0)
    """Gold solutions that take the place of samples in each group (LUFFY: 1)."""
    wrong_answer_reward: float = 0.0
    """Reward of a completion with an answer that is wrong (ReFT's partial credit: 0.1)."""
    temperature: float | str | None = Field(None, json_schema_extra={"ref": "controller"})
    """Sampling temperature: a number, a controller name, or null for the run's."""

    def check(self, sizes: dict[str, Any], earlier: list[str]) -> str | None:
        if self.demos >= sizes["samples_per_prompt"]:
            return (
                f"demos ({self.demos}) must be fewer than samples_per_prompt "
                f"({sizes['samples_per_prompt']}): a group needs at least one sample"
            )
        return None


class DemoInGroupSpec(RolloutsSpec):
    """Groups of samples with the prompt's gold solution inside each group (LUFFY)."""

    demos: int = Field(1, ge=1)


@SOURCES.register(
    "demo_in_group", DemoInGroupSpec, "sampled groups with the gold solution inside (LUFFY)"
)
@SOURCES.register("rollouts", RolloutsSpec, "sampled groups, scored by the verifier")
class Rollouts(Source):
    def draw(self, env: DrawEnv) -> tuple[list[Item], dict[str, float]]:
        t0 = time.perf_counter()
        spec, sz = self.spec, env.sizes
        prompts = self.stream.take(sz.prompts_per_step)
        n_roll = sz.samples_per_prompt - spec.demos
        if n_roll < 1:
            raise TandemError(
                f"source {self.name}: samples_per_prompt ({sz.samples_per_prompt}) must exceed "
                f"demos ({spec.demos})"
            )
        exs = [ex for ex in prompts for _ in range(n_roll)]
        ids = [env.encoder.prompt(ex) for ex in exs]
        out = self._sample(
            env,
            ids,
            max_new_tokens=sz.max_new_tokens,
            temperature=_temperature(env, spec.temperature),
        )
        scores, counts = env.score(exs, [env.encoder.decode(c) for c in out.completions])
        rewards = [_shaped(s, spec.wrong_answer_reward) for s in scores]
        m = _score_metrics(rewards, counts, out, t0)
        items = [
            Item.of(
                ids[i],
                c,
                "sampled",
                self.name,
                logp=out.logprobs[i],
                group=i // n_roll,
                reward=rewards[i],
                finished=out.finished[i],
                example=exs[i],
            )
            for i, c in enumerate(out.completions)
        ]
        if spec.demos:
            demo_exs = [ex for ex in prompts for _ in range(spec.demos)]
            demo_scores, _ = env.score(demo_exs, [ex.solution or "" for ex in demo_exs])
            for j, (ex, s) in enumerate(zip(demo_exs, demo_scores)):
                items.append(
                    Item.of(
                        env.encoder.prompt(ex),
                        env.encoder.demo(ex),
                        "demo",
                        self.name,
                        group=j // spec.demos,
                        reward=_shaped(s, spec.wrong_answer_reward),
                        example=ex,
                    )
                )
            m["reward/demo_mean"] = sum(s.reward for s in demo_scores) / len(demo_scores)
        m["rollout/groups_all_equal"] = _groups_all_equal(items)
        return items, m


# -------------------------------------------------------------------------------------- demos


class DemosSpec(SourceSpec):
    """Gold solutions of the task (SFT data)."""


@SOURCES.register("demos", DemosSpec, "gold solutions (SFT)")
class Demos(Source):
    default_stream = "demos"

    def draw(self, env: DrawEnv) -> tuple[list[Item], dict[str, float]]:
        exs = self.stream.take(env.sizes.demos_per_step)
        items = [
            Item.of(env.encoder.prompt(ex), env.encoder.demo(ex), "demo", self.name, example=ex)
            for ex in exs
        ]
        return items, {}


# ---------------------------------------------------------------------------- prefix rollouts


class PrefixRolloutsSpec(SourceSpec):
    """Groups where some samples continue from a prefix of the gold solution (Prefix-RFT)."""

    prefixed: int = Field(1, ge=1)
    """Samples of each group that start from a demonstration prefix (the rest: plain)."""
    ratio_low: float | str = Field(0.05, json_schema_extra={"ref": "controller"})
    """Lower bound of the prefix ratio: a number or a controller name (the paper: cosine
    0.95 -> 0.05)."""
    ratio_high: float | str = Field(0.95, json_schema_extra={"ref": "controller"})
    beta_a: float = Field(1.0, gt=0.0)
    beta_b: float = Field(1.0, gt=0.0)
    """ratio = low + (high − low)·Beta(a, b); a = b = 1 is uniform (the code's default)."""
    min_prefix_len: int = Field(1, ge=1)
    temperature: float | str | None = Field(None, json_schema_extra={"ref": "controller"})

    def check(self, sizes: dict[str, Any], earlier: list[str]) -> str | None:
        if self.prefixed >= sizes["samples_per_prompt"]:
            return (
                f"prefixed ({self.prefixed}) must be fewer than samples_per_prompt "
                f"({sizes['samples_per_prompt']}): a group needs on-policy samples"
            )
        return None


@SOURCES.register(
    "prefix_rollouts", PrefixRolloutsSpec, "groups with demo-prefix continuations (Prefix-RFT)"
)
class PrefixRollouts(Source):
    """Per prompt, G = samples_per_prompt samples: G − `prefixed` plain ones and `prefixed`
    that continue from the first ⌊ratio·|demo|⌋ tokens of the gold solution (at least
    `min_prefix_len`, at most |demo| − 1, so the model always writes the end). Prefix and
    continuation together are at most max_new_tokens long and are scored as one response. As in
    ZeroYuHuang/prefix_rft `rl_dataset.py::_get_prefix` (5f5d2a1): the cut is in tokens, a
    fraction of the demonstration's tokens, the ratio drawn per prefixed sample."""

    default_stream = "demos"

    def draw(self, env: DrawEnv) -> tuple[list[Item], dict[str, float]]:
        t0 = time.perf_counter()
        spec, sz = self.spec, env.sizes
        G, P = sz.samples_per_prompt, spec.prefixed
        if P >= G:
            raise TandemError(
                f"source {self.name}: prefixed ({P}) must be < samples_per_prompt ({G})"
            )
        low, high = _temperature(env, spec.ratio_low), _temperature(env, spec.ratio_high)
        low, high = min(low, high), max(low, high)
        rng = random.Random(f"{self.seed}:{env.step}:{self.name}:prefix")
        prompts = self.stream.take(sz.prompts_per_step)
        exs, ids, prefixes, ratios = [], [], [], []
        for ex in prompts:
            demo = env.encoder.demo(ex)
            for j in range(G):
                p_ids = env.encoder.prompt(ex)
                pre: list[int] = []
                if j >= G - P:
                    u = rng.betavariate(spec.beta_a, spec.beta_b)
                    ratio = low + (high - low) * u
                    n = min(max(int(ratio * len(demo)), spec.min_prefix_len), len(demo) - 1)
                    n = min(n, sz.max_new_tokens - 1)
                    pre = demo[: max(n, 0)]
                    ratios.append(ratio)
                exs.append(ex)
                ids.append(p_ids + pre)
                prefixes.append(pre)
        out = self._sample(
            env,
            ids,
            max_new_tokens=sz.max_new_tokens,
            temperature=_temperature(env, spec.temperature),
        )
        comps, logps, fins = [], [], []
        for pre, c, lp, fin in zip(prefixes, out.completions, out.logprobs, out.finished):
            budget = sz.max_new_tokens - len(pre)
            if len(c) > budget:  # prefix + continuation stay within max_new_tokens
                c, lp, fin = c[:budget], lp[:budget], False
            comps.append(c)
            logps.append(list(lp))
            fins.append(fin)
        texts = [env.encoder.decode(pre + c) for pre, c in zip(prefixes, comps)]
        scores, counts = env.score(exs, texts)
        rewards = [s.reward for s in scores]
        m = _score_metrics(rewards, counts, Rollout(comps, logps, fins), t0)
        items = []
        for i, (ex, pre, c) in enumerate(zip(exs, prefixes, comps)):
            spans = [Span(env.encoder.prompt(ex), "prompt")]
            if pre:
                spans.append(Span(list(pre), "prefix"))
            spans.append(Span(c, "sampled", logps[i]))
            items.append(
                Item(
                    spans, self.name, group=i // G, reward=rewards[i], finished=fins[i], example=ex
                )
            )
        lens = [len(p) for p in prefixes if p]
        m["prefix/len_mean"] = sum(lens) / max(len(lens), 1)
        m["prefix/ratio_mean"] = sum(ratios) / max(len(ratios), 1)
        m["prefix/ratio_low"] = low
        m["prefix/reward_mean"] = _mean([r for r, p in zip(rewards, prefixes) if p])
        m["rollout/groups_all_equal"] = _groups_all_equal(items)
        return items, m


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


# -------------------------------------------------------------------------------------- pairs


class PairsSpec(SourceSpec):
    """Preference pairs (chosen, rejected) for DPO, IPO, SimPO, ORPO and SPIN."""

    mode: Literal["data", "online", "self_play"] = "data"
    """data: gold solution vs one of the task's wrong solutions; online: the best vs the worst
    of samples_per_prompt own samples, ranked by the verifier (groups with all-equal rewards
    give no pair); self_play: gold solution vs a sample of the reference model (SPIN)."""


@SOURCES.register("pairs", PairsSpec, "preference pairs: data, online or self_play (SPIN)")
class Pairs(Source):
    default_stream = "demos"

    def __init__(self, name, spec, pools, seed):
        if spec.mode == "online" and spec.stream is None:
            spec = spec.model_copy(update={"stream": "train"})
        super().__init__(name, spec, pools, seed)
        self.needs_reference = spec.mode == "self_play"
        if spec.mode == "data" and not any(ex.wrong for ex in self.stream.pool):
            raise TandemError(
                f"source {name}: pairs mode 'data' needs wrong solutions, and the task has none; "
                "use mode 'online' (ranked own samples) or 'self_play'"
            )

    def draw(self, env: DrawEnv) -> tuple[list[Item], dict[str, float]]:
        mode = self.spec.mode
        if mode == "online":
            return self._online(env)
        sz, enc = env.sizes, env.encoder
        exs = self.stream.take(sz.pairs_per_step)
        if mode == "data":
            exs = [ex for ex in exs if ex.wrong]
            rng = random.Random(f"{self.seed}:{env.step}:{self.name}")
            rejected = [enc.text(rng.choice(ex.wrong)) for ex in exs]
            logps: list[list[float] | None] = [None] * len(exs)
            role, m = "demo", {}
        else:  # self_play: the reference model (the previous iterate) writes the rejected side
            t0 = time.perf_counter()
            out = self._sample(
                env,
                [enc.prompt(ex) for ex in exs],
                max_new_tokens=sz.max_new_tokens,
                temperature=sz.temperature,
                model="reference",
            )
            rejected, logps, role = out.completions, [None] * len(exs), "demo"
            scores, counts = env.score(exs, [enc.decode(c) for c in rejected])
            m = _score_metrics([s.reward for s in scores], counts, out, t0)
            m = {
                ("opponent/" + k.split("/", 1)[1]) if k.startswith("reward/") else k: v
                for k, v in m.items()
            }
        items = []
        for i, (ex, rej) in enumerate(zip(exs, rejected)):
            p = enc.prompt(ex)
            items.append(
                Item.of(p, enc.demo(ex), "demo", self.name, pair=i, chosen=True, example=ex)
            )
            items.append(
                Item.of(p, rej, role, self.name, logp=logps[i], pair=i, chosen=False, example=ex)
            )
        m["pairs/count"] = float(len(exs))
        return items, m

    def _online(self, env: DrawEnv) -> tuple[list[Item], dict[str, float]]:
        t0 = time.perf_counter()
        sz, enc = env.sizes, env.encoder
        prompts = self.stream.take(sz.prompts_per_step)
        G = sz.samples_per_prompt
        exs = [ex for ex in prompts for _ in range(G)]
        ids = [enc.prompt(ex) for ex in exs]
        out = self._sample(env, ids, max_new_tokens=sz.max_new_tokens, temperature=sz.temperature)
        scores, counts = env.score(exs, [enc.decode(c) for c in out.completions])
        rewards = [s.reward for s in scores]
        m = _score_metrics(rewards, counts, out, t0)
        items, n = [], 0
        for g in range(len(prompts)):
            rows = list(range(g * G, (g + 1) * G))
            best = max(rows, key=lambda i: rewards[i])
            worst = min(rows, key=lambda i: rewards[i])
            if rewards[best] == rewards[worst]:
                continue
            for i, chosen in ((best, True), (worst, False)):
                items.append(
                    Item.of(
                        ids[i],
                        out.completions[i],
                        "sampled",
                        self.name,
                        logp=out.logprobs[i],
                        pair=n,
                        chosen=chosen,
                        reward=None,
                        example=exs[i],
                    )
                )
            n += 1
        m["pairs/count"] = float(n)
        return items, m


# ------------------------------------------------------------------------------ self-verified


class SelfVerifiedSpec(SourceSpec):
    """The model's own samples that pass the verifier, as SFT data (RFT; STaR)."""

    min_reward: float = 1.0
    """A sample is kept when its reward is at least this."""
    distinct: bool = True
    """Keep each distinct completion once per prompt (RFT keeps distinct reasoning paths)."""
    rationalize: bool = False
    """STaR: prompts with no kept sample are sampled again with the answer as a hint; a hinted
    solution that verifies is kept, trained with the original prompt (no hint)."""
    hint: str = "{prompt} (The answer is {answer}.)"
    """The hinted prompt; `{prompt}` and `{answer}` are the example's."""


@SOURCES.register("self_verified", SelfVerifiedSpec, "own samples the verifier accepts (RFT, STaR)")
class SelfVerified(Source):
    def draw(self, env: DrawEnv) -> tuple[list[Item], dict[str, float]]:
        t0 = time.perf_counter()
        spec, sz, enc = self.spec, env.sizes, env.encoder
        prompts = self.stream.take(sz.prompts_per_step)
        G = sz.samples_per_prompt
        exs = [ex for ex in prompts for _ in range(G)]
        out = self._sample(
            env,
            [enc.prompt(ex) for ex in exs],
            max_new_tokens=sz.max_new_tokens,
            temperature=sz.temperature,
        )
        scores, counts = env.score(exs, [enc.decode(c) for c in out.completions])
        m = _score_metrics([s.reward for s in scores], counts, out, t0)
        items: list[Item] = []
        solved: set[int] = set()
        self._keep(items, solved, prompts, exs, out, scores, G, enc)
        m["self/kept"] = float(len(items))
        if spec.rationalize:
            failed = [g for g in range(len(prompts)) if g not in solved]
            hinted = [
                replace(
                    prompts[g],
                    prompt=spec.hint.format(prompt=prompts[g].prompt, answer=prompts[g].answer),
                )
                for g in failed
            ]
            n0 = len(items)
            if hinted:
                hexs = [ex for ex in hinted for _ in range(G)]
                hout = self._sample(
                    env,
                    [enc.prompt(ex) for ex in hexs],
                    call=1,
                    max_new_tokens=sz.max_new_tokens,
                    temperature=sz.temperature,
                )
                orig = [prompts[g] for g in failed for _ in range(G)]
                hscores, _ = env.score(orig, [enc.decode(c) for c in hout.completions])
                self._keep(items, set(), [prompts[g] for g in failed], orig, hout, hscores, G, enc)
            m["self/rationalized"] = float(len(items) - n0)
            m["self/failed_prompts"] = float(len(failed))
        return items, m

    def _keep(self, items, solved, prompts, exs, out, scores, G, enc) -> None:
        seen: set[tuple] = set()
        for i, (ex, c, s) in enumerate(zip(exs, out.completions, scores)):
            if s.reward < self.spec.min_reward:
                continue
            key = (i // G, tuple(c))
            if self.spec.distinct and key in seen:
                continue
            seen.add(key)
            solved.add(i // G)
            # Trained as the policy's own text, with the original prompt; no behaviour log-probs
            # when it was sampled under a hinted prompt.
            items.append(Item.of(enc.prompt(ex), c, "sampled", self.name, example=ex))


# ------------------------------------------------------------------------------------- buffer


class BufferSpec(SourceSpec):
    """A buffer of prompts that failed, trained on with their gold solutions (ReLIFT)."""

    watch: str = "rollouts"
    """The source whose groups it watches (listed before the buffer)."""
    fail_reward: float = 0.0
    """A group fails when every reward in it is at most this."""
    size: int = Field(8, ge=1)
    """Items released (and removed) at once, when the buffer holds at least this many."""

    def check(self, sizes: dict[str, Any], earlier: list[str]) -> str | None:
        if self.watch not in earlier:
            return f"watch: {self.watch!r} must be a source listed before the buffer: {earlier}"
        return None


@SOURCES.register(
    "buffer", BufferSpec, "failed prompts with gold solutions, released when full (ReLIFT)"
)
class Buffer(Source):
    """ReLIFT's buffer (TheRoadQaQ/ReLIFT `relift/trainer.py` at eb95454): after each rollout,
    every prompt whose whole group failed is pushed once with its gold solution (newest first);
    when the buffer holds at least `size` entries the newest `size` are released as
    demonstration items and removed, the rest stay. Its contents are in every checkpoint.
    Deviation: prompts without a gold solution are not pushed."""

    default_stream = "demos"

    def __init__(self, name, spec, pools, seed):
        super().__init__(name, spec, pools, seed)
        self.entries: list[tuple[list[int], list[int]]] = []  # newest first
        self.released = 0

    def draw(self, env: DrawEnv) -> tuple[list[Item], dict[str, float]]:
        spec = self.spec
        groups: dict[int, list[Item]] = {}
        for it in env.items:
            if it.source == spec.watch and it.group >= 0 and it.reward is not None:
                groups.setdefault(it.group, []).append(it)
        pushed = 0
        for members in groups.values():
            ex = members[0].example
            if ex is None or ex.solution is None:
                continue
            if all(it.reward <= spec.fail_reward for it in members):
                self.entries.insert(0, (env.encoder.prompt(ex), env.encoder.demo(ex)))
                pushed += 1
        items: list[Item] = []
        if len(self.entries) >= spec.size:
            take, self.entries = self.entries[: spec.size], self.entries[spec.size :]
            items = [Item.of(p, d, "demo", self.name) for p, d in take]
            self.released += 1
        m = {
            "buffer/pushed": float(pushed),
            "buffer/size": float(len(self.entries)),
            "buffer/released": float(len(items)),
            "buffer/sft_steps": float(self.released),
        }
        return items, m

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "entries": self.entries, "released": self.released}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.entries = [(list(p), list(d)) for p, d in state["entries"]]
        self.released = int(state["released"])


__all__ = ["SOURCES", "DrawEnv", "Rollout", "Sizes", "Source", "SourceSpec", "example_pools"]
