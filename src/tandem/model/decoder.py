"""A lean inference forward for Llama-architecture models: static KV cache, shared-prompt prefill.

Decoding one token at a time is bound by per-op overhead and by reading weights, not by FLOPs.
transformers' forward spends most of a small model's decode step in Python (cache objects, mask
construction, attention dispatch); this module runs the same math directly on the model's own
parameters, with a K/V cache allocated once for the whole run and written in place. For runs of
`PACK_MIN_NEW_TOKENS` new tokens or more, the linear weights are first packed into oneDNN's
blocked layout, with q/k/v and gate/up concatenated into one matmul each (`_Linears`): a copy
of the weights held for the run, which makes each decode step's matmuls read them once.

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

from tandem.model import onednn

_MODEL_TYPES = {"llama"}
# `LlamaDecoder` packs weights for oneDNN by default from this many new tokens on.
PACK_MIN_NEW_TOKENS = 16


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


class _Linears:
    """Linears that read the same input, run as one matmul: their weights concatenated and
    packed once for oneDNN (`onednn.packed_weight`, in the activation dtype) when `pack` and
    possible, else the modules one by one. Call: x -> one output per module.

    Fusing q/k/v and gate/up saves another 10-15% of a decode step's matmul time at 1-64 rows
    over packing alone (docs/LOG.md); the concatenation is free, as packing copies anyway.
    """

    def __init__(self, mods: list[nn.Module], dtype: torch.dtype, rows: int, pack: bool):
        self.mods, self.dtype = mods, dtype
        self.sizes = [m.weight.shape[0] for m in mods]
        self.w = self.b = None
        if pack:
            self.w = onednn.packed_weight(torch.cat([m.weight.to(dtype) for m in mods]), rows)
        if self.w is not None and any(getattr(m, "bias", None) is not None for m in mods):
            self.b = torch.cat(
                [
                    m.bias.to(dtype)
                    if getattr(m, "bias", None) is not None
                    else torch.zeros(n, dtype=dtype, device=m.weight.device)
                    for m, n in zip(mods, self.sizes)
                ]
            )

    def __call__(self, x: Tensor) -> list[Tensor]:
        if self.w is None:
            return [m(x) for m in self.mods]
        out = onednn.packed_linear(x.to(self.dtype), self.w, self.b)
        return [out] if len(self.sizes) == 1 else out.split(self.sizes, -1)

    def joint(self, x: Tensor) -> Tensor:
        """The outputs concatenated along the last dimension."""
        if self.w is None:
            return torch.cat([m(x) for m in self.mods], -1)
        return onednn.packed_linear(x.to(self.dtype), self.w, self.b)


@dataclass
class _Layer:
    ln1: Tensor
    qkv: _Linears
    o: _Linears
    ln2: Tensor
    gate_up: _Linears
    down: _Linears


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
        self,
        model: nn.Module,
        prompts: list[list[int]],
        max_new_tokens: int,
        pad_id: int,
        pack: bool | None = None,
    ):
        cfg = model.config
        base = model.model
        self.model, self.base = model, base
        self.eps = cfg.rms_norm_eps
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.scale = self.head_dim**-0.5
        dev = base.embed_tokens.weight.device
        self.dtype = self._act_dtype()
        # Packing costs about one pass over the weights (40-85 ms for SmolLM2-135M once its
        # memory is warm) and saves 3-14 ms per decode step (`python bench/decode_linears.py`).
        pack = max_new_tokens >= PACK_MIN_NEW_TOKENS if pack is None else pack
        rows = len(prompts)

        def lin(*mods: nn.Module) -> _Linears:
            return _Linears(list(mods), self.dtype, rows, pack)

        self.layers = []
        for lay in base.layers:
            att, mlp = lay.self_attn, lay.mlp
            self.layers.append(
                _Layer(
                    lay.input_layernorm.weight,
                    lin(att.q_proj, att.k_proj, att.v_proj),
                    lin(att.o_proj),
                    lay.post_attention_layernorm.weight,
                    lin(mlp.gate_proj, mlp.up_proj),
                    lin(mlp.down_proj),
                )
            )
        self.lm_head = lin(model.lm_head)
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
        return self.lm_head(_rms(h_BD, self.base.norm.weight, self.eps))[0]

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
            q, k, v = w.qkv(_rms(h, w.ln1, self.eps))
            q = _rope(q.view(U, Q, K * G, Dh).transpose(1, 2), cos, sin).to(dtype)
            k = _rope(k.view(U, Q, K, Dh).transpose(1, 2), cos, sin).to(dtype)
            v = v.view(U, Q, K, Dh).transpose(1, 2).to(dtype)
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
            h = h + w.o(a.transpose(1, 2).reshape(U, Q, K * G * Dh))[0].to(dtype)
            gate, up = w.gate_up(_rms(h, w.ln2, self.eps))
            h = h + w.down(F.silu(gate) * up)[0].to(dtype)
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
        nq, nk = K * G, K
        for i, w in enumerate(self.layers):
            # q and k get their rotary embedding in one pass (q, k, v are adjacent columns)
            qkv = w.qkv.joint(_rms(h, w.ln1, self.eps)).to(dtype)
            qk = _rope(qkv[:, : (nq + nk) * Dh].view(B, nq + nk, Dh), cos, sin)
            self.k[i][:, :, t] = qk[:, nq:]
            self.v[i][:, :, t] = qkv[:, (nq + nk) * Dh :].view(B, K, Dh)
            keys, vals = self.k[i][:, :, : t + 1], self.v[i][:, :, : t + 1]
            scores = torch.matmul(qk[:, :nq].view(B, K, G, Dh), keys.transpose(-1, -2)) * self.scale
            probs = torch.softmax(scores.float() + mask, dim=-1).to(dtype)
            a = torch.matmul(probs, vals).reshape(B, nq * Dh)
            h = h + w.o(a)[0].to(dtype)
            gate, up = w.gate_up(_rms(h, w.ln2, self.eps))
            h = h + w.down(F.silu(gate) * up)[0].to(dtype)
        self.t = t + 1
        return self._head(h)
