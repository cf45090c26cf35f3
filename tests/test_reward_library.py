"""Reward checks (`tandem.rewards.library`), their weighted composition (`rewards.checks`), the
reward/<name> metrics of a real run, functions by dotted path, and a reward model.

Every value below is worked out by hand from the string it scores.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from tandem.errors import ConfigError
from tandem.report.metrics import read_metrics
from tandem.rewards import RewardPool, dropped
from tandem.rewards.compose import Composition
from tandem.rewards.library import (
    CHECKS,
    choice_letter,
    length_penalty,
    repetition_penalty,
    well_formed,
)
from tandem.tasks import Example, Score, get_task
from tests.conftest import tiny_config


def ex(answer: str, prompt: str = "q?") -> Example:
    return Example("id", prompt, answer)


def value(kind: str, completion: str, answer: str = "", **settings) -> float:
    got = CHECKS.spec(kind)(kind=kind, **settings).score(ex(answer), completion, None)
    return got.reward if isinstance(got, Score) else got


# --------------------------------------------------------------------------- each check


@pytest.mark.parametrize(
    ("kind", "completion", "answer", "settings", "want"),
    [
        ("math", "so \\boxed{\\frac{1}{2}}", "0.5", {}, 1.0),
        ("math", "<answer>1/3</answer>", "0.5", {}, 0.0),
        ("exact", "<answer> Paris </answer>", "Paris", {}, 1.0),
        ("exact", "paris", "Paris", {}, 0.0),
        ("exact", "paris", "Paris", {"ignore_case": True}, 1.0),
        ("numeric", "pi is about 3.14159", "3.1416", {}, 1.0),  # |diff| 1e-5 <= 1e-4 * 3.1416
        ("numeric", "pi is about 3.14159", "3.1416", {"rel_tol": 1e-7}, 0.0),
        ("numeric", "it is 0.001", "0", {}, 0.0),  # relative tolerance allows nothing at 0
        ("numeric", "it is 0.001", "0", {"abs_tol": 0.01}, 1.0),
        ("numeric", "no number here", "7", {}, 0.0),
        ("choice", "The answer is (C).", "C", {}, 1.0),
        ("choice", "Answer: B", "(B)", {}, 1.0),
        ("choice", "Answer: B", "C", {}, 0.0),
        ("format", "<think>3+4</think>\n<answer>7</answer>", "", {}, 1.0),
        ("format", "<answer>7</answer>", "", {}, 0.0),
        ("format", "<answer>7</answer>", "", {"require_think": False}, 1.0),
        ("length", "x" * 15, "", {"max_chars": 10}, -0.5),  # 5 over, ramp = max_chars = 10
        ("repetition", "a b c a b c", "", {}, -0.25),  # 4 trigrams, 3 distinct
    ],
)
def test_check_values(kind, completion, answer, settings, want):
    assert value(kind, completion, answer, **settings) == want


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("The answer is (C).", "C"),
        ("answer: D", "D"),
        ("Answer is option E", "E"),
        ("\\boxed{B} although the answer is (A)", "B"),  # boxed wins
        ("B", "B"),
        ("(D).", "D"),
        ("I doubt (A); (E) is right", "E"),  # the last parenthesised letter
        ("A cat sat on the mat", None),  # an article is no choice
        ("<answer>C</answer> and then (A)", "C"),  # only the answer block counts
        ("Answer: F", None),  # not an option
    ],
)
def test_choice_letter(text, want):
    assert choice_letter(text) == want


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("<think>a</think><answer>b</answer>", True),
        ("  <think>\na\n</think>\n\n<answer>\nb\n</answer>\n", True),
        ("<think>a</think><answer>b</answer> trailing", False),
        ("preamble <think>a</think><answer>b</answer>", False),
        ("<think>a</think><answer>b</answer><answer>c</answer>", False),
        ("<think>a</think><answer>  </answer>", False),
        ("<think> </think><answer>b</answer>", False),
        ("<answer>b</answer><think>a</think>", False),
    ],
)
def test_well_formed(text, ok):
    assert well_formed(text) is ok


def test_length_and_repetition_penalties():
    assert length_penalty(10, 10, 10) == 0.0  # at the target: no penalty
    assert length_penalty(13, 10, 4) == -0.75  # 3 of 4 ramp characters
    assert length_penalty(30, 10, 4) == -1.0  # past the ramp: the whole penalty
    assert length_penalty(11, 10, 0) == -1.0  # no ramp: a step
    assert repetition_penalty("one two", 3) == 0.0  # fewer words than n
    assert repetition_penalty("the cat sat on the mat", 3) == 0.0  # 4 distinct trigrams
    # "go go go go go": bigrams (go go) x4, 1 distinct -> -(1 - 1/4)
    assert repetition_penalty("Go go GO go go", 2) == -0.75


def test_reference_without_a_number_or_option_fails_the_completion():
    comp = Composition({"n": {"kind": "numeric"}})
    with pytest.raises(Exception, match="check n: reference answer 'none' has no number"):
        comp.score(None, ex("none"), "5")


# --------------------------------------------------------------------------- composition

CHECKS3 = {
    "correct": {"kind": "math", "weight": 1.0},
    "fmt": {"kind": "format", "weight": 0.2},
    "long": {"kind": "length", "weight": 0.1, "max_chars": 20, "ramp_chars": 20},
}


def test_composition_total_parts_and_bounds():
    comp = Composition(CHECKS3)
    assert comp.bounds() == pytest.approx((-0.1, 1.2))
    text = "<think>four plus three</think><answer>7</answer>"  # 48 chars: 28 over 20 -> -1
    s = comp.score(None, ex("7"), text)
    assert s.parts == {"correct": 1.0, "fmt": 1.0, "long": -1.0}
    assert s.reward == pytest.approx(1.0 + 0.2 - 0.1)
    assert s.reason == "correct"  # the first check with a reason
    s = comp.score(None, ex("8"), "<answer>7</answer>")  # 18 chars, wrong, no think block
    assert s.parts == {"correct": 0.0, "fmt": 0.0, "long": 0.0} and s.reward == 0.0
    assert s.reason == "wrong: got 7"


USER_MODULE = """
def shout(prompt, completion, answer):
    return 1.0 if completion.isupper() else -0.5

