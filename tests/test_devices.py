"""Every device this machine has (CPU, and CUDA when torch sees one), on the tiny model: a GRPO,
a DPO and a PPO step (finite loss and gradient, every model and optimizer state on the device,
and in fp32 the CPU golden values), save/resume equality, and the sampler's log-probs.

Only the devices present are listed, so a CPU-only run shows no skips; `bench/gpu_check.py`
runs this file on a CUDA machine (docs/gpu.md).
"""

from __future__ import annotations

import math

import pytest
import torch

from tandem.model import build_tiny, sample, token_logprobs
from tandem.report.metrics import read_metrics
from tandem.train.loop import build_state, train, train_from_files
from tandem.train.step import train_step

from .conftest import tiny_config
from .test_train import GOLDEN, PRESET_ARGS

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
METHODS = ["grpo", "dpo", "ppo"]
QUIET = lambda s: None  # noqa: E731


@pytest.fixture(scope="session")
def warm(warm_tiny):
    """conftest's warm tiny model file, the start of the golden values of tests/test_train.py,
    so they apply on every device."""
    return warm_tiny


def _state(out, method: str, warm, device: str, *overrides: str):
    # the arguments of test_train.first_metrics, so step 0 is the golden run's first step
    cfg = tiny_config(
        out,
        f"method={method}",
        f"model.name={warm}",
        f"model.device={device}",
        "eval.prompts=0",
        "lr=5e-4",
        *PRESET_ARGS[method],
        *overrides,
    )
    return build_state(cfg, log=QUIET)


def _on(module: torch.nn.Module, device: str) -> bool:
    return all(p.device.type == device for p in module.parameters())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
def test_step_runs_on_the_device(method, device, warm, tmp_path):
    """One step with the device's default settings (CUDA: bf16 autocast): finite loss and
    gradient norm, the weights moved, and the policy, the extra models and the optimizer
    moments all on the device."""
    st = _state(tmp_path, method, warm, device)
    assert st.backend.device.type == device
    assert st.backend.autocast_bf16 == (device == "cuda")
    before = [p.detach().clone() for p in st.model.parameters()]
    m = train_step(st, 0)
    for key in ("loss/total", "optim/grad_norm"):
        assert math.isfinite(m[key]), (key, m[key])
    assert m["optim/grad_norm"] > 0
    assert any(not torch.equal(b, p) for b, p in zip(before, st.model.parameters()))
    assert next(st.model.parameters()).device.type == device and _on(st.model, device)
    if method == "dpo":
        assert st.reference is not None and _on(st.reference, device)
    if method == "ppo":
        assert st.value_head is not None and _on(st.value_head, device)
        assert math.isfinite(m["loss/value"])
    if method in ("grpo", "ppo"):
        assert 0.0 <= m["reward/mean"] <= 1.0 and m["rollout/items"] > 0
    moments = [s["exp_avg"] for s in st.optimizer.state.values()]
    assert moments and all(t.device.type == device for t in moments)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
def test_fp32_first_step_gives_the_cpu_golden_values(method, device, warm, tmp_path):
    """With autocast off the first step is the same computation on every device: sampling
    draws its noise from a CPU generator, so the completions (and rewards) are the CPU's, and
    loss and gradient norm equal test_train's golden values up to float rounding."""
    st = _state(tmp_path, method, warm, device, "model.autocast_bf16=false")
    m = train_step(st, 0)
    for key, values in GOLDEN[method].items():
        assert m.get(key) == pytest.approx(values[0], rel=1e-3, abs=1e-5), (key, m.get(key))


