"""Arithmetic tasks: prompts, answers, determinism, split disjointness, the number verifier."""

import pytest

from tandem.errors import ConfigError
from tandem.tasks import get_task, list_tasks
from tandem.tasks.arith import wrong_answers


@pytest.mark.parametrize(
    ("name", "op"),
    [("add", lambda a, b: a + b), ("sub", lambda a, b: a - b), ("mul", lambda a, b: a * b)],
)
def test_prompts_and_answers(name, op):
    task = get_task(name)
    for ex in task.examples("train", 50, seed=1):
        a, b = ex.meta["operands"]
        assert 10 <= a <= 99 and 10 <= b <= 99
        assert int(ex.answer) == op(a, b)
        assert ex.solution == ex.answer
        assert ex.prompt.startswith("What is ") and ex.prompt.endswith(
            "? Answer with just the number."
        )
        assert task.score(ex, ex.solution).reward == 1.0
        assert len(ex.wrong) == 3 and ex.answer not in ex.wrong
        assert all(task.score(ex, w).reward == 0.0 for w in ex.wrong)


def test_sub_non_negative_and_chain():
    assert all(int(e.answer) >= 0 for e in get_task("sub").examples("train", 100))
    ex = get_task("chain", {"digits": 1}).examples("eval", 5)[0]
    assert sum(ex.meta["operands"]) == int(ex.answer) and ex.prompt.count("+") == 2


def test_plain_style():
    ex = get_task("add", {"style": "plain"}).examples("train", 1)[0]
    a, b = ex.meta["operands"]
    assert ex.prompt == f"{a}+{b}="


def test_deterministic():
    task = get_task("add")
    assert task.examples("train", 20, seed=3) == task.examples("train", 20, seed=3)
    assert task.examples("train", 20, seed=3) != task.examples("train", 20, seed=4)
    assert get_task("add").examples("eval", 10) == task.examples("eval", 10)


def test_train_eval_disjoint():
    task = get_task("add", {"digits": 1})  # 100 problems in all: the pools get exhausted
    train = {e.prompt for s in range(5) for e in task.examples("train", 200, seed=s)}
    evals = {e.prompt for s in range(5) for e in task.examples("eval", 200, seed=s)}
    assert train and evals and not train & evals
    assert len(train | evals) == 100


def test_ood_harder():
    task = get_task("mul", {"digits": 2})
    ood = task.examples("ood", 20)
    assert all(len(str(x)) == 3 for e in ood for x in e.meta["operands"])
    assert (
        get_task("add", {"digits": 2, "ood_digits": 5}).examples("ood", 1)[0].meta["operands"][0]
        >= 10_000
    )


def test_unique_when_pool_is_large():
    exs = get_task("add").examples("train", 500)
    assert len({e.id for e in exs}) == 500


@pytest.mark.parametrize(
    ("completion", "reward"),
    [
        ("68", 1.0),
        ("68\n", 1.0),
        ("The answer is 68.", 1.0),
        ("23 + 45 = 68", 1.0),
        ("**68**", 1.0),
        ("<answer>68</answer>", 1.0),
        ("I think 67, no wait, 68.", 1.0),
        ("68.5", 0.0),
        ("69", 0.0),
        ("-68", 0.0),
        ("", 0.0),
        ("no idea", 0.0),
        ("680", 0.0),
    ],
)
def test_verifier_tricky(completion, reward):
    task = get_task("add")
    ex = next(e for e in task.examples("train", 1000) if e.answer == "68")
    assert task.score(ex, completion).reward == reward


def test_verifier_negative_and_commas():
    task = get_task("sub")
    ex = task.examples("train", 1)[0]
    ex2 = type(ex)(id="x", prompt="?", answer="-1234")
    assert task.score(ex2, "It is -1,234.").reward == 1.0
    assert task.score(ex2, "It is 1,234.").reason == "wrong: got 1234"
    assert task.score(ex2, "nothing").reason == "no answer found"


def test_wrong_answers():
    assert wrong_answers(68) == [69, 86, 58]
    assert all(w >= 0 for w in wrong_answers(0)) and len(wrong_answers(0)) == 3
    assert len(set(wrong_answers(100))) == 3


def test_errors_are_helpful():
    with pytest.raises(ConfigError, match="add.*sub.*mul"):
        get_task("addition")
    with pytest.raises(ConfigError, match="digit.*allowed.*digits"):
        get_task("add", {"digit": 3})
    with pytest.raises(ConfigError, match="style.*chat.*plain"):
        get_task("add", {"style": "fancy"})
    with pytest.raises(ConfigError, match="digits"):
        get_task("add", {"digits": 0})
    with pytest.raises(ConfigError, match="split"):
        get_task("add").examples("test", 3)


def test_list_tasks():
    names = [name for name, _ in list_tasks()]
    assert {"add", "sub", "mul", "chain", "jsonl", "rg:<name>"} <= set(names)
