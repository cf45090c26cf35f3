"""The backend: devices, autocast, the rollout engine and the CPU speed work, below the step.

`train_step` sees four calls: `generate` (token ids in; completions, behaviour log-probs and
finish flags out), `collate` (items to tensors on the device), `forward` (log-probs, entropies,
values of a micro-batch) and `weights_changed` (after each optimizer step: the rollout engine
must sync). Everything that makes them fast on a CPU lives here:

- the bf16 **sampling copy** of the policy (`SampleCopy`): on CPU with bf16 autocast and fp32
  weights, sampling decodes with bf16 weights (half the bytes to read per token);
- **shared casts**: until the next optimizer step the training forward takes those same bf16
  weights (`tandem.model.castcache`) instead of autocast casting every weight again, and the
  copy is let go before the last backward of the update, so each layer's bf16 weights are freed
  as the backward pass leaves it;
- **shared prompts**: each distinct prompt of a micro-batch runs once, packed with its
  completions (`tandem.model.logprobs.shared_prompt_logprobs`).

Off the CPU these fast paths step aside: on CUDA the policy samples with its own weights under
bf16 autocast, and the oneDNN, cast-sharing and fused-head paths are CPU-only or
device-agnostic by construction (`tandem.model`).

`model.device` chooses the device (`auto`: CUDA when available); `rollout.backend` the rollout
engine (`local`: tandem's sampler, whose random-number contract exact resume relies on; `vllm`:
`VllmRollout`, for GPUs).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from tandem.errors import TandemError
from tandem.experience import Batch, Item, collate
from tandem.model.castcache import bf16_weights
from tandem.model.logprobs import TokenLogProbs, shared_prompt_logprobs, token_logprobs
from tandem.model.sampler import sample
from tandem.train.sources import Rollout


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda if available else cpu; `cpu`, `cuda`, `cuda:N` as given (an error if CUDA
    is asked for and not available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TandemError(
            f"model.device: {name!r}, but torch.cuda.is_available() is False (this torch is "
            f"{torch.__version__}); use model.device=cpu or auto"
        )
    return dev


def step_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    """Sampling randomness is a pure function of (seed, step, salt), so a resumed run repeats it.
    A CPU generator on every device: the same numbers on CPU and CUDA."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + salt) % (2**63))


class SampleCopy:
    """A bf16 copy of the policy's weights, refreshed from the policy before each use: the model
    the sampler decodes with, and (through `tandem.model.castcache`) the bf16 weights of the
    autocast training forward of the same step.

    Decoding is bound by reading weights, and bf16 weights halve that (decode step at batch 16:
    130 -> 71-90 ms on SmolLM2-135M). Between uses the buffers are refreshed in place (`copy_`);
    a training update `release`s them after its last forward pass, so each layer's copy is freed
    as the backward pass leaves it (bf16 2x8x32 peak 3.06 -> 2.91 GB on tcmalloc), and the next
    `refresh` allocates them again. On glibc's malloc that reallocation page-faults (casting into
    a fresh 113 MB tensor cost 3x a `copy_`, docs/LOG.md); on tcmalloc it reuses freed memory.
    Autocast would otherwise cast every linear weight again in each training forward, so the
    copy replaces those casts rather than adding memory at the training peak.
    """

    def __init__(self, model: nn.Module):
        self.module = copy.deepcopy(model).to(torch.bfloat16).eval()
        # requires_grad stays True (it only ever runs under inference mode): measured 80-90 vs
        # 100-120 ms per decode step with requires_grad_(False), for reasons not yet understood.
        for p in self.module.parameters():  # allocated on first use (never, in SFT-only runs)
            p.data = torch.empty(0, dtype=torch.bfloat16, device=p.device)

    def refresh(self, policy: nn.Module) -> None:
        """Copy the policy's current weights into the bf16 buffers."""
        with torch.no_grad():
            for dst, src in zip(self.module.parameters(), policy.parameters(), strict=True):
                if dst.numel() == 0:
                    dst.data = src.detach().to(torch.bfloat16)
                else:
                    dst.copy_(src)

    def release(self) -> None:
        """Drop the copy's buffers (the next `refresh` allocates them again)."""
        for p in self.module.parameters():
            p.data = torch.empty(0, dtype=torch.bfloat16, device=p.device)

    def pairs(self, policy: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(policy weight, its bf16 copy) for `castcache.bf16_weights` (current only after
        `refresh` with no optimizer step since)."""
        return [
            (p, c.detach())
            for p, c in zip(policy.parameters(), self.module.parameters(), strict=True)
        ]


class LocalRollout:
    """tandem's own sampler (`tandem.model.sampler.sample`) as the rollout engine: the policy's
    weights are read at every call (through the bf16 copy when there is one), so `sync` has
    nothing to do."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def generate(
        self,
        model: nn.Module,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        eos_token_ids: list[int],
        pad_token_id: int,
        generator: torch.Generator,
        shard: tuple[int, int] | None = None,
    ) -> Rollout:
        with self.backend.autocast():
            model.eval()
            out = sample(
                model,
                prompts,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                eos_token_ids=eos_token_ids,
                pad_token_id=pad_token_id,
                generator=generator,
                shard=shard,
            )
        return Rollout(out.completions, [lp.tolist() for lp in out.logprobs], out.finished)

    def sync(self, model: nn.Module) -> None:
        return None


