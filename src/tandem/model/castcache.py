"""Reuse one bf16 copy of the weights for sampling and for the autocast training forward.

Under CPU autocast every linear casts its float32 weight to bf16 in each forward (a fresh
allocation per weight, per micro-batch), and the sampler casts the weights once more into its
bf16 copy (`tandem.train.step.SampleCopy`). With one optimizer update per step, the weights do
not change between sampling and training, so the sampling copy already holds exactly the bf16
values autocast would compute (the same round-to-nearest cast). Inside `bf16_weights(pairs)`,
`tandem.model.onednn.linear` and the fused LM head (`tandem.model.head`) take a weight's bf16
copy from here instead of casting it; the gradient still reaches the float32 weight, converted
to float32 as autocast's own cast would (`_Cast.backward`). Values and gradients are those of
plain autocast (tests/test_castcache.py).

The caller must refresh the copy after every change of the weights (the training step does so
before sampling, and before training when the step did not sample).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

_CACHE: dict[int, tuple[Tensor, Tensor]] = {}


class _Cast(torch.autograd.Function):
    """Forward: the precomputed bf16 copy of `master`; backward: the gradient in master's dtype."""

    @staticmethod
    def forward(ctx, master: Tensor, copy: Tensor) -> Tensor:
        ctx.dtype = master.dtype
        return copy.view_as(copy)

    @staticmethod
    def backward(ctx, g: Tensor):
        return g.to(ctx.dtype), None


def cached(weight: Tensor) -> Tensor | None:
    """The bf16 copy registered for this exact tensor, or None."""
    entry = _CACHE.get(id(weight))
    return entry[1] if entry is not None and entry[0] is weight else None


def cast_weight(weight: Tensor) -> Tensor | None:
    """The registered bf16 copy of `weight`, connected to it for autograd; None if there is none
    or autocast is not running in bf16 on CPU."""
    copy = cached(weight)
    if copy is None or not (
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    ):
        return None
    if weight.requires_grad and torch.is_grad_enabled():
        return _Cast.apply(weight, copy)
    return copy


@contextlib.contextmanager
def bf16_weights(pairs: Iterable[tuple[Tensor, Tensor]]) -> Iterator[None]:
    """Within the block, each (float32 weight, its current bf16 copy) pair is used as above."""
    added = []
    for master, copy in pairs:
        if master.dtype == torch.float32 and copy.dtype == torch.bfloat16 and copy.numel():
            _CACHE[id(master)] = (master, copy)
            added.append(id(master))
    try:
        yield
    finally:
        for k in added:
            _CACHE.pop(k, None)
