"""Filters: registered functions that keep or drop a step's items before they are collated
(`objective.filters`, applied in order). One signature: ``fn(items, **settings) -> (items,
metrics)``.

- `equal_groups`: drop the groups whose rewards are all equal. Their group-relative advantage
  is 0, so they carry no policy-gradient signal but would dilute a token-mean normalizer (DAPO's
  filter, arXiv 2503.14476, without its resampling: that is the `rollouts` source's
  `informative_groups`).
- `replaced_groups`: drop the groups whose prompt another source turned into a demonstration
  (HPT: a prompt is trained by SFT or by RL, not both).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tandem.algo.advantages import equal_reward_groups
from tandem.experience import Item
from tandem.registry import Registry, Spec


@dataclass(frozen=True)
class Filter:
    fn: Callable[..., tuple[list[Item], dict[str, float]]]


FILTERS: Registry[Filter] = Registry("filter")


class EqualGroupsSpec(Spec):
    """Drop groups of scored items whose rewards are all equal."""

    sources: list[str] | None = None
    """Only items of these sources are considered (default: every scored item in a group)."""


def _equal_groups(items: list[Item], *, sources: list[str] | None) -> tuple[list[Item], dict]:
    idx = [
        i
        for i, it in enumerate(items)
        if it.reward is not None and it.group >= 0 and (sources is None or it.source in sources)
    ]
    if not idx:
        return items, {"filter/dropped_items": 0.0}
    keys: dict[tuple[str, int], int] = {}
    g = torch.tensor([keys.setdefault((items[i].source, items[i].group), len(keys)) for i in idx])
    r = torch.tensor([float(items[i].reward) for i in idx])
    drop = {i for i, d in zip(idx, equal_reward_groups(r, g).tolist()) if d}
    kept = [it for i, it in enumerate(items) if i not in drop]
    return kept, {"filter/dropped_items": float(len(drop))}


FILTERS.add(
    "equal_groups", Filter(_equal_groups), EqualGroupsSpec, "drop all-equal-reward groups (DAPO)"
)


class ReplacedGroupsSpec(Spec):
    """Drop the groups of `sources` whose prompt got a demonstration from source `by`."""

    sources: list[str]
    """The sources whose groups may be replaced."""
    by: str
    """The source whose items replace a group (e.g. a `group_demos` source with a gate)."""


def _replaced_groups(items: list[Item], *, sources: list[str], by: str) -> tuple[list[Item], dict]:
    replaced = {id(it.example) for it in items if it.source == by and it.example is not None}
    kept = [
        it
        for it in items
        if not (it.source in sources and it.group >= 0 and id(it.example) in replaced)
    ]
    return kept, {"filter/replaced_items": float(len(items) - len(kept))}


FILTERS.add(
    "replaced_groups",
    Filter(_replaced_groups),
    ReplacedGroupsSpec,
    "drop groups whose prompt another source turned into a demonstration (HPT's switch)",
)


def apply_filters(specs: dict[str, Spec], items: list[Item]) -> tuple[list[Item], dict[str, float]]:
    """Run the configured filters in order; their metrics merged."""
    metrics: dict[str, float] = {}
    for spec in specs.values():
        params = {k: v for k, v in spec.model_dump().items() if k != "kind"}
        items, m = FILTERS.get(spec.kind).fn(items, **params)  # type: ignore[attr-defined]
        metrics.update(m)
    return items, metrics


__all__ = ["FILTERS", "apply_filters"]
