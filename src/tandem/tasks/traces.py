"""Procedural worked solutions for reasoning-gym datasets that come with answers only.

reasoning-gym gives a structured problem in each entry's metadata but no reasoning trace. For
a warm-up on a toy domain ("Warm Up Before You Train", arXiv 2505.13718, distills
Knights-and-Knaves traces from a strong model), `TRACERS[name](entry)` writes a trace by
exhaustive case analysis from the structure, ending with the answer line the dataset's scorer
accepts. `rg:<name>` with `traces: true` uses it as `Example.solution`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any


def _truth(stmt: tuple, world: tuple[bool, ...]) -> bool:
    """The truth of a knights_knaves statement (reasoning-gym's tuple form) in a world where
    world[i] is True when person i tells the truth."""
    op = stmt[0]
    if op == "telling-truth":
        return world[stmt[1]]
    if op == "lying":
        return not world[stmt[1]]
    if op == "not":
        return not _truth(stmt[1], world)
    if op == "and":
        return all(_truth(s, world) for s in stmt[1:])
    if op == "or":
        return any(_truth(s, world) for s in stmt[1:])
    if op == "->":
        return (not _truth(stmt[1], world)) or _truth(stmt[2], world)
    if op == "<=>":
        return _truth(stmt[1], world) == _truth(stmt[2], world)
    raise ValueError(f"unknown knights_knaves operator {op!r}")


def knights_knaves(entry: dict[str, Any]) -> str:
    """Try every assignment of truth-teller / liar in order; for each, the first person whose
    statement contradicts their type, or "consistent"; then the answer in the dataset's format
    ("A is a hero, and B is a villain.")."""
    meta = entry["metadata"]
    names = [str(n) for n in meta["names"]]
    terms = meta["knight_knave_terms"]
    kn, kv = str(terms["knight"]), str(terms["knave"])
    statements = meta["statements"]
    lines = ["Check each case; a " + kn + " only says true things, a " + kv + " only false ones."]
    found = None
    for world in itertools.product((True, False), repeat=len(names)):
        case = ", ".join(f"{n} {kn if w else kv}" for n, w in zip(names, world))
        bad = next((i for i, s in enumerate(statements) if _truth(s, world) != world[i]), None)
        if bad is None:
            lines.append(f"Case {case}: every statement fits.")
            found = found or world
        else:
            said = "true" if _truth(statements[bad], world) else "false"
            who = kn if world[bad] else kv
            lines.append(
                f"Case {case}: {names[bad]}'s statement is {said}; a {who} cannot say that."
            )
    if found is None:
        raise ValueError("knights_knaves entry has no consistent assignment")
    parts = [f"{n} is {terms['a_knight'] if w else terms['a_knave']}" for n, w in zip(names, found)]
    answer = (", ".join(parts[:-1]) + ", and " + parts[-1]) if len(parts) > 1 else parts[0]
    return "\n".join([*lines, answer + "."])


TRACERS: dict[str, Callable[[dict[str, Any]], str]] = {"knights_knaves": knights_knaves}

__all__ = ["TRACERS", "knights_knaves"]
