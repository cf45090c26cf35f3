"""Experience: the items of one step, their token spans and roles, and their padded tensors.

An `Item` is one sequence the step trains on, made of token `Span`s, each with a role:

=========  ==========================================================  =======
role       what it is                                                    trained
=========  ==========================================================  =======
prompt     the prompt (chat template applied)                            no
sampled    tokens the policy sampled (a rollout, a model continuation)   yes
demo       a demonstration (gold solution, a pair's chosen/rejected)     yes
prefix     a demonstration prefix the model then continued from          yes
tool       a tool's output between sampled spans (multi-turn)            no
image      image placeholder tokens (the image is in `Item.inputs`)      no
=========  ==========================================================  =======

Besides its spans an item carries the name of the source that made it, a group id (the rollouts
of one prompt; the advantage is computed over a group), a pair id and whether it is the chosen or
the rejected side (preference pairs), a reward (None: not scored), an item weight, the
behaviour log-probs of its sampled tokens (the sampler's own, `Span.logp`), optionally
precomputed per-token advantages, and extra model inputs (`inputs`, e.g. ``pixel_values``),
which reach the model's forward as keyword arguments.

`collate` turns items into a right-padded `Batch`: (B, T) tensors plus per-row ones. Group and
pair ids are made unique per source there, so two sources can number their groups from 0.
`microbatches` splits a batch under a padded-token budget without ever splitting a pair;
`minibatches` splits it into parts for several optimizer updates without splitting a group or a
pair.

Shapes: B = rows, T = longest row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

ROLES = ("prompt", "sampled", "demo", "prefix", "tool", "image")
TRAINED_ROLES = ("sampled", "demo", "prefix")
ROLE_ID = {r: i for i, r in enumerate(ROLES)}


@dataclass
class Span:
    """Consecutive tokens with one role. `logp`: the behaviour policy's log-prob of each token
    (the sampler's, for sampled spans), or None when unknown."""

    ids: list[int]
    role: str
    logp: list[float] | None = None
    weights: list[float] | None = None
    """Per-token loss weights (FAIT's error-sensitive tokens), None: 1 for every token."""

    def __post_init__(self) -> None:
        if self.role not in ROLE_ID:
            raise ValueError(f"span role {self.role!r}; allowed: {', '.join(ROLES)}")
        if self.logp is not None and len(self.logp) != len(self.ids):
            raise ValueError(f"span has {len(self.ids)} ids but {len(self.logp)} log-probs")
        if self.weights is not None and len(self.weights) != len(self.ids):
            raise ValueError(f"span has {len(self.ids)} ids but {len(self.weights)} weights")


@dataclass
class Item:
    """One training sequence (see the module docstring)."""

    spans: list[Span]
    source: str
    group: int = -1
    pair: int = -1
    chosen: bool | None = None
    reward: float | None = None
    weight: float = 1.0
    advantage: float | list[float] | None = None
    """Precomputed advantage: one number for every trained token, or one per trained token.
    None: the estimator of the step's objective sets it (when the item is scored)."""
    finished: bool = True
    inputs: dict[str, Tensor] = field(default_factory=dict)
    example: Any = None
    """The task example the item came from (for buffers and re-scoring); not collated."""
    meta: dict = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        prompt_ids: list[int],
        completion_ids: list[int],
        role: str,
        source: str,
        *,
        logp: list[float] | None = None,
        **kw: Any,
    ) -> Item:
        """A prompt span followed by one completion span of `role`."""
        spans = [Span(list(prompt_ids), "prompt"), Span(list(completion_ids), role, logp)]
        return cls(spans, source, **kw)

    @property
    def ids(self) -> list[int]:
        return [t for s in self.spans for t in s.ids]

    def __len__(self) -> int:
        return sum(len(s.ids) for s in self.spans)

    @property
    def prompt_ids(self) -> list[int]:
        """The tokens before the first trained token."""
        out: list[int] = []
        for s in self.spans:
            if s.role in TRAINED_ROLES and s.ids:
                break
            out += s.ids
        return out

    @property
    def completion_ids(self) -> list[int]:
        """The tokens from the first trained token on."""
        return self.ids[len(self.prompt_ids) :]

    @property
    def n_trained(self) -> int:
        return sum(len(s.ids) for s in self.spans if s.role in TRAINED_ROLES)


