"""Data parallelism over torch.distributed: one process per device, launched by `torchrun`.

    torchrun --nproc-per-node 2 -m tandem.cli train RECIPE distributed.strategy=ddp

The shape (docs/distributed.md): every rank holds the whole model, the same config and seed,
and the same experience. What costs time is sharded and what decides is replicated:

- **generation and scoring are sharded, experience is gathered.** A source's prompts are cut
  into contiguous slices, one per rank; each rank samples its slice under the sampler's shard
  contract (`sample(..., shard=(offset, total))`: the same tokens one process samples for the
  whole list) and scores it in its own reward pool; the rollouts and scores are all-gathered.
  So every rank builds the same items, and the sources, buffers, filters and controllers see
  the global batch and stay identical on every rank with no further communication.
- **forward and backward passes are sharded by whole groups.** Each update's rows are dealt
  to ranks in units that never split a prompt group or a preference pair (`own_rows`); every
  normalizer and batch statistic (advantages, KTO's z_0) is computed on the whole batch before
  the split, so a rank's loss is its rows' sum over the global normalizer, and the gradients
  are summed over ranks (`reduce_grads`) before clipping: the update of a 2-rank run is the
  1-rank update up to the order of floating-point sums.
- **one writer.** Only rank 0 writes metrics, samples, checkpoints, plots and the summary,
  and holds the run directory's lock; a stop signal on any rank is all-reduced after each step.

`nn.parallel.DistributedDataParallel` is not used: its reducer hooks the root module's
`forward`, which tandem's fused-head training forward does not call, and the split updates
(per-term gradient norms, gradient dot products) need each term's gradient reduced on its
own. The gradients are summed here, in buckets, after the micro-batches' backward passes.

A collective that does not complete within `distributed.timeout_s` (a rank died or hangs)
raises `RankLost` with the rank and what it was doing, instead of hanging.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tandem.errors import TandemError

BUCKET_BYTES = 32 << 20  # gradients are summed in flat buckets of about this size


class RankLost(TandemError):
    """A collective failed or timed out: another rank died, hung or stopped answering."""


@dataclass
class Dist:
    """This process's place in the run: `rank` of `world`. `Dist()` is the one-process run,
    where every method returns at once and nothing is communicated."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    timeout_s: float = 600.0
    shards: bool = False
    """FSDP2: the parameters are sharded and FSDP sums the gradients (`tandem.train.fsdp`)."""
    owns_group: bool = False
    """True when this run created the process group (and destroys it at the end)."""

    @property
    def on(self) -> bool:
        return self.world > 1

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to call backward on: under FSDP2 times the number of ranks (its
        reduce-scatter averages over ranks, where tandem's losses need the sum), else as is."""
        return loss * float(self.world) if self.shards else loss

    @property
    def main(self) -> bool:
        return self.rank == 0

    def tag(self) -> str:
        return f"[rank {self.rank}/{self.world}] " if self.on else ""

    # ------------------------------------------------------------------- how work is split
    def slice(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share [start, stop) of n rows (sizes differ by at most 1)."""
        if not self.on:
            return 0, n
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def own_rows(self, batch: Any) -> list[int]:
        """The rows of `batch` this rank trains on: units that never split a prompt group or a
        pair (the key `minibatches` uses), dealt longest first to the rank with the fewest
        padded tokens so far. Every rank computes the same deal."""
        if not self.on:
            return list(range(batch.size))
        from tandem.experience import _units

        key = torch.where(batch.pair_B >= 0, batch.pair_B + batch.size * 10, batch.group_B)
        lengths = batch.attention_mask_BT.sum(1).tolist()
        units = _units(batch, key)
        units.sort(key=lambda u: (-sum(lengths[i] for i in u), u[0]))
        load = [0] * self.world
        mine: list[int] = []
        for u in units:
            r = min(range(self.world), key=lambda j: (load[j], j))
            load[r] += sum(lengths[i] for i in u)
            if r == self.rank:
                mine += u
        return sorted(mine)

    # ---------------------------------------------------------------------- collectives
    @contextlib.contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        try:
            yield
        except (RuntimeError, ValueError) as e:  # gloo and NCCL raise RuntimeError subclasses
            raise RankLost(
                f"rank {self.rank} of {self.world}: {what} did not complete (another rank died, "
                f"hung or stopped answering; distributed.timeout_s = {self.timeout_s:g}): "
                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from e

    def all_reduce_(self, tensors: Sequence[torch.Tensor], what: str = "a sum") -> None:
        """Sum each tensor over ranks, in place (flattened into buckets per dtype)."""
        if not self.on or not tensors:
            return
        import torch.distributed as td

        by_dtype: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault((t.dtype, t.device), []).append(t)
        with self._collective(what):
            for group in by_dtype.values():
                bucket: list[torch.Tensor] = []
                size = 0
                for t in [*group, None]:
                    if t is not None:
                        bucket.append(t)
                        size += t.numel() * t.element_size()
                    if bucket and (t is None or size >= BUCKET_BYTES):
                        flat = torch.cat([b.reshape(-1) for b in bucket])
                        td.all_reduce(flat)
                        off = 0
                        for b in bucket:
                            b.copy_(flat[off : off + b.numel()].view_as(b))
                            off += b.numel()
                        bucket, size = [], 0

    def sum_floats(self, values: Sequence[float], what: str = "a sum") -> list[float]:
        """Each float summed over ranks (in float64)."""
        if not self.on:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64)
        self.all_reduce_([t], what)
        return t.tolist()

    def reduce_grads(self, params: Sequence[torch.Tensor]) -> None:
        """p.grad summed over ranks for every parameter; a parameter no rank has a gradient
        for keeps `grad = None` (so the optimizer skips it, as in one process)."""
        if not self.on or self.shards:  # under FSDP2 the reduce-scatter has summed them
            return
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float64)
        self.all_reduce_([has], "the gradient sum")
        grads = []
        for p, h in zip(params, has.tolist()):
            if not h:
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            elif p.grad.is_sparse:
                p.grad = p.grad.to_dense()
            grads.append(p.grad)
        self.all_reduce_(grads, "the gradient sum")

    def gather(self, obj: Any, what: str = "a gather") -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.on:
            return [obj]
        import torch.distributed as td

        out: list[Any] = [None] * self.world
        with self._collective(what):
            td.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any, what: str = "a broadcast") -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.on:
            return obj
        import torch.distributed as td

        box = [obj]
        with self._collective(what):
            td.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_params(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (all ranks then start identical)."""
        if not self.on:
            return
        import torch.distributed as td

        with self._collective("the start-up weight broadcast"), torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                td.broadcast(t.data, src=0)

    def barrier(self, what: str = "a barrier") -> None:
        if not self.on:
            return
        import torch.distributed as td

        with self._collective(what):
            if td.get_backend() == "gloo":  # names the rank that did not arrive
                td.monitored_barrier(timeout=datetime.timedelta(seconds=self.timeout_s))
            else:
                td.barrier()

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as td

            if td.is_initialized():
                td.destroy_process_group()
            self.owns_group = False


def digest(obj: Any) -> str:
    """A hash of a state made of dicts, lists, tuples, tensors, arrays and plain values (what
    a stage's `state_dict` holds): equal states give equal hashes on every rank."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=repr):
                h.update(repr(k).encode())
                walk(x[k])
            h.update(b"}")
        elif isinstance(x, list | tuple):
            h.update(b"[")
            for v in x:
                walk(v)
            h.update(b"]")
        elif isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, np.ndarray):
            h.update(f"{x.dtype}{x.shape}".encode() + np.ascontiguousarray(x).tobytes())
        else:
            h.update(repr(x).encode())

    walk(obj)
    return h.hexdigest()


def world_from_env() -> int:
    """The number of ranks `torchrun` launched (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_dist(strategy: str, timeout_s: float, device_type: str) -> Dist:
    """This process's `Dist`, from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR/PORT). Joins (or creates) the process group: gloo on CPU, NCCL on CUDA."""
    world = world_from_env()
    if world <= 1:
        return Dist(timeout_s=timeout_s)
    if strategy == "none":
        raise TandemError(
            f"launched on {world} ranks (WORLD_SIZE={world}) but distributed.strategy is none; "
            "set distributed.strategy=ddp"
        )
    import torch.distributed as td

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    owns = False
    if not td.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local)
        timeout = datetime.timedelta(seconds=timeout_s)
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        if restart not in ("", "0"):
            # After `torchrun --max-restarts` started the group again, the agent's store still
            # holds the first attempt's keys, gloo's listening addresses among them: rank 0
            # then connected to the dead rank's port ("Connection refused"). Each attempt's
            # keys get their own prefix.
            store, _, _ = next(td.rendezvous("env://", timeout=timeout))
            store = td.PrefixStore(f"tandem/attempt_{restart}", store)
            td.init_process_group(
                backend=backend, store=store, rank=rank, world_size=world, timeout=timeout
            )
        else:
            td.init_process_group(backend=backend, timeout=timeout)
        owns = True
    if td.get_world_size() != world:
        raise TandemError(
            f"WORLD_SIZE={world} but the process group has {td.get_world_size()} ranks"
        )
    return Dist(
        rank=td.get_rank(),
        world=world,
        local_rank=local,
        timeout_s=timeout_s,
        shards=strategy == "fsdp2",
        owns_group=owns,
    )


__all__ = ["Dist", "RankLost", "digest", "init_dist", "world_from_env"]
