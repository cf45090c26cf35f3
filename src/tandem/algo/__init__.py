"""The math of post-training: pure functions of tensors with explicit scalar arguments, and the
registries that the config chooses from (one registry per family, one signature per registry).

- `terms`: per-token losses (B, T) -> (B, T): PPO clip, unclipped PG, LUFFY shaping, NLL, DFT,
  CHORD-φ, KL estimators (`KL_ESTIMATORS`).
- `preference`: per-pair losses on sequence scores: DPO, IPO, SimPO, ORPO's odds ratio.
- `value`: GAE, batch whitening and the clipped value loss (PPO, ReFT).
- `objective`: `TERMS`, the catalogue of term kinds a method's objective is a sum of.
- `aggregate`: `make_normalizer` once per update on the whole batch, then `aggregate` per
  micro-batch; invariant to micro-batching, gradient accumulation and data-parallel size.
- `advantages`: outcome estimators (grpo, dr_grpo, rloo), GAE, and `ADVANTAGES`.
- `controllers`: per-step coefficients with checkpointable state (`CONTROLLERS`).
"""

from tandem.algo.advantages import ADVANTAGES
from tandem.algo.controllers import CONTROLLERS
from tandem.algo.objective import TERMS

__all__ = ["ADVANTAGES", "CONTROLLERS", "TERMS"]
