"""The math of post-training: per-token terms, aggregation, advantages, controllers.

Pure functions of tensors with explicit scalar arguments, each family behind one registry with
one signature:

- `terms`: per-token losses (B, T) -> (B, T): `PG_TERMS`, `EXPERT_TERMS`, `shaped_pg`,
  `kl_penalty`, `pg_stats`.
- `aggregate`: `make_normalizer` once per step on the whole batch, then `aggregate` per
  micro-batch; invariant to micro-batching, gradient accumulation and data-parallel size.
- `advantages`: `ADVANTAGES` (grpo, dr_grpo, rloo) and `equal_reward_groups` (DAPO filter).
- `controllers`: per-step coefficients with checkpointable state (`CONTROLLERS`).
"""

from tandem.algo.advantages import (
    ADVANTAGES,
    AdvantageFn,
    dr_grpo,
    equal_reward_groups,
    get_advantage,
    grpo,
    rloo,
)
from tandem.algo.aggregate import AGG_MODES, Normalizer, aggregate, make_normalizer
from tandem.algo.controllers import (
    CONTROLLERS,
    Constant,
    Controller,
    StageSwitch,
    WarmupCosine,
    build_controller,
)
from tandem.algo.terms import (
    EXPERT_TERMS,
    KL_ESTIMATORS,
    PG_TERMS,
    ExpertTerm,
    PGTerm,
    chord_phi_nll,
    clipped_pg,
    dft_nll,
    get_expert_term,
    get_pg_term,
    kl_penalty,
    nll,
    pg_stats,
    shaped_pg,
    unclipped_pg,
)

__all__ = [
    "ADVANTAGES",
    "AGG_MODES",
    "CONTROLLERS",
    "EXPERT_TERMS",
    "KL_ESTIMATORS",
    "PG_TERMS",
    "AdvantageFn",
    "Constant",
    "Controller",
    "ExpertTerm",
    "Normalizer",
    "PGTerm",
    "StageSwitch",
    "WarmupCosine",
    "aggregate",
    "build_controller",
    "chord_phi_nll",
    "clipped_pg",
    "dft_nll",
    "dr_grpo",
    "equal_reward_groups",
    "get_advantage",
    "get_expert_term",
    "get_pg_term",
    "grpo",
    "kl_penalty",
    "make_normalizer",
    "nll",
    "pg_stats",
    "rloo",
    "shaped_pg",
    "unclipped_pg",
]
