"""Task `champ`: competition-style math problems from CHAMP (the `champ-dataset` package).

CHAMP ("Concept and Hint-Augmented Math Problems", Mao et al. 2024, arXiv 2406.18321) has 270
problems in five categories (Combinatorics 40, Inequality 50, Number-Theory 80, Polynomial 50,
Sequence 50), each with a reference answer, a step-by-step solution, and a list of hints and
general math concepts that help with it. The data ships inside the package (``v0.json``).

Examples: ``prompt`` is CHAMP's own instruction ("Solve the following problem. Make sure to show
your work before giving the final answer.") + the problem + "Put your final answer in
\\boxed{}."; with ``hints`` the problem's concepts and/or hints follow as a numbered list, as
in the paper's "You may find the following information useful" prompts. ``solution`` is the
reference solution's steps, one per line, then ``Final answer: \\boxed{<answer>}`` (so a
demonstration scores 1). ``meta`` holds ``category``, ``kind``, ``alternatives``,
``raw_answer``, ``concepts`` and ``hints`` (their texts).

Answers: CHAMP's answers are free text written for a human (or model) judge, e.g. "@@C(10, 5)@@,
or equivalently @@252@@" or "3 is the only possible value". tandem reduces each to a list of
accepted forms (``meta["alternatives"]``): it splits ", or equivalently" / ", or an equivalent
form such as" into alternatives, drops ", or approximately ...", a trailing "(i.e., ...)" /
"(none ...)" / "(no ...)" remark, and unwraps "X is the only possible value", "The limit exists
and is equal to X", "The only possible value for the limit is X" and "N values/pairs/roots/
inequalities/times". Each problem then has one ``kind``:

* ``number``: a single number (e.g. "239", "-9");
* ``expression``: a single formula (e.g. "2^(n-1)", "sqrt(3)/3", "a=3, b=-4");
* ``yesno``: "Yes" or "No";
* ``text``: everything else (solution sets like "x=16 and x=81", sentences like "The sequence
  is not periodic"). Not kept by default: only a judge can grade them reliably.

Scoring: ``number`` and ``expression`` use math-verify (`tandem.rewards.verifiers.math_equal`,
which reads ``\\boxed{}``, "the answer is", LaTeX or plain expressions): 1 if the completion
equals any alternative. ``yesno``: the final answer (see `final_answer`) must start with the
right word. ``text``: the final answer must equal an alternative after
`tandem.tasks.answers.normalize_answer` (lower case; no spaces, ``$``, ``@@`` or trailing
period): exact, so it undercounts correct answers. The final answer is
`tandem.tasks.answers.final_answer`: the last ``\\boxed{}``, else the last ``<answer>`` block,
else the text after "answer is" / "answer:" on the last line, else the last line.

Splits: ``ood`` is a whole category (``ood_category``, default "Sequence") that train and eval
never contain, so it measures transfer to unseen concepts; train and eval split the other
categories by a stable hash of the problem id (about 20% eval). With ``ood_category: none``
every category is in train/eval and "ood" is the eval split. The pools are small (with the
default kinds: about 150 train, 40 eval and 40 ood problems): `examples` shuffles a pool by
`seed` and repeats it (reshuffled) when `n` exceeds its size. Some CHAMP problems are variants
of one another (e.g. P_Combinatorics_1 and _26 share the answer 239), which a hash split may
put on both sides.
"""

from __future__ import annotations

import random
import re
from functools import cache
from typing import Any

from tandem.errors import ConfigError, DataError
from tandem.rewards.verifiers import math_equal
from tandem.tasks.answers import final_answer, normalize_answer
from tandem.tasks.base import Example, Score, Split, check_params, check_split, is_eval_key

CATEGORIES = ("Combinatorics", "Inequality", "Number-Theory", "Polynomial", "Sequence")
KINDS = ("number", "expression", "yesno", "text")
HINTS = ("none", "concepts", "hints", "both")
DEFAULT_KINDS = ("number", "expression", "yesno")
PARAMS = {
    "kinds": f"answer kinds to keep, a list from {list(KINDS)}; default {list(DEFAULT_KINDS)}",
    "categories": f"categories to use, a list from {list(CATEGORIES)}; default all",
    "ood_category": "category held out as the ood split (never in train/eval), or 'none' "
    "(ood = eval); default 'Sequence'",
    "hints": f"add CHAMP's concepts/hints to the prompt: one of {list(HINTS)}; default 'none'",
}
INSTRUCTION = (
    "Solve the following problem. Make sure to show your work before giving the final answer."
)
BOXED = "Put your final answer in \\boxed{}."

_ALT_SPLIT = re.compile(r",?\s+or (?:equivalently|an equivalent form such as)\s+", re.IGNORECASE)
_APPROX = re.compile(r",?\s+or approximately\s+.*$", re.IGNORECASE | re.DOTALL)
_REMARK = re.compile(r"\s+\((?:i\.e\.|none|no )", re.IGNORECASE)
_UNWRAP = (
    re.compile(r"^(.+?) is the only possible value$", re.IGNORECASE),
    re.compile(r"^the limit exists and is equal to (.+)$", re.IGNORECASE),
    re.compile(r"^the only possible value for the limit is (.+)$", re.IGNORECASE),
    re.compile(r"^(.+?) (?:values|pairs|roots|inequalities|times)$", re.IGNORECASE),
)
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")
_SPAN = re.compile(r"^@@([^@]+)@@$")


