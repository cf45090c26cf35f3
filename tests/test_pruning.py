"""Model-scored selection of SFT data (`tandem.train.pruning`): the sketch, the DONOD scores and
TOPSIS against direct float64 computations; UDS and DONOD keeping what they are meant to keep
on the tiny model; their state across a resume."""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from tandem.report.metrics import read_metrics
from tandem.train.loop import build_state, train, train_from_files
from tandem.train.pruning import FastJL, donod_scores, topsis
from tandem.train.selection import SELECTORS, build_selector
from tandem.train.step import Inspection, _inspect

from .conftest import tiny_config


def test_fast_jl_sketch_is_the_randomized_fft_of_the_padded_matrix():
    T, V, N = 16, 40, 5
    jl = FastJL(T, V, 3, 7, seed=1)
    x = torch.randn(N, V, dtype=torch.float64)
    pad = torch.zeros(T, V, dtype=torch.float64)
    pad[:N] = x
    # UDS's FastJLProjector, as written there: FFT over V, keep idx2; signs d1; FFT over T, keep idx1
    y = torch.fft.fft(pad * jl.d2.double(), dim=-1).real[:, jl.idx2] * math.sqrt(V / 7)
    z = torch.fft.fft(y * jl.d1.double()[:, None], dim=0).real[jl.idx1] * math.sqrt(T / 3)
    torch.testing.assert_close(jl(x.float()).double(), z.flatten(), atol=1e-4, rtol=1e-4)
    # longer than T: cut to T rows
    long = torch.randn(T + 4, V)
    torch.testing.assert_close(jl(long), jl(long[:T]))


def test_donod_scores_are_the_norm_change_of_one_sgd_step_on_the_head():
    torch.manual_seed(0)
    V, H, N, lr = 11, 6, 4, 0.3
    W = torch.randn(V, H, dtype=torch.float64, requires_grad=True)
    h = torch.randn(N, H, dtype=torch.float64)
    y = torch.randint(0, V, (N,))
    loss = torch.nn.functional.cross_entropy(h @ W.T, y)  # token-mean NLL
    (g,) = torch.autograd.grad(loss, W)
    W1 = W.detach() - lr * g
    don = float(W.detach().norm() - W1.norm())
    nod = float((W.detach() - W1).norm())
    view = Inspection(
        logits=(h @ W.detach().T).float(),
        hidden=h.float(),
        targets=y,
        head_sq_norm=float(W.detach().pow(2).sum()),
    )
    got = donod_scores(view, lr)
    assert got == pytest.approx((don, nod), rel=1e-5, abs=1e-6)


def test_topsis_closeness_by_hand():
    # criteria: benefit (higher better), cost (lower better)
    x = torch.tensor([[3.0, 1.0], [1.0, 1.0], [3.0, 4.0]])
    c = topsis(x, benefit=[True, False])
    r = x / x.norm(dim=0) * 0.5
    best = torch.tensor([r[:, 0].max(), r[:, 1].min()])
    worst = torch.tensor([r[:, 0].min(), r[:, 1].max()])
    dp, dm = (r - best).norm(dim=1), (r - worst).norm(dim=1)
    torch.testing.assert_close(c.float(), (dm / (dp + dm)).float())
    assert c[0] == pytest.approx(1.0) and int(c.argmin()) in (1, 2)


def _env(tmp_path, *overrides):
    st = build_state(tiny_config(tmp_path, *overrides))
    return st, SimpleNamespace(encoder=st.encoder, inspect=lambda its: _inspect(st, its))


def test_inspect_gives_the_logits_the_model_predicts_the_trained_tokens_with(tmp_path):
    from tandem.experience import Item

    st, env = _env(tmp_path)
    ex = st.task.examples("train", 1)[0]
    prompt, demo = st.encoder.prompt(ex), st.encoder.demo(ex)
    (view,) = env.inspect([Item.of(prompt, demo, "demo", "d", example=ex)])
    ids = torch.tensor([prompt + demo])
    with torch.no_grad():
        logits = st.model(input_ids=ids).logits[0].float()
    n = len(demo)
    torch.testing.assert_close(view.logits, logits[-n - 1 : -1], atol=1e-4, rtol=1e-4)
    assert view.targets.tolist() == demo


def test_donod_drops_corrupted_demonstrations(warm_tiny, tmp_path):
    """A pool of 48 clean one-digit sums and 16 with a wrong, long solution: the warmed model
    predicts the clean ones, so the corrupted ones move the head most (high NOD) and DONOD,
    keeping 50%, keeps fewer of them than their share of the pool."""
    st, env = _env(tmp_path, f"model.name={warm_tiny}")
    clean = st.task.examples("train", 48, seed=0)
    bad = [
        replace(ex, id=f"bad{i}", solution="9" * 3, answer="999")
        for i, ex in enumerate(st.task.examples("train", 16, seed=1))
    ]
    pool = clean + bad
    share = {}
    for don in ("cost", "benefit"):
        spec = SELECTORS.spec("donod")(kind="donod", keep=0.5, don=don)
        sel = build_selector(spec, pool, seed=0)
        exs, m = sel.take(None, 8, 0, env=env)
        assert len(sel.kept) == 32 and set(ex.id for ex in exs) <= set(sel.kept)
        share[don] = sum(i.startswith("bad") for i in sel.kept) / len(sel.kept)
        if don == "cost":
            assert m["data/nod_kept"] < m["data/nod_pool"]
    print(
        f"\nCONTROL donod: corrupted share 0.25 of the pool -> kept {share['cost']:.3f} "
        f"(DON as a cost, the default), {share['benefit']:.3f} (DON as a benefit)"
    )
    assert share["cost"] < 0.25 / 2, share


def test_uds_keeps_higher_utility_than_the_candidates_in_a_run(tmp_path):
    out = tmp_path / "run"
    train(
        tiny_config(out, "method=sft", "steps=3", "objective.sources.demos.select={kind: uds}"),
        log=lambda s: None,
    )
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "data/uds_utility_kept" in r]
    assert len(rows) == 3
    for r in rows:
        assert r["data/uds_utility_kept"] > r["data/uds_utility_candidates"]
    assert rows[0]["data/uds_diversity_candidates"] == 0.0  # an empty queue
    assert rows[1]["data/uds_diversity_candidates"] > 0.0


def test_uds_with_a_large_alpha_keeps_the_candidates_farthest_from_the_queue(tmp_path):
    st, env = _env(tmp_path)
    pool = st.task.examples("train", 64, seed=0)
    from tandem.train.data import ExampleStream

    sel = build_selector(SELECTORS.spec("uds")(kind="uds", alpha=1e6), pool, seed=0)
    stream = ExampleStream(pool, 0, "demos")
    sel.take(stream, 4, 0, env=env)
    _, m = sel.take(stream, 4, 1, env=env)
    assert m["data/uds_diversity_kept"] > m["data/uds_diversity_candidates"]


@pytest.mark.parametrize("select", ["{kind: uds}", "{kind: donod, keep: 0.5}"])
def test_pruning_state_resumes_exactly(select, tmp_path):
    args = ["method=sft", "eval.prompts=0", f"objective.sources.demos.select={select}"]
    train(tiny_config(tmp_path / "full", *args, "steps=4"), log=lambda s: None)
    train(tiny_config(tmp_path / "part", *args, "steps=2"), log=lambda s: None)
    train_from_files(None, ["steps=4"], resume_dir=str(tmp_path / "part"))
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]  # noqa: E731
    assert strip(read_metrics(tmp_path / "full/metrics.jsonl")) == strip(
        read_metrics(tmp_path / "part/metrics.jsonl")
    )
