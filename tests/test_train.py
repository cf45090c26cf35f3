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
        "loss/total": [0.450435, 0.477589, 0.485062],
        "optim/grad_norm": [5.083174, 7.451449, 9.669023],
        "reward/mean": [0.234375, 0.234375, 0.265625],
    },
    "amft": {
        "loss/total": [0.65147, 0.292404, 0.296858],
        "optim/grad_norm": [2.39488, 2.096385, 1.793013],
        "reward/mean": [None, 0.15625, 0.25],
    },
    "anchored_sft": {
        "loss/total": [0.165447, 0.162026, 0.147779],
        "optim/grad_norm": [1.587974, 1.507258, 1.653733],
    },
    "asft": {
        "loss/total": [1.727933, 1.78855, 1.727905],
        "optim/grad_norm": [7.722352, 10.892453, 7.683641],
    },
    "c_rlft": {
        "loss/total": [1.28286, 0.943999, 0.963946],
        "optim/grad_norm": [3.746279, 2.562658, 2.400407],
        "reward/mean": [0.25, 0.25, 0.296875],
    },
    "chord": {
        "loss/total": [-0.004798, 0.038585, 0.046263],
        "optim/grad_norm": [2.638986, 1.377897, 2.494629],
        "reward/mean": [0.234375, 0.21875, 0.21875],
    },
    "dapo": {
        "loss/total": [0.001387, 0.01709, 0.028823],
        "optim/grad_norm": [2.358391, 3.304636, 2.382179],
        "reward/mean": [0.21875, 0.15625, 0.210938],
    },
    "dft": {
        "loss/total": [0.165447, 0.158222, 0.142183],
        "optim/grad_norm": [1.587974, 1.096238, 1.319681],
    },
    "dpo": {
        "loss/total": [0.693147, 0.680241, 0.698058],
        "optim/grad_norm": [1.032913, 0.89418, 0.500747],
    },
    "fait": {
        "loss/total": [0.832269, 0.771808, 0.755685],
        "optim/grad_norm": [2.770513, 4.146269, 3.63523],
    },
    "grpo": {
        "loss/total": [-0.004798, -0.023448, 0.002438],
        "optim/grad_norm": [2.638986, 2.06991, 3.726924],
        "reward/mean": [0.234375, 0.21875, 0.21875],
    },
    "gspo": {
        "loss/total": [0.01161, 0.003755, 0.002985],
        "optim/grad_norm": [3.680021, 2.915972, 1.527192],
        "reward/mean": [0.234375, 0.21875, 0.21875],
    },
    "hpt": {
        "loss/total": [0.694987, 0.911221, 0.00189],
        "optim/grad_norm": [4.162183, 13.971733, 0.437521],
        "reward/mean": [0.234375, 0.25, 0.21875],
    },
    "ift": {
        "loss/total": [1.186604, 1.136923, 0.998365],
        "optim/grad_norm": [3.842698, 5.403567, 3.316754],
    },
    "interleave": {
        "loss/total": [-0.004798, 0.670962, 0.012163],
        "optim/grad_norm": [2.638986, 5.554501, 2.471894],
        "reward/mean": [0.234375, None, 0.203125],
    },
    "ipo": {
        "loss/total": [25.0, 24.156664, 25.172323],
        "optim/grad_norm": [76.479561, 53.873718, 44.20586],
    },
    "kto": {
        "loss/total": [0.5, 0.496687, 0.50116],
        "optim/grad_norm": [0.258228, 0.229998, 0.122664],
    },
    "luffy": {
        "loss/total": [0.011966, 0.012446, 0.008083],
        "optim/grad_norm": [0.796784, 0.390057, 0.523302],
        "reward/mean": [0.267857, 0.089286, 0.232143],
    },
    "metis_rise": {
        "loss/total": [-0.004798, 0.712459, 0.624006],
        "optim/grad_norm": [2.638986, 7.169414, 4.415593],
        "reward/mean": [0.234375, 0.21875, 0.203125],
    },
    "orpo": {
        "loss/total": [0.715313, 0.65518, 0.621444],
        "optim/grad_norm": [3.134061, 3.948282, 2.512022],
    },
    "otr": {
        "loss/total": [0.08899, 0.083409, 0.073497],
        "optim/grad_norm": [1.746772, 1.205862, 1.45165],
    },
    "poft": {
        "loss/total": [0.693147, 0.696718, 0.675663],
        "optim/grad_norm": [1.180095, 1.814112, 1.620677],
    },
    "ppo": {
        "loss/total": [0.062984, 0.091386, -0.003562],
        "optim/grad_norm": [4.694824, 4.000536, 1.70928],
        "reward/mean": [0.234375, 0.265625, 0.1875],
    },
    "prefix_rft": {
        "loss/total": [0.02705, 0.00991, 0.015629],
        "optim/grad_norm": [1.063447, 0.906453, 0.53797],
        "reward/mean": [0.359375, 0.296875, 0.296875],
    },
    "reft": {
        "loss/total": [0.65147, 0.638209, 0.433932],
        "optim/grad_norm": [2.39488, 8.915213, 5.649853],
        "reward/mean": [None, 0.3375, 0.282813],
    },
    "reinforce_pp": {
        "loss/total": [-0.0, -0.0, -0.0],
        "optim/grad_norm": [3.603876, 2.828625, 4.377525],
        "reward/mean": [0.234375, 0.234375, 0.234375],
    },
    "reinforce_pp_baseline": {
        "loss/total": [-0.0, -0.0, -0.0],
        "optim/grad_norm": [3.320586, 2.663094, 4.356936],
        "reward/mean": [0.234375, 0.21875, 0.21875],
    },
    "relift": {
        "loss/total": [1.047591, 0.592239, 0.576318],
        "optim/grad_norm": [9.262459, 1.966721, 1.881496],
        "reward/mean": [0.234375, 0.28125, 0.21875],
    },
    "remix": {
        "loss/total": [0.001626, -0.031647, 0.020858],
        "optim/grad_norm": [3.808276, 3.316346, 2.856574],
        "reward/mean": [0.234375, 0.2, 0.28125],
    },
    "rft": {
        "loss/total": [0.627406, 0.611045, 0.621806],
        "optim/grad_norm": [2.359319, 4.397708, 4.106431],
        "reward/mean": [0.25, 0.234375, 0.296875],
    },
    "rloo": {
        "loss/total": [-0.002838, -0.011255, 0.000985],
        "optim/grad_norm": [1.479512, 1.125367, 1.978949],
        "reward/mean": [0.234375, 0.21875, 0.21875],
    },
    "s3ft": {
        "loss/total": [0.683689, 0.607515, 0.580449],
        "optim/grad_norm": [3.103686, 3.252212, 2.650814],
        "reward/mean": [0.5, 0.25, 0.5],
    },
    "sasr": {
        "loss/total": [0.65147, 0.614146, 0.016318],
        "optim/grad_norm": [2.39488, 3.412116, 1.159064],
        "reward/mean": [None, None, 0.21875],
    },
    "sft": {
        "loss/total": [0.65147, 0.614146, 0.602746],
        "optim/grad_norm": [2.39488, 3.412116, 3.761804],
    },
    "sft_then_dpo": {
        "loss/total": [0.65147, 0.693147, 0.677573],
        "optim/grad_norm": [2.39488, 0.644069, 0.707305],
    },
    "sft_then_grpo": {
        "loss/total": [0.65147, 0.009586, -0.007201],
        "optim/grad_norm": [2.39488, 0.82789, 1.038398],
        "reward/mean": [None, 0.265625, 0.21875],
    },
    "simpo": {
        "loss/total": [0.41539, 0.589689, 0.702654],
        "optim/grad_norm": [2.755762, 2.145373, 4.675378],
    },
    "spin": {
        "loss/total": [0.693147, 0.693147, 0.693147],
        "optim/grad_norm": [1.007291, 1.276426, 0.632634],
    },
    "srft": {
        "loss/total": [-0.309593, -0.493213, -0.29562],
        "optim/grad_norm": [2.061801, 1.275917, 1.535347],
        "reward/mean": [0.267857, 0.089286, 0.25],
    },
    "star": {
        "loss/total": [0.533626, 0.618142, 0.648048],
        "optim/grad_norm": [4.165144, 4.355361, 7.161594],
        "reward/mean": [0.234375, 0.21875, 0.234375],
    },
    "superhf": {
        "loss/total": [0.591806, 0.726122, 0.627494],
        "optim/grad_norm": [2.103312, 2.701021, 5.38599],
        "reward/mean": [0.234375, 0.28125, 0.234375],
    },
    "tulu3": {
        "loss/total": [0.65147, 0.693147, 0.013911],
        "optim/grad_norm": [2.39488, 0.644069, 1.349613],
        "reward/mean": [None, None, 0.21875],
    },
    "uft": {
        "loss/total": [0.03919, 0.000219, 0.003933],
        "optim/grad_norm": [0.516929, 1.179385, 1.032935],
        "reward/mean": [0.984375, 0.609375, 0.15625],
    },
    "visurf": {
        "loss/total": [0.011454, 0.004365, 0.000928],
        "optim/grad_norm": [3.092401, 2.15323, 3.093256],
        "reward/mean": [0.267857, 0.089286, 0.25],
    },
    "warmup_rl": {
        "loss/total": [8.730329, 0.007174, 0.005302],
        "optim/grad_norm": [13.426288, 1.178771, 1.811007],
        "reward/mean": [None, 0.359375, 0.203125],
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
def test_golden_first_losses(method, golden_warm, tmp_path):
    rows = first_metrics(method, golden_warm, tmp_path)
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
