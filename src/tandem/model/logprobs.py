"""Per-token log-probabilities (and entropies) of given sequences, without full (B, T, V) logits.

Shapes: B = batch, T = sequence length, H = hidden size, V = vocab, N = number of target tokens.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from tandem.model.head import TiedGrad, head_logp_entropy
from tandem.model.lean import lean_modules


class TokenLogProbs(NamedTuple):
    """(B, T) float32 tensors: the target tokens' log-probs (0 elsewhere), their entropies (None
    unless asked), and the value head's estimate at each target token (None without one)."""

    logp: Tensor
    entropy: Tensor | None = None
    values: Tensor | None = None
    vocab: Tensor | None = None
    """(B, T, V) log-softmax over the whole vocabulary at target tokens (0 elsewhere), only when
    asked (`with_vocab`: Anchored SFT's KL to the reference, One-Token Rollout)."""


def position_ids_from_mask(attention_mask_BT: Tensor) -> Tensor:
    """Positions counting only attended tokens: cumsum(mask) - 1, clamped at 0. Shape (B, T).

    Works for left and right padding (pad positions get a harmless position).
    """
    return (attention_mask_BT.long().cumsum(-1) - 1).clamp_min(0)


def _decoder(model: nn.Module) -> nn.Module:
    """The base transformer (no LM head) of a *ForCausalLM model."""
    get = getattr(model, "get_decoder", None)
    decoder = get() if get is not None else None
    if decoder is None or decoder is model:
        decoder = getattr(model, model.base_model_prefix)
    return decoder


class _TiedLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids: Tensor, weight: Tensor, padding_idx: int | None, slot: TiedGrad):
        ctx.save_for_backward(ids)
        ctx.shape, ctx.padding_idx, ctx.slot = weight.shape, padding_idx, slot
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, g: Tensor):
        (ids,) = ctx.saved_tensors
        ids_N, g_NH = ids.reshape(-1), g.reshape(-1, g.shape[-1])
        if ctx.padding_idx is not None:  # the padding row gets no gradient (as nn.Embedding)
            keep = ids_N != ctx.padding_idx
            ids_N, g_NH = ids_N[keep], g_NH[keep]
        dense, ctx.slot.dense = ctx.slot.dense, None
        if dense is None:  # the head left no dense gradient: a sparse one, as nn.Embedding(sparse)
            return (
                None,
                torch.sparse_coo_tensor(ids_N[None], g_NH, ctx.shape, check_invariants=False),
                None,
                None,
            )
        # Bitwise what autograd's dense + sparse sum gives (tested), without the copy.
        return None, dense.index_add_(0, ids_N, g_NH.to(dense.dtype)), None, None


