"""A vLLM rollout engine for GPU users (`rollout.backend: vllm`), colocated with the trainer.

**This module has not run: it was written against vLLM's documented API and TRL's colocate
code, on machines without a GPU.** It needs a CUDA device and `pip install "tandem-rl[vllm]"`
(vLLM pins its own torch; see docs/gpu.md). What was followed, and what must be checked on a GPU
(docs/LOG.md lists the same):

- Engine: ``vllm.LLM(model=DIR, dtype="bfloat16", distributed_executor_backend=
  "external_launcher", logprobs_mode="processed_logprobs", ...)`` in this process, as TRL's
  ``vllm_mode="colocate"`` (`trl/generation/vllm_generation.py`, TRL 1.x). The external
  launcher keeps vLLM's engine in-process, so its model can be written to; it needs RANK,
  LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT, set here when absent.
- Generation from token ids: ``llm.generate([{"prompt_token_ids": ids}, ...],
  SamplingParams(n=1, temperature, top_p, max_tokens, logprobs=0, seed, stop_token_ids))``.
  Each row gets its own seed (the step's seed + row index), since rows of one group share a
  prompt and a shared seed would give them the same sample. The sampled token's log-prob is
  ``output.logprobs[t][token].logprob``, after temperature and top-p (processed mode), as the
  local sampler's. ``finish_reason == "stop"`` means an EOS was sampled.
- Weight sync after each optimizer step: ``llm.llm_engine.model_executor.driver_worker.
  model_runner.model.load_weights(named_parameters)`` (HF names; vLLM maps them onto its
  fused q/k/v and gate/up weights), falling back to ``llm.apply_model``; then
  ``llm.reset_prefix_cache()`` (cached prompt keys were computed with the old weights).

The random numbers are vLLM's, not the local sampler's: a run with this backend is repeatable
given vLLM's own determinism, but it does not reproduce a `local` run, and exact resume is only
as exact as vLLM's seeded sampling. That is why `local` stays the default.
"""

from __future__ import annotations

import os
import socket
import tempfile
from typing import Any

import torch
from torch import nn

from tandem.errors import TandemError
from tandem.model.lora import merged_parameters
from tandem.train.sources import Rollout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


class VllmRollout:
    """Rollout engine on a colocated `vllm.LLM` (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        backend: Any,
        *,
        gpu_memory_utilization: float = 0.3,
        max_model_len: int = 4096,
        seed: int = 0,
    ) -> None:
        try:
            from vllm import LLM, SamplingParams
        except ImportError as e:
            raise TandemError(
                "rollout.backend: vllm needs the vllm package on a CUDA machine: "
                "pip install 'tandem-rl[vllm]' (docs/gpu.md); or use rollout.backend=local"
            ) from e
        if backend.device.type != "cuda":
            raise TandemError("rollout.backend: vllm needs model.device on CUDA")
        self._SamplingParams = SamplingParams
        for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
            os.environ.setdefault(k, v)
        os.environ.setdefault("MASTER_ADDR", "localhost")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        # vLLM loads from a directory: the policy as it is now (a checkpoint of the run, or
        # the model it starts from), with its tokenizer.
        self._dir = tempfile.TemporaryDirectory(prefix="tandem-vllm-")
        state = dict(merged_parameters(model))  # a LoRA policy as the plain model it acts as
        model.save_pretrained(self._dir.name, safe_serialization=True, state_dict=state)
        tok = getattr(backend, "tokenizer", None)
        if tok is not None:
            tok.save_pretrained(self._dir.name)
        self.llm = LLM(
            model=self._dir.name,
            dtype="bfloat16",
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            distributed_executor_backend="external_launcher",
            seed=seed,
            max_num_batched_tokens=4096,
            logprobs_mode="processed_logprobs",
        )
        self.model = model

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
        del model, pad_token_id  # vLLM holds its own copy of the policy
        # request i of a batch gets seed base + i; a rank's shard (offset, total) of a batch
        # gets the seeds the whole batch's rows would get
        offset, total = shard or (0, len(prompts))
        base = int(torch.randint(0, 2**31 - total, (), generator=generator)) + offset
        params = [
            self._SamplingParams(
                n=1,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_new_tokens,
                logprobs=0,
                seed=base + i,
                stop_token_ids=list(eos_token_ids),
            )
            for i in range(len(prompts))
        ]
        outs = self.llm.generate(
            [{"prompt_token_ids": list(p)} for p in prompts], sampling_params=params, use_tqdm=False
        )
        completions, logprobs, finished = [], [], []
        for ro in outs:
            c = ro.outputs[0]
            toks = list(c.token_ids)
            completions.append(toks)
            logprobs.append([float(c.logprobs[t][tok].logprob) for t, tok in enumerate(toks)])
            finished.append(c.finish_reason == "stop")
        return Rollout(completions, logprobs, finished)

    def sync(self, model: nn.Module) -> None:
        """Push the policy's current weights into vLLM's copy (a LoRA policy's merged: vLLM
        holds the plain architecture)."""
        named = merged_parameters(model)
        try:
            runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
            runner.model.load_weights(named)
        except AttributeError:  # internals moved: the public hook
            self.llm.apply_model(lambda m: m.load_weights(named))
        self.llm.reset_prefix_cache()


__all__ = ["VllmRollout"]
