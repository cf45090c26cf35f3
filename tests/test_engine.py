"""The engine's shape: token roles (a tool's output gets no gradient, an image reaches the
forward), pairs kept whole, needs filled only when asked, the several-update path against a
written-out PPO, and no branch on a method's or a source's name in train/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import LlamaForCausalLM, LlamaModel

import tandem.train.step as step_mod
from tandem.algo.objective import TERMS
from tandem.experience import ROLE_ID, Item, Span, collate, microbatches, minibatches
from tandem.methods import PRESETS
from tandem.model import build_tiny
from tandem.model.logprobs import token_logprobs_reference
from tandem.train.backend import Backend
from tandem.train.loop import build_state
from tandem.train.plan import _term
from tandem.train.sources import SOURCES

from .conftest import tiny_config
from .test_train import PRESET_ARGS, step_gradient


def _backend(model, tok, share_prompts=True):
    return Backend(
        model,
        device=torch.device("cpu"),
        autocast_bf16=False,
        share_prompts=share_prompts,
        eos_token_ids=[tok.eos_token_id],
        pad_token_id=tok.pad_token_id,
    )


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("share_prompts", [True, False])
def test_tool_output_between_sampled_spans_gets_no_gradient(share_prompts):
    model, tok = build_tiny(0)
    model.train()
    multi = Item(
        [
            Span(_ids(tok, "3+4="), "prompt"),
            Span(_ids(tok, "c(3,4)"), "sampled"),
            Span(_ids(tok, "->7;"), "tool"),
            Span(_ids(tok, "7"), "sampled"),
        ],
        "rollouts",
    )
    plain = Item.of(_ids(tok, "3+4="), _ids(tok, "8"), "sampled", "rollouts")
    batch = collate([multi, plain], tok.pad_token_id)
    tool = batch.role_BT == ROLE_ID["tool"]
    assert tool.sum() == 4 and batch.target_mask_BT[tool].sum() == 0
    out = _backend(model, tok, share_prompts).forward(model, batch)
    out.logp.retain_grad()
    sft = _term("sft", TERMS.spec("nll")(sources=["rollouts"]))
    norm = step_mod._normalizer(batch, sft, 8)
    value, _ = step_mod._term_value(sft, out, batch, norm)
    value.backward()
    g = out.logp.grad
    assert g[tool].abs().sum() == 0  # the tool's tokens are not in the loss
    assert (g[batch.role_BT == ROLE_ID["sampled"]] != 0).all()
    # the sampled tokens after the tool see it: same log-probs as a plain forward of the row
    ref = token_logprobs_reference(
        model, batch.input_ids_BT, batch.attention_mask_BT, batch.target_mask_BT
    )
    torch.testing.assert_close(out.logp, ref.logp, rtol=1e-5, atol=1e-6)


IMAGE_TOKEN = "@"


class _ImageModel(LlamaModel):
    """A toy vision-language base model: each `IMAGE_TOKEN` gets a projection of one image's
    pixels added to its embedding (the transformers convention: one `pixel_values` entry per
    image, in placeholder order)."""

    def __init__(self, config, image_id: int):
        super().__init__(config)
        self.image_id, self.seen = image_id, []
        self.project = nn.Linear(4, config.hidden_size)

    def forward(self, input_ids=None, pixel_values=None, **kw):
        self.seen.append(pixel_values)
        emb = self.embed_tokens(input_ids)
        if pixel_values is not None:
            where = input_ids == self.image_id
            emb = emb.masked_scatter(where[..., None], (emb[where] + self.project(pixel_values)))
        return super().forward(inputs_embeds=emb, **kw)


def test_image_tensor_reaches_the_forward_as_a_keyword_argument():
    tiny, tok = build_tiny(0)
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    model = LlamaForCausalLM(tiny.config)
    model.model = _ImageModel(tiny.config, image_id)
    model.load_state_dict(tiny.state_dict(), strict=False)
    pixels = torch.randn(1, 4)
    item = Item(
        [
            Span([image_id], "image"),
            Span(_ids(tok, "count="), "prompt"),
            Span(_ids(tok, "2"), "sampled"),
        ],
        "rollouts",
        inputs={"pixel_values": pixels},
    )
    text_only = Item.of(_ids(tok, "1+1="), _ids(tok, "2"), "sampled", "rollouts")
    batch = collate([item, text_only], tok.pad_token_id)
    assert batch.inputs["pixel_values"][1] is None and batch.target_mask_BT[0, 0] == 0
    out = _backend(model, tok).forward(model, batch)
    assert len(model.model.seen) == 1 and torch.equal(model.model.seen[0], pixels)
    out.logp.sum().backward()
    assert model.model.project.weight.grad.abs().sum() > 0  # the image changed the loss
    # a sub-batch keeps its own rows' images only
    assert batch.rows([1]).model_inputs() == {}
    assert torch.equal(batch.rows([0]).model_inputs()["pixel_values"], pixels)


def test_pairs_stay_in_one_microbatch_and_minibatches_keep_groups():
    model, tok = build_tiny(0)
    items = []
    for p in range(3):
        prompt = _ids(tok, f"{p}+1=")
        items.append(
            Item.of(prompt, _ids(tok, str(p + 1) * 3), "demo", "pairs", pair=p, chosen=True)
        )
        items.append(Item.of(prompt, _ids(tok, "9"), "demo", "pairs", pair=p, chosen=False))
    for g in range(2):
        for _ in range(3):
            items.append(
                Item.of(
                    _ids(tok, f"{g}+2="), _ids(tok, "5"), "sampled", "rollouts", group=g, reward=0.0
                )
            )
    batch = collate(items, tok.pad_token_id)
    for budget in (1, 9, 20, 1000):
        for chunk in microbatches(batch, budget, by_prompt=True):
            pairs = batch.pair_B[chunk].tolist()
            for p in set(pairs) - {-1}:
                assert pairs.count(p) == 2, (budget, chunk)
    parts = minibatches(batch, 3, torch.Generator().manual_seed(0))
    assert sorted(i for p in parts for i in p) == list(range(batch.size))
    for part in parts:
        groups = batch.group_B[part].tolist()
        for g in set(groups) - {-1}:
            assert groups.count(g) == 3
        pairs = batch.pair_B[part].tolist()
        for p in set(pairs) - {-1}:
            assert pairs.count(p) == 2


@pytest.mark.filterwarnings(r"ignore:Seems like `optimizer.step\(\)` has been overridden")
@pytest.mark.parametrize("method", ["dpo", "orpo", "ppo", "prefix_rft"])
def test_step_gradient_does_not_depend_on_microbatch_size(method, warm_tiny, tmp_path):
    """Sequence/pair terms and token terms of the new methods: one micro-batch vs many."""
    args = [f"method={method}", f"model.name={warm_tiny}", *PRESET_ARGS[method]]
    one = step_gradient(tmp_path / "one", 2, *args, "tokens_per_microbatch=100000")
    many = step_gradient(tmp_path / "many", 2, *args, "tokens_per_microbatch=20")
    assert one.abs().sum() > 0
    torch.testing.assert_close(one, many, rtol=1e-4, atol=1e-6)


def _reference_ppo_pg_loss(model, batch, clip=0.2, clip_c=3.0) -> tuple[torch.Tensor, float]:
    """PPO's clipped policy loss written out from the formulas (ALGORITHMS.md §2.1), on full
    logits, aggregated per sequence then over sequences (seq-mean-token-mean)."""
    logp = token_logprobs_reference(
        model, batch.input_ids_BT, batch.attention_mask_BT, batch.target_mask_BT
    ).logp
    old, adv, m = batch.needs["old_logp_BT"], batch.adv_BT, batch.target_mask_BT
    ratio = torch.exp(logp - old)
    per_tok = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip))
    per_tok = torch.where(adv < 0, torch.minimum(per_tok, -adv * clip_c), per_tok)
    rows = (per_tok * m).sum(1) / m.sum(1).clamp(min=1)
    has = m.sum(1) > 0
    max_dev = float(((ratio - 1).abs() * m).max().detach())
    return rows[has].sum() / has.sum(), max_dev


def test_several_updates_use_real_ratios_against_a_written_out_ppo(
    warm_tiny, tmp_path, monkeypatch
):
    """PPO with 3 epochs of one mini-batch: the old log-probs are one forward before the first
    update, so the second and third updates see ratios away from 1; their policy loss equals
    the formula written out above on the same batch and weights."""
    cfg = tiny_config(
        tmp_path,
        "method=ppo",
        f"model.name={warm_tiny}",
        "lr=5e-3",
        "grad_clip=0",
        "objective.updates=[{epochs: 3, minibatches: 1}]",
        "prompts_per_step=4",
        "samples_per_prompt=4",
    )
    st = build_state(cfg)
    real = step_mod._update
    seen = []

    def checked(st_, stage, batch, terms, coefs, opt, first, prepared, val=None):
        with torch.no_grad():
            want, dev = _reference_ppo_pg_loss(st_.model, batch)
        got = real(st_, stage, batch, terms, coefs, opt, first, prepared, val)
        seen.append((float(want), got["loss/pg"], dev))
        return got

    monkeypatch.setattr(step_mod, "_update", checked)
    m = step_mod.train_step(st, 0)
    assert m["optim/updates"] == 3 and len(seen) == 3
    for want, got, _ in seen:
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert seen[0][2] < 1e-5  # the first update: ratio 1 (same weights as the old forward)
    assert seen[2][2] > 1e-3  # later ones: real ratios
    assert m["pg/clip_frac"] > 0


def test_extra_models_and_needs_only_when_asked(warm_tiny, tmp_path):
    def state(*ov):
        return build_state(tiny_config(tmp_path, f"model.name={warm_tiny}", *ov))

    grpo = state("method=grpo")
    assert grpo.reference is None and grpo.value_head is None
    assert state("method=grpo", "objective.terms.kl.coef=0.05").reference is not None
    ppo = state("method=ppo")
    assert ppo.value_head is not None and ppo.reference is None
    assert state("method=dpo").reference is not None
    simpo = state("method=simpo")
    assert simpo.reference is None and simpo.value_head is None
    assert state("method=spin").reference is not None  # the opponent
    # a one-update GRPO step runs one forward per micro-batch: no old-policy or reference pass
    calls = []
    fwd = grpo.backend.forward
    grpo.backend.forward = lambda *a, **k: calls.append(1) or fwd(*a, **k)
    step_mod.train_step(grpo, 0)
    n_mb = len(calls)
    ppo_calls = []
    fwd2 = ppo.backend.forward
    ppo.backend.forward = lambda *a, **k: ppo_calls.append(1) or fwd2(*a, **k)
    step_mod.train_step(ppo, 0)
    assert n_mb >= 1 and len(ppo_calls) == 5 * n_mb  # one no-grad pass + 4 updates


def test_logp_mismatch_is_logged(warm_tiny, tmp_path):
    st = build_state(tiny_config(tmp_path, "method=grpo", f"model.name={warm_tiny}"))
    m = step_mod.train_step(st, 0)
    assert 0 <= m["rollout/logp_mismatch"] < 1e-4  # fp32, temperature 1: the same numbers
    hot = build_state(
        tiny_config(tmp_path, "method=grpo", f"model.name={warm_tiny}", "temperature=0.5")
    )
    assert step_mod.train_step(hot, 0)["rollout/logp_mismatch"] > 0.01  # sampler: logits / 0.5


def _string_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.Module | ast.AsyncFunctionDef):
            d = ast.get_docstring(node, clean=False)
            if d:
                docs.add(d)
    return {
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value not in docs
    }


def test_train_does_not_branch_on_method_or_source_names():
    names = set(PRESETS) | set(SOURCES.names())
    root = Path(__file__).resolve().parents[1] / "src" / "tandem" / "train"
    for path in root.glob("*.py"):
        if path.name == "sources.py":  # where the source kinds are registered
            continue
        found = _string_constants(path) & names
        assert not found, f"{path.name} names {sorted(found)}"


def test_recipes_lists_every_registry():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "recipes"], capture_output=True, text=True, timeout=120
    ).stdout
    for section, reg in (("sources", SOURCES),):
        assert section in out
        for name in reg.names():
            assert f"  {name} " in out
    for kind in ("dpo", "gae", "sasr", "equal_groups"):
        assert f"  {kind} " in out


def test_controllers_set_temperature_kl_and_which_source_is_on(warm_tiny, tmp_path):
    """A controller for the sampling temperature (a cosine), one for the KL coefficient (verl's
    adaptive KL, reading loss/kl) and one that turns a source on (`when`)."""
    st = build_state(
        tiny_config(
            tmp_path,
            "method=chord",
            f"model.name={warm_tiny}",
            "objective.controllers.temp={kind: cosine, start: 1.0, end: 0.5, steps: 2}",
            "objective.sources.rollouts.temperature=temp",
            "objective.controllers.beta={kind: adaptive_kl, init: 0.1, target: 0.001, horizon: 10}",
            "objective.terms.kl.coef=beta",
            "objective.controllers.mu={kind: constant, value: 0.5}",
            "objective.controllers.demo_on={kind: cosine, start: 0.0, end: 1.0, steps: 1}",
            "objective.sources.demos.when=demo_on",
        )
    )
    temps = []
    gen = st.backend.generate
    st.backend.generate = lambda *a, **k: temps.append(k["temperature"]) or gen(*a, **k)
    rows = [step_mod.train_step(st, k) for k in range(3)]
    assert temps == [1.0, 0.75, 0.5]  # cosine 1.0 -> 0.5 over 2 steps
    # demos are drawn only once demo_on > 0 (step 0: 0.0): no sft loss at step 0
    assert "loss/sft" not in rows[0] and "loss/sft" in rows[1]
    # beta follows verl's rule on the logged KL: β ← β·(1 + clip(KL/target − 1, ±0.2)/horizon)
    assert rows[0]["coef/kl"] == pytest.approx(0.1)
    for a, b in zip(rows, rows[1:]):
        err = min(max(a["loss/kl"] / 0.001 - 1, -0.2), 0.2)
        assert b["coef/kl"] == pytest.approx(a["coef/kl"] * (1 + err / 10), rel=1e-9)
    assert len({r["coef/kl"] for r in rows}) == 3


def test_full_vocabulary_need_filled_only_when_asked(warm_tiny, tmp_path):
    """Anchored SFT's shape (DFT + λ·KL(π_ref ‖ π_θ) over the whole vocabulary): the reference's
    whole distribution is filled once per batch, the policy's comes from the training forward,
    and the term equals the formula on plain full logits."""
    cfg = tiny_config(
        tmp_path,
        "method=sft",
        f"model.name={warm_tiny}",
        "objective.terms.sft={kind: dft, sources: demos}",
        "objective.terms.anchor={kind: vocab_kl, sources: demos, coef: 0.1}",
    )
    st = build_state(cfg)
    assert st.reference is not None
    seen = {}
    real = step_mod._update

    def capture(st_, stage, batch, terms, coefs, opt, first, prepared, val=None):
        seen["batch"] = batch
        with torch.no_grad():
            logits = st_.model(
                input_ids=batch.input_ids_BT, attention_mask=batch.attention_mask_BT
            ).logits
            ref = st_.reference(
                input_ids=batch.input_ids_BT, attention_mask=batch.attention_mask_BT
            ).logits
        lp, rp = torch.log_softmax(logits[:, :-1], -1), torch.log_softmax(ref[:, :-1], -1)
        m = batch.target_mask_BT[:, 1:]
        kl = (rp.exp() * (rp - lp)).sum(-1)
        seen["want"] = float((kl * m).sum() / m.sum())
        return real(st_, stage, batch, terms, coefs, opt, first, prepared, val)

    step_mod._update = capture
    try:
        m0 = step_mod.train_step(st, 0)
        m1 = step_mod.train_step(st, 1)
    finally:
        step_mod._update = real
    assert abs(m0["loss/anchor"]) < 1e-6  # policy == reference
    assert m1["loss/anchor"] > 1e-6
    assert m1["loss/anchor"] == pytest.approx(seen["want"], rel=1e-4)
    assert seen["batch"].needs["ref_vocab_logp_BTV"].shape[-1] == st.model.config.vocab_size
    plain = build_state(tiny_config(tmp_path / "p", "method=sft", f"model.name={warm_tiny}"))
    assert plain.reference is None


def test_ift_mixed_inputs_forward(tmp_path):
    """IFT's forward on mixed input embeddings: at λ = 0 it is the plain forward; at λ = 1
    with the gold tokens as the "predictions" too; with other predictions the log-probs move."""
    st = build_state(tiny_config(tmp_path, "method=ift"))
    exs = st.task.examples("train", 4)
    items = [Item.of(st.encoder.prompt(e), st.encoder.demo(e), "demo", "demos") for e in exs]
    mb = collate(items, st.encoder.pad_id)
    with torch.no_grad():
        plain = st.backend.forward(st.model, mb).logp
        same = st.backend.forward(st.model, mb, mix=(torch.zeros_like(mb.input_ids_BT), 0.0)).logp
        gold = st.backend.forward(st.model, mb, mix=(mb.input_ids_BT, 1.0)).logp
        other = st.backend.forward(st.model, mb, mix=(torch.zeros_like(mb.input_ids_BT), 0.5)).logp
    m = mb.target_mask_BT.bool()
    torch.testing.assert_close(same[m], plain[m])
    torch.testing.assert_close(gold[m], plain[m])
    assert (other[m] - plain[m]).abs().max() > 1e-3
