"""Deterministic example streams with a resumable position.

The order is a pure function of (seed, epoch), so a checkpoint stores only the position.
"""

from __future__ import annotations

import random
from typing import Any

from tandem.errors import DataError
from tandem.tasks.base import Example


class ExampleStream:
    """Endless shuffled epochs over a fixed pool; `take(n)` returns the next n examples."""

    def __init__(self, pool: list[Example], seed: int, name: str) -> None:
        if not pool:
            raise DataError(f"the {name} pool is empty: the task produced no examples")
        self.pool = pool
        self.seed = seed
        self.name = name
        self.position = 0  # examples consumed so far, over all epochs

    def _order(self, epoch: int) -> list[int]:
        idx = list(range(len(self.pool)))
        random.Random(f"{self.seed}:{self.name}:{epoch}").shuffle(idx)
        return idx

    def take(self, n: int) -> list[Example]:
        out: list[Example] = []
        while len(out) < n:
            epoch, i = divmod(self.position, len(self.pool))
            out.append(self.pool[self._order(epoch)[i]])
            self.position += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "pool_size": len(self.pool)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["pool_size"] != len(self.pool):
            raise DataError(
                f"cannot resume the {self.name} stream: the pool has {len(self.pool)} examples, "
                f"the checkpoint was made with {state['pool_size']}"
            )
        self.position = int(state["position"])
