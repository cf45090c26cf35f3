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

import difflib
import hashlib
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from tandem.encode import Encoder
from tandem.errors import TandemError
from tandem.experience import Item, Span
from tandem.registry import Registry, Spec
from tandem.rewards.compose import part_means
from tandem.rewards.pool import dropped as _dropped
from tandem.tasks.base import Example, Score, Task
from tandem.train import pruning as _pruning  # noqa: F401  (registers uds, donod)
from tandem.train.data import ExampleStream
from tandem.train.selection import SELECTORS, build_selector


def example_pools(train_pool: list[Example]) -> dict[str, list[Example]]:
    """The streams sources draw from, by name: `train` (every training example) and `demos`
    (those with a gold solution); for methods that need data the update never trains on
    (AMFT's validation gradient): `held_out` (every demonstration whose id hashes to 0 mod 8,
    about 1/8), `fit` and `fit_demos` (`train` and `demos` without them). A stream's order
    is a function of (seed, its name, epoch)."""
    demos = [ex for ex in train_pool if ex.solution is not None]
    held = {ex.id for ex in demos if _stable_hash(ex.id) % 8 == 0}
    return {
        "train": train_pool,
        "demos": demos,
        "held_out": [ex for ex in demos if ex.id in held],
        "fit": [ex for ex in train_pool if ex.id not in held],
        "fit_demos": [ex for ex in demos if ex.id not in held],
    }


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:4], "big")


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
    inspect: Callable[[list[Item]], list[Any]] | None = None
    """inspect(items) -> per item, the policy's view of its N trained tokens, no grad
    (`tandem.train.step.Inspection`: logits, last hidden states, target ids, the LM head's
    squared norm): for selectors that score examples with the model (UDS, DONOD)."""


class SourceSpec(Spec):
    """Settings every source has."""

    stream: str | None = None
    """Its example stream: `train` (prompts) or `demos` (examples with a gold solution);
    default: the kind's."""
    when: str | None = Field(None, json_schema_extra={"ref": "controller"})
    """A controller name: the source is drawn only at steps where its value is above 0."""
    condition: str | None = None
    """A tag put before the question of each of this source's items for training (C-RLFT's
    class condition, e.g. "Expert: "; a sampling source samples from the plain question);
    evaluate with the best class's tag (`eval.condition`)."""
    weight: float = Field(1.0, ge=0.0)
    """Multiplies the loss weight of every item of this source (C-RLFT's class weight)."""
    select: SELECTORS.union() | None = None  # type: ignore[valid-type]
    """A prompt selector (`tandem.train.selection`): instance filtering or a curriculum over
    this source's examples; null: the stream's shuffled order."""

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
                f"source {name}: its stream {stream!r} is empty (demos, fit_demos and held_out "
                "need examples with a gold solution)"
            )
        self.stream = ExampleStream(pools[stream], seed, stream)
        self.selector = build_selector(spec.select, pools[stream], seed)
        self.selected: dict[str, float] = {}

    def draw(self, env: DrawEnv) -> tuple[list[Item], dict[str, float]]:
        """The kind's own items and metrics (each kind implements it)."""
        raise NotImplementedError

    def make(self, env: DrawEnv) -> tuple[list[Item], dict[str, float]]:
        """The step's items: `draw`, then the settings every source has: its `condition` on
        the training prompts, its `weight` on every item (logged as `weight/<source>`)."""
        items, m = self.draw(env)
        if self.spec.condition:
            for it in items:
                if it.example is not None and it.spans and it.spans[0].role == "prompt":
                    ex = replace(it.example, prompt=self.spec.condition + it.example.prompt)
                    it.spans[0] = Span(env.encoder.prompt(ex), "prompt")
        if self.spec.weight != 1.0:
            for it in items:
                it.weight *= self.spec.weight
            if items:
                m = {**m, f"weight/{self.name}": sum(it.weight for it in items) / len(items)}
        return items, m

    def take(self, n: int, step: int, env: DrawEnv | None = None) -> list[Example]:
        """The step's next n examples, through the selector (its metrics go to `selected`);
        `env` lets a selector score candidates with the model."""
        exs, self.selected = self.selector.take(self.stream, n, step, env=env)
        return exs

    def observe(self, exs: list[Example], rewards: list[float], step: int) -> None:
        """Let the selector see the rewards of these samples (one example per sample)."""
        self.selector.observe(exs, rewards, step)

    def state_dict(self) -> dict[str, Any]:
        out = {"stream": self.stream.state_dict()}
        if self.spec.select is not None:
            out["select"] = self.selector.state_dict()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state["stream"])
        if self.spec.select is not None:
            self.selector.load_state_dict(state["select"])

    # helpers shared by the sampling sources
    def _sample(self, env: DrawEnv, prompts: list[list[int]], call: int = 0, **kw) -> Rollout:
        return env.generate(prompts, call=self.salt + call, **kw)

    def _continue(
        self,
        env: DrawEnv,
        exs: list[Example],
        prefixes: list[list[int]],
        temperature: float | str | None,
        group_size: int,
        t0: float,
    ) -> tuple[list[Item], dict[str, float], list[float]]:
        """Sample each example's continuation after its prefix (a demonstration prefix or a
        hint, possibly empty), prefix + continuation within max_new_tokens; score prefix +
        continuation; items of spans prompt, prefix (role `prefix`), sampled, in groups of
        `group_size`. Returns (items, the standard rollout metrics, rewards)."""
        sz, enc = env.sizes, env.encoder
        out = self._sample(
            env,
            [enc.prompt(ex) + pre for ex, pre in zip(exs, prefixes)],
            max_new_tokens=sz.max_new_tokens,
            temperature=_temperature(env, temperature),
        )
        comps, logps, fins = [], [], []
        for pre, c, lp, fin in zip(prefixes, out.completions, out.logprobs, out.finished):
            budget = sz.max_new_tokens - len(pre)
            if len(c) > budget:  # prefix + continuation stay within max_new_tokens
                c, lp, fin = c[:budget], lp[:budget], False
            comps.append(c)
            logps.append(list(lp))
            fins.append(fin)
        scores, counts = env.score(exs, [enc.decode(pre + c) for pre, c in zip(prefixes, comps)])
        counts = {**counts, "dropped": sum(map(_dropped, scores))}
        self.observe(exs, [s.reward for s in scores], env.step)
        rewards = [s.reward for s in scores]
        m = _score_metrics(rewards, counts, Rollout(comps, logps, fins), t0, scores)
        m |= self.selected
        items = []
        for i, (ex, pre, c) in enumerate(zip(exs, prefixes, comps)):
            spans = [Span(enc.prompt(ex), "prompt")]
            if pre:
                spans.append(Span(list(pre), "prefix"))
            spans.append(Span(c, "sampled", logps[i]))
            items.append(
                Item(
                    spans,
                    self.name,
                    group=i // group_size,
                    reward=rewards[i],
                    finished=fins[i],
                    example=ex,
                )
            )
        items = [it for it, s in zip(items, scores) if not _dropped(s)]  # on_error: drop
        return items, m, rewards


