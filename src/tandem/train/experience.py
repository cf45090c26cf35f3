"""Experience: the items of one step, tagged by source, and their padded tensors.

An item is a prompt plus a completion (sampled, or a demonstration). Sources:

- `rollout`: sampled from the policy and scored; trained with the policy-gradient term.
- `expert`: a demonstration trained with the expert term (NLL / DFT / CHORD-phi).
- `offpolicy`: a demonstration placed inside a rollout group (LUFFY); it shares the group's
  advantage computation and is trained with the shaped policy-gradient term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SOURCES = ("rollout", "expert", "offpolicy")


@dataclass
class Item:
    prompt_ids: list[int]
    completion_ids: list[int]
    source: str
    group: int = -1
    reward: float = 0.0
    advantage: float = 0.0
    finished: bool = True


@dataclass
class Batch:
    """Right-padded tensors for a list of items. T = longest prompt + completion."""

    input_ids_BT: torch.Tensor
    attention_mask_BT: torch.Tensor
    target_mask_BT: torch.Tensor  # 1 on completion tokens (the trainable ones)
    source_B: list[str]
    adv_B: torch.Tensor

    @property
    def size(self) -> int:
        return self.input_ids_BT.shape[0]

    def rows(self, idx: list[int]) -> Batch:
        """A sub-batch, trimmed to its own longest row."""
        sel = torch.tensor(idx, dtype=torch.long)
        am = self.attention_mask_BT[sel]
        t = int(am.sum(1).max().item()) if len(idx) else 0
        return Batch(
            self.input_ids_BT[sel, :t],
            am[:, :t],
            self.target_mask_BT[sel, :t],
            [self.source_B[i] for i in idx],
            self.adv_B[sel],
        )

    def source_mask(self, *sources: str) -> torch.Tensor:
        """(B, T) float mask of trainable tokens of items from the given sources."""
        rows = torch.tensor([s in sources for s in self.source_B], dtype=torch.float32)
        return self.target_mask_BT * rows[:, None]


def collate(items: list[Item], pad_id: int) -> Batch:
    lengths = [len(it.prompt_ids) + len(it.completion_ids) for it in items]
    t = max(lengths)
    b = len(items)
    ids = torch.full((b, t), pad_id, dtype=torch.long)
    attn = torch.zeros((b, t), dtype=torch.long)
    tgt = torch.zeros((b, t), dtype=torch.float32)
    for i, it in enumerate(items):
        seq = it.prompt_ids + it.completion_ids
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attn[i, : len(seq)] = 1
        tgt[i, len(it.prompt_ids) : len(seq)] = 1.0
    adv = torch.tensor([it.advantage for it in items], dtype=torch.float32)
    return Batch(ids, attn, tgt, [it.source for it in items], adv)


def microbatches(
    batch: Batch, tokens_per_microbatch: int, by_prompt: bool = False
) -> list[list[int]]:
    """Split rows into chunks whose padded size (rows x longest row) fits the token budget.

    Rows are ordered by length (longest first) so padding stays small, or, with `by_prompt`,
    kept together by prompt (so rows sharing a prompt land in the same chunk and the prompt is
    computed once); a single row longer than the budget becomes its own micro-batch. The
    gradient does not depend on this split because every term is normalized by whole-batch
    counts (see `tandem.algo.aggregate`).
    """
    lengths = batch.attention_mask_BT.sum(1).tolist()
    if by_prompt:
        ids = batch.input_ids_BT.tolist()
        first = batch.target_mask_BT.argmax(1).tolist()
        prompt = [tuple(ids[i][: first[i]]) for i in range(batch.size)]
        order = sorted(range(batch.size), key=lambda i: (-len(prompt[i]), prompt[i], -lengths[i]))
    else:
        order = sorted(range(batch.size), key=lambda i: -lengths[i])
    chunks: list[list[int]] = []
    cur: list[int] = []
    cur_max = 0
    for i in order:
        new_max = max(cur_max, int(lengths[i]))
        if cur and new_max * (len(cur) + 1) > tokens_per_microbatch:
            chunks.append(cur)
            cur, new_max = [], int(lengths[i])
        cur.append(i)
        cur_max = new_max
    if cur:
        chunks.append(cur)
    return chunks
