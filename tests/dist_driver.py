"""Runs several training runs in one torchrun process group (tests/test_distributed.py).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/dist_driver.py SPEC

SPEC is a JSON file: {"runs": [[override, ...], ...], "skew_rank": R}; each run is
`tandem.train.loop.train` on the config of its overrides (`distributed.strategy=ddp` unless
they set it), on every rank, one after the other, so the ranks start (and import torch) once
for all of them. A run that raises ends the driver with its error. `skew_rank` (optional):
that rank draws one extra random number after each training step, a fault that makes its
state differ from the others' (the test of the replicated-state check).
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as td

from tandem.config import load_config
from tandem.train.loop import train


def main(spec_path: str) -> None:
    torch.set_num_threads(1)
    spec = json.loads(open(spec_path).read())
    td.init_process_group("gloo")
    rank = td.get_rank()
    if spec.get("skew_rank") == rank:
        import tandem.train.loop as loop

        step = loop.train_step

        def skewed(*args, **kwargs):
            out = step(*args, **kwargs)
            torch.rand(1)
            return out

        loop.train_step = skewed
    try:
        for overrides in spec["runs"]:
            if not any(o.startswith("distributed.strategy=") for o in overrides):
                overrides = [*overrides, "distributed.strategy=ddp"]
            cfg = load_config(None, overrides)
            train(cfg, log=lambda s: print(s, flush=True) if rank else None)
    finally:
        td.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
