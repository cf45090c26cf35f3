"""A lean inference forward for Llama-architecture models: static KV cache, shared-prompt prefill.

Decoding one token at a time is bound by per-op overhead and by reading weights, not by FLOPs.
transformers' forward spends most of a small model's decode step in Python (cache objects, mask
construction, attention dispatch); this module runs the same math directly on the model's own
parameters (no copy), with a K/V cache allocated once for the whole run and written in place.

It reads: `model.model.embed_tokens`, `.layers[i].{input_layernorm, self_attn.{q,k,v,o}_proj,
post_attention_layernorm, mlp.{gate,up,down}_proj}`, `.norm`, `.rotary_emb` (HF's own rotary
module computes cos/sin, so every rope scaling type it knows is handled), `model.lm_head`.
`supports(model)` says whether a model has exactly that structure; anything else (Qwen3's q/k
norms, sliding windows, other activations) keeps using the transformers forward.

Numerics follow transformers' eager Llama path: RMSNorm in float32 cast back to the activation
dtype before the weight, attention softmax in float32. Tests compare logits and sampled tokens
with the transformers forward (`tests/test_decoder.py`).

Shapes: B = rows, U = distinct prompts, P = padded prompt length, S = cache length (P + new
tokens), L = layers, K = key/value heads, G = query heads per K/V head, Dh = head dim, D = hidden.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_MODEL_TYPES = {"llama"}


def supports(model: nn.Module) -> bool:
    """True if `model` is a Llama-architecture causal LM this module reproduces exactly."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in _MODEL_TYPES:
        return False
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return False
    base = getattr(model, "model", None)
    if base is None or not hasattr(base, "rotary_emb") or not hasattr(model, "lm_head"):
        return False
    attn = base.layers[0].self_attn
    return not hasattr(attn, "q_norm") and getattr(cfg, "sliding_window", None) is None


@dataclass
class _Layer:
    ln1: Tensor
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    ln2: Tensor
    gate: nn.Linear
    up: nn.Linear
    down: nn.Linear