@dataclass
class Batch:
    """Right-padded tensors for a list of items.

    `needs` holds what is filled once per batch for the terms that ask (old and reference
    log-probs, old values, returns: ``old_logp_BT``, ``ref_logp_BT``, ...); `inputs` holds each
    row's extra model inputs (None where a row has none)."""

    input_ids_BT: Tensor
    attention_mask_BT: Tensor
    role_BT: Tensor
    """Role id (`ROLE_ID`) of each token, -1 on padding."""
    target_mask_BT: Tensor
    """1.0 on tokens of trained roles."""
    behav_logp_BT: Tensor
    behav_mask_BT: Tensor
    """1.0 where the behaviour (sampler) log-prob of the token is known."""
    adv_BT: Tensor
    token_weight_BT: Tensor
    """Per-token loss weights (1 unless a span sets them: FAIT)."""
    reward_B: Tensor
    """Reward of each row; NaN for rows that were not scored."""
    weight_B: Tensor
    group_B: Tensor
    pair_B: Tensor
    chosen_B: Tensor
    source_B: list[str]
    inputs: dict[str, list[Tensor | None]] = field(default_factory=dict)
    needs: dict[str, Tensor] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.input_ids_BT.shape[0]

    @property
    def device(self) -> torch.device:
        return self.input_ids_BT.device

    def rows(self, idx: list[int]) -> Batch:
        """A sub-batch of these rows, trimmed to its own longest row."""
        sel = torch.tensor(idx, dtype=torch.long, device=self.device)
        am = self.attention_mask_BT[sel]
        t = int(am.sum(1).max().item()) if len(idx) else 0

        def cut(x: Tensor) -> Tensor:  # (B,), (B, T) or (B, T, V)
            return x[sel, :t] if x.dim() >= 2 else x[sel]

        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                out[f.name] = cut(v)
        return replace(
            self,
            **out,
            source_B=[self.source_B[i] for i in idx],
            inputs={k: [v[i] for i in idx] for k, v in self.inputs.items()},
            needs={k: cut(v) for k, v in self.needs.items()},
        )

    def row_mask(self, sources: tuple[str, ...] | list[str], rows: str = "all") -> Tensor:
        """(B,) bool: rows made by `sources`; `rows` = "chosen"/"rejected" keeps that pair side."""
        keep = torch.tensor([s in sources for s in self.source_B], device=self.device)
        if rows == "chosen":
            keep &= self.chosen_B
        elif rows == "rejected":
            keep &= (self.pair_B >= 0) & ~self.chosen_B
        return keep

    def mask(
        self,
        sources: tuple[str, ...] | list[str],
        roles: tuple[str, ...] | list[str] = TRAINED_ROLES,
        rows: str = "all",
    ) -> Tensor:
        """(B, T) float mask: tokens of these roles in rows made by these sources."""
        role_ok = torch.zeros_like(self.target_mask_BT, dtype=torch.bool)
        for r in roles:
            role_ok |= self.role_BT == ROLE_ID[r]
        return (role_ok & self.row_mask(sources, rows)[:, None]).float()

    def model_inputs(self) -> dict[str, Tensor]:
        """Extra forward keyword arguments: each key's tensors of all rows concatenated along
        dim 0 in row order (the transformers convention for ``pixel_values``: one entry per
        image, matched to the image placeholders in order)."""
        out = {}
        for k, per_row in self.inputs.items():
            parts = [t for t in per_row if t is not None]
            if parts:
                out[k] = torch.cat([t.to(self.device) for t in parts])
        return out


def _unique_ids(items: list[Item], attr: str) -> list[int]:
    seen: dict[tuple[str, int], int] = {}
    out = []
    for it in items:
        v = getattr(it, attr)
        out.append(-1 if v < 0 else seen.setdefault((it.source, v), len(seen)))
    return out


