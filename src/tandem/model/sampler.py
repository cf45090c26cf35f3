"""Batched sampling with a KV cache, plus a naive no-cache reference that reproduces it exactly.

Randomness contract (what makes `sample` and `sample_reference` agree token for token): with
temperature > 0, decode step s (s = 0 for the token predicted by the prompt, 1 for the next...)
draws exactly one float32 `torch.rand((B,), generator=generator)` for all B rows (finished or
not), on the generator's device, then moved to the model's. A data-parallel shard
(`shard=(offset, total)`: these B rows are rows offset..offset+B-1 of a batch of `total`) draws
the `total` numbers and takes its own, so each row gets the number it would get in the whole
batch, and the shards together sample what one call on the whole batch samples. Row i's next token is the inverse
CDF of its distribution at u_i: with p_i = softmax(top-p filtered logits_i / temperature) in
float32 and c_i its cumulative sum, the first token j with c_i[j] > u_i * c_i[V - 1] (what
`torch.multinomial` does for one sample). No draws are made after every row has finished, and
none with temperature == 0 (greedy argmax).

One uniform per row, not one per vocabulary entry: the Gumbel-max form this replaced drew
(B, V) uniforms per step, and at 64 rows that draw and its two logs took 18 ms of a 70 ms
decode step (docs/LOG.md).

Shapes: B = batch, P = padded prompt length, V = vocab, N = max_new_tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tandem.model import decoder
from tandem.model.decoder import keep_packed
from tandem.model.onednn import onednn_linears

__all__ = ["SampleOutput", "keep_packed", "sample", "sample_reference"]


@dataclass
class SampleOutput:
    """completions[i]: sampled ids (ends with the EOS id if it stopped there, never padded);
    logprobs[i]: float32 (len(completions[i]),) log-probs of those ids under
    softmax(logits / temperature) before top-p (temperature 1 for greedy);
    finished[i]: True if row i stopped at an EOS, False if it ran into max_new_tokens."""

    completions: list[list[int]]
    logprobs: list[Tensor]
    finished: list[bool]

    def padded(self, pad_token_id: int) -> tuple[Tensor, Tensor, Tensor]:
        """Right-padded (B, N) tensors: completion ids, the trainable-token mask (1 on sampled
        tokens, EOS included; 0 on padding) and the sampling log-probs (0 on padding)."""
        b, n = len(self.completions), max((len(c) for c in self.completions), default=0)
        ids_BN = torch.full((b, n), pad_token_id, dtype=torch.long)
        mask_BN = torch.zeros((b, n), dtype=torch.float32)
        logp_BN = torch.zeros((b, n), dtype=torch.float32)
        for i, (c, lp) in enumerate(zip(self.completions, self.logprobs)):
            ids_BN[i, : len(c)] = torch.tensor(c, dtype=torch.long)
            mask_BN[i, : len(c)] = 1.0
            logp_BN[i, : len(c)] = lp
        return ids_BN, mask_BN, logp_BN


def _top_p_filter(scaled_BV: Tensor, top_p: float) -> Tensor:
    """Set to -inf every logit outside the smallest set whose probability mass reaches top_p.

    The most likely token is always kept. (B, V) -> (B, V).
    """
    sorted_BV, order_BV = torch.sort(scaled_BV, dim=-1, descending=True)
    probs_BV = torch.softmax(sorted_BV, dim=-1)
    mass_before_BV = probs_BV.cumsum(-1) - probs_BV
    drop_sorted_BV = mass_before_BV > top_p
    drop_BV = torch.zeros_like(drop_sorted_BV).scatter_(-1, order_BV, drop_sorted_BV)
    return scaled_BV.masked_fill(drop_BV, float("-inf"))


def _pick(
    logits_BV: Tensor, uniform_B: Tensor | None, temperature: float, top_p: float
) -> tuple[Tensor, Tensor]:
    """Choose next tokens from last-position logits. Returns (tokens (B,) long, logp (B,) f32)."""
    logits_BV = logits_BV.float()
    if temperature == 0:
        tok_B = logits_BV.argmax(-1)
        scaled_BV = logits_BV
    else:
        scaled_BV = logits_BV / temperature if temperature != 1.0 else logits_BV
        filtered_BV = _top_p_filter(scaled_BV, top_p) if top_p < 1.0 else scaled_BV
        cdf_BV = torch.softmax(filtered_BV, dim=-1).cumsum_(-1)
        target_B1 = uniform_B[:, None] * cdf_BV[:, -1:]
        tok_B = torch.searchsorted(cdf_BV, target_B1, right=True).squeeze(-1)
        tok_B = tok_B.clamp_max_(cdf_BV.shape[-1] - 1)
    logp_B = torch.log_softmax(scaled_BV, dim=-1).gather(-1, tok_B[:, None]).squeeze(-1)
    return tok_B, logp_B


def _check_args(prompts: list[list[int]], max_new_tokens: int, temperature: float, top_p: float):
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("sample() needs at least one prompt and every prompt non-empty")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")


def _uniform(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """U[0, 1) float32 noise drawn on the generator's device, then moved to `device`."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _left_pad(prompts: list[list[int]], P: int, pad_token_id: int) -> tuple[Tensor, Tensor]:
    """(B, P) left-padded ids and the matching 0/1 attention mask."""
    ids_BP = torch.full((len(prompts), P), pad_token_id, dtype=torch.long)
    mask_BP = torch.zeros((len(prompts), P), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids_BP[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask_BP[i, P - len(p) :] = 1
    return ids_BP, mask_BP


def _hf_engine(model: nn.Module, prompts: list[list[int]], P: int, N: int, pad_id: int, device):
    """Prefill with the transformers forward; returns (first logits (B, V), step(tokens) -> logits)."""
    ids_BP, mask_BP = _left_pad(prompts, P, pad_id)
    ids_BP, mask_BP = ids_BP.to(device), mask_BP.to(device)
    lens_B = mask_BP.sum(-1)
    # One attention-mask buffer for the whole run: prompt part left-padded, generated part all 1
    # (finished rows keep attending to their pad inputs; their outputs are ignored anyway).
    mask_BL = torch.ones(len(prompts), P + N, dtype=torch.long, device=device)
    mask_BL[:, :P] = mask_BP
    pos_BP = (mask_BP.cumsum(-1) - 1).clamp_min(0)
    out = model(
        input_ids=ids_BP,
        attention_mask=mask_BP,
        position_ids=pos_BP,
        use_cache=True,
        logits_to_keep=1,
    )
    state = {"cache": out.past_key_values, "s": 0}

    def step(tok_B: Tensor) -> Tensor:
        s = state["s"]
        o = model(
            input_ids=tok_B[:, None],
            attention_mask=mask_BL[:, : P + s + 1],
            position_ids=(lens_B + s)[:, None],
            past_key_values=state["cache"],
            use_cache=True,
        )
        state["cache"], state["s"] = o.past_key_values, s + 1
        return o.logits[:, -1]

    return out.logits[:, -1], step


@torch.inference_mode()
def sample(
    model: nn.Module,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    eos_token_ids: list[int],
    pad_token_id: int,
    generator: torch.Generator,
    engine: str = "auto",
    pack: bool | None = None,
    shard: tuple[int, int] | None = None,
) -> SampleOutput:
    """Sample completions for a batch of token-id prompts (see the module doc for the RNG order).

    Left-pads the prompts, runs one prefill forward (logits for the last position only), then one
    cached forward per new token for the whole batch. Finished rows are fed `pad_token_id` and
    not extended; stops as soon as every row has finished or after max_new_tokens steps.

    engine: "auto" uses `tandem.model.decoder` (static cache, one prefill per distinct prompt)
    when the model is a Llama it reproduces, else the transformers forward; "hf" always uses the
    transformers forward with its dynamic cache.

    pack (decoder engine only): pack the linear weights for oneDNN once for this call, which
    holds a copy of them while sampling (`tandem.model.decoder`); None packs from
    `decoder.PACK_MIN_NEW_TOKENS` new tokens on. False saves that memory at some speed. Inside
    `with keep_packed(model):` the packed weights are kept from one call to the next while the
    weights are unchanged (evaluation loops).

    shard: (offset, total) when these prompts are rows offset.. of a batch of `total` rows that
    other processes sample the rest of, with the same generator seed (module doc).
    """
    _check_args(prompts, max_new_tokens, temperature, top_p)
    noise = _noise_rows(len(prompts), shard)
    if engine not in ("auto", "hf"):
        raise ValueError(f"engine must be 'auto' or 'hf', got {engine!r}")
    with onednn_linears(model):
        return _sample(
            model,
            prompts,
            max_new_tokens,
            temperature,
            top_p,
            eos_token_ids,
            pad_token_id,
            generator,
            engine,
            pack,
            noise,
        )


def _noise_rows(b: int, shard: tuple[int, int] | None) -> tuple[int, int]:
    """(rows drawn each step, offset of this batch's rows in them)."""
    if shard is None:
        return b, 0
    offset, total = shard
    if not (0 <= offset and offset + b <= total):
        raise ValueError(f"shard {shard}: {b} rows from offset {offset} exceed {total}")
    return total, offset


def _sample(
    model: nn.Module,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    eos_token_ids: list[int],
    pad_token_id: int,
    generator: torch.Generator,
    engine: str,
    pack: bool | None,
    noise: tuple[int, int],
) -> SampleOutput:
    device = _device(model)
    n_noise, off = noise
    B, N = len(prompts), max_new_tokens
    P = max(len(p) for p in prompts)
    eos_E = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long, device=device)
    tokens_BN = torch.full((B, N), pad_token_id, dtype=torch.long, device=device)
    logps_BN = torch.zeros(B, N, dtype=torch.float32, device=device)
    finished_B = torch.zeros(B, dtype=torch.bool, device=device)
    gen_len_B = torch.zeros(B, dtype=torch.long, device=device)
    pad_B = torch.full((B,), pad_token_id, dtype=torch.long, device=device)
    if engine == "auto" and decoder.supports(model):
        dec = decoder.LlamaDecoder(model, [list(p) for p in prompts], N, pad_token_id, pack)
        logits_BV, next_logits = dec.logits_BV, dec.step
    else:
        dec = None
        logits_BV, next_logits = _hf_engine(model, prompts, P, N, pad_token_id, device)
    steps = 0
    # Rows still being decoded (indices into the batch). With the decoder engine, once a quarter
    # of them have finished they are dropped from the cache, so finished rows stop costing
    # compute; the noise is still drawn for all B rows (the randomness contract above).
    active_A = torch.arange(B, device=device)
    for s in range(N):
        uniform_A = None
        if temperature > 0:
            uniform_A = _uniform((n_noise,), generator, device)[off : off + B]
            if len(active_A) < B:
                uniform_A = uniform_A[active_A]
        tok_A, logp_A = _pick(logits_BV, uniform_A, temperature, top_p)
        done_A = finished_B[active_A]
        tok_A = torch.where(done_A, pad_B[: len(active_A)], tok_A)
        tokens_BN[active_A, s] = tok_A
        logps_BN[active_A, s] = logp_A
        gen_len_B[active_A] += ~done_A
        finished_B[active_A] = done_A | torch.isin(tok_A, eos_E)
        steps = s + 1
        if s == N - 1 or bool(finished_B.all()):
            break
        if dec is not None:
            live_A = ~finished_B[active_A]
            n_live = int(live_A.sum())
            if n_live <= 0.75 * len(active_A):
                keep = live_A.nonzero().squeeze(1)
                dec.keep(keep)
                active_A, tok_A = active_A[keep], tok_A[keep]
        logits_BV = next_logits(tok_A)

    tokens = tokens_BN[:, :steps].tolist()
    lens = gen_len_B.tolist()
    logps_BN = logps_BN.cpu()
    return SampleOutput(
        completions=[row[:n] for row, n in zip(tokens, lens)],
        logprobs=[logps_BN[i, :n].clone() for i, n in enumerate(lens)],
        finished=finished_B.tolist(),
    )


@torch.inference_mode()
def sample_reference(
    model: nn.Module,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    eos_token_ids: list[int],
    pad_token_id: int,
    generator: torch.Generator,
    shard: tuple[int, int] | None = None,
) -> SampleOutput:
    """Naive version of `sample` for tests: each step, each unfinished row runs a full forward of
    its own unpadded prompt + generated tokens (no cache), using its row of the step's noise."""
    del pad_token_id
    _check_args(prompts, max_new_tokens, temperature, top_p)
    n_noise, off = _noise_rows(len(prompts), shard)
    device = _device(model)
    B = len(prompts)
    seqs = [list(p) for p in prompts]
    completions: list[list[int]] = [[] for _ in prompts]
    logps: list[list[float]] = [[] for _ in prompts]
    finished = [False] * B
    for _ in range(max_new_tokens):
        if all(finished):
            break
        rows = [i for i in range(B) if not finished[i]]
        last = {
            i: model(input_ids=torch.tensor([seqs[i]], device=device)).logits[0, -1] for i in rows
        }
        uniform_B = None
        if temperature > 0:
            uniform_B = _uniform((n_noise,), generator, device)[off : off + B]
        for i in rows:
            u = None if uniform_B is None else uniform_B[i : i + 1]
            tok, lp = _pick(last[i][None], u, temperature, top_p)
            completions[i].append(int(tok))
            logps[i].append(float(lp))
            seqs[i].append(int(tok))
            finished[i] = int(tok) in eos_token_ids
    return SampleOutput(
        completions=completions,
        logprobs=[torch.tensor(lp, dtype=torch.float32) for lp in logps],
        finished=finished,
    )