def conditioned(exs: list[Example], condition: str | None) -> list[Example]:
    """The examples with `condition` put before each question (None: unchanged)."""
    if not condition:
        return exs
    return [replace(ex, prompt=condition + ex.prompt) for ex in exs]


def _temperature(env: DrawEnv, setting: float | str | None) -> float:
    if setting is None:
        return env.sizes.temperature
    if isinstance(setting, str):
        return float(env.coefs[setting])
    return float(setting)


def _score_metrics(
    rewards: list[float],
    counts: dict[str, int],
    out: Rollout,
    t0: float,
    scores: Sequence[Score] = (),
) -> dict[str, float]:
    """The standard rollout metrics (docs/METRICS.md); with `scores`, also the mean of each
    reward check of `rewards.checks` as reward/<name> (`tandem.rewards.compose.part_means`)."""
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
    m |= part_means(scores)
    for key in ("crashes", "restarts", "dropped"):  # reward workers (`tandem.rewards.pool`)
        m[f"reward/{key}"] = float(counts.get(key, 0))
    lens = torch.tensor([len(c) for c in out.completions], dtype=torch.float32)
    m["rollout/len_mean"] = lens.mean().item()
    lps = [x for lp in out.logprobs for x in lp]
    if lps:  # −log p of the sampled tokens under the (temperature-scaled) sampling distribution
        m["rollout/entropy"] = -sum(lps) / len(lps)
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
    demo_when_solved: Literal["keep", "drop"] = "keep"
    """With `demos`: drop = a group where an own sample already succeeds (reward ≥ 1) gets no
    demonstration, so the gold solution teaches only where the model fails (ViSurf)."""
    wrong_answer_reward: float = 0.0
    """Reward of a completion with an answer that is wrong (ReFT's partial credit: 0.1)."""
    temperature: float | str | None = Field(None, json_schema_extra={"ref": "controller"})
    """Sampling temperature: a number, a controller name, or null for the run's."""
    informative_groups: Annotated[int, Field(ge=1)] | Literal["all"] | None = None
    """DAPO's dynamic sampling: keep only the groups whose rewards differ, drawing
    prompts_per_step more prompts at a time until this many are held (then truncated to it) or
    `max_draws` draws were made (`rollout/draw_cap_hit` is then 1); `all` = prompts_per_step.
    Null: one draw, every group kept."""
    max_draws: int = Field(4, ge=1)
    """The cap on draws per step with `informative_groups` (DAPO's max_num_gen_batches)."""
    overlong_buffer: float = Field(0.0, ge=0.0, lt=1.0)
    """DAPO's overlong reward shaping: the soft-penalty zone as a fraction of max_new_tokens
    (DAPO 4096 of 20480 = 0.2); 0 is off."""
    overlong_penalty: float = Field(1.0, ge=0.0)
    """The penalty at max_new_tokens (DAPO's penalty_factor)."""

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
        want = sz.prompts_per_step if spec.informative_groups == "all" else spec.informative_groups
        items: list[Item] = []
        outs: list[Rollout] = []
        rewards: list[float] = []
        counts = dict.fromkeys(("errors", "timeouts", "crashes", "restarts", "dropped"), 0)
        draws = n_informative = 0
        demo_means: list[float] = []
        all_scores: list[Score] = []
        dropped_demos = 0.0
        m: dict[str, float] = {}
        while True:
            got, out, r, c, dm = self._draw_groups(env, draws, group0=draws * sz.prompts_per_step)
            draws += 1
            outs.append(out)
            rewards += r
            for key in counts:
                counts[key] += c.get(key, 0)
            demo_means += dm.get("demo_means", [])
            all_scores += dm.get("scores", [])
            dropped_demos += sum(dm.get("demos_dropped", []))
            if want is None:
                items = got
                break
            kept = _informative(got)
            items += kept
            n_informative = len({it.group for it in items})
            if n_informative >= want or draws >= spec.max_draws:
                break
        all_out = Rollout(
            [c for o in outs for c in o.completions],
            [lp for o in outs for lp in o.logprobs],
            [f for o in outs for f in o.finished],
        )
        m |= _score_metrics(rewards, counts, all_out, t0, all_scores)
        m |= self.selected
        if demo_means:
            m["reward/demo_mean"] = sum(demo_means) / len(demo_means)
        if spec.demo_when_solved == "drop":
            m["rollout/demos_dropped"] = dropped_demos
        if spec.overlong_buffer > 0:
            m["rollout/overlong_frac"] = sum(
                _overlong(len(c), sz.max_new_tokens, spec.overlong_buffer, 1.0) < 0
                for c in all_out.completions
            ) / len(all_out.completions)
        if want is not None:
            groups = sorted({it.group for it in items})[:want]
            keep = set(groups)
            m["rollout/groups_all_equal"] = float(draws * sz.prompts_per_step - n_informative)
            items = [it for it in items if it.group in keep]
            m["rollout/draws"] = float(draws)
            m["rollout/extra_prompts"] = float((draws - 1) * sz.prompts_per_step)
            m["rollout/informative_groups"] = float(len(groups))
            m["rollout/draw_cap_hit"] = float(n_informative < want)
        else:
            m["rollout/groups_all_equal"] = _groups_all_equal(items)
        return items, m

    def _draw_groups(self, env: DrawEnv, call: int, group0: int):
        """One draw of prompts_per_step groups: (items, rollout, rewards, counts, metrics)."""
        spec, sz = self.spec, env.sizes
        prompts = self.take(sz.prompts_per_step, env.step, env)
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
            call=call,
            max_new_tokens=sz.max_new_tokens,
            temperature=_temperature(env, spec.temperature),
        )
        scores, counts = env.score(exs, [env.encoder.decode(c) for c in out.completions])
        self.observe(exs, [s.reward for s in scores], env.step)
        rewards = [
            _shaped(s, spec.wrong_answer_reward)
            + _overlong(len(c), sz.max_new_tokens, spec.overlong_buffer, spec.overlong_penalty)
            for s, c in zip(scores, out.completions)
        ]
        m: dict[str, list[float]] = {}
        items = [
            Item.of(
                ids[i],
                c,
                "sampled",
                self.name,
                logp=out.logprobs[i],
                group=group0 + i // n_roll,
                reward=rewards[i],
                finished=out.finished[i],
                example=exs[i],
            )
            for i, c in enumerate(out.completions)
            if not _dropped(scores[i])  # on_error: drop (tandem.rewards.pool)
        ]
        counts = {**counts, "dropped": sum(map(_dropped, scores))}
        m["scores"] = scores  # for reward/<name> over the draws
        if spec.demos:
            demo_exs = [ex for ex in prompts for _ in range(spec.demos)]
            demo_scores, _ = env.score(demo_exs, [ex.solution or "" for ex in demo_exs])
            solved = {group0 + i // n_roll for i, r in enumerate(rewards) if r >= 1.0}
            dropped = 0
            for j, (ex, s) in enumerate(zip(demo_exs, demo_scores)):
                if spec.demo_when_solved == "drop" and (group0 + j // spec.demos in solved):
                    dropped += 1
                    continue
                items.append(
                    Item.of(
                        env.encoder.prompt(ex),
                        env.encoder.demo(ex),
                        "demo",
                        self.name,
                        group=group0 + j // spec.demos,
                        reward=_shaped(s, spec.wrong_answer_reward),
                        example=ex,
                    )
                )
            m["demo_means"] = [sum(s.reward for s in demo_scores) / len(demo_scores)]
            if spec.demo_when_solved == "drop":
                m["demos_dropped"] = [float(dropped)]
        return items, out, rewards, counts, m


class ReplayRolloutsSpec(RolloutsSpec):
    """Sampled groups, part of them replayed from the last steps' rollouts (ReMix)."""

    replay: float = Field(0.4, ge=0.0, lt=1.0)
    """Fraction of each step's prompts_per_step groups taken from the replay (ReMix: 0.4;
    60% fresh); 0 is plain rollouts."""
    window: int = Field(2, ge=1)
    """The replay holds the groups of this many previous steps (ReMix: 2 policy versions)."""


@SOURCES.register(
    "replay_rollouts",
    ReplayRolloutsSpec,
    "sampled groups mixed with groups replayed from the last steps (ReMix)",
)
class ReplayRollouts(Rollouts):
    """ReMix's mix-policy data (arXiv 2507.06892; the authors' repository,
    AnitaLeungxx/ReMix-Off-Policy-RFT at 95f7396, holds evaluation scripts only, so this
    follows the paper): each step round(replay · prompts_per_step) groups are replayed, drawn
    uniformly without replacement from the groups sampled in the last `window` steps (policies
    π_{k−1} .. π_{k−window}), and the rest are sampled fresh from π_k. A replayed item keeps its
    tokens, reward and the log-probs its sampler gave it (`Span.logp`), so a `pg` term with
    `behaviour: true` weighs it by π_θ/π_behav (Mix-PPG); its advantage is recomputed with its
    group. The replay is in every checkpoint. Deviation: the paper draws each sample's policy
    version i ~ ν; here whole groups are replayed (a group keeps its baseline) and the
    versions are weighted by how many groups each left. Metrics `rollout/replayed_groups`,
    `rollout/replay_age` (mean steps since a replayed group was sampled)."""

    def __init__(self, name, spec, pools, seed):
        super().__init__(name, spec, pools, seed)
        self.replay: list[tuple[int, list[Item]]] = []  # (step sampled, the group's items)

    def draw(self, env: DrawEnv) -> tuple[list[Item], dict[str, float]]:
        spec, sz = self.spec, env.sizes
        self.replay = [(k, g) for k, g in self.replay if env.step - k <= spec.window]
        n_old = min(round(spec.replay * sz.prompts_per_step), len(self.replay))
        fresh_env = replace(env, sizes=replace(sz, prompts_per_step=sz.prompts_per_step - n_old))
        items, m = super().draw(fresh_env)
        rng = random.Random(f"{self.seed}:{env.step}:{self.name}:replay")
        old = rng.sample(self.replay, n_old)
        next_group = max((it.group for it in items), default=-1) + 1
        for j, (_, group) in enumerate(old):
            items += [replace(it, group=next_group + j, spans=list(it.spans)) for it in group]
        by: dict[int, list[Item]] = {}
        for it in items[: len(items) - sum(len(g) for _, g in old)]:
            by.setdefault(it.group, []).append(it)
        self.replay += [(env.step, [_stored(it) for it in g]) for g in by.values()]
        m["rollout/replayed_groups"] = float(n_old)
        m["rollout/replay_age"] = sum(env.step - k for k, _ in old) / n_old if n_old else 0.0
        return items, m

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["replay"] = [(k, [_item_state(it) for it in g]) for k, g in self.replay]
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.replay = [(int(k), [_item_from_state(d) for d in g]) for k, g in state["replay"]]


def _stored(it: Item) -> Item:
    """A copy of a sampled item for a replay: its own spans, weight 1 (a source's `weight`
    applies again when it is drawn)."""
    if it.inputs:
        raise TandemError("a replay of items with extra model inputs (images) is not supported")
    return replace(it, spans=[replace(s) for s in it.spans], weight=1.0, meta=dict(it.meta))


def _item_state(it: Item) -> dict[str, Any]:
    ex = it.example
    return {
        "spans": [(s.ids, s.role, s.logp, s.weights) for s in it.spans],
        "source": it.source,
        "group": it.group,
        "reward": it.reward,
        "finished": it.finished,
        "example": None if ex is None else {**ex.__dict__, "wrong": list(ex.wrong)},
    }


def _item_from_state(d: dict[str, Any]) -> Item:
    ex = d["example"]
    return Item(
        [Span(list(i), r, lp, w) for i, r, lp, w in d["spans"]],
        d["source"],
        group=int(d["group"]),
        reward=d["reward"],
        finished=bool(d["finished"]),
        example=None if ex is None else Example(**{**ex, "wrong": tuple(ex["wrong"])}),
    )


def _overlong(length: int, max_new_tokens: int, buffer_frac: float, penalty: float) -> float:
    """DAPO's overlong reward shaping (arXiv 2503.14476; verl `DAPORewardManager`): with
    L_buf = round(buffer_frac · max_new_tokens) and L_exp = max_new_tokens − L_buf, a response of
    |y| tokens gets min(−(|y| − L_exp) / L_buf · penalty, 0), so the penalty grows linearly from 0
    at L_exp to −penalty at the limit. 0 when buffer_frac is 0."""
    buf = round(buffer_frac * max_new_tokens)
    if buf <= 0:
        return 0.0
    return min(-(length - (max_new_tokens - buf)) / buf * penalty, 0.0)


def _informative(items: list[Item]) -> list[Item]:
    """The items of the groups whose rewards are not all equal (DAPO's filter)."""
    by: dict[int, list[float]] = {}
    for it in items:
        if it.reward is not None:
            by.setdefault(it.group, []).append(it.reward)
    keep = {g for g, r in by.items() if max(r) != min(r)}
    return [it for it in items if it.group in keep]


# -------------------------------------------------------------------------------------- demos


class DemosSpec(SourceSpec):
    """Gold solutions of the task (SFT data)."""

    fault_weight: float = Field(0.0, ge=0.0)
    """FAIT: the gold tokens that differ from one of the task's wrong solutions (a token
    diff) get weight 1 + fault_weight, then each demonstration's weights are scaled to mean 1;
    0: every token weighs 1."""


@SOURCES.register("demos", DemosSpec, "gold solutions (SFT); fault-aware token weights (FAIT)")
class Demos(Source):
    default_stream = "demos"

    def draw(self, env: DrawEnv) -> tuple[list[Item], dict[str, float]]:
        exs = self.take(env.sizes.demos_per_step, env.step, env)
        enc, alpha = env.encoder, self.spec.fault_weight
        if not alpha:
            items = [
                Item.of(enc.prompt(ex), enc.demo(ex), "demo", self.name, example=ex) for ex in exs
            ]
            return items, dict(self.selected)
        rng = random.Random(f"{self.seed}:{env.step}:{self.name}:fault")
        items, marked, total = [], 0, 0
        for ex in exs:
            gold = enc.demo(ex)
            w = [1.0] * len(gold)
            if ex.wrong:
                mask = fault_mask(gold, enc.text(rng.choice(ex.wrong)))
                raw = [1.0 + alpha * m for m in mask]
                mean = sum(raw) / len(raw)
                w = [x / mean for x in raw]
                marked += sum(mask)
            total += len(gold)
            spans = [Span(enc.prompt(ex), "prompt"), Span(gold, "demo", weights=w)]
            items.append(Item(spans, self.name, example=ex))
        return items, {**self.selected, "fault/token_frac": marked / max(total, 1)}


def fault_mask(gold: list[int], wrong: list[int]) -> list[int]:
    """1 on the gold tokens a token-level diff (difflib) does not match in the wrong solution:
    FAIT's error-sensitive tokens (arXiv 2503.16913, token-level mask M^tok)."""
    mask = [0] * len(gold)
    for tag, i1, i2, _, _ in difflib.SequenceMatcher(
        None, gold, wrong, autojunk=False
    ).get_opcodes():
        if tag != "equal":
            for i in range(i1, i2):
                mask[i] = 1
    return mask


# -------------------------------------------------------------------------------- mixtures


class MixturePart(BaseModel):
    """One data set of a mixture: a task's training examples with gold solutions."""

    model_config = ConfigDict(extra="forbid")
    task: str
    """A task name, as `task.name` (`add`, `rg:<dataset>`, `jsonl`)."""
    params: dict[str, Any] = Field(default_factory=dict)
    train_pool: int = Field(2000, ge=1)
    """Its size n_i (examples drawn from the task): what makes the mixture imbalanced."""


class MixtureSpec(SourceSpec):
    """Gold solutions from several data sets of different sizes, balanced by upsampling or by
    upweighting ("Upsample or Upweight?", arXiv 2410.04579)."""

    parts: dict[str, MixturePart] = Field(min_length=1)
    balance: Literal["upsample", "upweight"] = "upsample"
    """upsample: each item's data set is drawn with p_i ∝ n_i^(1/T) (temperature sampling);
    upweight: drawn in natural proportion p_i ∝ n_i, each item's loss weighted
    (n_i^(1/T)/Σ_j n_j^(1/T)) / (n_i/Σ_j n_j) (scalarization): the same expected objective."""
    temperature: float = Field(1.0, ge=1.0)
    """T: 1 = natural proportions, larger flattens towards uniform (T → ∞)."""
    share: dict[str, float | str] = Field(
        default_factory=dict, json_schema_extra={"ref": "controller"}
    )
    """Fixed target shares of some parts (a number, or a controller's name: TLDR's long
    share); the other parts split the rest by the temperature rule."""

    def check(self, sizes: dict[str, Any], earlier: list[str]) -> str | None:
        unknown = sorted(set(self.share) - set(self.parts))
        if unknown:
            return f"share: unknown part(s) {unknown}; parts: {', '.join(self.parts)}"
        return None


@SOURCES.register(
    "mixture", MixtureSpec, "gold solutions of several data sets, upsampled or upweighted"
)
class Mixture(Source):
    """SFT data from several tasks of different sizes, each its own stream, balanced by
    temperature: the target share of data set i is q_i = n_i^(1/T) / Σ_j n_j^(1/T). `upsample`
    draws each of the step's demos_per_step items from data set i with probability q_i;
    `upweight` draws with the natural p_i = n_i / Σ_j n_j and gives each item the weight
    q_i / p_i, so both have the same expected loss and differ in variance and in how often a
    small data set's examples repeat (the paper's comparison). Items are scored by no verifier
    (SFT); each part's stream position is in every checkpoint. Metrics: `mix/<part>/share`
    (the step's share of items), `mix/<part>/weight`."""

    default_stream = "demos"

    def __init__(self, name, spec, pools, seed):
        super().__init__(name, spec, pools, seed)
        from tandem.tasks import get_task

        self.parts: dict[str, ExampleStream] = {}
        sizes = {}
        for pname, part in spec.parts.items():
            task = get_task(part.task, part.params)
            pool = [ex for ex in task.examples("train", part.train_pool, seed=seed) if ex.solution]
            if not pool:
                raise TandemError(
                    f"source {name}: part {pname} ({part.task}) has no gold solutions"
                )
            self.parts[pname] = ExampleStream(pool, seed, f"{name}:{pname}")
            sizes[pname] = float(len(pool))
        total = sum(sizes.values())
        tq = {k: v ** (1.0 / spec.temperature) for k, v in sizes.items()}
        self.natural = {k: v / total for k, v in sizes.items()}
        self.target = {k: v / sum(tq.values()) for k, v in tq.items()}

    def _target(self, env: DrawEnv) -> dict[str, float]:
        """q_i: the parts in `share` at their set value, the rest of 1 split by temperature."""
        fixed = {k: _temperature(env, v) for k, v in self.spec.share.items()}
        rest = 1.0 - sum(fixed.values())
        free = {k: v for k, v in self.target.items() if k not in fixed}
        z = sum(free.values())
        return {
            k: fixed[k] if k in fixed else (rest * free[k] / z if z else 0.0) for k in self.parts
        }

    def draw(self, env: DrawEnv) -> tuple[list[Item], dict[str, float]]:
        spec, enc = self.spec, env.encoder
        target = self._target(env) if spec.share else self.target
        probs = target if spec.balance == "upsample" else self.natural
        names = list(self.parts)
        rng = random.Random(f"{self.seed}:{env.step}:{self.name}:mixture")
        picks = rng.choices(names, weights=[probs[k] for k in names], k=env.sizes.demos_per_step)
        items: list[Item] = []
        for pname in picks:
            ex = self.parts[pname].take(1)[0]
            w = 1.0 if spec.balance == "upsample" else target[pname] / self.natural[pname]
            items.append(
                Item.of(enc.prompt(ex), enc.demo(ex), "demo", self.name, weight=w, example=ex)
            )
        m = {}
        for pname in names:
            m[f"mix/{pname}/share"] = picks.count(pname) / len(picks)
            m[f"mix/{pname}/weight"] = (
                1.0 if spec.balance == "upsample" else target[pname] / self.natural[pname]
            )
            m[f"mix/{pname}/target"] = target[pname]
        return items, m

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "parts": {k: v.state_dict() for k, v in self.parts.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for k, v in self.parts.items():
            v.load_state_dict(state["parts"][k])


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
        prompts = self.take(sz.prompts_per_step, env.step, env)
        exs, prefixes, ratios = [], [], []
        for ex in prompts:
            demo = env.encoder.demo(ex)
            for j in range(G):
                pre: list[int] = []
                if j >= G - P:
                    u = rng.betavariate(spec.beta_a, spec.beta_b)
                    ratio = low + (high - low) * u
                    n = min(max(int(ratio * len(demo)), spec.min_prefix_len), len(demo) - 1)
                    n = min(n, sz.max_new_tokens - 1)
                    pre = demo[: max(n, 0)]
                    ratios.append(ratio)
                exs.append(ex)
                prefixes.append(pre)
        items, m, rewards = self._continue(env, exs, prefixes, spec.temperature, G, t0)
        lens = [len(p) for p in prefixes if p]
        m["prefix/len_mean"] = sum(lens) / max(len(lens), 1)
        m["prefix/ratio_mean"] = sum(ratios) / max(len(ratios), 1)
        m["prefix/ratio_low"] = low
        m["prefix/reward_mean"] = _mean([r for r, p in zip(rewards, prefixes) if p])
        m["rollout/groups_all_equal"] = _groups_all_equal(items)
        return items, m


# ---------------------------------------------------------------------------- hinted rollouts


class HintedRolloutsSpec(SourceSpec):
    """Groups whose prompt carries a hint, a prefix of the gold solution, annealed to nothing
    over `hint_steps` steps (UFT)."""

    pieces: int = Field(5, ge=1)
    """The solution is cut into at most this many pieces (UFT: 5)."""
    p_high: float = Field(0.95, ge=0.0, le=1.0)
    p_low: float = Field(0.05, ge=0.0, le=1.0)
    hint_steps: int = Field(300, ge=1)
    """p(t) = p_low + ½(p_high − p_low)(1 + cos(π t / hint_steps)) for t ≤ hint_steps (t = the
    step, from 1); after it, no hint."""
    temperature: float | str | None = Field(None, json_schema_extra={"ref": "controller"})


@SOURCES.register(
    "hinted_rollouts",
    HintedRolloutsSpec,
    "groups with an annealed solution hint in the prompt (UFT)",
)
class HintedRollouts(Source):
    """UFT's hint (liumy2010/UFT `verl/utils/dataset/rl_dataset.py::__getitem__`, ad3c8ec): the
    gold solution's tokens are cut into num = min(pieces, length) pieces at
    round(j/num·length), j = 0..num; each step a prompt's hint is the first k pieces with
    k ~ Binomial(num, p(t)), the same for all of its samples; the samples continue after the
    hint (span role `prefix`, so an NLL term with `roles: [prefix]` is UFT's SFT on the hint
    and a PG term with `roles: [sampled]` trains the continuation). The verifier scores hint +
    continuation. UFT cuts its solutions at reasoning steps; here the cut is in tokens."""

    default_stream = "demos"

    def draw(self, env: DrawEnv) -> tuple[list[Item], dict[str, float]]:
        t0 = time.perf_counter()
        spec, sz = self.spec, env.sizes
        G = sz.samples_per_prompt
        t = env.step + 1
        p = spec.p_low + 0.5 * (spec.p_high - spec.p_low) * (
            1.0 + math.cos(math.pi * t / spec.hint_steps)
        )
        rng = random.Random(f"{self.seed}:{env.step}:{self.name}:hint")
        prompts = self.take(sz.prompts_per_step, env.step, env)
        exs, hints = [], []
        for ex in prompts:
            demo = env.encoder.demo(ex)
            num = min(spec.pieces, len(demo))
            k = sum(rng.random() < p for _ in range(num)) if t <= spec.hint_steps else 0
            n = min(round(k / num * len(demo)) if num else 0, sz.max_new_tokens - 1, len(demo) - 1)
            hint = demo[: max(n, 0)]
            for _ in range(G):
                exs.append(ex)
                hints.append(hint)
        items, m, _ = self._continue(env, exs, hints, spec.temperature, G, t0)
        m["hint/p"] = p if t <= spec.hint_steps else 0.0
        m["hint/len_mean"] = sum(len(h) for h in hints[::G]) / max(len(prompts), 1)
        m["rollout/groups_all_equal"] = _groups_all_equal(items)
        return items, m


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


# -------------------------------------------------------------------------------------- pairs


class PairsSpec(SourceSpec):
    """Preference pairs (chosen, rejected) for DPO, IPO, SimPO, ORPO and SPIN."""

    mode: Literal["data", "online", "self_play", "labeled"] = "data"
    """data: gold solution vs one of the task's wrong solutions; online: the best vs the worst
    of samples_per_prompt own samples, ranked by the verifier (groups with all-equal rewards
    give no pair); self_play: gold solution vs a sample of the reference model (SPIN);
    labeled: no pairs, every labeled completion of pairs_per_step prompts on its own (the gold
    solution desirable, each wrong one undesirable: KTO's unpaired data, where a prompt may
    have only one kind and the counts differ; for terms on single responses, `kto`)."""


@SOURCES.register("pairs", PairsSpec, "preference pairs: data, online or self_play (SPIN)")
class Pairs(Source):
    default_stream = "demos"

    def __init__(self, name, spec, pools, seed):
        if spec.mode in ("online", "labeled") and spec.stream is None:
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
        if mode == "labeled":
            return self._labeled(env)
        sz, enc = env.sizes, env.encoder
        exs = self.take(sz.pairs_per_step, env.step, env)
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
            m = _score_metrics([s.reward for s in scores], counts, out, t0, scores)
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

    def _labeled(self, env: DrawEnv) -> tuple[list[Item], dict[str, float]]:
        enc, items = env.encoder, []
        for ex in self.take(env.sizes.pairs_per_step, env.step, env):
            p = enc.prompt(ex)
            if ex.solution is not None:
                items.append(Item.of(p, enc.demo(ex), "demo", self.name, chosen=True, example=ex))
            for w in ex.wrong:
                items.append(Item.of(p, enc.text(w), "demo", self.name, chosen=False, example=ex))
        n_d = sum(it.chosen for it in items)
        return items, {"pairs/desirable": float(n_d), "pairs/undesirable": len(items) - n_d}

    def _online(self, env: DrawEnv) -> tuple[list[Item], dict[str, float]]:
        t0 = time.perf_counter()
        sz, enc = env.sizes, env.encoder
        prompts = self.take(sz.prompts_per_step, env.step, env)
        G = sz.samples_per_prompt
        exs = [ex for ex in prompts for _ in range(G)]
        ids = [enc.prompt(ex) for ex in exs]
        out = self._sample(env, ids, max_new_tokens=sz.max_new_tokens, temperature=sz.temperature)
        scores, counts = env.score(exs, [enc.decode(c) for c in out.completions])
        self.observe(exs, [s.reward for s in scores], env.step)
        rewards = [s.reward for s in scores]
        m = _score_metrics(rewards, counts, out, t0, scores)
        m |= self.selected
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
    keep: Literal["verified", "best"] = "verified"
    """verified: every sample that reaches `min_reward` (RFT); best: only the highest-reward
    sample of each prompt (best-of-n, SuperHF), when it reaches `min_reward`."""
    fallback: Literal["none", "demo"] = "none"
    """demo: a prompt with no kept sample is trained on its gold solution instead (S3FT,
    Metis-RISE's expert set for unsolved prompts)."""
    skip_solved: bool = False
    """Skip prompts whose samples all pass (Metis-RISE trains on partly solved and unsolved
    prompts only)."""
    model: Literal["policy", "reference"] = "policy"
    """Who samples: the policy, or the reference model (S3FT's answers of the initial model)."""
    temperature: float | str | None = Field(None, json_schema_extra={"ref": "controller"})
    """Sampling temperature: a number, a controller name, or null for the run's."""


@SOURCES.register(
    "self_verified",
    SelfVerifiedSpec,
    "own samples the verifier accepts (RFT, STaR, SuperHF, S3FT, Metis-RISE)",
)
class SelfVerified(Source):
    def __init__(self, name, spec, pools, seed):
        if spec.fallback == "demo" and spec.stream is None:
            spec = spec.model_copy(update={"stream": "demos"})
        super().__init__(name, spec, pools, seed)
        self.needs_reference = spec.model == "reference"

    def draw(self, env: DrawEnv) -> tuple[list[Item], dict[str, float]]:
        t0 = time.perf_counter()
        spec, sz, enc = self.spec, env.sizes, env.encoder
        prompts = self.take(sz.prompts_per_step, env.step, env)
        G = sz.samples_per_prompt
        exs = [ex for ex in prompts for _ in range(G)]
        out = self._sample(
            env,
            [enc.prompt(ex) for ex in exs],
            max_new_tokens=sz.max_new_tokens,
            temperature=_temperature(env, spec.temperature),
            model=spec.model,
        )
        scores, counts = env.score(exs, [enc.decode(c) for c in out.completions])
        self.observe(exs, [s.reward for s in scores], env.step)
        m = _score_metrics([s.reward for s in scores], counts, out, t0, scores)
        m |= self.selected
        items: list[Item] = []
        solved: set[int] = set()
        skip: set[int] = set()
        if spec.skip_solved:
            for g in range(len(prompts)):
                if all(s.reward >= spec.min_reward for s in scores[g * G : (g + 1) * G]):
                    skip.add(g)
        self._keep(items, solved, prompts, exs, out, scores, G, enc, skip)
        m["self/kept"] = float(len(items))
        if spec.skip_solved:
            m["self/solved_prompts"] = float(len(skip))
        if spec.fallback == "demo":
            gold = [g for g in range(len(prompts)) if g not in solved and g not in skip]
            for g in gold:
                ex = prompts[g]
                items.append(Item.of(enc.prompt(ex), enc.demo(ex), "demo", self.name, example=ex))
            m["self/gold"] = float(len(gold))
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

    def _keep(self, items, solved, prompts, exs, out, scores, G, enc, skip=frozenset()) -> None:
        seen: set[tuple] = set()
        best = set()
        if self.spec.keep == "best":  # the first highest-reward sample of each prompt
            for g in range(len(exs) // G):
                rows = range(g * G, (g + 1) * G)
                best.add(max(rows, key=lambda i: scores[i].reward))
        for i, (ex, c, s) in enumerate(zip(exs, out.completions, scores)):
            if s.reward < self.spec.min_reward or i // G in skip:
                continue
            if self.spec.keep == "best" and i not in best:
                continue
            key = (i // G, tuple(c))
            if self.spec.distinct and key in seen:
                continue
            seen.add(key)
            solved.add(i // G)
            # Trained as the policy's own text, with the original prompt; no behaviour log-probs
            # when it was sampled under a hinted prompt.
            items.append(Item.of(enc.prompt(ex), c, "sampled", self.name, example=ex))


# -------------------------------------------------------------------------------- group demos


class GroupDemosSpec(SourceSpec):
    """Each watched group's gold solution, weighted by how well the group did (HPT's gate,
    tandem's adaptive mix)."""

    watch: str = "rollouts"
    """The source whose groups it reads (listed before this one)."""
    weighting: Literal["gate", "linear"] = "gate"
    """gate: weight 1 when at most `gate` of the group's rollouts succeed, else no item (HPT's
    switch); linear: weight 1 − the group's success rate, no item at 1 (all rollouts fail:
    imitate; all pass: explore only; in between: interpolate)."""
    gate: int = Field(0, ge=0)
    """HPT's switch_gate: a count of successful rollouts (HPT: 0 of 8 for Qwen, 2 for Llama)."""
    success_reward: float = 1.0
    """A rollout succeeds when its reward is at least this."""

    def check(self, sizes: dict[str, Any], earlier: list[str]) -> str | None:
        if self.watch not in earlier:
            return f"watch: {self.watch!r} must be a source listed before this one: {earlier}"
        return None


@SOURCES.register(
    "group_demos", GroupDemosSpec, "gold solutions of watched groups, weighted by their success"
)
class GroupDemos(Source):
    """For every group of the watched source with a gold solution (its sampled rows; an
    in-group demonstration does not count), the number of rollouts with reward ≥
    success_reward decides whether, and with which weight (`weighting`), its gold solution
    joins the step as a demonstration item; the weight multiplies the item's loss. HPT's gate
    follows TsinghuaC3I/Unify-Post-Training `mix_trainer.py` (ae332f5): SFT on the prompt's
    demonstration when at most `switch_gate` of its 8 rollouts are correct, RL otherwise (the
    `replaced_groups` filter then drops the gated groups' rollouts). Holds no state beyond its
    (unused) stream."""

    default_stream = "demos"

    def draw(self, env: DrawEnv) -> tuple[list[Item], dict[str, float]]:
        spec = self.spec
        groups: dict[int, list[Item]] = {}
        for it in env.items:
            if it.source == spec.watch and it.group >= 0 and it.reward is not None:
                if any(sp.role == "sampled" for sp in it.spans):
                    groups.setdefault(it.group, []).append(it)
        items: list[Item] = []
        weights: list[float] = []
        for g in sorted(groups):
            members = groups[g]
            ex = members[0].example
            if ex is None or ex.solution is None:
                continue
            n_ok = sum(it.reward >= spec.success_reward for it in members)
            if spec.weighting == "gate":
                w = 1.0 if n_ok <= spec.gate else 0.0
            else:
                w = 1.0 - n_ok / len(members)
            if w <= 0.0:
                continue
            prompt, demo = env.encoder.prompt(ex), env.encoder.demo(ex)
            items.append(Item.of(prompt, demo, "demo", self.name, weight=w, example=ex))
            weights.append(w)
        m = {
            "mix/demo_items": float(len(items)),
            "mix/demo_weight_mean": sum(weights) / len(weights) if weights else 0.0,
            "mix/demo_weight_sum": float(sum(weights)),
        }
        return items, m


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


__all__ = [
    "SOURCES",
    "DrawEnv",
    "Rollout",
    "Sizes",
    "Source",
    "SourceSpec",
    "conditioned",
    "example_pools",
]
