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
dtype before the weight, attention softmax in float32. Two departures in the decode step, both
at most one rounding of the activation dtype: the residual adds are fused into the o/down
matmuls (bf16 rounds once instead of twice; float32 is unchanged), and a bf16 model's attention
runs in float32 over a float32 cache while that cache is small (`FP32_CACHE_MAX_BYTES`).
Tests compare logits and sampled tokens with the transformers forward (`tests/test_decoder.py`).

Shapes: B = rows, U = distinct prompts, P = padded prompt length, S = cache length (P + new
tokens), L = layers, K = key/value heads, G = query heads per K/V head, Dh = head dim, D = hidden.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tandem.model import onednn
from tandem.model.lora import adapter_state, effective_bias, effective_weight

_MODEL_TYPES = {"llama"}
# `LlamaDecoder` packs weights for oneDNN by default from this many new tokens on.
PACK_MIN_NEW_TOKENS = 16
# A bfloat16 model's K/V cache is held in float32 up to this size (the attention then runs in
# float32, 1.5-3x faster on CPU at these shapes), else in bfloat16.
FP32_CACHE_MAX_BYTES = 256 * 2**20


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
        # A LoRA linear's weight is its base's plus the active adapter's (`tandem.model.lora`):
        # packing its `.weight` alone would decode with the initial model.
        weights = [effective_weight(m) for m in mods]
        biases = [effective_bias(m) for m in mods]
        self.sizes = [w.shape[0] for w in weights]
        self.w = self.b = None
        if pack:
            self.w = onednn.packed_weight(torch.cat([w.to(dtype) for w in weights]), rows)
        if self.w is not None and any(b is not None for b in biases):
            self.b = torch.cat(
                [
                    b.to(dtype) if b is not None else torch.zeros(n, dtype=dtype, device=w.device)
                    for b, w, n in zip(biases, weights, self.sizes)
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
        return onednn.packed_linear(
            x if x.dtype == self.dtype else x.to(self.dtype), self.w, self.b
        )

    def add_to(self, x: Tensor, res: Tensor) -> Tensor:
        """res + (the one module)(x), in res's dtype. Packed, oneDNN adds `res` inside the
        matmul (one rounding to bfloat16 instead of two; float32 is unchanged)."""
        if self.w is not None and x.dtype == res.dtype == self.dtype and res.is_contiguous():
            return onednn.packed_linear_add(x, self.w, self.b, res)
        y = self.mods[0](x)
        return res + (y if y.dtype == res.dtype else y.to(res.dtype))


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


def _rope_(x: Tensor, cos: Tensor, sin_signed: Tensor) -> None:
    """`_rope` in place, with sin_signed = cat(-sin[:half], sin[half:]): roll(x, half) * that is
    `_rope`'s cat(-x2, x1) * sin exactly (negation is exact), in four ops instead of seven."""
    rot = torch.roll(x, x.shape[-1] // 2, -1).mul_(sin_signed)
    x.mul_(cos).add_(rot)


def _build_weights(
    model: nn.Module, dtype: torch.dtype, rows: int, pack: bool
) -> tuple[list[_Layer], _Linears]:
    def lin(*mods: nn.Module) -> _Linears:
        return _Linears(list(mods), dtype, rows, pack)

    layers = []
    for lay in model.model.layers:
        att, mlp = lay.self_attn, lay.mlp
        layers.append(
            _Layer(
                lay.input_layernorm.weight,
                lin(att.q_proj, att.k_proj, att.v_proj),
                lin(att.o_proj),
                lay.post_attention_layernorm.weight,
                lin(mlp.gate_proj, mlp.up_proj),
                lin(mlp.down_proj),
            )
        )
    return layers, lin(model.lm_head)


@dataclass
class _Kept:
    key: tuple  # (activation dtype, rows)
    stamp: tuple  # (data_ptr, version) of every parameter when packed
    weights: tuple[list[_Layer], _Linears]


# Models inside a `keep_packed` block -> their last packed weights (None until the first call).
_KEPT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _stamp(model: nn.Module) -> tuple:
    return (*((p.data_ptr(), p._version) for p in model.parameters()), adapter_state(model))


def _weights(
    model: nn.Module, dtype: torch.dtype, rows: int, pack: bool
) -> tuple[list[_Layer], _Linears]:
    """The decoder's weights: packed now, or the ones kept from an earlier call inside
    `keep_packed(model)` when dtype, rows and every parameter (tensor and version) match."""
    if not pack or model not in _KEPT:
        return _build_weights(model, dtype, rows, pack)
    kept, key, stamp = _KEPT[model], (dtype, rows), _stamp(model)
    if kept is not None and kept.key == key and kept.stamp == stamp:
        return kept.weights
    _KEPT[model] = None  # let the old copy go before packing the new one
    weights = _build_weights(model, dtype, rows, pack)
    _KEPT[model] = _Kept(key, stamp, weights)
    return weights


@contextlib.contextmanager
def keep_packed(model: nn.Module) -> Iterator[None]:
    """Within the block, `sample` calls on `model` keep its packed weights from one call to the
    next instead of packing them again (40-135 ms per call for SmolLM2-135M, docs/LOG.md), while
    the activation dtype, the batch size and the parameters are unchanged. A parameter counts as
    changed when it is another tensor or its version counter moved (any in-place update by an
    optimizer, `load_state_dict` or `copy_`; writes through `.data` are not seen). The copy
    (the size of the weights) is held until the block ends. For evaluation loops and repeated
    sampling with fixed weights; a training step changes the weights every step, so it gains
    nothing here. Nested blocks on the same model share the outer block's copy."""
    if model in _KEPT:
        yield
        return
    _KEPT[model] = None
    try:
        yield
    finally:
        _KEPT.pop(model, None)


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

        self.layers, self.lm_head = _weights(model, self.dtype, rows, pack)
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
        half = self.head_dim // 2
        self.sin_signed_SD = torch.cat((-self.sin_SD[:, :half], self.sin_SD[:, half:]), -1)
        # Additive attention mask over cache columns: -inf on suffix left padding, 0 elsewhere.
        # (None when no row has padding: the decode step then skips the add.)
        self.mask_B11S: Tensor | None = None
        if not bool(mask_UQ.all()):
            self.mask_B11S = torch.zeros(B, 1, 1, self.S, dtype=self.dtype, device=dev)
            self.mask_B11S[:, 0, 0, C : self.P].masked_fill_(~mask_UQ[rows_B], float("-inf"))
        # The cache: keys stored transposed, (B, K, Dh, S), values (B, K, S, Dh), so both
        # attention products of a decode step read their operand in the layout the batched
        # matmul wants. Held in float32 when that fits in FP32_CACHE_MAX_BYTES (always, for
        # float32 models): CPU bfloat16 batched matmuls of these small shapes are 1.5-3x slower
        # than float32 ones (docs/LOG.md).
        K, Dh = self.n_kv, self.head_dim
        fp32_bytes = 2 * len(self.layers) * B * K * self.S * Dh * 4
        self.cache_dtype = torch.float32 if fp32_bytes <= FP32_CACHE_MAX_BYTES else self.dtype
        if self.dtype == torch.float32:
            self.cache_dtype = torch.float32
        cd = self.cache_dtype
        self.kt = [torch.empty(B, K, Dh, self.S, dtype=cd, device=dev) for _ in self.layers]
        self.v = [torch.empty(B, K, self.S, Dh, dtype=cd, device=dev) for _ in self.layers]
        if C > 0:
            pos = torch.arange(C, device=dev)[None]
            self._prefill(torch.tensor([uprompts[0][:C]], device=dev), None, pos, None, C=0)
        pos_UQ = C + (mask_UQ.long().cumsum(-1) - 1).clamp_min(0)
        h_UD = self._prefill(ids_UQ, mask_UQ, pos_UQ, rows_B, C=C)
        self.logits_BV = self._head(h_UD)[rows_B]

    def _act_dtype(self) -> torch.dtype:
        dev = self.base.embed_tokens.weight.device.type
        if torch.is_autocast_enabled(dev):  # activations in the autocast dtype (CPU or CUDA)
            return torch.get_autocast_dtype(dev)
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
            kc, vc = self.kt[i], self.v[i]
            if rows_B is None:
                kc[..., C : C + Q] = k.transpose(-1, -2)
                vc[:, :, C : C + Q] = v
            else:
                kc[..., C : C + Q] = k[rows_B].transpose(-1, -2)
                vc[:, :, C : C + Q] = v[rows_B]
            if C > 0:  # prefix columns are equal in every row: take them from row 0
                kp = kc[:1, ..., :C].transpose(-1, -2).to(dtype).expand(U, -1, -1, -1)
                vp = vc[:1, :, :C].to(dtype).expand(U, -1, -1, -1)
                k, v = torch.cat((kp, k), dim=2), torch.cat((vp, v), dim=2)
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
        self.kt = [k.index_select(0, rows) for k in self.kt]
        self.v = [v.index_select(0, rows) for v in self.v]
        self.len_B = self.len_B[rows]
        if self.mask_B11S is not None:
            self.mask_B11S = self.mask_B11S[rows]

    def step(self, tok_B: Tensor) -> Tensor:
        """Append one token per row (at the next cache column); next logits (B, V)."""
        t = self.t
        if t >= self.S:
            raise RuntimeError(f"cache full: {self.S} columns")
        B = tok_B.shape[0]
        K, G, Dh, dtype = self.n_kv, self.n_heads // self.n_kv, self.head_dim, self.dtype
        nq, nk = K * G, K
        pos_B = self.len_B + (t - self.P)
        cos = self.cos_SD.index_select(0, pos_B)[:, None]  # (B, 1, Dh)
        sin = self.sin_signed_SD.index_select(0, pos_B)[:, None]
        mask = None if self.mask_B11S is None else self.mask_B11S[..., : t + 1]
        h = self.base.embed_tokens(tok_B)
        if h.dtype != dtype:
            h = h.to(dtype)
        cd = self.cache_dtype
        for w, kt, v in zip(self.layers, self.kt, self.v):
            qkv = w.qkv.joint(_rms(h, w.ln1, self.eps))
            if qkv.dtype != dtype:
                qkv = qkv.to(dtype)
            qkv = qkv.view(B, nq + 2 * nk, Dh)
            # q and k get their rotary embedding in place, in one pass (adjacent heads)
            _rope_(qkv[:, : nq + nk], cos, sin)
            kt.select(3, t).copy_(qkv[:, nq : nq + nk])
            v.select(2, t).copy_(qkv[:, nq + nk :])
            q = qkv[:, :nq].view(B, K, G, Dh)
            scores = torch.matmul(q if q.dtype == cd else q.to(cd), kt.narrow(3, 0, t + 1))
            scores.mul_(self.scale)
            if mask is not None:
                scores.add_(mask)
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
            a = torch.matmul(probs if cd == torch.float32 else probs.to(cd), v.narrow(2, 0, t + 1))
            if a.dtype != dtype:
                a = a.to(dtype)
            h = w.o.add_to(a.view(B, nq * Dh), h)
            gate, up = w.gate_up(_rms(h, w.ln2, self.eps))
            h = w.down.add_to(F.silu(gate).mul_(up), h)
        self.t = t + 1
        return self._head(h)
