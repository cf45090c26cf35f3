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

Checkpoints: the model as a `save_pretrained` folder (from `full`, so transformers, `tandem
eval` and `tandem export` read it as any other), and the optimizers' state, the 2x-the-model
part, written with `torch.distributed.checkpoint` (`save_optimizer_shards`): each rank writes
its own shard file into the checkpoint's `optimizer/` folder, and nothing is gathered. The
files are keyed by parameter name (the FQNs under `TrainModule`), so a run resumes on any
number of ranks: FSDP2 ranks read the pieces of their new shards, a one-process or DDP run
reads whole tensors into the same names (`load_optimizer_shards` on an unsharded
`TrainModule`). Not built yet: LoRA and vLLM under FSDP2 (config errors).
"""

from __future__ import annotations

import copy
from pathlib import Path
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

    def load_optimizer_state(self, opt: torch.optim.Optimizer, state: dict) -> None:
        """Load a whole optimizer state keyed by parameter name (a one-process or DDP
        checkpoint's trainer.pt, re-keyed) into this rank's shards."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(
            self.root, opt, optim_state_dict=state, options=StateDictOptions(full_state_dict=True)
        )


def _states(root: nn.Module, opts: dict[str, torch.optim.Optimizer]) -> dict[str, dict]:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return {name: get_optimizer_state_dict(root, opt) for name, opt in opts.items()}


def save_optimizer_shards(
    root: nn.Module, opts: dict[str, torch.optim.Optimizer], path: Path
) -> None:
    """Write the optimizers' state under `path` with `torch.distributed.checkpoint`: one file
    per rank with that rank's shards, and `.metadata` (a collective: every rank calls it)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_states(root, opts), checkpoint_id=path)


def load_optimizer_shards(
    root: nn.Module, opts: dict[str, torch.optim.Optimizer], path: Path, no_dist: bool
) -> None:
    """Load what `save_optimizer_shards` wrote, on any number of ranks: `root` is the sharded
    `TrainModule` (a collective) or an unsharded one (`no_dist`: this process reads whole
    tensors). The target state is the optimizers' own, initialised by a zero-lr step on zero
    gradients (`get_optimizer_state_dict`) so that it has every tensor's shape."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    states = _states(root, opts)
    dcp.load(states, checkpoint_id=path, no_dist=no_dist)
    for name, opt in opts.items():
        set_optimizer_state_dict(root, opt, optim_state_dict=states[name])
        opt.zero_grad(set_to_none=True)  # the zero gradients of the initialising step


def local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (a plain tensor unchanged)."""
    return t.to_local() if hasattr(t, "to_local") else t


__all__ = [
    "Sharded",
    "TrainModule",
    "load_optimizer_shards",
    "local",
    "save_optimizer_shards",
]
