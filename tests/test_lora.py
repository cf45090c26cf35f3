"""LoRA (`model.lora`) through the real trainer on the tiny model: every preset trains only the
adapter; the sampler decodes with the adapted weights (its outputs move after an update, packed
or not); the reference is the base with the adapter off, or a second frozen adapter once a
stage moves it; resume is exact; `tandem export` merges into a plain transformers model."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tandem.errors import ConfigError
from tandem.methods import PRESETS
from tandem.model.load import load_model
from tandem.model.lora import LoraReference, adapter_off, is_lora, reference_module
from tandem.model.sampler import sample
from tandem.report.metrics import read_metrics
from tandem.train.loop import build_state, train
from tandem.train.step import train_step

from .conftest import tiny_config
from .test_train import PRESET_ARGS

LORA = ["model.lora.r=4", "model.lora.alpha=8"]


def _base_params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}


def _lora_params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".default." in n}


@pytest.mark.parametrize("method", sorted(PRESETS))
def test_every_preset_trains_only_the_adapter(method, warm_tiny, tmp_path):
    cfg = tiny_config(
        tmp_path, f"method={method}", f"model.name={warm_tiny}", "lr=5e-3", *LORA,
        *PRESET_ARGS[method],
    )  # fmt: skip
    st = build_state(cfg)
    assert is_lora(st.model)
    base, ada = _base_params(st.model), _lora_params(st.model)
    trained = {id(p) for g in st.optimizer.param_groups for p in g["params"]}
    assert all(".default." in n for n, p in st.model.named_parameters() if id(p) in trained), (
        "the optimizer holds non-adapter weights"
    )
    if st.reference is not None:
        assert isinstance(st.reference, LoraReference)  # no second copy of the model
    for k in range(3):
        m = train_step(st, k)
        assert all(v is None or v == v for v in m.values()), m  # no NaN
    for n, p in st.model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), f"{method}: base weight {n} moved"
    moved = sum(not torch.equal(p, ada[n]) for n, p in st.model.named_parameters() if n in ada)
    assert moved > 0, f"{method}: the adapter did not move in 3 steps"


def _greedy(model, tok, prompts, n_new: int, pack: bool | None, engine="auto"):
    with torch.no_grad():
        out = sample(
            model,
            [tok(p)["input_ids"] for p in prompts],
            max_new_tokens=n_new,
            temperature=0.0,
            eos_token_ids=[tok.eos_token_id],
            pad_token_id=tok.pad_token_id,
            generator=torch.Generator().manual_seed(0),
            pack=pack,
            engine=engine,
        )
    return out.completions, out.logprobs


@pytest.mark.parametrize("pack", [False, True])
def test_sampler_decodes_with_the_adapted_weights(pack, tmp_path):
    """After SFT updates of the adapter alone the sampler's greedy outputs change, and they
    equal transformers' own forward through the PEFT layers (the decoder does not fall back to
    the base weights, packed or not)."""
    cfg = tiny_config(tmp_path, "method=sft", "lr=3e-2", *LORA)
    st = build_state(cfg)
    prompts = ["1+2=", "3+4=", "5+1=", "2+2="]
    n_new = 20 if pack else 4  # packing starts at 16 new tokens (decoder.PACK_MIN_NEW_TOKENS)
    before, _ = _greedy(st.model, st.tokenizer, prompts, n_new, pack)
    for k in range(8):
        train_step(st, k)
    st.model.eval()
    after, lp = _greedy(st.model, st.tokenizer, prompts, n_new, pack)
    assert after != before, "the sampler still decodes with the initial weights"
    ref, ref_lp = _greedy(st.model, st.tokenizer, prompts, n_new, False, engine="hf")
    assert after == ref
    for a, b in zip(lp, ref_lp, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with adapter_off(st.model):  # the adapter off: the initial model's outputs again
        base, _ = _greedy(st.model, st.tokenizer, prompts, n_new, pack)
    assert base == before


def test_rollouts_of_the_training_step_use_the_adapter(tmp_path):
    """The rollouts a GRPO step samples (bf16 sampling copy included) move with the adapter."""
    for autocast in ("false", "true"):
        cfg = tiny_config(
            tmp_path / autocast, "method=sft", "lr=3e-2", f"model.autocast_bf16={autocast}", *LORA
        )
        st = build_state(cfg)
        ids = [st.tokenizer("1+2=")["input_ids"]] * 4

        def roll(st=st, ids=ids):
            g = torch.Generator().manual_seed(0)
            return st.backend.generate(ids, generator=g, max_new_tokens=6, temperature=0.0)

        before = roll().completions
        for k in range(8):
            train_step(st, k)
            st.backend.weights_changed()
        assert roll().completions != before, f"autocast_bf16={autocast}"


def _logp(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(ids).logits.float(), -1)


def test_reference_is_the_base_then_the_frozen_second_adapter(warm_tiny, tmp_path):
    """sft_then_grpo with KL: in the SFT stage the reference is the base (adapter off); at the
    RL stage's start it becomes the policy as it was then (the `reference` adapter), and stays
    there while the policy moves."""
    cfg = tiny_config(
        tmp_path, "method=sft_then_grpo", f"model.name={warm_tiny}", "stages.sft.steps=2",
        "stages.rl.objective.terms.kl.coef=0.1", "lr=1e-2", *LORA,
    )  # fmt: skip
    st = build_state(cfg)
    assert isinstance(st.reference, LoraReference)
    base, _ = load_model(str(warm_tiny))
    ids = st.tokenizer("3+4=7", return_tensors="pt")["input_ids"]
    for k in range(2):
        train_step(st, k)
    with reference_module(st.reference) as ref:
        torch.testing.assert_close(_logp(ref, ids), _logp(base, ids), rtol=0, atol=1e-6)
    at_switch = _logp(st.model, ids)
    assert not torch.allclose(at_switch, _logp(base, ids))
    for k in range(2, 5):
        train_step(st, k)
    assert st.ref_step == 2
    with reference_module(st.reference) as ref:
        torch.testing.assert_close(_logp(ref, ids), at_switch, rtol=0, atol=1e-6)
    assert not torch.allclose(_logp(st.model, ids), at_switch)
    trainable = [n for n, p in st.model.named_parameters() if p.requires_grad]
    assert trainable and all(".default." in n for n in trainable)


@pytest.mark.parametrize("method", ["grpo", "sft_then_grpo"])
def test_lora_resume_is_exact(method, warm_tiny, tmp_path):
    args = [
        f"method={method}", f"model.name={warm_tiny}", *LORA, "eval.every=2",
        *PRESET_ARGS[method],
    ]  # fmt: skip
    if method == "sft_then_grpo":
        args.append("stages.rl.objective.terms.kl.coef=0.1")
    train(tiny_config(tmp_path / "full", *args, "steps=4"), log=lambda s: None)
    train(tiny_config(tmp_path / "part", *args, "steps=2"), log=lambda s: None)
    from tandem.train.loop import train_from_files

    train_from_files(None, ["steps=4"], resume_dir=str(tmp_path / "part"))
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]  # noqa: E731
    a = read_metrics(tmp_path / "full" / "metrics.jsonl")
    assert strip(a) == strip(read_metrics(tmp_path / "part" / "metrics.jsonl"))
    from safetensors.torch import load_file

    ckpt = "checkpoints/step_000004/adapter/adapter_model.safetensors"
    wa, wb = load_file(tmp_path / "full" / ckpt), load_file(tmp_path / "part" / ckpt)
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert not (tmp_path / "full/checkpoints/step_000004/model").exists()  # the adapter only


def test_export_merges_into_a_plain_transformers_model(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(run, "method=sft", "steps=4", "lr=3e-2", *LORA)
    train(cfg, log=lambda s: None)
    out = tmp_path / "merged"
    r = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "export", str(run), str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    from transformers import AutoModelForCausalLM, AutoTokenizer

    plain = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert not any("lora" in n for n, _ in plain.named_parameters())
    from tandem.export import model_of_run

    ids = tok("5+2=7", return_tensors="pt")["input_ids"]
    base = _logp(load_model("tiny")[0], ids)  # the model before training
    merged, _, _ = model_of_run(run, log=lambda s: None)
    torch.testing.assert_close(_logp(plain, ids), _logp(merged, ids), rtol=0, atol=0)
    assert not torch.allclose(_logp(plain, ids), base)
    # the checkpoint's adapter is a standard PEFT adapter directory
    from peft import PeftModel

    adapter = next((run / "checkpoints").glob("step_*")) / "adapter"
    peft_model = PeftModel.from_pretrained(load_model("tiny")[0], str(adapter))
    torch.testing.assert_close(_logp(peft_model, ids), _logp(plain, ids), rtol=1e-5, atol=1e-5)
    again = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "export", str(run), str(out)],
        capture_output=True,
        text=True,
    )
    assert again.returncode != 0 and "exists" in again.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.lora.target_modules=[lm_head]", "model.lora.target_modules: 'lm_head'"),
        ("model.lora.target_modules=[nope_proj]", "model.lora.target_modules"),
        ("model.lora.r=0", "model.lora.r"),
    ],
)
def test_lora_config_errors_name_the_field(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        build_state(tiny_config(tmp_path, "method=grpo", *LORA, override))


def test_merged_parameters_are_the_plain_models(tmp_path):
    """What the vLLM engine is started from and synced with: the policy saved under the plain
    architecture's names with the adapter merged; transformers loads it as the policy."""
    from tandem.model.lora import merged_parameters

    st = build_state(tiny_config(tmp_path / "run", "method=sft", "lr=3e-2", *LORA))
    for k in range(3):
        train_step(st, k)
    st.model.eval()
    named = dict(merged_parameters(st.model))
    plain, _ = load_model("tiny")
    assert set(named) == {n for n, _ in plain.named_parameters()}
    st.model.save_pretrained(tmp_path / "plain", safe_serialization=True, state_dict=named)
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "plain")
    ids = st.tokenizer("5+2=7", return_tensors="pt")["input_ids"]
    torch.testing.assert_close(_logp(loaded, ids), _logp(st.model, ids), rtol=1e-5, atol=1e-5)
