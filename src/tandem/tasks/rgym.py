"""Adapter for reasoning-gym (https://github.com/open-thought/reasoning-gym) datasets.

Task name ``rg:<dataset>`` for any reasoning-gym dataset, e.g. ``rg:chain_sum``,
``rg:basic_arithmetic``, ``rg:leg_counting``; `dataset_names()` lists them all.

Params are the dataset's config dataclass fields (its difficulty knobs, e.g. chain_sum's
``min_terms``/``max_terms``/``min_digits``/``max_digits``), except ``seed`` and ``size``, which
tandem controls; `dataset_params(name)` lists them with defaults. One extra param, ``ood``, is a
dict of config overrides for the "ood" split (e.g. ``{"min_digits": 5, "max_digits": 6}``).
Without it, "ood" is drawn like "eval" but from a different seed range.

Splits: each split generates from its own seed range (train, eval and ood never share a seed), and
in addition every problem is assigned to train or to the held-out part (eval / ood) by a hash of
its question text, so no eval/ood question text ever appears in train, for any seed. Within a
call, questions are distinct unless the dataset's problem space is smaller than `n`.

reasoning-gym has no worked solutions: ``Example.solution`` is the bare reference answer
(None where the dataset has no single reference answer, e.g. rubiks_cube; ``answer`` is then "").
With ``traces: true`` (rg:knights_knaves) it is a procedural worked solution ending with the
answer line (`tandem.tasks.traces`). ``levels`` (a list of config overrides, easiest first)
makes the train split a mix of difficulty levels, each example's ``meta["level"]`` its index:
the knob for a curriculum (`select: {kind: easy_to_hard, feature: meta.level}`).
``Example.meta["entry"]`` keeps the raw entry, which scoring needs.

Scoring calls the dataset's own ``score_answer(answer, entry)`` (it may give partial credit).
reasoning-gym expects the bare answer, so the answer is taken from the last
``<answer>...</answer>`` block if the completion has one; otherwise the best score over: the
whole stripped completion, its last line, and the text after a final "answer is" / "answer:" /
"=" (each also without a trailing period). A candidate on which ``score_answer`` raises counts
as 0; if it raises on all of them the exception propagates (`safe_score` turns it into
"error: ..."). Known upstream quirk: game_of_life_halting's score_answer gives 1.0 to any
non-empty answer when the reference is truthy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from functools import cache
from typing import Any

from tandem.errors import ConfigError
from tandem.tasks.base import (
    EVAL_FRACTION,
    Example,
    Score,
    Split,
    check_split,
    cycle_to,
    in_split,
)

PREFIX = "rg:"
_RESERVED = ("seed", "size")
# Each split draws from its own seed range: base seed = offset + (seed * 2**20) mod 2**30, so
# seeds 0..1023 never overlap within a split (seed 1024 repeats seed 0), and base + index stays
# below 2**32 (some datasets seed numpy with it).
_SEED_BLOCK = 2**20  # max items generated per call
_SEED_OFFSET = {"train": 0, "eval": 2**30, "ood": 2**31}
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_ANSWER_IS = re.compile(r"^.*(?:answer\s*(?:is|:)|=)\s*(.+?)\s*$", re.IGNORECASE | re.DOTALL)


def _registry() -> dict[str, tuple[type, type]]:
    from reasoning_gym.factory import DATASETS

    return DATASETS


def dataset_names() -> list[str]:
    """All reasoning-gym dataset names (use them as ``rg:<name>``)."""
    return sorted(_registry())


@cache
def dataset_params(name: str) -> dict[str, Any]:
    """The config fields of dataset `name` (usable as task params) with their defaults."""
    _, config_cls = _lookup(name)
    out = {}
    for f in dataclasses.fields(config_cls):
        if f.name in _RESERVED:
            continue
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = None
    return out


def _lookup(name: str) -> tuple[type, type]:
    registry = _registry()
    if name not in registry:
        close = [n for n in sorted(registry) if name[:4] in n][:8] or sorted(registry)[:12]
        raise ConfigError(
            f"task: unknown reasoning-gym dataset {name!r} (in 'rg:{name}'); e.g. "
            f"{', '.join(close)}; all {len(registry)} names: "
            "python -c 'import tandem.tasks.rgym as r; print(r.dataset_names())'"
        )
    return registry[name]


def _check_config(name: str, config: dict, field: str) -> None:
    allowed = dataset_params(name)
    for key in config:
        if key not in allowed:
            listing = ", ".join(f"{k}={v!r}" for k, v in allowed.items())
            why = "set by tandem" if key in _RESERVED else "unknown parameter"
            raise ConfigError(
                f"{field}.{key}: {why} for task 'rg:{name}'; allowed (with defaults): {listing}"
                + (
                    ""
                    if field.endswith(".ood")
                    else "; plus 'ood' (config overrides for ood), 'levels' (a list of them, for the "
                    "train split) and 'traces' (worked solutions)"
                )
            )


def extract_candidates(completion: str) -> list[str]:
    """Candidate bare answers in a completion, best guess first (see module docstring)."""
    tagged = _ANSWER_TAG.findall(completion)
    if tagged:
        return [tagged[-1].strip()]
    text = completion.strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    candidates = [text]
    if lines:
        candidates.append(lines[-1])
        match = _ANSWER_IS.search(lines[-1])
        if match:
            candidates.append(match.group(1).strip("*` "))
    candidates += [c[:-1].rstrip() for c in candidates if c.endswith(".")]
    return list(dict.fromkeys(c for c in candidates if c))


class ReasoningGymTask:
    """A reasoning-gym dataset as a tandem Task (see module docstring)."""

    def __init__(self, dataset: str, params: dict | None = None) -> None:
        self.dataset_name = dataset
        self.name = PREFIX + dataset
        self.dataset_cls, self.config_cls = _lookup(dataset)
        params = dict(params or {})
        ood = params.pop("ood", None) or {}
        levels = params.pop("levels", None) or []
        if not isinstance(levels, list) or not all(isinstance(lv, dict) for lv in levels):
            raise ConfigError(
                f"task.params.levels: must be a list of dicts of config overrides, got {levels!r}"
            )
        self.tracer = None
        if params.pop("traces", False):
            from tandem.tasks.traces import TRACERS

            if dataset not in TRACERS:
                raise ConfigError(
                    f"task.params.traces: no trace generator for 'rg:{dataset}'; "
                    f"allowed: {', '.join('rg:' + n for n in TRACERS)}"
                )
            self.tracer = TRACERS[dataset]
        if not isinstance(ood, dict):
            raise ConfigError(f"task.params.ood: must be a dict of config overrides, got {ood!r}")
        _check_config(dataset, params, "task.params")
        _check_config(dataset, ood, "task.params.ood")
        for i, lv in enumerate(levels):
            _check_config(dataset, lv, f"task.params.levels[{i}]")
        self.config = params
        self.ood_config = {**params, **ood}
        self.level_configs = [{**params, **lv} for lv in levels]
        doc = (self.dataset_cls.__doc__ or "").strip().splitlines()
        self.description = f"reasoning-gym {dataset}" + (f": {doc[0].strip()}" if doc else "")
        # datasets used only for score_answer (which may read the config); validates it early
        self._scorers = {"base": self._make("eval", 0, 1), "ood": self._make("ood", 0, 1)}
        for i, cfg in enumerate(self.level_configs):
            self._scorers[f"level{i}"] = self._make("train", 0, 1, cfg)

    def _make(self, split: str, seed: int, size: int, config: dict | None = None) -> Any:
        from reasoning_gym import create_dataset

        if config is None:
            config = self.ood_config if split == "ood" else self.config
        base = _SEED_OFFSET[split] + (seed * _SEED_BLOCK) % 2**30
        try:
            return create_dataset(self.dataset_name, seed=base, size=size, **config)
        except (AssertionError, ValueError, TypeError) as exc:
            in_ood = split == "ood" and self.ood_config != self.config
            field = "task.params.ood" if in_ood else "task.params"
            raise ConfigError(f"{field}: invalid config for task {self.name!r}: {exc}") from exc

    def examples(self, split: Split, n: int, seed: int = 0) -> list[Example]:
        """`n` examples of `split`; deterministic in `seed`. With `levels`, the train split
        holds n / len(levels) examples of each level (meta `level`: its index)."""
        check_split(split, n)
        if n == 0:
            return []
        if split == "train" and self.level_configs:
            k = len(self.level_configs)
            out: list[Example] = []
            for i, cfg in enumerate(self.level_configs):
                m = n // k + (1 if i < n % k else 0)
                if m:
                    # each level from its own seed (seeds stay below 1024, see _SEED_BLOCK)
                    out += self._draw(split, m, (seed + 97 * (i + 1)) % 1024, cfg, level=i)
            return out
        return self._draw(split, n, seed)

    def _draw(
        self, split: str, n: int, seed: int, config: dict | None = None, level: int | None = None
    ) -> list[Example]:
        keep = EVAL_FRACTION if split != "train" else 1 - EVAL_FRACTION
        size = min(_SEED_BLOCK, int(4 * n / keep) + 100)
        ds = self._make(split, seed, size, config)
        out: list[Example] = []
        seen: set[str] = set()
        for idx in range(size):
            entry = ds[idx]
            question = str(entry["question"])
            if question in seen or not in_split(f"rg:{question}", split):
                continue
            seen.add(question)
            out.append(self._example(entry, split, level))
            if len(out) == n:
                break
        if not out:
            raise ConfigError(
                f"task.params: task {self.name!r} produced no {split} examples in {size} tries; "
                "its problem space is too small to hold out an eval split, widen the config"
            )
        return cycle_to(random.Random(seed).sample(out, len(out)), n) if len(out) < n else out

    def _example(self, entry: dict, split: str, level: int | None = None) -> Example:
        answer = entry.get("answer")
        question = str(entry["question"])
        return Example(
            id=f"{self.name}:{hashlib.sha256(question.encode()).hexdigest()[:12]}",
            prompt=question,
            answer="" if answer is None else str(answer),
            solution=(
                None
                if answer is None
                else self.tracer(entry)
                if self.tracer is not None
                else str(answer)
            ),
            meta={"entry": entry, "split": split} | ({"level": level} if level is not None else {}),
        )

    def score(self, example: Example, completion: str) -> Score:
        """The dataset's ``score_answer`` on the extracted answer (best over candidates)."""
        entry = example.meta.get("entry")
        if entry is None:
            raise ValueError(f"example {example.id!r} has no reasoning-gym entry in meta")
        candidates = extract_candidates(completion)
        if not candidates:
            return Score(0.0, "no answer found")
        level = example.meta.get("level")
        split = example.meta.get("split")
        key = f"level{level}" if level is not None else ("ood" if split == "ood" else "base")
        scorer = self._scorers[key]
        best, best_text, failure = -1.0, candidates[0], None
        for text in candidates:
            try:
                reward = float(scorer.score_answer(answer=text, entry=entry) or 0.0)
            except Exception as exc:  # some score_answer raise on unparsable text
                failure = failure or exc
                continue
            if reward > best:
                best, best_text = reward, text
            if best >= 1.0:
                break
        if best < 0.0 and failure is not None:
            raise failure  # every candidate made score_answer raise; safe_score reports it
        if best >= 1.0:
            return Score(1.0, "correct")
        if best <= 0.0:  # show the most specific candidate
            return Score(0.0, f"wrong: got {_short(min(candidates, key=len))}")
        return Score(best, f"partial: {best:.2f} (got {_short(best_text)})")


def _short(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