class Backend:
    """Device, autocast, rollout engine and CPU speed work for one run (module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        device: torch.device,
        autocast_bf16: bool,
        share_prompts: bool,
        rollout: str = "local",
        rollout_options: dict[str, Any] | None = None,
        eos_token_ids: list[int],
        pad_token_id: int,
        tokenizer: Any = None,
        sharded: Any = None,
    ) -> None:
        self.model, self.device, self.tokenizer = model, device, tokenizer
        self.sharded = sharded
        """FSDP2 (`tandem.train.fsdp.Sharded`): training runs through its root; sampling,
        evaluation and no-grad inspection use its gathered full copy."""
        self.autocast_bf16, self.share_prompts = autocast_bf16, share_prompts
        self.eos_ids, self.pad_id = eos_token_ids, pad_token_id
        cpu_copy = (
            device.type == "cpu"
            and sharded is None
            and autocast_bf16
            and next(model.parameters()).dtype == torch.float32
        )
        self.copy = SampleCopy(model) if cpu_copy else None
        self._fresh = False  # the copy holds the current weights (sampled since the last step)
        if rollout == "local":
            self.rollout: Any = LocalRollout(self)
        else:
            from tandem.train.vllm_rollout import VllmRollout

            self.rollout = VllmRollout(model, self, **(rollout_options or {}))

    # ---------------------------------------------------------------- what the step calls
    def autocast(self):
        if self.autocast_bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def generate(
        self,
        prompts: list[list[int]],
        *,
        generator: torch.Generator,
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        model: nn.Module | None = None,
        shard: tuple[int, int] | None = None,
    ) -> Rollout:
        """Sample one completion per prompt from the policy (or from `model`, e.g. SPIN's
        opponent, which always uses the local sampler). `shard` = (offset, total): these
        prompts are rows offset.. of a batch of `total` that other ranks sample the rest of
        (`tandem.model.sampler.sample`)."""
        kw = dict(
            shard=shard,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            eos_token_ids=self.eos_ids,
            pad_token_id=self.pad_id,
            generator=generator,
        )
        if model is not None:  # (a LoRA run's reference is the policy's module, switched)
            return LocalRollout(self).generate(model, prompts, **kw)
        policy = self.plain_policy()
        if self.copy is not None:
            self.copy.refresh(self.model)
            self._fresh = True
            policy = self.copy.module
        return self.rollout.generate(policy, prompts, **kw)

    @contextlib.contextmanager
    def eval_policy(self) -> Iterator[nn.Module]:
        """The module to evaluate with: the refreshed bf16 copy when there is one (evaluation
        decodes like sampling), else the policy."""
        if self.copy is None:
            yield self.plain_policy()
            return
        self.copy.refresh(self.model)
        self._fresh = True
        yield self.copy.module

    def plain_policy(self) -> nn.Module:
        """The policy as a plain module with the current weights: the model itself, or under
        FSDP2 the gathered full copy (refreshing it is a collective: every rank calls this at
        the same point)."""
        return self.sharded.refresh() if self.sharded is not None else self.model

    def collate(self, items: list[Item]) -> Batch:
        return collate(items, self.pad_id, self.device)

    @contextlib.contextmanager
    def casts(self) -> Iterator[None]:
        """Forward passes of the policy before its next optimizer step (no release)."""
        with contextlib.ExitStack() as stack:
            if self.copy is not None and self._fresh:
                stack.enter_context(bf16_weights(self.copy.pairs(self.model)))
            yield

    @contextlib.contextmanager
    def update(self) -> Iterator[contextlib.ExitStack]:
        """The forward and backward passes of one optimizer update. Yields a stack whose
        `close()` the step calls right before the update's last backward pass: the shared bf16
        weights are let go there (the autograd graph holds the only references)."""
        with contextlib.ExitStack() as stack:
            if self.copy is not None and self._fresh:
                # The training forward reuses the bf16 copy this step's sampling refreshed.
                # Steps that did not sample (SFT) let autocast cast: refreshing the whole copy
                # for them was slower (SFT bf16 2.5 -> 3.4 s/step, docs/LOG.md).
                stack.enter_context(bf16_weights(self.copy.pairs(self.model)))
                stack.callback(self._release)
            yield stack

    def forward(
        self,
        model: nn.Module,
        mb: Batch,
        *,
        with_entropy: bool = False,
        value_head: nn.Module | None = None,
        with_vocab: bool = False,
        mix: tuple[Tensor, float] | None = None,
    ) -> TokenLogProbs:
        """Log-probs (and entropies, values, whole-vocabulary log-probs) of the micro-batch's
        trained tokens. `mix` = (predicted ids (B, T), λ): on trained positions the input
        embedding is (1 − λ)·E(token) + λ·E(prediction) (IFT), the targets unchanged. Under
        FSDP2 the policy's pass runs inside the sharded root (which unshards its weights)."""
        kw = dict(with_entropy=with_entropy, with_vocab=with_vocab, mix=mix)
        if self.sharded is not None and model is self.model:
            return self.sharded.root(self._forward, mb, {**kw, "vh": value_head is not None})
        return self._forward(model, mb, value_head=value_head, **kw)

    def _forward(
        self,
        model: nn.Module,
        mb: Batch,
        *,
        with_entropy: bool,
        value_head: nn.Module | None,
        with_vocab: bool,
        mix: tuple[Tensor, float] | None,
    ) -> TokenLogProbs:
        inputs = mb.model_inputs()
        args = (model, mb.input_ids_BT, mb.attention_mask_BT, mb.target_mask_BT)
        with self.autocast():
            if mix is not None:
                pred_BT, lam = mix
                emb = model.get_input_embeddings()
                gold = emb(mb.input_ids_BT)
                on = mb.target_mask_BT.bool()[..., None]
                mixed = torch.where(on, (1.0 - lam) * gold + lam * emb(pred_BT), gold)
                return token_logprobs(
                    *args,
                    with_entropy=with_entropy,
                    value_head=value_head,
                    inputs=inputs or None,
                    with_vocab=with_vocab,
                    inputs_embeds_BTH=mixed,
                )
            if self.share_prompts and not inputs:
                return shared_prompt_logprobs(
                    *args, with_entropy=with_entropy, value_head=value_head, with_vocab=with_vocab
                )
            return token_logprobs(
                *args,
                with_entropy=with_entropy,
                value_head=value_head,
                inputs=inputs or None,
                with_vocab=with_vocab,
            )

    def weights_changed(self) -> None:
        """Called after every optimizer step: the sampling copy is stale and the rollout engine
        must take the new weights."""
        self._fresh = False
        if self.sharded is not None:
            self.sharded.fresh = False
        self.rollout.sync(self.model)

    def _release(self) -> None:
        if self.copy is not None:
            self.copy.release()
        self._fresh = False


__all__ = ["Backend", "LocalRollout", "SampleCopy", "resolve_device", "step_generator"]
