"""maj@k and pass@k by hand, vote keys, and `tandem eval` / `tandem tasks` end to end."""

import itertools
import json
import random
from collections import Counter

import pytest

from tandem.cli import main
from tandem.errors import ConfigError
from tandem.eval.evaluate import maj_at_k, pass_at_k
from tandem.eval.run import TaskSpec, add_params, labels
from tandem.tasks.answers import vote_answer
from tests.conftest import tiny_config


@pytest.mark.parametrize(
    "answers, correct, k, expected",
    [
        # k-subsets {A,A}: A wins (1); {A,B} twice: tie, A wins half the time -> (1+.5+.5)/3
        (["A", "A", "B"], [1, 1, 0], 2, 2 / 3),
        (["A", "B", "B", "C"], [1, 0, 0, 0], 1, 1 / 4),  # maj@1 = fraction correct
        (["A", "B", "B"], [1, 0, 0], 3, 0.0),  # k = n: the plain majority, B
        (["A", "A", "B"], [1, 1, 0], 3, 1.0),
        (["A", "B"], [1, 0], 2, 0.5),  # a two-way tie
        # None abstains: {N,N} has no winner (0); {N,A} twice: A wins -> 2/3
        ([None, None, "A"], [0, 0, 1], 2, 2 / 3),
        # two correct spellings of one answer ("252" and "c(10,5)") are separate votes:
        # subsets of 2 from [252, c, 7, 7]: {252,c} tie of two correct: 1; {252,7}x2, {c,7}x2:
        # ties, 1/2 each; {7,7}: 0 -> (1 + 4 * 0.5) / 6
        (["252", "c", "7", "7"], [1, 1, 0, 0], 2, 3 / 6),
    ],
)
def test_maj_at_k_by_hand(answers, correct, k, expected):
    assert maj_at_k(answers, correct, k) == pytest.approx(expected, abs=1e-12)


def _maj_reference(answers, correct, k):
    """Enumerate every k-subset: the mean of (winning answers' correctness) / (#winners)."""
    quality = {
        a: sum(c for b, c in zip(answers, correct) if b == a) / answers.count(a)
        for a in set(answers)
    }
    total, count = 0.0, 0
    for subset in itertools.combinations(range(len(answers)), k):
        count += 1
        votes = Counter(answers[i] for i in subset if answers[i] is not None)
        if votes:
            top = max(votes.values())
            winners = [a for a, v in votes.items() if v == top]
            total += sum(quality[a] for a in winners) / len(winners)
    return total / count


def test_maj_at_k_matches_enumeration():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 9)
        answers = [rng.choice(["a", "b", "c", None]) for _ in range(n)]
        correct = [float(a == "a") for a in answers]
        k = rng.randint(1, n)
        assert maj_at_k(answers, correct, k) == pytest.approx(
            _maj_reference(answers, correct, k), abs=1e-12
        )


def test_maj_and_pass_agree_at_one_and_differ_above():
    answers, correct = ["1", "2", "2", "3", "2"], [1, 0, 0, 0, 0]
    assert maj_at_k(answers, correct, 1) == pytest.approx(pass_at_k(5, 1, 1))  # both c/n = 0.2
    assert pass_at_k(5, 1, 3) == pytest.approx(1 - 4 / 10)  # 1 - C(4,3)/C(5,3)
    assert maj_at_k(answers, correct, 3) < 0.2  # the wrong "2" dominates the vote
    with pytest.raises(ValueError, match="at least 6 samples"):
        maj_at_k(answers, correct, 6)


