"""Data-side controls (`tandem.train.selection`, the `target_entropy` controller): each changes
what it is meant to change, by its own metric, and its state survives a checkpoint."""

from __future__ import annotations

import math
import random

import pytest

from tandem.algo.controllers import CONTROLLERS, build_controller
from tandem.report.metrics import read_metrics
from tandem.tasks.base import Example
from tandem.train.data import ExampleStream
from tandem.train.loop import train
from tandem.train.selection import SELECTORS, build_selector

from .conftest import tiny_config


def _pool(n: int) -> list[Example]:
    return [
        Example(id=f"q{i}", prompt=f"q{i}", answer=str(i % 10), meta={"d": i}) for i in range(n)
    ]


def _sel(kind: str, pool, **kw):
    return build_selector(SELECTORS.spec(kind)(kind=kind, **kw), pool, seed=0)


def test_instance_filter_skips_never_and_always_solved_then_rechecks():
    pool = _pool(8)
    stream = ExampleStream(pool, 0, "train")
    sel = _sel("instance_filter", pool, recheck_every=3)
    first, _ = sel.take(stream, 4, step=0)
    # two solved by every sample, one by none, one by half
    rewards = {first[0].id: [1, 1], first[1].id: [0, 0], first[2].id: [1, 0], first[3].id: [1, 1]}
    exs = [ex for ex in first for _ in range(2)]
    sel.observe(exs, [r for ex in first for r in rewards[ex.id]], step=0)
    flagged = {first[0].id, first[1].id, first[3].id}
    assert set(sel.flagged) == flagged
    # the stream wraps every 8 examples: at step 1 and 2 the flagged ones are skipped ...
    served = [ex.id for s in (1, 2) for ex in sel.take(stream, 4, step=s)[0]]
    assert not flagged & set(served[:4])
    # ... and from step 3 on (recheck_every = 3) they are served again
    later = [ex.id for s in range(3, 6) for ex in sel.take(stream, 4, step=s)[0]]
    assert flagged <= set(later)


def test_beta_curriculum_serves_harder_items_as_pass_rates_rise():
    # A simulated learner: item i has difficulty d_i = i / 10; its pass probability is
    # σ(4·(skill − d_i)), and skill grows with each step. With target 0.5, the curriculum serves
    # the items near the learner's frontier, so the served difficulty rises with skill.
    pool = _pool(40)
    stream = ExampleStream(pool, 0, "train")
    sel = _sel("beta_curriculum", pool, target=0.5, temperature=0.0)
    rng = random.Random(0)
    served_mean = []
    for step in range(60):
        skill = step / 15
        exs, m = sel.take(stream, 4, step)
        served_mean.append(sum(ex.meta["d"] for ex in exs) / 40)
        obs, rew = [], []
        for ex in exs:
            p = 1 / (1 + math.exp(-4 * (skill - ex.meta["d"] / 10)))
            for _ in range(8):
                obs.append(ex)
                rew.append(float(rng.random() < p))
        sel.observe(obs, rew, step)
    early, late = sum(served_mean[10:20]) / 10, sum(served_mean[50:60]) / 10
    print(
        f"\nCONTROL beta_curriculum: served difficulty {early:.3f} (steps 10-19) -> {late:.3f} (50-59)"
    )
    assert late > early + 0.1, (early, late)
    state = sel.state_dict()
    again = _sel("beta_curriculum", pool, target=0.5, temperature=0.0)
    again.load_state_dict(state)
    assert [e.id for e in again.take(stream, 4, 60)[0]] == [
        e.id for e in sel.take(stream, 4, 60)[0]
    ]


def test_easy_to_hard_serves_in_feature_order():
    pool = _pool(12)
    random.Random(3).shuffle(pool)
    sel = _sel("easy_to_hard", pool, feature="meta.d")
    stream = ExampleStream(pool, 0, "train")
    got = [ex.meta["d"] for s in range(3) for ex in sel.take(stream, 4, s)[0]]
    assert got == sorted(got) == list(range(12))
    hard_first = _sel("easy_to_hard", pool, feature="meta.d", easy="high")
    assert hard_first.take(stream, 2, 0)[0][0].meta["d"] == 11