def broken(prompt, completion, answer):
    return 2.0 if completion == "two" else 0.0
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module importable by name here and in the workers (they get the trainer's sys.path)."""
    name = f"user_rewards_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name, tmp_path / f"{name}.py"


def test_pool_scores_parts_the_same_in_workers_and_in_process(user_module):
    name, file = user_module
    task = get_task("add", {"digits": 1})
    exs = task.examples("train", 4, seed=1)
    comps = [exs[0].answer, "WRONG", "two", f"<think>x</think><answer>{exs[3].answer}</answer>"]
    checks = {
        "correct": {"kind": "verifier"},
        "dotted": {"kind": "function", "path": f"{name}:shout", "weight": 0.5},
        "dots": {"kind": "function", "path": f"{name}.shout", "weight": 0.0},
        "file": {"kind": "function", "path": f"{file}:broken", "weight": 0.0},
    }
    got = {}
    for workers in (0, 1):
        with RewardPool(checks=checks, workers=workers, timeout_s=20.0) as pool:
            got[workers] = pool.score_batch(task, exs, comps)
    assert got[0] == got[1]  # Score equality ignores parts: compare them too
    assert [s.parts for s in got[0][0]] == [s.parts for s in got[1][0]]
    scores, counts = got[1]
    assert counts == {"errors": 1, "timeouts": 0, "crashes": 0, "restarts": 0}
    # "7"-like answer: correct 1, not upper -> -0.5; total 1 + 0.5 * -0.5
    assert scores[0].parts == {"correct": 1.0, "dotted": -0.5, "dots": -0.5, "file": 0.0}
    assert scores[0].reward == 0.75
    assert scores[1].parts == {"correct": 0.0, "dotted": 1.0, "dots": 1.0, "file": 0.0}
    assert scores[1].reward == 0.5
    assert scores[2].reward == 0.0 and scores[2].parts is None
    assert scores[2].reason == "error: check file: returned 2, outside [-1, 1]"
    assert scores[3].parts["correct"] == 1.0  # the add task's verifier reads the answer block


def test_failed_checks_are_dropped_with_on_error_drop(user_module):
    name, _ = user_module
    checks = {"f": {"kind": "function", "path": f"{name}:broken"}}
    with RewardPool(checks=checks, workers=1, on_error="drop") as pool:
        scores, counts = pool.score_batch(None, [ex("x"), ex("x")], ["two", "one"])
    assert [dropped(s) for s in scores] == [True, False] and counts["errors"] == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["rewards.checks.x.kind=nope"],
            "config error: rewards.checks.x.kind: got 'nope'; allowed: 'verifier', 'math', "
            "'exact', 'numeric', 'choice', 'format', 'length', 'repetition', 'function', 'model'",
        ),
        (["rewards.checks.x.kind=length"], "rewards.checks.x.max_chars: Field required"),
        (["rewards.checks.mean.kind=math"], "rewards.checks.mean: a check's name must be"),
        (["rewards.checks.x.kind=math", "rewards.checks.x.weight=-1"], "rewards.checks.x.weight"),
        (["rewards.function=a.b:c", "rewards.checks.x.kind=math"], "not both"),
    ],
)
def test_config_errors_name_the_field(overrides, message):
    from tandem.config import load_config

    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("check", "message"),
    [
        ({"kind": "function", "path": "no_such_module_xyz:f"}, "rewards.checks.c.path: no module"),
        ({"kind": "function", "path": "not a path"}, "rewards.checks.c.path: expected"),
        ({"kind": "model", "path": "/nonexistent"}, "rewards.checks.c.path: '/nonexistent' is not"),
    ],
)
def test_pool_refuses_bad_checks_in_one_line(check, message):
    with pytest.raises(ConfigError) as info:
        RewardPool(checks={"c": check}, workers=0)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- reward model


