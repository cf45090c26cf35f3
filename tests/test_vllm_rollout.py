"""The vLLM rollout engine's own logic, against a stand-in for the `vllm` package that follows
vLLM's documented API (vLLM itself needs a CUDA machine and is not installed here; the engine
has not run against the real package, docs/gpu.md): one request per row with its own seed, the
sampled token's log-prob read from `logprobs[t][token].logprob`, "stop" as finished, and the
weight sync through the model runner's `load_weights` with the policy's HF parameter names,
then a prefix-cache reset."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import pytest
import torch

from tandem.errors import TandemError
from tandem.model import build_tiny


@dataclass
class _Logprob:
    logprob: float
    rank: int = 1


class _FakeLLM:
    """vllm.LLM's surface the engine uses: generate(prompts, sampling_params, use_tqdm),
    llm_engine.model_executor.driver_worker.model_runner.model.load_weights, reset_prefix_cache."""

    last: _FakeLLM | None = None

    def __init__(self, **kw):
        self.kw, self.loaded, self.resets = kw, [], 0
        runner = types.SimpleNamespace(model=types.SimpleNamespace(load_weights=self.loaded.append))
        worker = types.SimpleNamespace(model_runner=runner)
        self.llm_engine = types.SimpleNamespace(
            model_executor=types.SimpleNamespace(driver_worker=worker)
        )
        _FakeLLM.last = self

    def generate(self, prompts, sampling_params, use_tqdm=False):
        outs = []
        for p, sp in zip(prompts, sampling_params, strict=True):
            # a deterministic "sample" from the request's seed: 2 tokens, then EOS or not
            toks = [sp.seed % 50, (sp.seed // 50) % 50]
            stop = sp.seed % 2 == 0
            if stop:
                toks.append(sp.stop_token_ids[0])
            lps = [{t: _Logprob(-0.1 * (i + 1))} for i, t in enumerate(toks)]
            c = types.SimpleNamespace(
                token_ids=toks, logprobs=lps, finish_reason="stop" if stop else "length"
            )
            outs.append(types.SimpleNamespace(prompt_token_ids=p["prompt_token_ids"], outputs=[c]))
        return outs

    def reset_prefix_cache(self):
        self.resets += 1


class _FakeSamplingParams:
    def __init__(self, **kw):
        self.__dict__.update(kw)


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams = _FakeLLM, _FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", mod)
    return mod


def _engine(model, tok, device="cuda"):
    from tandem.train.vllm_rollout import VllmRollout

    backend = types.SimpleNamespace(device=torch.device(device), tokenizer=tok)
    return VllmRollout(model, backend, gpu_memory_utilization=0.2, max_model_len=256, seed=3)


def test_generate_reads_tokens_logprobs_and_finish(fake_vllm):
    model, tok = build_tiny(0)
    eng = _engine(model, tok)
    assert _FakeLLM.last.kw["distributed_executor_backend"] == "external_launcher"
    assert _FakeLLM.last.kw["logprobs_mode"] == "processed_logprobs"
    out = eng.generate(
        model,
        [[5, 6], [5, 6], [7]],
        max_new_tokens=8,
        temperature=1.0,
        top_p=1.0,
        eos_token_ids=[1],
        pad_token_id=0,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(out.completions) == 3
    # rows of one group share a prompt but not a seed: different samples
    assert out.completions[0] != out.completions[1]
    for c, lp, fin in zip(out.completions, out.logprobs, out.finished):
        assert lp == pytest.approx([-0.1 * (i + 1) for i in range(len(c))])
        assert fin == (c[-1] == 1)


def test_sync_pushes_hf_named_weights_and_resets_the_cache(fake_vllm):
    model, tok = build_tiny(0)
    eng = _engine(model, tok)
    eng.sync(model)
    (named,) = _FakeLLM.last.loaded
    names = [n for n, _ in named]
    assert names == [n for n, _ in model.named_parameters()]
    assert "model.layers.0.self_attn.q_proj.weight" in names
    assert _FakeLLM.last.resets == 1


def test_needs_cuda_and_the_package(monkeypatch, fake_vllm):
    model, tok = build_tiny(0)
    with pytest.raises(TandemError, match="CUDA"):
        _engine(model, tok, device="cpu")
    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed
    with pytest.raises(TandemError, match="pip install"):
        _engine(model, tok)