def _alternatives(raw: str) -> tuple[str, list[str]]:
    """(kind, accepted forms) of a CHAMP raw answer (``@@`` marks math); see module docstring."""
    text = _APPROX.sub("", raw.strip())
    alts, kinds = [], []
    for part in _ALT_SPLIT.split(text):
        part = _REMARK.split(part, maxsplit=1)[0].strip().rstrip(".")
        for pattern in _UNWRAP:
            match = pattern.match(part)
            if match:
                part = match.group(1).strip()
                break
        span = _SPAN.match(part)
        plain = part.replace("@@", "").strip()
        if _NUMBER.match(plain):
            kinds.append("number")
        elif span:
            kinds.append("expression")
        elif plain.lower() in ("yes", "no"):
            kinds.append("yesno")
            plain = plain.capitalize()
        else:
            kinds.append("text")
        alts.append(plain)
    # the problem's kind is its first alternative's (later ones are equivalent forms)
    return kinds[0], alts


@cache
def _load() -> Any:
    import champ_dataset

    try:
        return champ_dataset.load("v0")
    except (OSError, ValueError) as exc:
        raise DataError(f"champ: could not read the CHAMP data in champ-dataset: {exc}") from exc


def _list_param(params: dict, key: str, allowed: tuple[str, ...], default: tuple[str, ...]) -> list:
    value = params.get(key, list(default))
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not value or any(v not in allowed for v in value):
        raise ConfigError(
            f"task.params.{key}: must be a non-empty list from {list(allowed)}, got {value!r}"
        )
    return list(value)


class ChampTask:
    """CHAMP math problems (see module docstring)."""

    name = "champ"

    def __init__(self, params: dict | None = None) -> None:
        params = check_params("champ", params, PARAMS)
        self.kinds = _list_param(params, "kinds", KINDS, DEFAULT_KINDS)
        categories = _list_param(params, "categories", CATEGORIES, CATEGORIES)
        ood = params.get("ood_category", "Sequence")
        if ood is None or ood == "none":
            ood = None
        elif ood not in CATEGORIES:
            raise ConfigError(
                f"task.params.ood_category: must be one of {[*CATEGORIES, 'none']}, got {ood!r}"
            )
        self.hints = params.get("hints", "none")
        if self.hints not in HINTS:
            raise ConfigError(
                f"task.params.hints: must be one of {list(HINTS)}, got {self.hints!r}"
            )
        self.ood_category = ood
        self.description = (
            f"CHAMP math problems ({', '.join(self.kinds)} answers; ood: {ood or 'the eval split'})"
        )
        data = _load()
        self.pools: dict[str, list[Example]] = {"train": [], "eval": [], "ood": []}
        for problem in data.problems.values():
            ex = self._example(data, problem)
            if ex.meta["kind"] not in self.kinds:
                continue
            if ood is not None and problem.category == ood:
                self.pools["ood"].append(ex)
            elif problem.category in categories:
                held_out = is_eval_key(f"champ:{problem.identifier}")
                self.pools["eval" if held_out else "train"].append(ex)
        if ood is None:
            self.pools["ood"] = self.pools["eval"]

    def _example(self, data: Any, problem: Any) -> Example:
        kind, alts = _alternatives(problem.raw_answer)
        concepts = [data[c].text for c in problem.ch_list if c.startswith("C")]
        hints = [data[h].text for h in problem.ch_list if h.startswith("H")]
        shown = {"none": [], "concepts": concepts, "hints": hints, "both": []}[self.hints]
        if self.hints == "both":
            shown = [data[c].text for c in problem.ch_list]  # CHAMP's order
        prompt = f"{INSTRUCTION}\n\n{problem.text}"
        if shown:
            listing = "\n".join(f"{i + 1}. {t}" for i, t in enumerate(shown))
            prompt += f"\n\nYou may find the following information useful:\n\n{listing}"
        prompt += f"\n\n{BOXED}"
        steps = "\n".join(step.text for step in problem.solution.steps)
        return Example(
            id=f"champ:{problem.identifier}",
            prompt=prompt,
            answer=alts[0],
            solution=f"{steps}\nFinal answer: \\boxed{{{alts[0]}}}",
            meta={
                "category": problem.category,
                "kind": kind,
                "alternatives": alts,
                "raw_answer": problem.answer,
                "concepts": concepts,
                "hints": hints,
            },
        )

    def examples(self, split: Split, n: int, seed: int = 0) -> list[Example]:
        """`n` examples of `split`, shuffled by `seed`, repeating the pool when needed."""
        check_split(split, n)
        pool = self.pools[split]
        if n and not pool:
            raise ConfigError(
                f"task.params: the champ {split} split is empty with kinds={self.kinds} "
                f"(ood_category={self.ood_category!r}); widen kinds or categories"
            )
        rng = random.Random(f"tandem.champ:{split}:{seed}")
        out: list[Example] = []
        while len(out) < n:
            out += rng.sample(pool, len(pool))
        return out[:n]

    def score(self, example: Example, completion: str) -> Score:
        """1 if the completion's final answer matches one of the example's accepted forms."""
        kind = example.meta.get("kind", "expression")
        alts = example.meta.get("alternatives") or [example.answer]
        if kind in ("number", "expression"):
            first = None
            for alt in alts:
                verdict = math_equal(completion, alt)
                if verdict.reward >= 1.0:
                    return verdict
                first = first or verdict
            return first
        got = final_answer(completion)
        if not got:
            return Score(0.0, "no answer found")
        if kind == "yesno":
            words = re.findall(r"[a-z]+", got.lower())
            if words and words[0] in ("yes", "no"):
                ok = words[0] == alts[0].lower()
                return Score(1.0, "correct") if ok else Score(0.0, f"wrong: got {words[0]}")
            return Score(0.0, f"wrong: got {got[:40]}")
        if any(normalize_answer(got) == normalize_answer(alt) for alt in alts):
            return Score(1.0, "correct")
        return Score(0.0, f"wrong: got {got[:40]}")
