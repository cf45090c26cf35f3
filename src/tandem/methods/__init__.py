"""Method presets: each method is a named setting of the one objective, never a trainer class.

A preset fills `RunConfig.objective` (its sources, terms, advantage estimator, filters,
controllers and update plan) or, for a pipeline, `RunConfig.stages` (a list of stages, each
naming a single-stage preset), plus a few run defaults. Everything it sets can be overridden
from a recipe or the command line. Adding a method = adding a preset in one of the family
modules below; its docstring gives the paper, what was checked against the authors' code and
the deviations (`tandem recipes --details NAME` prints it).

- `core`: sft, grpo, chord, luffy, sft_then_grpo
- `rl`: rloo, reinforce_pp, reinforce_pp_baseline, gspo, dapo
- `reweighted`: dft, anchored_sft, asft, poft, otr, c_rlft, fait, ift
- `preference`: dpo, ipo, simpo, orpo, kto, spin
- `ppo`: ppo, reft
- `hybrid`: prefix_rft, relift, interleave, sasr, hpt, adaptive_mix, srft, uft, visurf
- `self_improve`: rft, star, superhf, s3ft, metis_rise
- `pipelines`: tulu3, sft_then_dpo, warmup_rl
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from tandem.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    """One line for `tandem recipes`."""
    paper: str
    objective: dict = field(default_factory=dict)
    stages: dict | None = None
    """A pipeline: stage name -> {method, steps, lr, reference, ...} (`config.StageConfig`)."""
    run_defaults: dict = field(default_factory=dict)
    notes: str = ""
    """The preset's docstring: paper, what was checked, deviations, choices made."""


PRESETS: dict[str, Preset] = {}


def preset(name: str, summary: str, paper: str) -> Callable:
    """Register the preset a function returns (a dict with `objective` or `stages`, and
    optionally `run_defaults`); the function's docstring becomes its notes."""

    def deco(fn: Callable[[], dict]) -> Callable[[], dict]:
        if name in PRESETS:
            raise ValueError(f"preset {name!r} is registered twice")
        body = fn()
        PRESETS[name] = Preset(
            name=name,
            summary=summary,
            paper=paper,
            objective=body.get("objective", {}),
            stages=body.get("stages"),
            run_defaults=body.get("run_defaults", {}),
            notes=inspect.cleandoc(fn.__doc__ or ""),
        )
        return fn

    return deco


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"config error: method: got {name!r}; allowed: {', '.join(PRESETS)}")
    return PRESETS[name]


# The family modules register their presets on import (order = `tandem recipes` order).
from tandem.methods import (  # noqa: E402,F401
    core,
    hybrid,
    pipelines,
    ppo,
    preference,
    reweighted,
    rl,
    self_improve,
)

__all__ = ["PRESETS", "Preset", "get_preset", "preset"]