def test_target_entropy_controller_math():
    # T = 1, measured H = 0.5, target 0.3, rate 1: T ← exp(−0.2) = 0.818731; within the
    # tolerance nothing moves; the bounds clip.
    spec = CONTROLLERS.spec("target_entropy")
    c = build_controller(spec(kind="target_entropy", init=1.0, target=0.3, rate=1.0))
    c.update(0, {"rollout/entropy": 0.5})
    assert abs(c.value(1) - 0.818731) < 1e-6
    c.update(1, {"rollout/entropy": 0.31})
    assert abs(c.value(2) - 0.818731) < 1e-6
    lo = build_controller(spec(kind="target_entropy", init=0.2, min_temperature=0.15))
    lo.update(0, {"rollout/entropy": 3.0})
    assert lo.value(1) == 0.15


TINY_RL = ["method=grpo", "eval.prompts=0", "lr=3e-3", "prompts_per_step=8"]


def test_temperature_controller_lands_within_005_of_its_target(warm_tiny, tmp_path):
    """The tiny model's rollouts at T = 1 have an entropy far above 0.3; the controller brings
    it to the target and holds it there (the mean of the last 10 steps within 0.05)."""
    cfg = tiny_config(
        tmp_path,
        *TINY_RL,
        f"model.name={warm_tiny}",
        "steps=40",
        "lr=1e-4",
        "objective.controllers.temp={kind: target_entropy, init: 1.0, target: 0.3}",
        "objective.sources.rollouts.temperature=temp",
    )
    train(cfg, log=lambda s: None)
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "rollout/entropy" in r]
    assert rows[0]["rollout/entropy"] > 0.4
    last = [r["rollout/entropy"] for r in rows[-10:]]
    print(
        f"\nCONTROL target_entropy: entropy {rows[0]['rollout/entropy']:.3f} at T 1.0 -> "
        f"{sum(last) / 10:.3f} (last 10 steps), T {rows[-1]['ctl/temp/temperature']:.3f}"
    )
    assert abs(sum(last) / 10 - 0.3) < 0.05, last
    assert rows[-1]["ctl/temp/temperature"] < 1.0


def test_instance_filter_in_a_run_drops_groups_without_signal(warm_tiny, tmp_path):
    """GRPO on the tiny model with and without the filter, same seed: with it, prompts whose
    groups were all right or all wrong are skipped, so fewer groups have all-equal rewards."""
    base = [*TINY_RL, f"model.name={warm_tiny}", "steps=16", "task.params.digits=1"]
    on = tiny_config(
        tmp_path / "on", *base, "objective.sources.rollouts.select={kind: instance_filter}"
    )
    off = tiny_config(tmp_path / "off", *base)
    train(on, log=lambda s: None)
    train(off, log=lambda s: None)
    r_on = [r for r in read_metrics(tmp_path / "on/metrics.jsonl") if "reward/mean" in r]
    r_off = [r for r in read_metrics(tmp_path / "off/metrics.jsonl") if "reward/mean" in r]
    skipped = sum(r["data/skipped_prompts"] for r in r_on)
    assert skipped > 0
    eq_on = sum(r["rollout/groups_all_equal"] for r in r_on[8:])
    eq_off = sum(r["rollout/groups_all_equal"] for r in r_off[8:])
    print(
        f"\nCONTROL instance_filter: all-equal groups in steps 9-16 {eq_on:.0f} vs {eq_off:.0f} "
        f"without it; {skipped:.0f} prompts skipped"
    )
    assert eq_on < eq_off, (eq_on, eq_off)


@pytest.mark.parametrize(
    "select",
    [
        "{kind: instance_filter, recheck_every: 2}",
        "{kind: beta_curriculum}",
        "{kind: easy_to_hard, feature: meta.operands}",
    ],
)
def test_selector_state_resumes_exactly(select, warm_tiny, tmp_path):
    from tandem.train.loop import train_from_files

    args = [*TINY_RL, f"model.name={warm_tiny}", f"objective.sources.rollouts.select={select}"]
    train(tiny_config(tmp_path / "full", *args, "steps=4"), log=lambda s: None)
    train(tiny_config(tmp_path / "part", *args, "steps=2"), log=lambda s: None)
    train_from_files(None, ["steps=4"], resume_dir=str(tmp_path / "part"))
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]  # noqa: E731
    a = strip(read_metrics(tmp_path / "full/metrics.jsonl"))
    b = strip(read_metrics(tmp_path / "part/metrics.jsonl"))
    assert a == b