def collate(items: list[Item], pad_id: int, device: torch.device | str = "cpu") -> Batch:
    """Right-padded tensors of `items` on `device` (see `Batch`)."""
    if not items:
        raise ValueError("collate() needs at least one item")
    b, t = len(items), max(len(it) for it in items)
    ids = torch.full((b, t), pad_id, dtype=torch.long)
    attn = torch.zeros((b, t), dtype=torch.long)
    role = torch.full((b, t), -1, dtype=torch.int8)
    behav = torch.zeros((b, t), dtype=torch.float32)
    behav_m = torch.zeros((b, t), dtype=torch.float32)
    adv = torch.zeros((b, t), dtype=torch.float32)
    tok_w = torch.ones((b, t), dtype=torch.float32)
    for i, it in enumerate(items):
        col = 0
        for s in it.spans:
            n = len(s.ids)
            ids[i, col : col + n] = torch.tensor(s.ids, dtype=torch.long)
            role[i, col : col + n] = ROLE_ID[s.role]
            if s.weights is not None:
                tok_w[i, col : col + n] = torch.as_tensor(s.weights, dtype=torch.float32)
            if s.logp is not None:
                behav[i, col : col + n] = torch.as_tensor(s.logp, dtype=torch.float32)
                behav_m[i, col : col + n] = 1.0
            col += n
        attn[i, :col] = 1
        if it.advantage is not None:
            trained = torch.zeros(t, dtype=torch.bool)
            for r in TRAINED_ROLES:
                trained |= role[i] == ROLE_ID[r]
            adv[i, trained] = torch.as_tensor(it.advantage, dtype=torch.float32)
    target = torch.zeros((b, t), dtype=torch.float32)
    for r in TRAINED_ROLES:
        target[role == ROLE_ID[r]] = 1.0
    keys = sorted({k for it in items for k in it.inputs})
    dev = torch.device(device)
    return Batch(
        input_ids_BT=ids.to(dev),
        attention_mask_BT=attn.to(dev),
        role_BT=role.to(dev),
        target_mask_BT=target.to(dev),
        behav_logp_BT=behav.to(dev),
        behav_mask_BT=behav_m.to(dev),
        adv_BT=adv.to(dev),
        token_weight_BT=tok_w.to(dev),
        reward_B=torch.tensor(
            [math.nan if it.reward is None else float(it.reward) for it in items], device=dev
        ),
        weight_B=torch.tensor([float(it.weight) for it in items], device=dev),
        group_B=torch.tensor(_unique_ids(items, "group"), dtype=torch.long, device=dev),
        pair_B=torch.tensor(_unique_ids(items, "pair"), dtype=torch.long, device=dev),
        chosen_B=torch.tensor([bool(it.chosen) for it in items], device=dev),
        source_B=[it.source for it in items],
        inputs={k: [it.inputs.get(k) for it in items] for k in keys},
    )


def _units(batch: Batch, key: Tensor) -> list[list[int]]:
    """Rows grouped into units that must stay together: equal `key` >= 0, else one row each."""
    units: dict[int, list[int]] = {}
    out: list[list[int]] = []
    for i, k in enumerate(key.tolist()):
        if k < 0:
            out.append([i])
        else:
            if k not in units:
                units[k] = []
                out.append(units[k])
            units[k].append(i)
    return out


def microbatches(
    batch: Batch, tokens_per_microbatch: int, by_prompt: bool = False
) -> list[list[int]]:
    """Split rows into chunks whose padded size (rows x longest row) fits the token budget.

    Rows are ordered by length (longest first) so padding stays small, or, with `by_prompt`,
    kept together by prompt (so rows sharing a prompt land in the same chunk and the prompt is
    computed once). The two rows of a preference pair always share a chunk (a pair term needs
    both); a unit longer than the budget becomes its own micro-batch. The gradient does not
    depend on this split because every term is normalized by whole-batch counts
    (`tandem.algo.aggregate`).
    """
    lengths = batch.attention_mask_BT.sum(1).tolist()
    units = _units(batch, batch.pair_B)
    if by_prompt:
        ids = batch.input_ids_BT.tolist()
        first = batch.target_mask_BT.argmax(1).tolist()
        prompt = [tuple(ids[i][: first[i]]) for i in range(batch.size)]
        units.sort(key=lambda u: (-len(prompt[u[0]]), prompt[u[0]], -max(lengths[i] for i in u)))
    else:
        units.sort(key=lambda u: -max(lengths[i] for i in u))
    chunks: list[list[int]] = []
    cur: list[int] = []
    cur_max = 0
    for u in units:
        new_max = max(cur_max, *(int(lengths[i]) for i in u))
        if cur and new_max * (len(cur) + len(u)) > tokens_per_microbatch:
            chunks.append(cur)
            cur, new_max = [], max(int(lengths[i]) for i in u)
        cur += u
        cur_max = new_max
    if cur:
        chunks.append(cur)
    return chunks


def minibatches(batch: Batch, n: int, generator: torch.Generator | None = None) -> list[list[int]]:
    """Split rows into `n` parts for `n` optimizer updates, never splitting a group (rows of one
    prompt's rollouts) or a pair; units are shuffled with `generator` (None: in order) and dealt
    so that the parts hold about the same number of rows. Fewer parts when there are fewer
    units than `n`."""
    key = torch.where(batch.pair_B >= 0, batch.pair_B + batch.size * 10, batch.group_B)
    units = _units(batch, key)
    if generator is not None and len(units) > 1:
        order = torch.randperm(len(units), generator=generator).tolist()
        units = [units[i] for i in order]
    n = max(1, min(n, len(units)))
    target = batch.size / n
    parts: list[list[int]] = [[]]
    for u in units:
        if parts[-1] and len(parts) < n and len(parts[-1]) + len(u) / 2 > target:
            parts.append([])
        parts[-1] += u
    return [sorted(p) for p in parts]


__all__ = [
    "ROLES",
    "ROLE_ID",
    "TRAINED_ROLES",
    "Batch",
    "Item",
    "Span",
    "collate",
    "microbatches",
    "minibatches",
]
