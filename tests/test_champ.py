"""Task `champ`: real CHAMP problems load, answers are reduced and scored, splits are disjoint."""

import pytest

from tandem.errors import ConfigError
from tandem.tasks import get_task
from tandem.tasks.answers import final_answer, last_boxed
from tandem.tasks.champ import _alternatives


@pytest.fixture(scope="module")
def champ():
    return get_task("champ")


def by_id(task, pid):
    pools = [ex for pool in task.pools.values() for ex in pool]
    return next(ex for ex in pools if ex.id == f"champ:{pid}")


def test_real_problems_load(champ):
    sizes = {split: len(pool) for split, pool in champ.pools.items()}
    # 225 of CHAMP's 270 problems have number / expression / yes-no answers; Sequence (38 of
    # them) is the default ood category
    assert sum(sizes.values()) == 225 and sizes["ood"] == 38
    assert sizes["train"] > 100 and sizes["eval"] > 30
    ex = by_id(champ, "P_Combinatorics_1")
    assert "strings of length 6" in ex.prompt and "\\boxed{}" in ex.prompt
    assert ex.answer == "239" and ex.meta["kind"] == "number"
    assert ex.meta["category"] == "Combinatorics" and ex.meta["hints"]
    assert ex.solution.endswith("Final answer: \\boxed{239}")
    assert "@@" not in ex.prompt + ex.solution
    assert len(champ.examples("eval", 100, seed=1)) == 100  # the pool repeats


def test_correct_scores_one_wrong_scores_zero(champ):
    number = by_id(champ, "P_Combinatorics_1")
    assert champ.score(number, "... so there are \\boxed{239} strings.").reward == 1.0
    assert champ.score(number, "\\boxed{238}").reward == 0.0
    # "@@C(10, 5)@@, or equivalently @@252@@": either form counts
    binom = by_id(champ, "P_Combinatorics_2")
    assert binom.meta["alternatives"] == ["C(10, 5)", "252"]
    assert champ.score(binom, "The answer is \\boxed{252}.").reward == 1.0
    assert champ.score(binom, "\\boxed{251}").reward == 0.0
    formula = by_id(champ, "P_Inequality_18")  # sqrt(3)/3, or equivalently 1/sqrt(3)
    assert champ.score(formula, "\\boxed{\\frac{\\sqrt{3}}{3}}").reward == 1.0
    assert champ.score(formula, "\\boxed{\\sqrt{3}}").reward == 0.0
    yesno = by_id(champ, "P_Inequality_28")  # "Yes"
    assert champ.score(yesno, "Hence such numbers exist. \\boxed{Yes}").reward == 1.0
    assert champ.score(yesno, "Final answer: No, it cannot.").reward == 0.0
    assert champ.score(yesno, "").reason == "no answer found"


def test_every_demonstration_scores_one():
    task = get_task("champ", {"ood_category": "none", "kinds": ["number", "expression", "yesno"]})
    for ex in task.pools["train"] + task.pools["eval"]:
        assert task.score(ex, ex.solution).reward == 1.0, ex.id


def test_splits_are_disjoint(champ):
    train = {ex.id for ex in champ.pools["train"]}
    held = {ex.id for ex in champ.pools["eval"]}
    ood = {ex.id for ex in champ.pools["ood"]}
    assert not train & held and not train & ood and not held & ood
    assert {ex.meta["category"] for ex in champ.pools["ood"]} == {"Sequence"}
    assert "Sequence" not in {ex.meta["category"] for ex in champ.pools["train"]}
    # no ood category: ood is the eval split, still disjoint from train
    flat = get_task("champ", {"ood_category": "none"})
    assert {ex.id for ex in flat.pools["ood"]} == {ex.id for ex in flat.pools["eval"]}
    assert not {ex.id for ex in flat.pools["train"]} & {ex.id for ex in flat.pools["eval"]}


def test_answer_reduction():
    assert _alternatives("3 is the only possible value") == ("number", ["3"])
    assert _alternatives("The limit exists and is equal to @@2/3@@") == ("expression", ["2/3"])
    assert _alternatives("@@5/14@@, or approximately 35.7%") == ("expression", ["5/14"])
    assert _alternatives("100 (i.e., all values)") == ("number", ["100"])
    assert _alternatives("No") == ("yesno", ["No"])
    assert _alternatives("@@x=16@@ and @@x=81@@")[0] == "text"


def test_hints_text_kind_and_params():
    hinted = get_task("champ", {"hints": "both", "categories": ["Combinatorics"]})
    ex = next(e for e in hinted.pools["train"] + hinted.pools["eval"])
    assert "You may find the following information useful:\n\n1. " in ex.prompt
    text = get_task("champ", {"kinds": ["text"], "ood_category": "none"})
    ex = by_id(text, "P_Sequence_17")  # "The sequence is not periodic"
    assert text.score(ex, "So \\boxed{The sequence is not periodic.}").reward == 1.0
    assert text.score(ex, "\\boxed{The sequence is periodic}").reward == 0.0
    with pytest.raises(ConfigError, match="task.params.hint: unknown parameter"):
        get_task("champ", {"hint": "both"})
    with pytest.raises(ConfigError, match="task.params.ood_category: must be one of"):
        get_task("champ", {"ood_category": "Geometry"})
    with pytest.raises(ConfigError, match="task.params.kinds"):
        get_task("champ", {"kinds": ["proof"]})


def test_final_answer_extraction():
    assert last_boxed("a \\boxed{\\frac{1}{2}} b \\boxed{x^{2}}") == "x^{2}"
    assert final_answer("work\nThe answer is 42.") == "42."
    assert final_answer("<answer> 7 </answer> trailing") == "7"
    assert final_answer("") == ""