def _save_reward_model(path, num_labels: int, chat_template: str | None = None):
    """A random-init 2-layer Llama classifier with the tiny character tokenizer."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from tandem.model.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    if chat_template:
        tok.chat_template = chat_template
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=num_labels,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok


def _one_by_one(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def test_reward_model_one_label_is_sigmoid_of_the_logit_batched(tmp_path):
    model, tok = _save_reward_model(tmp_path / "rm", 1)
    exs = [ex("", "1+2="), ex("", "9+9="), ex("", "3+3=")]
    comps = ["3", "a much longer answer: 18", "6!"]
    checks = {"rm": {"kind": "model", "path": str(tmp_path / "rm"), "batch_size": 2}}
    with RewardPool(checks=checks, workers=1) as pool:  # padded batches of 2 and 1
        scores, counts = pool.score_batch(None, exs, comps)
    # no chat template: prompt and completion as a text pair (characters, concatenated)
    want = [
        torch.sigmoid(_one_by_one(model, tok(e.prompt + c)["input_ids"])[0]).item()
        for e, c in zip(exs, comps)
    ]
    assert [s.parts["rm"] for s in scores] == pytest.approx(want, abs=1e-5)
    assert [s.reward for s in scores] == pytest.approx(want, abs=1e-5)
    assert len(set(round(w, 6) for w in want)) == 3  # distinct texts, distinct rewards
    assert counts["errors"] == 0


def test_reward_model_label_and_chat_template(tmp_path):
    template = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}\n{% endfor %}"
    model, tok = _save_reward_model(tmp_path / "rm3", 3, chat_template=template)
    checks = {
        "rm": {"kind": "model", "path": str(tmp_path / "rm3"), "label": 2},
        "fmt": {"kind": "format", "weight": 0.5},
    }
    with RewardPool(checks=checks, workers=0) as pool:
        scores, _ = pool.score_batch(None, [ex("", "2+2=")], ["<think>t</think><answer>4</answer>"])
    text = "[user]2+2=\n[assistant]<think>t</think><answer>4</answer>\n"
    want = torch.softmax(_one_by_one(model, tok(text)["input_ids"]), -1)[2].item()
    assert scores[0].parts == pytest.approx({"rm": want, "fmt": 1.0}, abs=1e-5)
    assert scores[0].reward == pytest.approx(want + 0.5, abs=1e-5)
    with pytest.raises(ConfigError, match=r"rewards.checks.rm.label: the model has 3 labels"):
        RewardPool(checks={"rm": {"kind": "model", "path": str(tmp_path / "rm3")}}, workers=0)


# --------------------------------------------------------------------------- a real run


def test_run_logs_each_check_and_the_weighted_total(tmp_path):
    from tandem.train.loop import train

    cfg = tiny_config(
        tmp_path,
        "method=grpo",
        "steps=2",
        "eval.before=false",
        "eval.prompts=0",
        "rewards.workers=1",
        "rewards.checks.correct.kind=verifier",
        "rewards.checks.short.kind=length",
        "rewards.checks.short.max_chars=1",
        "rewards.checks.short.ramp_chars=2",
        "rewards.checks.short.weight=0.5",
    )
    train(cfg, log=lambda s: None)
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "reward/mean" in r]
    assert len(rows) == 2
    for r in rows:
        assert r["reward/errors"] == 0
        assert 0.0 <= r["reward/correct"] <= 1.0 and -1.0 <= r["reward/short"] <= 0.0
        assert r["reward/mean"] == pytest.approx(r["reward/correct"] + 0.5 * r["reward/short"])
    # random-init completions of up to 4 characters: some run past 1 character
    assert min(r["reward/short"] for r in rows) < 0
    assert not math.isnan(rows[-1]["reward/mean"])


def test_evaluation_scores_correctness_not_the_checks(warm_tiny, tmp_path):
    """With rewards.checks, eval/accuracy is still the task's verifier (the share correct): the
    same as a run without checks, where the checks' total alone would be <= 0 here."""
    from tandem.train.loop import train

    common = [f"model.name={warm_tiny}", "method=grpo", "steps=1", "eval.prompts=16"]
    train(tiny_config(tmp_path / "plain", *common), log=lambda s: None)
    checks = ["rewards.checks.short.kind=length", "rewards.checks.short.max_chars=1"]
    train(tiny_config(tmp_path / "checks", *common, *checks), log=lambda s: None)

    def acc(run):
        return [r["eval/accuracy"] for r in read_metrics(tmp_path / run / "metrics.jsonl")
                if "eval/accuracy" in r]  # fmt: skip

    assert acc("plain")[0] > 0
    assert acc("checks")[0] == acc("plain")[0]
