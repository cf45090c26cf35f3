"""FSDP2 (`distributed.strategy: fsdp2`): the policy's parameters, gradients and optimizer state
sharded over ranks with `torch.distributed.fsdp.fully_shard`.

The units are each decoder layer and a root, `TrainModule`, which holds the model (and PPO's
value head) and whose `forward` is tandem's training forward: tandem's forward calls the
decoder and the fused LM head itself rather than the model's `forward`, so the root unit must
be a module whose `forward` is that call, or the embedding and the head would stay sharded
(the tenth session's prototype failed with "mixed torch.Tensor and DTensor" that way).

Rows are still dealt by whole groups and every normalizer is global (`tandem.train.dist`);
FSDP's reduce-scatter averages the gradients over ranks, so each rank's loss is scaled by the
number of ranks before its backward pass (`Dist.scaled`): the update is the one-process
update. (Setting FSDP's gradient divide factor to 1 instead needs a PREMUL_SUM reduction,
which gloo does not have.) Sampling, evaluation, the policy-as-reference and checkpoints use `full`, a plain copy
of the model that `refresh` fills with the gathered weights after each update (a collective:
every rank calls it). That copy costs one model's memory per rank; what FSDP2 saves here is the
gradients and the optimizer's moments (3x the model in fp32 AdamW).

Checkpoints stay the one-process format: the model as a `save_pretrained` folder (from
`full`), and the optimizer state gathered by `torch.distributed.checkpoint.state_dict`, keyed
by parameter name, so a run resumes on any number of ranks. Not built yet: sharded
checkpoint files (`torch.distributed.checkpoint.save`, for models whose state does not fit one
rank's memory), LoRA and vLLM under FSDP2 (config errors).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class TrainModule(nn.Module):
    """The FSDP root: the policy (and value head) with tandem's training forward as `forward`."""

    def __init__(self, model: nn.Module, value_head: nn.Module | None) -> None:
        super().__init__()
        self.model = model
        self.value_head = value_head

    def forward(self, run, mb, kw: dict[str, Any]):
        """`run(model, mb, value_head=..., **kw)`: the backend's forward, inside the root."""
        return run(self.model, mb, value_head=self.value_head if kw.pop("vh") else None, **kw)


class Sharded:
    """The sharded policy (`root`) and its full copy (`full`) for everything but training."""

    def __init__(self, model: nn.Module, value_head: nn.Module | None) -> None:
        from torch.distributed.fsdp import fully_shard

        self.full = copy.deepcopy(model).eval().requires_grad_(False)
        self.value_head_plain = copy.deepcopy(value_head) if value_head is not None else None
        self.root = TrainModule(model, value_head)
        layers = getattr(getattr(model, "model", None), "layers", None)
        if layers is None:
            raise ValueError(f"{type(model).__name__}: no model.layers to shard")
        units = list(layers)
        if value_head is not None:  # its own unit: it stays float32 beside a bf16/fp64 model
            units.append(value_head)
        for unit in units:
            fully_shard(unit)
        fully_shard(self.root)
        self.fresh = True  # `full` holds the current weights

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.root.parameters() if p.requires_grad]

    def refresh(self) -> nn.Module:
        """`full` with the current weights (gathered from every rank: call on all ranks)."""
        if not self.fresh:
            with torch.no_grad():
                src = dict(self.root.model.named_parameters())
                for name, dst in self.full.named_parameters():
                    p = src[name]
                    dst.copy_(p.full_tensor() if hasattr(p, "full_tensor") else p)
            self.fresh = True
        return self.full

    def full_value_head(self) -> nn.Module:
        """A plain copy of the value head with its gathered weights (a collective)."""
        vh = self.root.value_head
        out = copy.deepcopy(self.value_head_plain)
        with torch.no_grad():
            for dst, (_, p) in zip(out.parameters(), vh.named_parameters(), strict=True):
                dst.copy_(p.full_tensor() if hasattr(p, "full_tensor") else p)
        return out

    def optimizer_state(self, opt: torch.optim.Optimizer) -> dict:
        """The optimizer's whole state keyed by parameter name (a collective)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        return get_optimizer_state_dict(
            self.root, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )

    def load_optimizer_state(self, opt: torch.optim.Optimizer, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(
            self.root, opt, optim_state_dict=state, options=StateDictOptions(full_state_dict=True)
        )


def local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (a plain tensor unchanged)."""
    return t.to_local() if hasattr(t, "to_local") else t


__all__ = ["Sharded", "TrainModule", "local"]
