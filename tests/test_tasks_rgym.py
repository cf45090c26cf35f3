"""reasoning-gym adapter: gold answers score 1, wrong ones < 1, helpful config errors."""

import pytest

from tandem.errors import ConfigError
from tandem.tasks import get_task
from tandem.tasks.rgym import dataset_names, dataset_params, extract_candidates

DATASETS = ["basic_arithmetic", "chain_sum", "leg_counting"]


@pytest.mark.parametrize("name", DATASETS)
def test_gold_scores_one_and_wrong_less(name):
    task = get_task(f"rg:{name}")
    exs = task.examples("train", 10) + task.examples("eval", 5) + task.examples("ood", 5)
    for ex in exs:
        assert ex.prompt and ex.answer and ex.solution == ex.answer
        assert task.score(ex, ex.solution).reward == 1.0
        assert task.score(ex, f"Let me think.\n<answer>{ex.answer}</answer>").reward == 1.0
        assert task.score(ex, f"The answer is {ex.answer}.").reward == 1.0
        assert task.score(ex, "123456789").reward < 1.0
        assert task.score(ex, "").reward == 0.0


def test_deterministic_and_disjoint():
    task = get_task("rg:chain_sum", {"min_terms": 2, "max_terms": 2, "max_digits": 1})
    assert task.examples("train", 30, seed=1) == task.examples("train", 30, seed=1)
    train = {e.prompt for s in range(3) for e in task.examples("train", 100, seed=s)}
    evals = {e.prompt for s in range(3) for e in task.examples("eval", 100, seed=s)}
    assert evals and not train & evals


def test_params_and_ood_overrides():
    task = get_task(
        "rg:chain_sum",
        {"min_digits": 1, "max_digits": 1, "ood": {"min_digits": 4, "max_digits": 4}},
    )
    assert all(e.meta["entry"]["metadata"]["num_digits"] == 1 for e in task.examples("eval", 10))
    ood = task.examples("ood", 10)
    assert all(e.meta["entry"]["metadata"]["num_digits"] == 4 for e in ood)
    assert all(task.score(e, e.answer).reward == 1.0 for e in ood)


def test_bad_name_and_params():
    with pytest.raises(ConfigError, match=r"chain_sum.*dataset_names"):
        get_task("rg:chain_summ")
    with pytest.raises(ConfigError, match=r"task.params.max_term.*max_terms"):
        get_task("rg:chain_sum", {"max_term": 3})
    with pytest.raises(ConfigError, match=r"task.params.ood.foo.*min_digits"):
        get_task("rg:chain_sum", {"ood": {"foo": 1}})
    with pytest.raises(ConfigError, match=r"seed.*set by tandem"):
        get_task("rg:chain_sum", {"seed": 3})
    with pytest.raises(ConfigError, match=r"invalid config"):
        get_task("rg:chain_sum", {"min_terms": 0})


def test_introspection():
    assert "leg_counting" in dataset_names() and len(dataset_names()) > 50
    assert dataset_params("chain_sum")["max_terms"] == 6


def test_extract_candidates():
    assert extract_candidates("x <answer> 5 </answer> y <answer>7</answer>") == ["7"]
    assert "42" in extract_candidates("Some work.\nSo the answer is 42.")
    assert extract_candidates("  ") == []


def test_raising_score_answer_is_isolated():
    from tandem.rewards import safe_score

    task = get_task("rg:prime_factorization")  # its score_answer raises on non-numbers
    ex = task.examples("eval", 1)[0]
    assert ex.id == task.examples("eval", 1)[0].id and ex.id.startswith("rg:prime_factorization:")
    assert safe_score(task, ex, ex.answer).reward == 1.0
    assert safe_score(task, ex, "zzz").reason.startswith("error: ValueError")