def test_prior_prompt_wraps_every_question_in_training_and_eval(tmp_path):
    from tandem.encode import PRIORS, Encoder
    from tandem.errors import ConfigError
    from tandem.train.loop import build_state

    st = build_state(tiny_config(tmp_path, "task.prior=null_example"))
    ex = st.task.examples("train", 1)[0]
    text = st.tokenizer.decode(st.encoder.prompt(ex))
    assert text.endswith(ex.prompt) and "examples of similar questions" in text
    plain = Encoder(st.tokenizer)
    assert len(st.encoder.prompt(ex)) > len(plain.prompt(ex))
    custom = Encoder(st.tokenizer, prior="Q: {prompt}")
    assert st.tokenizer.decode(custom.prompt(ex)).endswith("Q: " + ex.prompt)
    with pytest.raises(ConfigError, match="task.prior"):
        Encoder(st.tokenizer, prior="no placeholder")
    assert set(PRIORS) == {"reasoning", "planning", "code", "knowledge", "null_example"}


@pytest.mark.parametrize("balance", ["upsample", "upweight"])
def test_mixture_upsample_and_upweight_reach_the_same_target_share(balance, tmp_path):
    """Two data sets of 50 and 800 examples (natural share of the small one 50/850 = 0.059),
    temperature 2: target share q = √50 / (√50 + √800) = 0.2. Upsampling serves the small set
    about 20% of the time with weight 1; upweighting serves it about 6% of the time with weight
    q/p = 3.4; the weighted share, what the loss sees, is about 0.2 both ways."""
    from tandem.train.loop import build_state
    from tandem.train.sources import SOURCES, DrawEnv

    st = build_state(tiny_config(tmp_path, "method=sft"))
    spec = SOURCES.spec("mixture")(
        kind="mixture",
        balance=balance,
        temperature=2.0,
        parts={
            "small": {"task": "add", "params": {"digits": 1, "style": "plain"}, "train_pool": 50},
            "large": {"task": "add", "params": {"digits": 2, "style": "plain"}, "train_pool": 800},
        },
    )
    src = SOURCES.get("mixture")("mix", spec, {"demos": st.task.examples("train", 8)}, 0)
    assert abs(src.target["small"] - 0.2) < 1e-9 and abs(src.natural["small"] - 50 / 850) < 1e-9
    sizes = st.stages[0].sizes
    served = weighted = total_w = 0.0
    n = 0
    for step in range(200):
        env = DrawEnv(step, sizes, st.encoder, st.task, {}, [], None, None)
        items, m = src.draw(env)
        for it in items:
            small = max(it.example.meta["operands"]) < 10  # one-digit operands
            served += small
            weighted += it.weight * small
            total_w += it.weight
            n += 1
    share, wshare = served / n, weighted / total_w
    print(f"\nCONTROL mixture {balance}: small set served {share:.3f}, weighted share {wshare:.3f}")
    if balance == "upsample":
        assert abs(share - 0.2) < 0.03
    else:
        assert abs(share - 50 / 850) < 0.02 and abs(m["mix/small/weight"] - 0.2 / (50 / 850)) < 1e-9
    assert abs(wshare - 0.2) < 0.04


def test_mixture_resumes_exactly(warm_tiny, tmp_path):
    from tandem.train.loop import train_from_files

    mix = (
        "objective.sources.demos={kind: mixture, balance: upweight, temperature: 2.0, parts: "
        "{small: {task: add, params: {digits: 1, style: plain}, train_pool: 50}, "
        "large: {task: add, params: {digits: 2, style: plain}, train_pool: 400}}}"
    )
    args = ["method=sft", f"model.name={warm_tiny}", "eval.prompts=0", mix]
    train(tiny_config(tmp_path / "full", *args, "steps=4"), log=lambda s: None)
    train(tiny_config(tmp_path / "part", *args, "steps=2"), log=lambda s: None)
    train_from_files(None, ["steps=4"], resume_dir=str(tmp_path / "part"))
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]  # noqa: E731
    a = strip(read_metrics(tmp_path / "full/metrics.jsonl"))
    assert a == strip(read_metrics(tmp_path / "part/metrics.jsonl"))
    assert any(r.get("mix/small/weight", 0) > 1 for r in a)


