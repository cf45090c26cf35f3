"""PPO's critic: a linear value head on the policy's last hidden states (a shared trunk).

V(s_t) = w·h_{t-1} + b, where h_{t-1} is the final (normalized) hidden state that also predicts
token t, so the value of a state and the policy's distribution there come from the same
features. This is TRL's `AutoModelForCausalLMWithValueHead` (trl 0.7.2), which ReFT uses
(`lqtrung1998/mwp_ReFT`), without its dropout. The head starts at zero (V = 0 everywhere), so the
first GAE advantages are the discounted rewards and the value loss trains it from there.
"""

from __future__ import annotations

import torch
from torch import nn


class ValueHead(nn.Module):
    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden_NH: torch.Tensor) -> torch.Tensor:
        """(N, H) -> (N, 1), in float32 (the hidden states may be bf16 under autocast)."""
        return self.summary(hidden_NH.float())


__all__ = ["ValueHead"]
