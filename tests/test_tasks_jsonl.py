"""jsonl task: loading, splitting, verifiers, and DataError locations."""

import json

import pytest

from tandem.errors import ConfigError, DataError
from tandem.tasks import get_task


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def good_lines(n=50):
    return [json.dumps({"prompt": f"What is {i} + 1?", "answer": str(i + 1)}) for i in range(n)]


def test_good_file(tmp_path):
    lines = good_lines()
    lines[0] = json.dumps(
        {
            "prompt": "Capital of France?",
            "answer": "Paris",
            "solution": "Paris.",
            "wrong": ["Rome"],
            "topic": "geo",
        }
    )
    task = get_task("jsonl", {"path": write(tmp_path / "f.jsonl", lines)})
    train, evals = task.examples("train", 100), task.examples("eval", 100)
    assert len(train) == 100  # the finite pool repeats
    assert not {e.prompt for e in train} & {e.prompt for e in evals}
    assert {e.prompt for e in train} | {e.prompt for e in evals} == {
        json.loads(x)["prompt"] for x in lines
    }
    assert task.examples("train", 7, seed=2) == task.examples("train", 7, seed=2)
    ex = next(e for e in task.examples("train", 100) + evals if e.answer == "Paris")
    assert ex.wrong == ("Rome",) and ex.meta == {"topic": "geo"} and ex.solution == "Paris."
    assert task.score(ex, "Paris").reward == 1.0
    assert task.score(ex, "Rome").reward == 0.0


def test_eval_path_and_verifier(tmp_path):
    main = write(tmp_path / "a.jsonl", good_lines(10))
    ev = write(tmp_path / "b.jsonl", good_lines(3))
    task = get_task("jsonl", {"path": main, "eval_path": ev, "verifier": "number"})
    assert len({e.prompt for e in task.examples("train", 30)}) == 7
    ex = task.examples("eval", 1)[0]
    assert task.score(ex, f"It is {ex.answer}.").reward == 1.0
    assert task.examples("ood", 2)  # falls back to eval


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "invalid JSON"),
        ('{"answer": "1"}', "missing required field 'prompt'"),
        ('{"prompt": "hi"}', "missing required field 'answer'"),
        ('{"prompt": 3, "answer": "1"}', "'prompt' must be"),
        ('{"prompt": "hi", "answer": "1", "wrong": "x"}', "'wrong' must be"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_line(tmp_path, bad, message):
    lines = good_lines(2) + [bad]
    path = write(tmp_path / "file.jsonl", lines)
    with pytest.raises(DataError, match="file.jsonl:3") as info:
        get_task("jsonl", {"path": path})
    assert message in str(info.value)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="path"):
        get_task("jsonl", {})
    with pytest.raises(ConfigError, match="not found"):
        get_task("jsonl", {"path": str(tmp_path / "missing.jsonl")})
    path = write(tmp_path / "f.jsonl", good_lines(3))
    with pytest.raises(ConfigError, match="verifier.*exact.*number.*math"):
        get_task("jsonl", {"path": path, "verifier": "fuzzy"})
    with pytest.raises(ConfigError, match="allowed.*eval_path"):
        get_task("jsonl", {"path": path, "evalpath": path})
