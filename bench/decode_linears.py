"""Microbenchmark behind docs/LOG.md's packed-decode table: one decode step's linears for all 30
layers of SmolLM2-135M (q/k/v/o, gate/up/down; weights cycled, so they come from memory, not
cache) and the LM head, at 1, 16 and 64 rows, fp32 and bf16. Compares `F.linear`, oneDNN's
linear on the plain weight, the weight packed once (`tandem.model.onednn.packed_weight`), and
packed with q/k/v and gate/up concatenated (what `tandem.model.decoder` runs). Prints ms per
step, best of three rounds, and the one-off packing time.

    python bench/decode_linears.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from tandem.model import onednn

LAYERS = 30
SHAPES = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]


def _ms(calls: list[tuple], n: int = 5) -> float:
    """Best of three rounds of n passes over `calls` ((fn, *args) tuples): ms per pass."""

    def one_pass() -> None:
        for fn, *args in calls:
            fn(*args)

    one_pass()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            one_pass()
        best = min(best, (time.perf_counter() - t) / n * 1e3)
    return best


@torch.inference_mode()
def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per decode step")
    for dtype in (torch.bfloat16, torch.float32):
        ws = [[torch.randn(o, i).to(dtype) for o, i in SHAPES] for _ in range(LAYERS)]
        head = torch.randn(49152, 576).to(dtype)
        for rows in (1, 16, 64):
            x = {576: torch.randn(rows, 576).to(dtype), 1536: torch.randn(rows, 1536).to(dtype)}
            t = time.perf_counter()
            packed = [[onednn.packed_weight(w, rows) for w in layer] for layer in ws]
            pack_ms = (time.perf_counter() - t) * 1e3
            fused = []
            for layer, pl in zip(ws, packed):
                qkv = onednn.packed_weight(torch.cat(layer[0:3]), rows)
                gate_up = onednn.packed_weight(torch.cat(layer[4:6]), rows)
                fused.append([(qkv, 576), (pl[3], 576), (gate_up, 576), (pl[6], 1536)])
            ph = onednn.packed_weight(head, rows)

            plain = _ms([(F.linear, x[w.shape[1]], w) for layer in ws for w in layer])
            dnn = _ms([(onednn._mm, x[w.shape[1]], w) for layer in ws for w in layer])
            pk = _ms(
                [
                    (onednn.packed_linear, x[w.shape[1]], p)
                    for layer, pl in zip(ws, packed)
                    for w, p in zip(layer, pl)
                ]
            )
            fu = _ms([(onednn.packed_linear, x[k], w) for layer in fused for w, k in layer])
            h_plain = _ms([(F.linear, x[576], head)])
            h_packed = _ms([(onednn.packed_linear, x[576], ph)])
            print(
                f"{str(dtype)[6:]:8s} rows {rows:2d} | layers F.linear {plain:6.2f}  oneDNN {dnn:6.2f}"
                f"  packed {pk:6.2f}  packed+fused {fu:6.2f} (packing {pack_ms:.0f} ms)"
                f" | head F.linear {h_plain:5.2f}  packed {h_packed:5.2f}"
            )


if __name__ == "__main__":
    main()
