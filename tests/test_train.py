"""The training loop on the tiny model: golden first losses of every preset, micro-batch
invariance of a whole step, save/resume equality, and clear errors from the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from tandem.methods import PRESETS
from tandem.report.metrics import read_metrics
from tandem.train.loop import build_state, train
from tandem.train.step import train_step

from .conftest import WARM_DIR, tiny_config

# Per-preset overrides that make every term of the preset active within 3 steps.
PRESET_ARGS = {
    "sft": [],
    "grpo": [],
    "sft_then_grpo": ["stages.sft.steps=1"],
    "chord": ["objective.controllers.mu.warmup_steps=1", "objective.controllers.mu.decay_steps=4"],
    "luffy": [],
    "prefix_rft": [],
    "relift": ["objective.sources.buffer.size=1"],
    "sasr": ["objective.controllers.sft_step.warmup_steps=1"],
    "ppo": [],
    "reft": ["stages.sft.steps=1"],
    "dpo": [],
    "ipo": [],
    "simpo": [],
    "orpo": [],
    "spin": ["stages.iteration.steps=1"],
    "rft": [],
    "star": [],
    "rloo": [],
    "reinforce_pp": [],
    "reinforce_pp_baseline": [],
    "gspo": [],
    "dapo": [],
    "remix": ["stages.mix.steps=2"],
    "amft": ["stages.warmup.steps=1", "stages.adaptive.objective.controllers.mu.every=1"],
    "dft": [],
    "anchored_sft": [],
    "asft": [],
    "poft": [],
    "kto": [],
    "interleave": ["objective.controllers.every.period=2"],
    "tulu3": ["stages.sft.steps=1", "stages.dpo.steps=1"],
    "sft_then_dpo": ["stages.sft.steps=1"],
    "hpt": [],
    "adaptive_mix": [],
    "srft": [],
    "uft": ["objective.sources.rollouts.hint_steps=4"],
    "superhf": [],
    "s3ft": [],
    "metis_rise": ["stages.rl.steps=1"],
    "visurf": [],
    "otr": [],
    "c_rlft": [],
    "fait": [],
    "warmup_rl": ["stages.warmup.steps=1"],
    "ift": [],
}

# First three values of loss/total and optim/grad_norm (and reward/mean for steps that sample)
# for each preset, starting from the warm tiny model's file (tests/data/warm_tiny) with seed 0: the gradient norm pins the
# gradient, not only the samples (a ratio-1 policy-gradient loss is just -mean(A)). Regenerate with `python -m tests.test_train` after an
# intentional change of the math, and say why in the commit.
GOLDEN = {
    "adaptive_mix": {
        "loss/total": [0.428415, 0.432832, 0.50152],
        "optim/grad_norm": [2.190857, 4.545055, 6.775312],
        "reward/mean": [0.265625, 0.234375, 0.25],
    },
    "amft": {
        "loss/total": [0.647195, 0.303086, 0.292571],
        "optim/grad_norm": [2.91596, 2.673811, 1.207149],
        "reward/mean": [None, 0.203125, 0.21875],
    },
    "anchored_sft": {
        "loss/total": [0.15886, 0.158609, 0.146554],
        "optim/grad_norm": [0.628522, 1.67504, 1.213699],
    },
    "asft": {
        "loss/total": [1.752194, 1.754299, 1.697103],
        "optim/grad_norm": [11.278756, 8.233862, 7.257476],
    },
    "c_rlft": {
        "loss/total": [1.355982, 1.0243, 0.960187],
        "optim/grad_norm": [4.04423, 3.402323, 2.491381],
        "reward/mean": [0.3125, 0.25, 0.234375],
    },
    "chord": {
        "loss/total": [-0.004798, 0.041939, 0.043612],
        "optim/grad_norm": [1.334971, 1.393765, 2.493857],
        "reward/mean": [0.265625, 0.203125, 0.203125],
    },
    "dapo": {
        "loss/total": [0.014024, 0.020822, 0.011669],
        "optim/grad_norm": [1.915037, 1.248048, 2.15791],
        "reward/mean": [0.226562, 0.203125, 0.25],
    },
    "dft": {
        "loss/total": [0.15886, 0.156471, 0.143217],
        "optim/grad_norm": [0.628522, 1.375621, 1.19313],
    },
    "dpo": {
        "loss/total": [0.693147, 0.678374, 0.692639],
        "optim/grad_norm": [1.235351, 1.155926, 0.631445],
    },
    "fait": {
        "loss/total": [0.829738, 0.776318, 0.743275],
        "optim/grad_norm": [3.545078, 3.695644, 2.215168],
    },
    "grpo": {
        "loss/total": [-0.004798, -0.015514, -0.0],
        "optim/grad_norm": [1.334971, 2.060249, 3.526281],
        "reward/mean": [0.265625, 0.203125, 0.21875],
    },
    "gspo": {
        "loss/total": [0.010009, 0.00178, 0.005929],
        "optim/grad_norm": [2.650826, 2.456654, 4.986264],
        "reward/mean": [0.265625, 0.171875, 0.21875],
    },
    "hpt": {
        "loss/total": [0.882313, -0.005942, 1.244541],
        "optim/grad_norm": [8.029376, 0.572318, 16.237328],
        "reward/mean": [0.265625, 0.296875, 0.25],
    },
    "ift": {
        "loss/total": [1.185502, 1.147019, 1.01491],
        "optim/grad_norm": [6.96479, 6.649135, 2.230452],
    },
    "interleave": {
        "loss/total": [-0.004798, 0.69275, 0.009626],
        "optim/grad_norm": [1.334971, 6.358799, 2.487037],
        "reward/mean": [0.265625, None, 0.203125],
    },
    "ipo": {
        "loss/total": [25.0, 24.032528, 24.900396],
        "optim/grad_norm": [92.748466, 68.033066, 56.316971],
    },
    "kto": {
        "loss/total": [0.5, 0.496148, 0.499797],
        "optim/grad_norm": [0.308838, 0.298708, 0.157434],
    },
    "luffy": {
        "loss/total": [0.01172, 0.010767, 0.008199],
        "optim/grad_norm": [0.422704, 0.254038, 0.409106],
        "reward/mean": [0.267857, 0.089286, 0.214286],
    },
    "metis_rise": {
        "loss/total": [-0.004798, 0.745301, 0.615162],
        "optim/grad_norm": [1.334971, 9.257995, 3.053126],
        "reward/mean": [0.265625, 0.265625, 0.21875],
    },
    "orpo": {
        "loss/total": [0.709539, 0.687092, 0.625362],
        "optim/grad_norm": [4.450624, 6.495721, 2.468227],
    },
    "otr": {
        "loss/total": [0.083719, 0.082674, 0.073622],
        "optim/grad_norm": [0.691374, 1.513184, 1.344555],
    },
    "poft": {
        "loss/total": [0.693147, 0.706435, 0.663457],
        "optim/grad_norm": [1.741123, 2.041217, 0.816449],
    },
    "ppo": {
        "loss/total": [0.079607, 0.124467, -0.007437],
        "optim/grad_norm": [3.739077, 3.608715, 2.452549],
        "reward/mean": [0.265625, 0.28125, 0.21875],
    },
    "prefix_rft": {
        "loss/total": [0.027048, 0.010883, 0.012293],
        "optim/grad_norm": [0.755484, 0.382231, 1.322835],
        "reward/mean": [0.359375, 0.25, 0.296875],
    },
    "reft": {
        "loss/total": [0.647195, 0.590434, 0.477425],
        "optim/grad_norm": [2.91596, 8.887285, 6.85243],
        "reward/mean": [None, 0.339063, 0.310938],
    },
    "reinforce_pp": {
        "loss/total": [0.0, -0.0, -0.0],
        "optim/grad_norm": [1.772227, 2.694395, 5.941468],
        "reward/mean": [0.265625, 0.21875, 0.25],
    },
    "reinforce_pp_baseline": {
        "loss/total": [0.0, 0.0, 0.0],
        "optim/grad_norm": [1.604321, 2.341791, 4.5144],
        "reward/mean": [0.265625, 0.203125, 0.21875],
    },
    "relift": {
        "loss/total": [1.056171, 0.370838, 0.002397],
        "optim/grad_norm": [10.46171, 1.281399, 0.762872],
        "reward/mean": [0.265625, 0.25, 0.234375],
    },
    "remix": {
        "loss/total": [0.001122, -0.045799, 0.011556],
        "optim/grad_norm": [2.637564, 3.431722, 1.974325],
        "reward/mean": [0.265625, 0.1, 0.21875],
    },
    "rft": {
        "loss/total": [0.624337, 0.624185, 0.581117],
        "optim/grad_norm": [2.432158, 4.676655, 1.217879],
        "reward/mean": [0.3125, 0.234375, 0.296875],
    },
    "rloo": {
        "loss/total": [-0.002838, -0.007608, 0.000985],
        "optim/grad_norm": [0.771946, 0.964035, 1.771445],
        "reward/mean": [0.265625, 0.203125, 0.1875],
    },
    "s3ft": {
        "loss/total": [0.675716, 0.643435, 0.582669],
        "optim/grad_norm": [4.244168, 6.276827, 2.188244],
        "reward/mean": [0.375, 0.375, 0.5],
    },
    "sasr": {
        "loss/total": [0.647195, 0.623502, 0.003828],
        "optim/grad_norm": [2.91596, 3.586975, 3.453914],
        "reward/mean": [None, None, 0.265625],
    },
    "sft": {
        "loss/total": [0.647195, 0.623502, 0.581151],
        "optim/grad_norm": [2.91596, 3.586975, 1.702341],
    },
    "sft_then_dpo": {
        "loss/total": [0.647195, 0.693147, 0.685323],
        "optim/grad_norm": [2.91596, 0.467399, 0.800993],
    },
    "sft_then_grpo": {
        "loss/total": [0.647195, 0.010453, 0.010203],
        "optim/grad_norm": [2.91596, 2.159958, 2.181681],
        "reward/mean": [None, 0.265625, 0.234375],
    },
    "simpo": {
        "loss/total": [0.445871, 0.592313, 0.655237],
        "optim/grad_norm": [3.907514, 2.390324, 4.480854],
    },
    "spin": {
        "loss/total": [0.693147, 0.693147, 0.693147],
        "optim/grad_norm": [0.801357, 1.577355, 0.771453],
    },
    "srft": {
        "loss/total": [-0.298374, -0.444711, -0.306869],
        "optim/grad_norm": [1.071886, 1.232188, 0.811495],
        "reward/mean": [0.267857, 0.107143, 0.25],
    },
    "star": {
        "loss/total": [0.535571, 0.593938, 0.624605],
        "optim/grad_norm": [1.763985, 2.820081, 3.991201],
        "reward/mean": [0.265625, 0.265625, 0.234375],
    },
    "superhf": {
        "loss/total": [0.573222, 0.604199, 0.645972],
        "optim/grad_norm": [3.161763, 5.495499, 5.511797],
        "reward/mean": [0.265625, 0.296875, 0.25],
    },
    "tulu3": {
        "loss/total": [0.647195, 0.693147, 0.00706],
        "optim/grad_norm": [2.91596, 0.467399, 1.71965],
        "reward/mean": [None, None, 0.234375],
    },
    "uft": {
        "loss/total": [0.039176, 0.000246, -0.003155],
        "optim/grad_norm": [0.51631, 1.158995, 1.107282],
        "reward/mean": [0.984375, 0.640625, 0.140625],
    },
    "visurf": {
        "loss/total": [0.01162, 0.001529, 0.001301],
        "optim/grad_norm": [1.334595, 2.419202, 1.736553],
        "reward/mean": [0.267857, 0.107143, 0.214286],
    },
    "warmup_rl": {
        "loss/total": [8.629989, 0.014024, 0.002572],
        "optim/grad_norm": [13.199078, 1.074926, 1.997977],
        "reward/mean": [None, 0.234375, 0.1875],
    },
}


def first_metrics(method: str, warm, out, steps: int = 3) -> list[dict]:
    cfg = tiny_config(
        out,
        f"method={method}",
        f"model.name={warm}",
        f"steps={steps}",
        "eval.prompts=0",
        "lr=5e-4",
        *PRESET_ARGS[method],
    )
    train(cfg, log=lambda s: None)
    return [r for r in read_metrics(out / "metrics.jsonl") if "loss/total" in r]


def test_every_preset_has_a_golden_entry():
    assert set(GOLDEN) == set(PRESETS) == set(PRESET_ARGS)


@pytest.mark.parametrize("method", sorted(PRESETS))
def test_golden_first_losses(method, warm_tiny, tmp_path):
    rows = first_metrics(method, warm_tiny, tmp_path)
    for key, expected in GOLDEN[method].items():
        got = [r.get(key) for r in rows]
        for g, e in zip(got, expected, strict=True):
            if e is None:
                assert g is None
            else:
                assert g == pytest.approx(e, rel=1e-4, abs=1e-6), f"{method} {key}: {got}"


def step_gradient(out, step: int, *overrides: str) -> torch.Tensor:
    """The gradient of one whole training step (sample, score, terms, aggregate, backward)."""
    st = build_state(tiny_config(out, "grad_clip=0", *overrides))
    got = []

    def capture() -> None:  # in place of the optimizer step: keep the weights, read the grads
        got.append(torch.cat([p.grad.flatten() for p in st.model.parameters()]))

    st.optimizer.step = capture
    train_step(st, step)
    return got[0]


@pytest.mark.filterwarnings(r"ignore:Seems like `optimizer.step\(\)` has been overridden")
@pytest.mark.parametrize("method", ["chord", "luffy", "kto", "reinforce_pp", "dapo", "poft"])
def test_step_gradient_does_not_depend_on_microbatch_size(method, warm_tiny, tmp_path):
    """One whole step with one micro-batch vs many."""
    args = [f"method={method}", f"model.name={warm_tiny}", *PRESET_ARGS[method]]
    one = step_gradient(tmp_path / "one", 2, *args, "tokens_per_microbatch=100000")
    many = step_gradient(tmp_path / "many", 2, *args, "tokens_per_microbatch=40")
    assert one.abs().sum() > 0
    torch.testing.assert_close(one, many, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["chord", "relift", "sasr", "ppo", "spin", "dapo", "tulu3"])
def test_resume_gives_the_same_metrics(method, warm_tiny, tmp_path):
    """Stop after 2 steps, resume to 4: the same metrics and final weights, bitwise. Covers a
    controller's schedule (chord), a buffer and a second optimizer (relift), a controller that
    reads gradient norms (sasr), a value head with several updates (ppo), and stages with a
    moving reference (spin)."""
    args = [f"method={method}", f"model.name={warm_tiny}", "eval.every=2", *PRESET_ARGS[method]]
    full = tiny_config(tmp_path / "full", *args, "steps=4")
    train(full, log=lambda s: None)
    part = tiny_config(tmp_path / "part", *args, "steps=2")
    train(part, log=lambda s: None)
    from tandem.train.loop import train_from_files

    train_from_files(None, ["steps=4"], resume_dir=str(tmp_path / "part"))
    a = read_metrics(tmp_path / "full" / "metrics.jsonl")
    b = read_metrics(tmp_path / "part" / "metrics.jsonl")
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]  # noqa: E731
    assert strip(a) == strip(b)
    # the resumed run's final weights equal the uninterrupted run's
    from safetensors.torch import load_file

    for name in ("model/model.safetensors", "value_head.safetensors"):
        fa = tmp_path / "full/checkpoints/step_000004" / name
        if not fa.exists():
            continue
        wa, wb = load_file(fa), load_file(tmp_path / "part/checkpoints/step_000004" / name)
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)


def test_checkpoint_loads_with_transformers(warm_tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(warm_tiny)
    tok = AutoTokenizer.from_pretrained(warm_tiny)
    ids = tok("3+4=", return_tensors="pt")["input_ids"]
    assert model(ids).logits.shape[-1] == model.config.vocab_size


def test_interrupted_save_keeps_the_last_good_checkpoint(warm_tiny, tmp_path):
    from tandem.train import checkpoint as ck

    cfg = tiny_config(
        tmp_path, "method=sft", f"model.name={warm_tiny}", "steps=2", "eval.prompts=0"
    )
    train(cfg, log=lambda s: None)
    good = ck.latest_checkpoint(tmp_path)
    st = build_state(cfg)

    class Boom(RuntimeError):
        pass

    def explode(*a, **k):
        raise Boom

    st.tokenizer.save_pretrained = explode  # the crash happens mid-save
    with pytest.raises(Boom):
        ck.save_checkpoint(tmp_path, 3, st.model, st.tokenizer, {}, "x: 1\n")
    assert ck.latest_checkpoint(tmp_path) == good
    assert (good / "model" / "model.safetensors").exists()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tandem.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args, needle",
    [
        (
            ["train", "method=grpo", "objective.terms.pg.agg=mean"],
            "objective.terms.pg.agg: got 'mean'; allowed",
        ),
        (["train", "nonexistent.yaml"], "recipe not found"),
        (["train", "steps=2", "task.name=nope"], "nope"),
        (["train", "task.params.digitz=2"], "task.params.digitz"),
        (["train", "--resume", "/nonexistent/run"], "--resume"),
    ],
)
def test_cli_errors_are_one_clear_line(args, needle):
    r = run_cli(*args)
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_bad_data_line_names_file_and_line(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2="}\n')
    r = run_cli("train", "task.name=jsonl", f"task.params.path={data}", f"output_dir={tmp_path}/r")
    assert r.returncode == 2
    assert "d.jsonl:2" in r.stderr and "Traceback" not in r.stderr


def test_recipes_lists_every_preset():
    r = run_cli("recipes")
    assert r.returncode == 0
    for name in PRESETS:
        assert f"  {name} " in r.stdout


def test_summary_and_curves_written(warm_tiny, tmp_path):
    cfg = tiny_config(
        tmp_path, "method=grpo", f"model.name={warm_tiny}", "steps=1", "eval.ood_prompts=5"
    )
    s = train(cfg, log=lambda s: None)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == s
    for key in (
        "recipe",
        "eval_prompts",
        "accuracy_before",
        "accuracy_after",
        "ood_accuracy_before",
        "ood_accuracy_after",
        "wall_seconds",
    ):
        assert key in saved
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert math.isfinite(saved["accuracy_after"])


if __name__ == "__main__":  # print fresh golden values
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        warm = WARM_DIR
        import sys

        for m in sys.argv[1:] or sorted(PRESETS):
            rows = first_metrics(m, warm, d / m)
            keys = ["loss/total", "optim/grad_norm"]
            if any(r.get("reward/mean") is not None for r in rows):
                keys.append("reward/mean")
            vals = {
                k: [round(r[k], 6) if r.get(k) is not None else None for r in rows] for k in keys
            }
            print(f"    {m!r}: {vals},".replace("'", '"'))


def test_stage_switch_resets_kl_reference_and_resume_keeps_it(warm_tiny, tmp_path):
    """sft_then_grpo with KL: the RL stage's reference is the model at the switch (ReFT), and a
    run resumed after the switch uses that reference, not the initial model."""
    args = [
        "method=sft_then_grpo",
        f"model.name={warm_tiny}",
        "stages.sft.steps=1",
        "stages.rl.objective.terms.kl.coef=0.1",
        "eval.prompts=0",
        "lr=5e-4",
    ]
    train(tiny_config(tmp_path / "full", *args, "steps=3"), log=lambda s: None)
    train(tiny_config(tmp_path / "part", *args, "steps=2", "save_every=1"), log=lambda s: None)
    assert (tmp_path / "part/checkpoints/step_000002/ref_model").is_dir()
    from tandem.train.loop import train_from_files

    train_from_files(None, ["steps=3"], resume_dir=str(tmp_path / "part"))
    a = [r["loss/kl"] for r in read_metrics(tmp_path / "full/metrics.jsonl") if "loss/kl" in r]
    b = [r["loss/kl"] for r in read_metrics(tmp_path / "part/metrics.jsonl") if "loss/kl" in r]
    assert a == b and len(a) == 2  # loss/kl is logged in the RL steps only
    assert a[0] == 0.0  # step 2: the first RL step, policy == reference
    assert a[1] > 0.0


@pytest.mark.filterwarnings(r"ignore:Seems like `optimizer.step\(\)` has been overridden")
def test_shared_prompts_give_the_same_step_gradient(warm_tiny, tmp_path):
    """A whole GRPO and LUFFY step with share_prompts on and off: same gradient."""
    for method in ("grpo", "luffy"):
        args = [f"method={method}", f"model.name={warm_tiny}"]
        plain = step_gradient(tmp_path / f"{method}0", 0, *args, "share_prompts=false")
        shared = step_gradient(tmp_path / f"{method}1", 0, *args, "share_prompts=true")
        assert plain.abs().sum() > 0
        torch.testing.assert_close(shared, plain, rtol=1e-4, atol=1e-6)
