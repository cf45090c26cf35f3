"""Runs several training runs in one torchrun process group (tests/test_distributed.py).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/dist_driver.py SPEC

SPEC is a JSON file: {"runs": [[override, ...], ...]}; each run is `tandem.train.loop.train`
on the config of its overrides (`distributed.strategy=ddp` unless they set it), on every rank, one after the other, so the ranks start (and
import torch) once for all of them. A run that raises ends the driver with its error.
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