def _strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def _close(a, b, device: str) -> bool:
    if device == "cpu" or a is None or b is None:
        return a == b
    return a == pytest.approx(b, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_resume_gives_the_same_metrics(device, warm, tmp_path):
    """A 2-step CHORD run resumed to 3 steps logs what a 3-step run logs (evaluations
    included) and ends with the same weights: exactly on CPU; on CUDA to 1e-4 relative, since
    its kernels (atomics in backward passes) need not be bitwise deterministic."""
    args = [
        "method=chord",
        f"model.name={warm}",
        f"model.device={device}",
        "eval.every=1",
        "eval.prompts=4",
        "lr=5e-4",
        *PRESET_ARGS["chord"],
    ]
    train(tiny_config(tmp_path / "full", *args, "steps=3"), log=QUIET)
    train(tiny_config(tmp_path / "part", *args, "steps=2"), log=QUIET)
    train_from_files(None, ["steps=3"], resume_dir=str(tmp_path / "part"))
    a = _strip(read_metrics(tmp_path / "full" / "metrics.jsonl"))
    b = _strip(read_metrics(tmp_path / "part" / "metrics.jsonl"))
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 1, 1, 2, 2, 3, 3]
    assert [sorted(r) for r in a] == [sorted(r) for r in b]
    bad = [
        (r["step"], k, r[k], s[k])
        for r, s in zip(a, b)
        for k in r
        if not _close(r[k], s[k], device)
    ]
    assert not bad, bad
    assert any(r.get("coef/sft", 0) > 0 for r in a)  # both of CHORD's terms train here
    from safetensors.torch import load_file

    wa = load_file(tmp_path / "full/checkpoints/step_000003/model/model.safetensors")
    wb = load_file(tmp_path / "part/checkpoints/step_000003/model/model.safetensors")
    assert wa.keys() == wb.keys()
    tol = dict(rtol=0, atol=0) if device == "cpu" else dict(rtol=1e-4, atol=1e-6)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], **tol)


PROMPTS = ["What is 12 + 3?", "Hi", "abc def ghi jkl mno", "x = 7;"]


@pytest.fixture(scope="module")
def cpu_tiny():
    model, tok = build_tiny(seed=0)
    return model, [tok.encode(p) for p in PROMPTS]


def _sample(model, prompts, engine: str, temperature: float):
    g = torch.Generator().manual_seed(1234)  # CPU generator: the same noise on every device
    return sample(
        model,
        prompts,
        max_new_tokens=24,
        temperature=temperature,
        eos_token_ids=[1, 41, 43],
        pad_token_id=0,
        generator=g,
        engine=engine,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("engine", "temperature"), [("auto", 1.0), ("hf", 1.0), ("auto", 0.0)])
def test_sampler_logprobs_match_the_forward_on_device(cpu_tiny, device, engine, temperature):
    """On the device, each completion's sampled log-probs equal token_logprobs of prompt +
    completion (within 1e-4), and the completions are the CPU's (fp32, same noise)."""
    cpu_model, prompts = cpu_tiny
    model, _ = build_tiny(seed=0)
    model.to(device)
    assert next(model.parameters()).device.type == device
    out = _sample(model, prompts, engine, temperature)
    ref = _sample(cpu_model, prompts, engine, temperature)
    assert out.completions == ref.completions and out.finished == ref.finished
    if temperature > 0:  # some rows stop early, some do not
        assert any(out.finished) and not all(out.finished)
    seqs = [p + c for p, c in zip(prompts, out.completions)]
    B, T = len(seqs), max(len(s) for s in seqs)
    ids = torch.zeros(B, T, dtype=torch.long)
    attn = torch.zeros(B, T, dtype=torch.long)
    target = torch.zeros(B, T, dtype=torch.long)
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
        target[i, len(p) : len(s)] = 1
    with torch.no_grad():
        logp = token_logprobs(
            model,
            ids.to(device),
            attn.to(device),
            target.to(device),
            temperature=temperature or 1.0,
        ).logp
    assert logp.device.type == device
    logp = logp.cpu()
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        assert out.logprobs[i].shape == (len(s) - len(p),)
        torch.testing.assert_close(out.logprobs[i], logp[i, len(p) : len(s)], rtol=0, atol=1e-4)
        torch.testing.assert_close(out.logprobs[i], ref.logprobs[i], rtol=0, atol=1e-4)
