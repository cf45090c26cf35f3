"""Where a tandem GRPO step's peak RSS is (docs/LOG.md, "Memory: what the peak is made of").

Samples this process's RSS every 2 ms from a thread and keeps the maximum per phase of
`train_step` (sample, log-prob forward, backward, optimizer step) over four steps, with the most
memory glibc malloc had handed out at once (mallinfo2: the live set, not the freed memory the
heap keeps); then frees
the allocator's retained heap (`malloc_trim(0)`, glibc only) to show the live set, and prints the
sizes of the parameters and the Adam state.

    python bench/memory_by_phase.py fp32      # or bf16; SmolLM2-135M, GRPO 2x8x32
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python bench/memory_by_phase.py bf16
"""

from __future__ import annotations

import ctypes
import resource
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

import tandem.train.backend as backend_mod
import tandem.train.step as step_mod
from tandem.train.loop import build_state

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpo_vs_trl import tandem_grpo_config  # noqa: E402


def rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e9


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


def _tcmalloc_allocated() -> Callable[[], float] | None:
    """tcmalloc's count of bytes handed out and not freed, when this process runs on it."""
    try:
        f = ctypes.CDLL(None).MallocExtension_GetNumericProperty
    except AttributeError:
        return None
    f.restype = ctypes.c_int
    out = ctypes.c_size_t()

    def allocated() -> float:
        f(b"generic.current_allocated_bytes", ctypes.byref(out))
        return out.value / 1e9

    return allocated


_TCMALLOC = _tcmalloc_allocated()


def malloc_in_use_gb() -> float:
    """Bytes malloc has handed out and not had back (glibc: heap + mmapped, all arenas; or
    tcmalloc's own count): the live set, without the freed memory the allocator keeps. NaN
    where neither is available (e.g. jemalloc)."""
    if _TCMALLOC is not None:
        return _TCMALLOC()
    try:
        f = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return float("nan")
    f.restype = _MallInfo2
    m = f()
    return (m.uordblks + m.hblkhd) / 1e9


def main() -> None:
    dtype = sys.argv[1] if len(sys.argv) > 1 else "fp32"
    cfg = tandem_grpo_config(2, 8, 32, dtype)
    phase, peaks, live = ["build"], {}, {}

    def monitor() -> None:
        while True:
            peaks[phase[0]] = max(peaks.get(phase[0], 0.0), rss_gb())
            live[phase[0]] = max(live.get(phase[0], 0.0), malloc_in_use_gb())
            time.sleep(0.002)

    threading.Thread(target=monitor, daemon=True).start()
    st = build_state(cfg, log=lambda s: None)

    def labelled(fn, label):
        def run(*a, **k):
            phase[0] = label
            try:
                return fn(*a, **k)
            finally:
                phase[0] = label + " (after)"

        return run

    backend_mod.sample = labelled(backend_mod.sample, "sample")
    backend_mod.shared_prompt_logprobs = labelled(backend_mod.shared_prompt_logprobs, "forward")
    backend_mod.token_logprobs = labelled(backend_mod.token_logprobs, "forward")
    torch.Tensor.backward = labelled(torch.Tensor.backward, "backward")
    st.optimizer.step = labelled(st.optimizer.step, "optimizer")
    for k in range(4):
        step_mod.train_step(st, k)
    time.sleep(0.05)
    for name, gb in peaks.items():
        print(f"peak RSS during {name:18s} {gb:.2f} GB (malloc in use at most {live[name]:.2f})")
    print(f"ru_maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2:.2f} GB")
    before = rss_gb()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    print(f"RSS now {before:.2f} GB, after malloc_trim(0) {rss_gb():.2f} GB (the live set)")
    params = sum(p.numel() * p.element_size() for p in st.model.parameters())
    adam = sum(
        v.numel() * v.element_size()
        for s in st.optimizer.state.values()
        for v in s.values()
        if torch.is_tensor(v)
    )
    print(f"parameters {params / 1e9:.2f} GB, Adam state {adam / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