def test_reasoning_gym_levels_drive_an_easy_to_hard_curriculum():
    """reasoning-gym difficulty levels as the knob: chain_sum at 1-digit and 3-digit terms in
    one training pool; the offline curriculum on meta.level serves every level-0 problem
    before any level-1 one, and each level is scored by its own config."""
    from tandem.tasks import get_task

    task = get_task(
        "rg:chain_sum",
        {"levels": [{"min_digits": 1, "max_digits": 1}, {"min_digits": 3, "max_digits": 3}]},
    )
    pool = task.examples("train", 40)
    assert sorted(ex.meta["level"] for ex in pool) == [0] * 20 + [1] * 20
    assert all(task.score(ex, ex.answer).reward == 1.0 for ex in pool[::7])
    sel = _sel("easy_to_hard", pool, feature="meta.level")
    stream = ExampleStream(pool, 0, "train")
    served = [ex.meta["level"] for s in range(10) for ex in sel.take(stream, 4, s)[0]]
    assert served == [0] * 20 + [1] * 20
    # the digits differ by level: level-1 questions hold 3-digit numbers
    assert any(len(tok) == 3 for ex in pool if ex.meta["level"] == 1 for tok in ex.prompt.split())


def test_tldr_controller_math():
    # Reference points: short-only acc 0.3 / length 10, long-only acc 0.7 / length 50; η 4.
    # acc 0.5, length 30: b_short = 20/40 = 0.5, b_long = 0.2/0.4 = 0.5: α stays at 0.5.
    # acc 0.4, length 10: b_short 0, b_long 0.75: α_long = e^3/(1 + e^3) = 0.952574, then
    # smoothed with c = 1e-4: 0.9999·0.952574 + 0.00005 = 0.952529.
    spec = CONTROLLERS.spec("tldr")
    kw = {"acc_short": 0.3, "acc_long": 0.7, "len_short": 10.0, "len_long": 50.0}
    c = build_controller(spec(kind="tldr", smoothing=0.0, **kw))
    c.eval_update(0, {"eval/accuracy": 0.5, "eval/len_mean": 30.0})
    assert abs(c.value(1) - 0.5) < 1e-9
    c.eval_update(1, {"eval/accuracy": 0.4, "eval/len_mean": 10.0})
    assert abs(c.value(2) - 0.952574) < 1e-6
    d = build_controller(spec(kind="tldr", **kw))
    d.eval_update(0, {"eval/accuracy": 0.4, "eval/len_mean": 10.0})
    assert abs(d.value(1) - 0.952529) < 1e-6
    c.update(3, {"loss/sft": 1.0})  # training metrics do not move it
    assert abs(c.value(4) - 0.952574) < 1e-6


def test_tldr_moves_a_short_long_mixture_from_evaluations(tmp_path):
    """SFT on Knights and Knaves, short (bare answers) and long (worked solutions) parts, the
    long share set by a tldr controller that reads the evaluation every 2 steps: with the
    tiny model below the long-only reference accuracy and shorter than the short-only
    reference length, every evaluation raises the long share; a resumed run matches."""
    from tandem.train.loop import train_from_files

    kk = "task: 'rg:knights_knaves', train_pool: 40"
    args = [
        "method=sft",
        "task.name=rg:knights_knaves",
        "task.params={}",
        "eval.prompts=4",
        "eval.every=2",
        "eval.before=false",
        "max_new_tokens=8",
        "objective.sources.demos={kind: mixture, share: {long: tldr}, parts: {short: {"
        + kk
        + "}, long: {"
        + kk
        + ", params: {traces: true}}}}",
        "objective.controllers.tldr={kind: tldr, acc_short: 0.0, acc_long: 1.0, "
        "len_short: 1000, len_long: 2000}",
    ]
    train(tiny_config(tmp_path / "full", *args, "steps=6"), log=lambda s: None)
    rows = [r for r in read_metrics(tmp_path / "full/metrics.jsonl") if "mix/long/target" in r]
    targets = [r["mix/long/target"] for r in rows]
    assert targets[0] == 0.5 and targets[2] > targets[1] == 0.5 < targets[-1]
    assert targets[2] == targets[3] and targets[4] > targets[3]  # moves at evaluations only
    train(tiny_config(tmp_path / "part", *args, "steps=2"), log=lambda s: None)
    train_from_files(None, ["steps=6"], resume_dir=str(tmp_path / "part"))
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]  # noqa: E731
    assert strip(read_metrics(tmp_path / "full/metrics.jsonl")) == strip(
        read_metrics(tmp_path / "part/metrics.jsonl")
    )
