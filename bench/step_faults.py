"""tandem-only GRPO step timer with page faults and CPU time (docs/LOG.md, third session): per
step wall seconds, sampling / training split, minor page faults, user and system CPU seconds and
peak RSS; then medians over the steps after the first two.

Optional `MALLOPT="-1=4294967295,-3=33554432"` sets glibc mallopt(param=value) pairs first (the
allocator experiments in the LOG; -1 = M_TRIM_THRESHOLD, -3 = M_MMAP_THRESHOLD, -4 = M_MMAP_MAX).

    python bench/step_faults.py fp32 2 8 32 [steps]     # dtype P G N, default 8 steps
"""

from __future__ import annotations

import ctypes
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpo_vs_trl import tandem_grpo_config  # noqa: E402


def main() -> None:
    from tandem.train.loop import build_state
    from tandem.train.step import train_step

    dtype, p, g, n = sys.argv[1], *map(int, sys.argv[2:5])
    steps = int(sys.argv[5]) if len(sys.argv) > 5 else 8
    if os.environ.get("MALLOPT"):
        libc = ctypes.CDLL("libc.so.6")
        for kv in os.environ["MALLOPT"].split(","):
            k, v = kv.split("=")
            print(f"mallopt({k}, {v}) -> {libc.mallopt(int(k), int(v))}")
    st = build_state(tandem_grpo_config(p, g, n, dtype), log=lambda s: None)
    wall, cpu = [], []
    for k in range(steps):
        r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        m = train_step(st, k)
        r1, dt = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t
        user, sys_s = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
        wall.append(dt)
        cpu.append(user + sys_s)
        print(
            f"step {dt:.2f} s (sample {m['perf/sample_s']:.2f} + train {m['perf/train_s']:.2f})"
            f" | minor faults {r1.ru_minflt - r0.ru_minflt} | user {user:.2f} s sys {sys_s:.2f} s"
            f" | peak RSS {r1.ru_maxrss / 1e6:.2f} GB"
        )
    rest = slice(2, None) if steps > 2 else slice(None)
    print(
        f"median wall {statistics.median(wall[rest]):.2f} s, median CPU"
        f" {statistics.median(cpu[rest]):.2f} s, peak RSS"
        f" {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB"
    )


if __name__ == "__main__":
    main()