def test_vote_answer():
    assert vote_answer("so \\boxed{1,000}") == "1000"
    assert vote_answer("The answer is 42 apples.") == "42"
    assert vote_answer("<answer> Paris </answer>") == "paris"
    assert vote_answer("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert vote_answer("   ") is None


def test_task_specs():
    specs = [TaskSpec.parse("add digits=3 style=plain"), TaskSpec.parse("champ")]
    assert specs[0].params == {"digits": 3, "style": "plain"}
    specs = add_params(specs, ["champ.kinds=[number]", "add.digits=2"])
    assert specs[1].params == {"kinds": ["number"]} and specs[0].params["digits"] == 2
    with pytest.raises(ConfigError, match="name the task"):
        add_params(specs, ["digits=1"])
    with pytest.raises(ConfigError, match="must look like key=value"):
        TaskSpec.parse("add digits")
    twice = [TaskSpec.parse("add digits=1"), TaskSpec.parse("add digits=2")]
    assert labels(twice) == ["add digits=1", "add digits=2"]


def test_eval_tiny_two_tasks(tmp_path, capsys):
    out = tmp_path / "e.json"
    argv = ["eval", "tiny", "--task", "add digits=1 style=plain", "--task", "champ"]
    argv += ["--prompts", "3", "--max-new-tokens", "4", "--pass-k", "1,2", "--maj-k", "2"]
    argv += ["--pass-samples", "2", "--out", str(out)]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    assert set(doc["results"]) == {"add", "champ"}
    for task in ("add", "champ"):
        assert set(doc["results"][task]) == {"eval", "ood"}
        row = doc["results"][task]["eval"]
        assert row["prompts"] == 3
        for metric in ("accuracy", "pass@1", "pass@2", "maj@2"):
            assert 0.0 <= row[metric] <= 1.0
        assert 0 < row["len_mean"] <= 4
    assert doc["tasks"]["add"]["params"] == {"digits": 1, "style": "plain"}
    screen = capsys.readouterr().out
    assert "accuracy" in screen and "maj@2" in screen and "champ" in screen
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left nothing behind


def test_eval_run_directory(tmp_path, capsys):
    from tandem.train.loop import train

    run = tmp_path / "run"
    train(tiny_config(run, "method=sft", "steps=1", "eval.before=false"), log=lambda s: None)
    assert main(["eval", str(run), "--prompts", "2", "--splits", "eval"]) == 0
    doc = json.loads((run / "eval.json").read_text())  # default --out for a run
    assert doc["run_dir"] == str(run) and doc["checkpoint"].endswith("step_000001")
    assert set(doc["results"]) == {"add"}  # the run's task, with its params
    assert doc["tasks"]["add"]["params"] == {"style": "plain", "digits": 1, "ood_digits": 2}
    assert doc["settings"]["max_new_tokens"] == 4  # the run's
    assert "add" in capsys.readouterr().out


def test_tasks_listing_shows_params(capsys):
    assert main(["tasks"]) == 0
    listing = capsys.readouterr().out
    for word in ("champ", "ood_category", "jsonl", "verifier", "digits", "rg:<name>", "levels"):
        assert word in listing
    assert main(["tasks", "rg:chain_sum"]) == 0
    assert "min_terms            default 2" in capsys.readouterr().out
    assert main(["tasks", "--rg"]) == 0
    assert "rg:chain_sum" in capsys.readouterr().out
    assert main(["tasks", "nope"]) == 2


def test_task_params_of_a_registered_task():
    from tandem.tasks import register_task
    from tandem.tasks.registry import _REGISTERED_PARAMS, _TASKS, task_params

    register_task("tmp_add", "addition again", _TASKS["add"][1], params={"digits": "operand size"})
    try:
        assert task_params("tmp_add") == {"digits": "operand size"}
        register_task("tmp_bare", "no params documented", _TASKS["add"][1])
        assert task_params("tmp_bare") == {}  # no module tandem.tasks.tmp_bare, no params given
    finally:
        for name in ("tmp_add", "tmp_bare"):
            _TASKS.pop(name, None)
            _REGISTERED_PARAMS.pop(name, None)


def test_eval_lora_run_merges_the_adapter(tmp_path):
    from tandem.train.loop import train

    run = tmp_path / "lora"
    args = ["method=sft", "steps=1", "eval.before=false", "model.lora.r=4", "model.lora.alpha=8"]
    train(tiny_config(run, *args), log=lambda s: None)
    assert (run / "checkpoints" / "step_000001" / "adapter").is_dir()
    out = tmp_path / "lora.json"
    argv = ["eval", str(run), "--prompts", "2", "--splits", "eval", "--out", str(out)]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    assert doc["model_path"].endswith("adapter") and doc["results"]["add"]["eval"]["prompts"] == 2


def test_training_logs_maj_at_k(tmp_path):
    from tandem.report.metrics import read_metrics
    from tandem.train.loop import train

    from .conftest import tiny_config

    cfg = tiny_config(
        tmp_path, "method=sft", "steps=1", "eval.prompts=4", "eval.pass_k=[2]", "eval.maj_k=[2]"
    )
    train(cfg, log=lambda s: None)
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "eval/maj@2" in r]
    assert [r["step"] for r in rows] == [0, 1]
    assert all(0.0 <= r["eval/maj@2"] <= 1.0 and "eval/pass@2" in r for r in rows)