def _rms(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin


def _common_prefix(seqs: list[list[int]]) -> int:
    n = min(len(x) for x in seqs)
    first = seqs[0]
    for i in range(n):
        if any(x[i] != first[i] for x in seqs):
            return i
    return n


class LlamaDecoder:
    """Prefill + per-token decode over a static cache for one batch of prompts.

    `dec = LlamaDecoder(model, prompts, max_new_tokens, pad_id)` runs the prefill and sets
    `dec.logits_BV` (next-token logits after each prompt); `dec.step(tokens_B)` appends one token
    per row and returns the next logits.

    Prefill work is shared two ways: the longest prefix common to all prompts (a chat template's
    system turn) runs once, and rows with equal prompts (a GRPO group) share one suffix prefill.
    Cache columns: [0, C) the common prefix, [C, C + Q) the left-padded suffixes, then one
    column per new token. RoPE uses each token's true position, and attention is order-free
    over keys, so this layout gives the same result as one left-padded prompt per row.
    """

    def __init__(
        self, model: nn.Module, prompts: list[list[int]], max_new_tokens: int, pad_id: int
    ):
        cfg = model.config
        base = model.model
        self.model, self.base = model, base
        self.eps = cfg.rms_norm_eps
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.scale = self.head_dim**-0.5
        self.layers = [
            _Layer(
                lay.input_layernorm.weight,
                lay.self_attn.q_proj,
                lay.self_attn.k_proj,
                lay.self_attn.v_proj,
                lay.self_attn.o_proj,
                lay.post_attention_layernorm.weight,
                lay.mlp.gate_proj,
                lay.mlp.up_proj,
                lay.mlp.down_proj,
            )
            for lay in base.layers
        ]
        dev = base.embed_tokens.weight.device
        self.dtype = self._act_dtype()
        unique: dict[tuple[int, ...], int] = {}
        rows_B = torch.tensor([unique.setdefault(tuple(p), len(unique)) for p in prompts])
        uprompts = [list(p) for p in unique]
        # Common prefix, leaving every prompt at least one suffix token.
        C = min(_common_prefix(uprompts), min(len(p) for p in uprompts) - 1)
        Q = max(len(p) for p in uprompts) - C
        U, B = len(uprompts), len(prompts)
        ids_UQ = torch.full((U, Q), pad_id, dtype=torch.long)
        mask_UQ = torch.zeros((U, Q), dtype=torch.bool)
        for i, p in enumerate(uprompts):
            ids_UQ[i, Q - (len(p) - C) :] = torch.tensor(p[C:], dtype=torch.long)
            mask_UQ[i, Q - (len(p) - C) :] = True
        ids_UQ, mask_UQ, rows_B = ids_UQ.to(dev), mask_UQ.to(dev), rows_B.to(dev)
        self.P, self.S = C + Q, C + Q + max_new_tokens
        self.t = self.P  # next cache column to write
        self.len_B = (C + mask_UQ.long().sum(-1))[rows_B]  # true prompt lengths
        # cos/sin for every position 0..S-1 from the model's own rotary module.
        probe = base.embed_tokens.weight[:1].to(self.dtype)
        cos, sin = base.rotary_emb(probe[None], torch.arange(self.S, device=dev)[None])
        self.cos_SD, self.sin_SD = cos[0].to(self.dtype), sin[0].to(self.dtype)
        # Additive attention mask over cache columns: -inf on suffix left padding, 0 elsewhere.
        self.mask_B11S = torch.zeros(B, 1, 1, self.S, dtype=torch.float32, device=dev)
        self.mask_B11S[:, 0, 0, C : self.P].masked_fill_(~mask_UQ[rows_B], float("-inf"))
        shape = (B, self.n_kv, self.S, self.head_dim)
        self.k = [torch.empty(shape, dtype=self.dtype, device=dev) for _ in self.layers]
        self.v = [torch.empty(shape, dtype=self.dtype, device=dev) for _ in self.layers]
        if C > 0:
            pos = torch.arange(C, device=dev)[None]
            self._prefill(torch.tensor([uprompts[0][:C]], device=dev), None, pos, None, C=0)
        pos_UQ = C + (mask_UQ.long().cumsum(-1) - 1).clamp_min(0)
        h_UD = self._prefill(ids_UQ, mask_UQ, pos_UQ, rows_B, C=C)
        self.logits_BV = self._head(h_UD)[rows_B]

    def _act_dtype(self) -> torch.dtype:
        if torch.is_autocast_enabled("cpu") and self.base.embed_tokens.weight.device.type == "cpu":
            return torch.get_autocast_dtype("cpu")
        return self.base.embed_tokens.weight.dtype

    def _head(self, h_BD: Tensor) -> Tensor:
        return self.model.lm_head(_rms(h_BD, self.base.norm.weight, self.eps))

    def _prefill(
        self, ids_UQ: Tensor, mask_UQ: Tensor | None, pos_UQ: Tensor, rows_B: Tensor | None, C: int
    ) -> Tensor:
        """Run U sequences of Q tokens on top of cache columns [0, C) (shared by every row) and
        write their K/V into columns [C, C + Q): for all rows when `rows_B` is None (the common
        prefix, U = 1), else row b gets sequence rows_B[b]. Returns the last hidden states (U, D).
        """
        U, Q = ids_UQ.shape
        K, G, Dh, dtype = self.n_kv, self.n_heads // self.n_kv, self.head_dim, self.dtype
        dev = ids_UQ.device
        h = self.base.embed_tokens(ids_UQ).to(dtype)
        cos, sin = self.cos_SD[pos_UQ][:, None], self.sin_SD[pos_UQ][:, None]  # (U, 1, Q, Dh)
        # Keys: the C prefix columns (always visible), then the Q new ones: causal and
        # not padding; every query sees itself, so padded query rows stay finite (their outputs
        # are never used, but their K/V must not hold NaN).
        idx = torch.arange(Q, device=dev)
        allow_UQQ = (idx[None, :] <= idx[:, None])[None].expand(U, Q, Q)
        if mask_UQ is not None:
            allow_UQQ = (allow_UQQ & mask_UQ[:, None, :]) | torch.eye(
                Q, dtype=torch.bool, device=dev
            )
        allow_U1QX = torch.cat(
            (torch.ones(U, Q, C, dtype=torch.bool, device=dev), allow_UQQ), dim=-1
        )[:, None]
        for i, w in enumerate(self.layers):
            x = _rms(h, w.ln1, self.eps)
            q = _rope(w.q(x).view(U, Q, K * G, Dh).transpose(1, 2), cos, sin).to(dtype)
            k = _rope(w.k(x).view(U, Q, K, Dh).transpose(1, 2), cos, sin).to(dtype)
            v = w.v(x).view(U, Q, K, Dh).transpose(1, 2).to(dtype)
            kc, vc = self.k[i], self.v[i]
            if rows_B is None:
                kc[:, :, C : C + Q] = k
                vc[:, :, C : C + Q] = v
            else:
                kc[:, :, C : C + Q] = k[rows_B]
                vc[:, :, C : C + Q] = v[rows_B]
            if C > 0:  # prefix columns are equal in every row: take them from row 0
                k = torch.cat((kc[:1, :, :C].expand(U, -1, -1, -1), k), dim=2)
                v = torch.cat((vc[:1, :, :C].expand(U, -1, -1, -1), v), dim=2)
            a = F.scaled_dot_product_attention(
                q, k, v, attn_mask=allow_U1QX, scale=self.scale, enable_gqa=True
            )
            h = h + w.o(a.transpose(1, 2).reshape(U, Q, K * G * Dh)).to(dtype)
            x = _rms(h, w.ln2, self.eps)
            h = h + w.down(F.silu(w.gate(x)) * w.up(x)).to(dtype)
        return h[:, -1]

    def keep(self, rows: Tensor) -> None:
        """Keep only these rows (indices into the current batch) from now on: finished rows
        stop costing compute. Copies the kept rows' cache."""
        self.k = [k.index_select(0, rows) for k in self.k]
        self.v = [v.index_select(0, rows) for v in self.v]
        self.len_B = self.len_B[rows]
        self.mask_B11S = self.mask_B11S[rows]

    def step(self, tok_B: Tensor) -> Tensor:
        """Append one token per row (at the next cache column); next logits (B, V)."""
        t = self.t
        if t >= self.S:
            raise RuntimeError(f"cache full: {self.S} columns")
        B = tok_B.shape[0]
        K, G, Dh, dtype = self.n_kv, self.n_heads // self.n_kv, self.head_dim, self.dtype
        pos_B = self.len_B + (t - self.P)
        cos, sin = self.cos_SD[pos_B][:, None], self.sin_SD[pos_B][:, None]  # (B, 1, Dh)
        mask = self.mask_B11S[..., : t + 1]
        h = self.base.embed_tokens(tok_B).to(dtype)
        for i, w in enumerate(self.layers):
            x = _rms(h, w.ln1, self.eps)
            q = _rope(w.q(x).view(B, K * G, Dh), cos, sin).to(dtype)
            self.k[i][:, :, t] = _rope(w.k(x).view(B, K, Dh), cos, sin)
            self.v[i][:, :, t] = w.v(x).view(B, K, Dh)
            keys, vals = self.k[i][:, :, : t + 1], self.v[i][:, :, : t + 1]
            scores = torch.matmul(q.view(B, K, G, Dh), keys.transpose(-1, -2)) * self.scale
            probs = torch.softmax(scores.float() + mask, dim=-1).to(dtype)
            a = torch.matmul(probs, vals).reshape(B, K * G * Dh)
            h = h + w.o(a).to(dtype)
            x = _rms(h, w.ln2, self.eps)
            h = h + w.down(F.silu(w.gate(x)) * w.up(x)).to(dtype)
        self.t = t + 1
        return self._head(h)
