"""Model-scored selection of SFT data: selectors (`objective.sources.<name>.select`, registry
`SELECTORS`) that look at each candidate demonstration through the policy (`DrawEnv.inspect`)
before it is trained on. Usable with any source that draws gold solutions (`demos`, and the
demonstration side of the hybrids).

===== ========================================================================================
uds   UDS online batch selection: each step reads `candidates` × n demonstrations and keeps the
      n with the highest utility (nuclear norm of their logits) plus α × diversity (distance of
      a fast-JL sketch of the logits to a queue of the ones kept before)
donod DONOD sample pruning before SFT: every demonstration's one-step effect on the LM head
      (Delta of Norm, Norm of Delta), ranked by TOPSIS; the best `keep` fraction is served
===== ========================================================================================

Token selection by self-modulated scores is the `sstoken` term (`tandem.algo.terms`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field

from tandem.errors import ConfigError
from tandem.experience import Item
from tandem.registry import Spec
from tandem.tasks.base import Example
from tandem.train.data import ExampleStream
from tandem.train.selection import SELECTORS, Selector


def _demo_items(env: Any, exs: list[Example], who: str) -> list[Item]:
    if env is None or env.inspect is None:
        raise ConfigError(f"select.kind={who}: it scores examples with the model, inside a step")
    missing = [ex.id for ex in exs if ex.solution is None]
    if missing:
        raise ConfigError(
            f"select.kind={who} scores demonstrations; example {missing[0]!r} has no gold "
            "solution (use it on a source whose stream is `demos`)"
        )
    enc = env.encoder
    return [Item.of(enc.prompt(ex), enc.demo(ex), "demo", who, example=ex) for ex in exs]


# ------------------------------------------------------------------------------------ UDS


class FastJL:
    """UDS's `FastJLProjector` (gfyddha/UDS `UDSamplingTrainer.py`, 6cd1634): a (T, V) matrix
    X, zero-padded (or cut) to T rows, maps to (r1, r2) by a randomized FFT on each side:
    Y = Re FFT_V(X · diag d2)[:, idx2] · √(V/r2), then Z = Re FFT_T(diag d1 · Y)[idx1] · √(T/r1),
    with random signs d1, d2 and indices idx1, idx2 (drawn with replacement) fixed at
    construction. Only the r1 and r2 kept frequencies are computed (cosine matrices), so a
    sketch costs O(N·V·r2) for N real rows instead of a full FFT of T × V."""

    def __init__(self, rows: int, vocab: int, r1: int, r2: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.T, self.V, self.r1, self.r2 = rows, vocab, r1, r2
        self.d1 = torch.randint(0, 2, (rows,), generator=g).float() * 2 - 1
        self.d2 = torch.randint(0, 2, (vocab,), generator=g).float() * 2 - 1
        self.idx1 = torch.randint(0, rows, (r1,), generator=g)
        self.idx2 = torch.randint(0, vocab, (r2,), generator=g)
        v = torch.arange(vocab, dtype=torch.float64)
        c2 = torch.cos(2 * math.pi * torch.outer(v, self.idx2.double()) / vocab)
        self.c2 = (c2 * self.d2.double()[:, None]).float() * math.sqrt(vocab / r2)  # (V, r2)

    def __call__(self, x_NV: torch.Tensor) -> torch.Tensor:
        x = x_NV[: self.T].float()
        n = x.shape[0]
        y = x @ self.c2  # (n, r2): rows n..T-1 are zero and add nothing
        t = torch.arange(n, dtype=torch.float64)
        c1 = torch.cos(2 * math.pi * torch.outer(self.idx1.double(), t) / self.T)
        c1 = (c1 * self.d1[:n].double()).float() * math.sqrt(self.T / self.r1)  # (r1, n)
        return (c1 @ y).flatten()


class UdsSpec(Spec):
    """Keep the n most useful and diverse of `candidates` × n demonstrations each step."""

    candidates: int = Field(4, ge=1)
    """Candidates read per kept example (UDS's script: micro-batch 4, keep 1)."""
    alpha: float = Field(2.5e-3, ge=0.0)
    """Weight of diversity against utility (UDS: 2.5e-3; its MMLU script 1.5e-3)."""
    queue: int = Field(1024, ge=1)
    """Sketches of kept examples remembered (FIFO)."""
    rows: int = Field(512, ge=1)
    """T of the sketch: logits are zero-padded or cut to this many tokens (UDS: 512)."""
    sketch: tuple[int, int] = (8, 128)
    """(r1, r2): the sketch's shape (UDS: 8 × 128, flattened to 1024)."""
    start_step: int = Field(0, ge=0)
    """Before this step the first n candidates are kept as they come."""


@SELECTORS.register("uds", UdsSpec, "online batch selection by utility and diversity")
class Uds(Selector):
    """UDS (arXiv 2510.16882), checked against gfyddha/UDS `UDSamplingTrainer.py` (6cd1634):
    each candidate's utility is the nuclear norm of its logits, u = Σ svdvals(L), unnormalized;
    its diversity the mean L2 distance of its sketch (`FastJL`) to the queue of kept sketches
    (0 while the queue is empty; candidates are not compared with each other); the n with the
    highest u + α·d are kept and their sketches pushed to the queue. The other candidates of
    the step are consumed (the stream moves on), as UDS drops the unselected rows of a
    micro-batch. Metrics: `data/uds_utility_kept` vs `data/uds_utility_candidates`, and the
    same for diversity.

    Deviation: UDS takes the logits at every position of the padded batch (prompt and padding
    included); here L is the logits at the demonstration's own tokens, so padding, which
    depends on the batch's other rows, does not change a candidate's score."""

    def __init__(self, spec, pool, seed) -> None:
        super().__init__(spec, pool, seed)
        self.sketches: list[torch.Tensor] = []
        self.jl: FastJL | None = None

    def take(self, stream, n, step, env=None):
        spec = self.spec
        if step < spec.start_step:
            return stream.take(n), {}
        cands = stream.take(n * spec.candidates)
        views = env.inspect(_demo_items(env, cands, "uds")) if env is not None else None
        if views is None:
            raise ConfigError("select.kind=uds scores examples with the model, inside a step")
        if self.jl is None:
            r1, r2 = spec.sketch
            self.jl = FastJL(spec.rows, views[0].logits.shape[-1], r1, r2, self.seed)
        util = torch.stack([torch.linalg.svdvals(v.logits).sum() for v in views])
        sk = torch.stack([self.jl(v.logits) for v in views])
        if self.sketches:
            div = torch.cdist(sk, torch.stack(self.sketches)).mean(1)
        else:
            div = torch.zeros(len(cands))
        score = util + spec.alpha * div
        keep = torch.topk(score, n).indices.tolist()
        for i in keep:
            self.sketches.append(sk[i])
        self.sketches = self.sketches[-spec.queue :]
        m = {
            "data/uds_utility_kept": float(util[keep].mean()),
            "data/uds_utility_candidates": float(util.mean()),
            "data/uds_diversity_kept": float(div[keep].mean()),
            "data/uds_diversity_candidates": float(div.mean()),
        }
        return [cands[i] for i in keep], m

    def state_dict(self):
        return {"sketches": [s.tolist() for s in self.sketches]}

    def load_state_dict(self, state):
        self.sketches = [torch.tensor(s) for s in state["sketches"]]


# ---------------------------------------------------------------------------------- DONOD


def donod_scores(view: Any, lr: float) -> tuple[float, float]:
    """(DON, NOD) of one example from its `Inspection`: the LM head W after one SGD step of
    size lr on the example's token-mean NLL, W' = W − lr·g with g = (1/N)·Σ_t (p_t − e_{y_t})
    h_tᵀ, gives DON = ‖W‖_F − ‖W'‖_F and NOD = ‖W − W'‖_F = lr·‖g‖_F. Both come from N × N
    Gram matrices (‖g‖² = Σ (DDᵀ ∘ HHᵀ)/N², ⟨W, g⟩ = Σ_t (p_t − e_t)·z_t / N with z = W h the
    logits), so the V × H gradient is never formed."""
    z = view.logits.double()
    h = view.hidden.double()
    n = z.shape[0]
    d = torch.softmax(z, -1)
    d[torch.arange(n), view.targets] -= 1.0
    g2 = float(((d @ d.T) * (h @ h.T)).sum()) / n**2
    wg = float((d * z).sum()) / n
    w2 = view.head_sq_norm
    after = math.sqrt(max(w2 - 2 * lr * wg + lr * lr * g2, 0.0))
    return math.sqrt(w2) - after, lr * math.sqrt(g2)


def topsis(
    x_NC: torch.Tensor, benefit: list[bool], weights: list[float] | None = None
) -> torch.Tensor:
    """TOPSIS closeness C = d⁻ / (d⁺ + d⁻) of each row: columns vector-normalized and weighted,
    d⁺ / d⁻ the distance to the best / worst value of every column (best = max for a benefit
    criterion, min for a cost). Higher is better."""
    x = x_NC.double()
    w = torch.tensor(weights or [1.0 / x.shape[1]] * x.shape[1], dtype=torch.float64)
    r = x / x.norm(dim=0).clamp_min(1e-300) * w
    ben = torch.tensor(benefit)
    best = torch.where(ben, r.max(0).values, r.min(0).values)
    worst = torch.where(ben, r.min(0).values, r.max(0).values)
    dp, dm = (r - best).norm(dim=1), (r - worst).norm(dim=1)
    return dm / (dp + dm).clamp_min(1e-300)


class DonodSpec(Spec):
    """Prune the demonstrations once, before training, by DONOD; serve the kept ones."""

    keep: float = Field(0.3, gt=0.0, le=1.0)
    """Fraction of the pool kept (DONOD: 30%)."""
    lr: float = Field(1e-4, gt=0.0)
    """Size of the one hypothetical SGD step each example is scored by."""
    don: Literal["cost", "benefit"] = "cost"
    """Whether a larger DON (the head's norm shrinking more) ranks an example lower (cost) or
    higher (benefit). The paper's direction could not be checked (see the class docstring)."""
    weights: tuple[float, float] = (0.5, 0.5)
    """TOPSIS weights of (DON, NOD)."""


@SELECTORS.register("donod", DonodSpec, "sample pruning by Delta of Norm / Norm of Delta")
class Donod(Selector):
    """DONOD (arXiv 2504.14810). The authors' code is not public ("will be made available")
    and the paper's method section could not be read here, so this follows its definitions as
    summarized: for each example, DON = ‖W‖ − ‖W'‖ (how much one update on it changes the
    weight norm) and NOD = ‖W − W'‖ (the update's size: a cost, noisy or unlearnable samples
    move the weights most), on the output layer only (the paper's efficiency choice, as
    reported), combined by TOPSIS; the best `keep` fraction (0.3: the paper filters out 70%)
    is served, shuffled, epoch after epoch. Scored once, with the model at the first step
    that draws (the initial model).

    Chosen, not read: one SGD step of size `lr` on the token-mean NLL per example
    (`donod_scores`), equal TOPSIS weights, and DON as a *cost*. To first order
    DON ∝ ⟨W, g⟩ = E_p[z] − z_y, positive exactly when the target's logit is below the model's
    expected logit: the examples that shrink the head's norm are the ones the model disagrees
    with. Measured on the tiny model with 25% corrupted demonstrations
    (tests/test_pruning.py): DON as a cost keeps none of them, DON as a benefit (`don:
    benefit`, one reading of "samples that stabilize the norm") keeps every one. Metrics:
    `data/kept`, `data/nod_kept` vs `data/nod_pool`, `data/don_kept` vs `data/don_pool`."""

    def __init__(self, spec, pool, seed) -> None:
        super().__init__(spec, pool, seed)
        self.kept: list[str] | None = None
        self.position = 0
        self.scored: dict[str, float] = {}

    def _score(self, env) -> None:
        views = env.inspect(_demo_items(env, self.pool, "donod"))
        don_nod = torch.tensor([donod_scores(v, self.spec.lr) for v in views])
        c = topsis(don_nod, [self.spec.don == "benefit", False], list(self.spec.weights))
        n_keep = max(1, round(self.spec.keep * len(self.pool)))
        order = sorted(range(len(self.pool)), key=lambda i: -float(c[i]))[:n_keep]
        self.kept = [self.pool[i].id for i in order]
        nod = don_nod[:, 1]
        self.scored = {
            "data/kept": float(n_keep),
            "data/nod_kept": float(nod[order].mean()),
            "data/nod_pool": float(nod.mean()),
            "data/don_kept": float(don_nod[order, 0].mean()),
            "data/don_pool": float(don_nod[:, 0].mean()),
        }

    def take(self, stream, n, step, env=None):
        if self.kept is None:
            self._score(env)
        by_id = {ex.id: ex for ex in self.pool}
        kept = ExampleStream([by_id[i] for i in self.kept], self.seed, "donod")
        kept.position = self.position
        exs = kept.take(n)
        self.position = kept.position
        return exs, dict(self.scored)

    def state_dict(self):
        return {"kept": self.kept, "position": self.position, "scored": self.scored}

    def load_state_dict(self, state):
        self.kept, self.position = state["kept"], int(state["position"])
        self.scored = dict(state["scored"])


__all__ = ["Donod", "FastJL", "Uds", "donod_scores", "topsis"]