@contextlib.contextmanager
def _tied_embedding_grad(model: nn.Module):
    """While gradients are on and the input embedding is tied to the LM head, the lookup's
    gradient holds only the looked-up rows: skipped are building and zero-filling a dense (V, H)
    gradient for a few hundred rows (measured ~0.37 s of a SmolLM2 GRPO step) and, when the fused
    head runs (it takes the yielded `TiedGrad`), the out-of-place sum of the two gradients.
    Yields the `TiedGrad` to pass to `head_logp_entropy`, or None. Untied embeddings are left
    alone (optimizers want dense grads)."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and emb is not None and emb.weight is head.weight
    if not (tied and torch.is_grad_enabled() and isinstance(emb, nn.Embedding)) or emb.sparse:
        yield None
        return
    if type(emb) is not nn.Embedding or emb.max_norm is not None or emb.scale_grad_by_freq:
        emb.sparse = True  # autograd adds the sparse lookup gradient to the head's dense one
        try:
            yield None
        finally:
            emb.sparse = False
        return
    slot = TiedGrad()
    emb.forward = lambda ids: _TiedLookup.apply(ids, emb.weight, emb.padding_idx, slot)
    try:
        yield slot
    finally:
        del emb.forward


def _chunk_logp_entropy(
    lm_head: nn.Module, hidden_NH: Tensor, targets_N: Tensor, temperature: float, with_entropy: bool
) -> tuple[Tensor, Tensor]:
    """log p(target) and entropy (zeros if not with_entropy) of softmax(lm_head(h) / T). (N,), (N,)."""
    logits_NV = lm_head(hidden_NH).float()
    if temperature != 1.0:
        logits_NV = logits_NV / temperature
    logp_NV = torch.log_softmax(logits_NV, dim=-1)
    logp_N = logp_NV.gather(-1, targets_N[:, None]).squeeze(-1)
    if with_entropy:
        entropy_N = -(logp_NV.exp() * logp_NV).sum(-1)
    else:
        entropy_N = torch.zeros_like(logp_N)
    return logp_N, entropy_N


def _selective_head(
    model: nn.Module,
    hidden_NH: Tensor,
    targets_N: Tensor,
    temperature: float,
    with_entropy: bool,
    chunk_tokens: int,
    tied: TiedGrad | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """LM head on the N rows that predict a target only: (N,), (N,). A plain `nn.Linear` head
    runs fused (`tandem.model.head`: no logits kept, both passes walk vocabulary slices); any
    other head module runs checkpointed chunks of `chunk_tokens` rows through autograd.
    Returns (None, None) when N == 0."""
    if hidden_NH.shape[0] == 0:
        return None, None
    lm_head = model.get_output_embeddings()
    if type(lm_head) is nn.Linear:
        return head_logp_entropy(
            hidden_NH,
            lm_head.weight,
            lm_head.bias,
            targets_N,
            temperature=temperature,
            with_entropy=with_entropy,
            tied_grad=tied,
        )
    use_ckpt = torch.is_grad_enabled() and hidden_NH.requires_grad
    logps, ents = [], []
    for s in range(0, hidden_NH.shape[0], chunk_tokens):
        args = (lm_head, hidden_NH[s : s + chunk_tokens], targets_N[s : s + chunk_tokens])
        if use_ckpt:
            lp, ent = checkpoint(
                _chunk_logp_entropy, *args, temperature, with_entropy, use_reentrant=False
            )
        else:
            lp, ent = _chunk_logp_entropy(*args, temperature, with_entropy)
        logps.append(lp)
        ents.append(ent)
    return torch.cat(logps), torch.cat(ents)


def _check(
    input_ids_BT: Tensor, attention_mask_BT: Tensor, target_mask_BT: Tensor, temp: float
) -> None:
    if not input_ids_BT.shape == attention_mask_BT.shape == target_mask_BT.shape:
        raise ValueError(
            f"shape mismatch: input_ids {tuple(input_ids_BT.shape)}, attention_mask "
            f"{tuple(attention_mask_BT.shape)}, target_mask {tuple(target_mask_BT.shape)}"
        )
    if not temp > 0:
        raise ValueError(f"temperature must be > 0 for log-probs, got {temp}")


def _base(model: nn.Module, inputs: dict | None) -> nn.Module:
    """The module to run: the base transformer, or with extra inputs the whole base model
    (`model.<base_model_prefix>`, which for a vision-language model merges the images)."""
    if inputs:
        return getattr(model, model.base_model_prefix)
    return _decoder(model)


def _scatter(
    B: int,
    T: int,
    b_N: Tensor,
    t_N: Tensor,
    logp_N: Tensor | None,
    ent_N: Tensor | None,
    hidden_NH: Tensor,
    hidden_any: Tensor,
    with_entropy: bool,
    value_head: nn.Module | None,
    vocab_head: tuple[nn.Module, float] | None = None,
) -> TokenLogProbs:
    """Per-target values (N,) placed into (B, T) float32 tensors (0 off-target); with
    `vocab_head` = (LM head, temperature) also the full log-softmax, (B, T, V)."""
    zeros_BT = torch.zeros(B, T, dtype=torch.float32, device=hidden_any.device)
    if logp_N is None:  # no targets at all: keep the graph connected so backward() still works
        zero_BT = zeros_BT + hidden_any.float().sum() * 0.0
        if value_head is not None:
            zero_BT = zero_BT + sum(p.sum() for p in value_head.parameters()) * 0.0
        vocab = None
        if vocab_head is not None:
            V = vocab_head[0].weight.shape[0]
            vocab = zero_BT[..., None] + torch.zeros(B, T, V, device=zero_BT.device)
        return TokenLogProbs(
            zero_BT,
            zero_BT if with_entropy else None,
            zero_BT if value_head is not None else None,
            vocab,
        )
    logp_BT = zeros_BT.index_put((b_N, t_N), logp_N)
    entropy_BT = zeros_BT.index_put((b_N, t_N), ent_N) if with_entropy else None
    values_BT = None
    if value_head is not None:
        values_N = value_head(hidden_NH).squeeze(-1).float()
        values_BT = zeros_BT.index_put((b_N, t_N), values_N)
    vocab_BTV = None
    if vocab_head is not None:  # the whole (N, V) distribution, kept: only when a term asks
        head, temperature = vocab_head
        vocab_NV = torch.log_softmax(head(hidden_NH).float() / temperature, dim=-1)
        vocab_BTV = torch.zeros(B, T, vocab_NV.shape[-1], device=vocab_NV.device)
        vocab_BTV = vocab_BTV.index_put((b_N, t_N), vocab_NV)
    return TokenLogProbs(logp_BT, entropy_BT, values_BT, vocab_BTV)


def token_logprobs(
    model: nn.Module,
    input_ids_BT: Tensor,
    attention_mask_BT: Tensor,
    target_mask_BT: Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_tokens: int = 1024,
    value_head: nn.Module | None = None,
    inputs: dict[str, Tensor] | None = None,
    with_vocab: bool = False,
    inputs_embeds_BTH: Tensor | None = None,
) -> TokenLogProbs:
    """Log-prob of each target token under the model, computed only where target_mask is set.

    logp_BT[b, t] = log_softmax(logits[b, t - 1] / temperature)[input_ids[b, t]] where
    target_mask_BT[b, t] (column 0 is never a target), else 0. entropy_BT is the entropy of the
    same distribution at those positions (0 elsewhere), or None unless with_entropy.

    The base transformer runs once; the LM head runs only on the N hidden rows that predict a
    target. The logits are never kept: `tandem.model.head` walks the vocabulary in slices of at
    most 24 MB of float32 logits in both passes (a head that is not a plain `nn.Linear` runs
    checkpointed chunks of `chunk_tokens` rows instead). Differentiable w.r.t. the model parameters; autocast-friendly (the
    log-softmax is done in float32).

    A `value_head` (a module mapping hidden states (N, H) to (N, 1), PPO's critic) is applied to
    the same hidden rows: values[b, t] = V(s_t), the estimate before token t is emitted.
    `with_vocab` also returns the full log-softmax at target tokens (B, T, V): memory of that
    size, only for the terms that need the whole distribution.
    `inputs` are extra keyword arguments of the base model's forward (``pixel_values`` of a
    vision-language model); the base model is then `model.<base_model_prefix>`.

    Args:
        input_ids_BT: (B, T) token ids.
        attention_mask_BT: (B, T) 1 for real tokens, 0 for padding (left or right).
        target_mask_BT: (B, T) 1 where the token's log-prob is wanted.
        inputs_embeds_BTH: (B, T, H) input embeddings to run instead of input_ids' own (IFT);
            the targets are still input_ids.
    Returns:
        `TokenLogProbs` (logp_BT float32, entropy_BT float32 or None, values_BT or None).
    """
    _check(input_ids_BT, attention_mask_BT, target_mask_BT, temperature)
    B, T = input_ids_BT.shape
    base = _base(model, inputs)
    with _tied_embedding_grad(model) as tied, lean_modules(model):
        feed = (
            {"input_ids": input_ids_BT}
            if inputs_embeds_BTH is None
            else {"inputs_embeds": inputs_embeds_BTH}  # IFT's mixed inputs; targets stay ids
        )
        out = base(
            **feed,
            attention_mask=attention_mask_BT,
            position_ids=position_ids_from_mask(attention_mask_BT),
            use_cache=False,
            **(inputs or {}),
        )
    hidden_BTH = out[0] if isinstance(out, tuple) else out.last_hidden_state
    tmask_BT = target_mask_BT.bool().clone()
    tmask_BT[:, 0] = False
    b_N, t_N = tmask_BT.nonzero(as_tuple=True)
    hidden_NH = hidden_BTH[b_N, t_N - 1]
    targets_N = input_ids_BT[b_N, t_N]
    logp_N, ent_N = _selective_head(
        model, hidden_NH, targets_N, temperature, with_entropy, chunk_tokens, tied
    )
    return _scatter(
        B,
        T,
        b_N,
        t_N,
        logp_N,
        ent_N,
        hidden_NH,
        hidden_BTH,
        with_entropy,
        value_head,
        (model.get_output_embeddings(), temperature) if with_vocab else None,
    )


def token_logprobs_reference(
    model: nn.Module,
    input_ids_BT: Tensor,
    attention_mask_BT: Tensor,
    target_mask_BT: Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_tokens: int = 1024,
) -> TokenLogProbs:
    """Same contract as token_logprobs, computed naively from full (B, T, V) logits (for tests)."""
    del chunk_tokens
    _check(input_ids_BT, attention_mask_BT, target_mask_BT, temperature)
    logits_BTV = model(
        input_ids=input_ids_BT,
        attention_mask=attention_mask_BT,
        position_ids=position_ids_from_mask(attention_mask_BT),
        use_cache=False,
    ).logits
    logp_BTV = torch.log_softmax(logits_BTV.float()[:, :-1] / temperature, dim=-1)
    logp_BT = logp_BTV.gather(-1, input_ids_BT[:, 1:, None]).squeeze(-1)
    keep_BT = target_mask_BT[:, 1:].bool()
    pad_B1 = torch.zeros_like(logp_BT[:, :1])
    logp_BT = torch.cat([pad_B1, torch.where(keep_BT, logp_BT, 0.0)], dim=1)
    if not with_entropy:
        return TokenLogProbs(logp_BT)
    ent_BT = -(logp_BTV.exp() * logp_BTV).sum(-1)
    return TokenLogProbs(logp_BT, torch.cat([pad_B1, torch.where(keep_BT, ent_BT, 0.0)], dim=1))


def _split_prompt_completion(
    target_mask_BT: Tensor, attention_mask_BT: Tensor
) -> tuple[Tensor, Tensor]:
    """Prompt length (first target column) and completion length of each right-padded row."""
    tm = target_mask_BT.bool()
    length_B = attention_mask_BT.long().sum(1)
    has_B = tm.any(1)
    first_B = torch.where(has_B, tm.float().argmax(1), length_B)
    return first_B, length_B - first_B


def _balanced_parts(rows: list[int], clens: list[int], plen: int, cap: int) -> list[list[int]]:
    """Split a group's rows, in order, into the fewest parts whose packed length (prompt + their
    completions) stays within `cap` (a lone row may exceed it), with the completion tokens spread
    evenly over the parts: all parts are padded to the longest, so [7 rows, 1 row] would cost
    almost twice [4 rows, 4 rows]."""
    total = sum(clens[b] for b in rows)
    for n in range(1, len(rows) + 1):
        target = total / n
        parts: list[list[int]] = [[]]
        done = 0  # completion tokens in closed parts
        for b in rows:
            filled = sum(clens[x] for x in parts[-1])
            over_cap = plen + filled + clens[b] > cap
            if parts[-1] and len(parts) < n and (over_cap or done + filled >= target * len(parts)):
                parts.append([])
                done += filled
            parts[-1].append(b)
        if all(len(p) == 1 or plen + sum(clens[x] for x in p) <= cap for p in parts):
            return parts
    return [[b] for b in rows]


def shared_prompt_logprobs(
    model: nn.Module,
    input_ids_BT: Tensor,
    attention_mask_BT: Tensor,
    target_mask_BT: Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_tokens: int = 1024,
    pack_tokens: int = 1024,
    value_head: nn.Module | None = None,
    with_vocab: bool = False,
) -> TokenLogProbs:
    """`token_logprobs` for right-padded rows of prompt + completion whose prompts repeat (a GRPO
    group shares one prompt): each distinct prompt runs through the transformer once, packed in
    one sequence with all the completions that follow it, [prompt, c_1, c_2, ..., c_k], under a
    4D attention mask where each completion sees the prompt and itself (causally) and nothing
    else, with position ids restarting after the prompt for each completion. One forward and one
    backward, no copies of the prompt's keys and values.

    Same contract and results as `token_logprobs` (up to float rounding), provided the target
    tokens of each row are exactly its completion: a contiguous block right after the prompt,
    running to the end of the row's real tokens. With G samples per prompt and prompts longer than
    completions, this removes most of the forward/backward work of a GRPO step.
    """
    _check(input_ids_BT, attention_mask_BT, target_mask_BT, temperature)
    B, T = input_ids_BT.shape
    dev = input_ids_BT.device
    plen_B, clen_B = _split_prompt_completion(target_mask_BT, attention_mask_BT)
    ids = input_ids_BT.tolist()
    plens, clens = plen_B.tolist(), clen_B.tolist()
    groups: dict[tuple[int, ...], list[int]] = {}
    for b in range(B):
        groups.setdefault(tuple(ids[b][: plens[b]]), []).append(b)
    # A group becomes one packed row, or several when its completions are long: attention in a
    # packed row costs (its length)^2 while each completion needs only (prompt + itself), so a
    # row is capped at pack_tokens (a single prompt + completion may exceed it).
    packs: list[tuple[tuple[int, ...], list[int]]] = []
    for prompt, rows in groups.items():
        packs += [(prompt, part) for part in _balanced_parts(rows, clens, len(prompt), pack_tokens)]
    R = len(packs)
    L = max(len(p) + sum(clens[b] for b in rows) for p, rows in packs)
    packed_RL = torch.zeros(R, L, dtype=torch.long)
    pos_RL = torch.zeros(R, L, dtype=torch.long)
    seg_RL = torch.full((R, L), -1, dtype=torch.long)  # -1 padding, 0 prompt, k+1 completion k
    # For every row b and completion offset j: the packed (row, column) of the hidden state that
    # predicts completion token j (the prompt's last token for j = 0, else completion token j-1).
    src_r: list[int] = []
    src_c: list[int] = []
    for r, (prompt, rows) in enumerate(packs):
        p = len(prompt)
        packed_RL[r, :p] = torch.tensor(prompt, dtype=torch.long)
        pos_RL[r, :p] = torch.arange(p)
        seg_RL[r, :p] = 0
        col = p
        for k, b in enumerate(rows):
            c = clens[b]
            packed_RL[r, col : col + c] = input_ids_BT[b, p : p + c].cpu()
            pos_RL[r, col : col + c] = torch.arange(p, p + c)
            seg_RL[r, col : col + c] = k + 1
            prev = [p - 1] + list(range(col, col + c - 1))
            src_r += [r] * c
            src_c += prev
            col += c
    idx = torch.arange(L)
    seg_q, seg_k = seg_RL[:, :, None], seg_RL[:, None, :]
    allow_RLL = (
        (idx[None, :] <= idx[:, None])[None] & (seg_k >= 0) & ((seg_k == 0) | (seg_k == seg_q))
    )
    allow_RLL |= torch.eye(L, dtype=torch.bool)[None]  # padding rows see themselves: no NaN
    with _tied_embedding_grad(model) as tied, lean_modules(model):
        out = _decoder(model)(
            input_ids=packed_RL.to(dev),
            attention_mask=allow_RLL[:, None].to(dev),
            position_ids=pos_RL.to(dev),
            use_cache=False,
        )
    hidden_RLH = out[0] if isinstance(out, tuple) else out.last_hidden_state
    # Targets in (b, t) order; the sources above were listed row by row in group order.
    tmask_BT = target_mask_BT.bool()
    b_N, t_N = tmask_BT.nonzero(as_tuple=True)
    order = {}
    n = 0
    for _, rows in packs:
        for b in rows:
            order[b] = n
            n += clens[b]
    j_N = (t_N - plen_B[b_N]).tolist()
    pick = torch.tensor([order[b] + j for b, j in zip(b_N.tolist(), j_N)], dtype=torch.long)
    r_N = torch.tensor(src_r, dtype=torch.long)[pick].to(dev)
    c_N = torch.tensor(src_c, dtype=torch.long)[pick].to(dev)
    hidden_NH = hidden_RLH[r_N, c_N]
    logp_N, ent_N = _selective_head(
        model, hidden_NH, input_ids_BT[b_N, t_N], temperature, with_entropy, chunk_tokens, tied
    )
    return _scatter(
        B,
        T,
        b_N,
        t_N,
        logp_N,
        ent_N,
        hidden_NH,
        hidden_RLH,
        with_entropy,
        value_head,
        (model.get_output_embeddings(), temperature) if with_vocab else None,
    )
