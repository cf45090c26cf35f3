"""One training step, top to bottom: coefficients, experience, filters, tensors, needs,
advantages, updates (forward, terms, aggregate, backward, optimizer step), controllers, metrics.

    L = Σ_terms coef_term(k) · AGG_term(w_item · ℓ_term)

Every method is a setting of this one function (`tandem.methods`): its sources make the items,
its terms are summed, its update plan says how many optimizer updates the batch gets. The
default plan is one update per batch; the "old" log-probs are then the current ones detached
(the ratio is 1 in value, its gradient the policy gradient), so no forward pass is spent on
them, as TRL does when num_iterations = 1. With several updates (PPO epochs, mini-batches, a
second phase) they come from one no-grad forward of the policy before the first update, so
later ratios are real.

The CPU speed work (bf16 sampling copy, shared casts, shared prompts) is in
`tandem.train.backend`; the parts (sources, terms, estimators, controllers) are in their
registries. Nothing here branches on a method's or a source's name.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from tandem.algo.advantages import AdvantageInputs, estimate
from tandem.algo.aggregate import Normalizer, aggregate, make_normalizer
from tandem.algo.objective import BatchScores, PairInputs, SeqInputs, TokenInputs
from tandem.experience import Batch, Item, microbatches, minibatches
from tandem.model.lora import reference_module, set_reference
from tandem.rewards.safe import score_batch
from tandem.train.backend import Backend, step_generator
from tandem.train.dist import Dist
from tandem.train.filters import apply_filters
from tandem.train.fsdp import local
from tandem.train.plan import Stage, Term
from tandem.train.sources import DrawEnv, Rollout


@dataclass
class RunState:
    """Everything a step reads or changes. Composed, not subclassed."""

    cfg: Any
    model: Any
    tokenizer: Any
    encoder: Any
    task: Any
    backend: Backend
    stages: list[Stage]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    """Separate optimizers of update phases (`UpdatePhase.optimizer`), by name."""
    reference: Any = None
    """The frozen reference model (KL, DPO, SPIN's opponent), when a stage needs one."""
    value_head: Any = None
    ref_step: int | None = None
    """The step at which the reference was last set from the policy (None: initial model)."""
    eval_pool: Any = None
    """The reward pool evaluation scores with (None: the run's, `rewards.*`)."""
    last_items: list = field(default_factory=list)
    """The items the last step trained on (sample completions are logged from them)."""
    param_names: list[str] = field(default_factory=list)
    """The optimizer's parameters by name (`model.<name>`, `value_head.<name>`), in order: how
    a saved optimizer state maps between one process or DDP and FSDP2."""
    dist: Dist = field(default_factory=Dist)
    """This process's rank and the collectives of a data-parallel run (`tandem.train.dist`);
    the default is the one-process run."""

    def stage_at(self, step: int) -> Stage:
        for s in self.stages:
            if s.start <= step < s.end:
                return s
        return self.stages[-1]


def train_step(st: RunState, k: int) -> dict[str, float]:
    t0 = time.perf_counter()
    stage = st.stage_at(k)
    if k == stage.start and stage is not st.stages[0]:
        _enter(st, stage, k)
    coefs = stage.coefs(k)
    terms = stage.active_terms(coefs)
    m: dict[str, float] = {f"coef/{t.name}": t.coef(coefs) for t in stage.terms.values()}
    m |= {f"coef/{n}": v for n, v in coefs.items()}
    m["optim/lr"] = st.scheduler.get_last_lr()[0]

    # 1. experience: every source an active term trains on, in order (a buffer sees the rest)
    items: list[Item] = []
    per_source: list[tuple[str, dict[str, float]]] = []
    dots = stage.dot_request(k)
    for src in stage.sources_for(terms, coefs, extra=(dots[0],) if dots else ()):
        got, sm = src.make(_draw_env(st, stage, k, coefs, items))
        items += got
        per_source.append((src.name, sm))
    m |= _merge_source_metrics(per_source)
    items, fm = apply_filters(stage.filters, items)
    m |= fm
    st.last_items = items
    t1 = time.perf_counter()

    # 2. tensors; what the terms need, filled once; advantages
    plan = _update_plan(stage, terms, items)
    if plan:
        batch = st.backend.collate(items)
        needs = stage.needs([t for phase in plan for t in phase[0]])
        _fill_needs(st, batch, plan, needs)
        if "adv" in needs:
            m |= _set_advantages(stage, batch)
        prepared = _prepare(batch, [t for phase in plan for t in phase[0]])
        val = None
        if dots:  # the held-out rows a controller's gradient dot products are taken against
            vrows = [i for i, s in enumerate(batch.source_B) if s == dots[0]]
            val = (batch.rows(vrows), frozenset(dots[1])) if vrows else None

        # 3. updates: each phase's terms, epochs x mini-batches, one optimizer step each
        stats: dict[str, list[float]] = defaultdict(list)
        n_upd = 0
        for phase_terms, phase in plan:
            rows = _rows_of(batch, phase_terms)
            sub = batch.rows(rows)
            opt = st.optimizers.get(phase.optimizer, st.optimizer)
            for epoch in range(phase.epochs):
                gen = step_generator(st.cfg.seed, k, salt=7 + 31 * epoch)
                parts = minibatches(sub, phase.minibatches, gen) if phase.minibatches > 1 else None
                for part in parts or [list(range(sub.size))]:
                    um = _update(
                        st,
                        stage,
                        sub.rows(part),
                        phase_terms,
                        coefs,
                        opt,
                        n_upd == 0,
                        prepared,
                        val if n_upd == 0 else None,
                    )
                    for key, v in um.items():
                        stats[key].append(v)
                    n_upd += 1
        m |= {key: sum(v) / len(v) for key, v in stats.items()}
        if "optim/skipped_updates" in stats:
            m["optim/skipped_updates"] = float(sum(stats["optim/skipped_updates"]))
        m["optim/updates"] = float(n_upd)
        m["loss/total"] = sum(
            m[f"coef/{t.name}"] * m[f"loss/{t.name}"] for t in terms if f"loss/{t.name}" in m
        )
        m |= _batch_metrics(st, batch, items)
        m["perf/train_s"] = time.perf_counter() - t1
        m["perf/tokens_per_s"] = float(batch.attention_mask_BT.sum()) / max(m["perf/train_s"], 1e-9)
    with warnings.catch_warnings():  # a skipped (non-finite) first update is not a misuse
        warnings.filterwarnings(
            "ignore", message="Detected call of `lr_scheduler.step", category=UserWarning
        )
        st.scheduler.step()

    # 4. controllers read the step's statistics (per-term gradient norms when they asked)
    for name, ctl in stage.controllers.items():
        ctl.update(k - stage.start, m)
        m |= {f"ctl/{name}/{key}": v for key, v in ctl.metrics().items()}
    m["perf/step_s"] = time.perf_counter() - t0
    return m


def _enter(st: RunState, stage: Stage, k: int) -> None:
    """A stage's first step (after the first stage): fresh optimizer moments and, where the
    stage asks, the policy as the new reference."""
    if stage.config.reset_optimizer:
        for opt in (st.optimizer, *st.optimizers.values()):
            opt.state.clear()
    if stage.config.reference == "stage_start" and st.reference is not None:
        set_reference(st.reference, st.backend.plain_policy())
        st.ref_step = k


# ------------------------------------------------------------------------------ experience


def _draw_env(st: RunState, stage: Stage, k: int, coefs: dict, items: list[Item]) -> DrawEnv:
    sizes = stage.sizes
    dist = st.dist

    def generate(prompts, *, call: int, max_new_tokens: int, temperature: float, model="policy"):
        # Each rank samples its slice of the prompts (the sampler's shard contract: the tokens
        # one process samples for the whole list); every rank gets every rollout.
        a, b = dist.slice(len(prompts))
        kw = dict(
            generator=step_generator(st.cfg.seed, k, salt=call),
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=sizes.top_p,
            shard=(a, len(prompts)) if dist.on else None,
        )
        out = Rollout([], [], [])
        if b > a and model == "reference":
            with reference_module(st.reference) as ref:
                out = st.backend.generate(prompts[a:b], model=ref, **kw)
        elif b > a:
            out = st.backend.generate(prompts[a:b], **kw)
        if not dist.on:
            return out
        parts = dist.gather(out, "the rollout gather")
        return Rollout(*([x for p in parts for x in getattr(p, f.name)] for f in fields(Rollout)))

    def score(exs, texts):
        task = stage.task or st.task
        if not dist.on:
            return score_batch(task, exs, texts)
        a, b = dist.slice(len(exs))
        got = score_batch(task, exs[a:b], texts[a:b]) if b > a else ([], {})
        parts = dist.gather(got, "the reward gather")
        counts: dict[str, int] = defaultdict(int)
        for _, c in parts:
            for key, v in c.items():
                counts[key] += v
        return [x for p in parts for x in p[0]], dict(counts)

    return DrawEnv(
        step=k,
        sizes=sizes,
        encoder=st.encoder,
        task=stage.task or st.task,
        coefs=coefs,
        items=items,
        generate=generate,
        score=score,
        inspect=lambda its: _inspect(st, its),
    )


@dataclass
class Inspection:
    """The policy's view of one item's N trained tokens (no grad, float32)."""

    logits: torch.Tensor
    """(N, V): the logits that predict each trained token."""
    hidden: torch.Tensor
    """(N, H): the last hidden states the LM head maps to those logits."""
    targets: torch.Tensor
    """(N,): the trained token ids."""
    head_sq_norm: float
    """‖W‖²_F of the LM head (the same for every item)."""


def _inspect(st: RunState, items: list[Item]) -> list[Inspection]:
    """Each item's `Inspection` under the current policy, a micro-batch at a time."""
    if not items:
        return []
    batch = st.backend.collate(items)
    model = st.backend.plain_policy()
    head = model.get_output_embeddings()
    w2 = float(head.weight.detach().float().pow(2).sum())
    out: list[Inspection] = [None] * len(items)  # type: ignore[list-item]
    with torch.no_grad(), st.backend.casts():
        for idx in microbatches(batch, st.cfg.tokens_per_microbatch, by_prompt=False):
            mb = batch.rows(idx)
            res = model(
                input_ids=mb.input_ids_BT,
                attention_mask=mb.attention_mask_BT,
                output_hidden_states=True,
            )
            hidden = res.hidden_states[-1]
            for j, i in enumerate(idx):
                pos = mb.target_mask_BT[j].bool().nonzero().squeeze(1)
                h = hidden[j, pos - 1]  # the state at t - 1 predicts token t
                out[i] = Inspection(
                    logits=head(h).float(),
                    hidden=h.float(),
                    targets=mb.input_ids_BT[j, pos],
                    head_sq_norm=w2,
                )
    return out


def _merge_source_metrics(per_source: list[tuple[str, dict[str, float]]]) -> dict[str, float]:
    """Sources' metrics keep their names; a name two sources report is prefixed by source."""
    count: dict[str, int] = defaultdict(int)
    for _, sm in per_source:
        for key in sm:
            count[key] += 1
    out: dict[str, float] = {}
    for name, sm in per_source:
        for key, v in sm.items():
            out[key if count[key] == 1 else f"{name}/{key}"] = v
    return out


def _update_plan(stage: Stage, terms: list[Term], items: list[Item]):
    """[(terms, phase)] for the phases that have active terms with items this step."""
    have = {it.source for it in items}
    plan = []
    for phase in stage.updates:
        ts = [t for t in terms if (phase.terms is None or t.name in phase.terms)]
        ts = [t for t in ts if any(s in have for s in t.sources)]
        if ts:
            plan.append((ts, phase))
    return plan


def _rows_of(batch: Batch, terms: list[Term]) -> list[int]:
    srcs = {s for t in terms for s in t.sources}
    return [i for i, s in enumerate(batch.source_B) if s in srcs]


# ------------------------------------------------------------------------------------ needs


def _fill_needs(st: RunState, batch: Batch, plan, needs: set[str]) -> None:
    """Once per batch, for the rows of the terms that ask: the reference's log-probs, and the
    policy's (and the value head's) before the first update when a later update needs them
    (or the advantage estimator does)."""
    later: list[Term] = []  # terms trained in an update after the first one
    first = True
    for ts, phase in plan:
        for _ in range(phase.epochs * phase.minibatches):
            if not first:
                later += ts
            first = False
    rows = _rows_of(batch, [t for ts, _ in plan for t in ts])
    wants_old = "old_logp" in {x for t in later for x in t.needs} or "old_logp_batch" in needs
    if wants_old or "old_values" in needs:
        vals = "old_values_BT" if "old_values" in needs else None
        with torch.no_grad(), st.backend.casts():
            _no_grad_fill(st, batch, st.model, rows, "old_logp_BT", vals)
    if "ift_inputs" in needs:  # the policy's greedy prediction at each trained token (IFT)
        with torch.no_grad(), st.backend.casts():
            _no_grad_fill(st, batch, st.model, rows, "_greedy_logp_BT", vocab="_greedy_BTV")
        batch.needs.pop("_greedy_logp_BT")
        batch.needs["greedy_pred_BT"] = batch.needs.pop("_greedy_BTV").argmax(-1)
    if "ref_logp" in needs or "ref_vocab_logp" in needs:
        vocab = "ref_vocab_logp_BTV" if "ref_vocab_logp" in needs else None
        with torch.no_grad(), reference_module(st.reference) as ref:
            _no_grad_fill(st, batch, ref, rows, "ref_logp_BT", vocab=vocab)


def _no_grad_fill(
    st: RunState,
    batch: Batch,
    model,
    rows: list[int],
    key: str,
    values: str | None = None,
    vocab: str | None = None,
) -> None:
    """batch.needs[key] (and [values], [vocab]): the model's log-probs (values, whole-vocabulary
    log-probs) on these rows, 0 elsewhere."""
    got: dict[str, torch.Tensor] = {}
    dist = st.dist
    if dist.on:  # this rank's share of the rows; the others' arrive through the sum below
        rows = [rows[i] for i in dist.own_rows(batch.rows(rows))]
    sub = batch.rows(rows)
    vh = st.value_head if values else None
    chunks = (
        microbatches(sub, st.cfg.tokens_per_microbatch, by_prompt=st.cfg.share_prompts)
        if rows
        else []  # a rank can have none of these rows
    )
    if model is st.model:  # (the reference is a plain module even under FSDP2)
        chunks = _even(dist, chunks)
    for idx in chunks:
        if idx is None:  # FSDP2 padding: the units' gathers, nothing kept
            st.backend.forward(model, batch.rows([0]), value_head=vh, with_vocab=vocab is not None)
            continue
        mb = sub.rows(idx)
        out = st.backend.forward(model, mb, value_head=vh, with_vocab=vocab is not None)
        t = mb.input_ids_BT.shape[1]
        sel = torch.tensor([rows[i] for i in idx], device=batch.device)
        for name, x in ((key, out.logp), (values, out.values), (vocab, out.vocab)):
            if name is None:
                continue
            if name not in got:
                got[name] = torch.zeros(
                    (batch.size, batch.input_ids_BT.shape[1], *x.shape[2:]), device=batch.device
                )
            got[name][sel, :t] = x.detach()
    if dist.on:  # rows are disjoint and zero elsewhere: the sum is every rank's rows, exactly
        n_vocab = model.get_output_embeddings().weight.shape[0]
        full = {}
        for name, tail in ((key, ()), (values, ()), (vocab, (n_vocab,))):
            if name is not None:
                full[name] = got.get(name)
                if full[name] is None:
                    shape = (batch.size, batch.input_ids_BT.shape[1], *tail)
                    full[name] = torch.zeros(shape, device=batch.device)
        dist.all_reduce_(list(full.values()), "the sum of the no-grad forward passes")
        got = full
    batch.needs.update(got)


def _set_advantages(stage: Stage, batch: Batch) -> dict[str, float]:
    """The estimator's advantages on the trained tokens of scored rows; rows with precomputed
    advantages (an item's own) and unscored rows keep theirs. Returns `adv/mean` (the mean over
    scored rows of each row's mean advantage: 0 for a group baseline) and `adv/token_std`
    (over their tokens: 1 for a batch-whitened estimator)."""
    n = batch.needs
    x = AdvantageInputs(
        reward_B=batch.reward_B,
        group_B=batch.group_B,
        mask_BT=batch.target_mask_BT,
        values_BT=n.get("old_values_BT"),
        old_logp_BT=n.get("old_logp_BT"),
        ref_logp_BT=n.get("ref_logp_BT"),
    )
    adv = estimate(stage.advantage, x)
    scored = (~torch.isnan(batch.reward_B))[:, None]
    batch.adv_BT = torch.where(scored, adv.adv_BT.to(batch.adv_BT.dtype), batch.adv_BT)
    if adv.returns_BT is not None:
        n["returns_BT"] = adv.returns_BT
    mask = batch.target_mask_BT * scored
    rows = mask.bool().any(1)
    if not rows.any():
        return {}
    a_BT = batch.adv_BT.double() * mask
    row_mean = a_BT.sum(1)[rows] / mask.sum(1)[rows]
    vals = batch.adv_BT.double()[mask.bool()]
    std = float(vals.std()) if vals.numel() > 1 else 0.0
    return {"adv/mean": float(row_mean.mean()), "adv/token_std": std}


# ---------------------------------------------------------------------------------- updates


def _normalizer(batch: Batch, t: Term, const_len: int) -> Normalizer:
    mask = batch.mask(t.sources, t.roles, t.spec.rows)
    if t.kind.level == "seq":
        n_seqs = float(mask.bool().any(1).sum())
        return Normalizer("token-mean", n_tokens=n_seqs, n_seqs=n_seqs, const_len=1.0)
    if t.kind.level == "pair":
        pairs = batch.pair_B[mask.bool().any(1) & (batch.pair_B >= 0)]
        n_pairs = float(torch.unique(pairs).numel())
        return Normalizer("token-mean", n_tokens=n_pairs, n_seqs=n_pairs, const_len=1.0)
    return make_normalizer(mask, t.spec.agg, t.spec.const_len or const_len)


def _update(
    st: RunState,
    stage: Stage,
    batch: Batch,
    terms: list[Term],
    coefs: dict[str, float],
    opt: torch.optim.Optimizer,
    first: bool,
    prepared: dict[str, dict[str, torch.Tensor]],
    val: tuple[Batch, frozenset[str]] | None = None,
) -> dict[str, float]:
    """One optimizer update on `batch` over `terms`: normalizers on the whole batch, forward and
    backward per micro-batch (gradients accumulate), clip, step. With `val` = (held-out rows,
    term names), also g_term · g_val for those terms, g_val the gradient of the held-out rows'
    token-mean NLL (logged `grad_dot/<term>`, `grad_dot/val_loss`)."""
    cfg = st.cfg
    dist = st.dist
    norms = {t.name: _normalizer(batch, t, stage.sizes.max_new_tokens) for t in terms}
    measure = [t for t in terms if t.name in stage.grad_norm_terms]
    dot_terms = val[1] if val else frozenset()
    split = bool(measure) or bool(dot_terms)
    groups = [[t] for t in terms] if split else [terms]
    params = [p for g in opt.param_groups for p in g["params"]]
    out_m: dict[str, float] = defaultdict(float)
    stat_sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    mismatch = [0.0, 0.0]
    st.model.train()
    opt.zero_grad(set_to_none=True)
    with st.backend.update() as casts:
        g_val = None
        if val is not None:
            g_val, out_m["grad_dot/val_loss"] = _val_grad(st, val[0], params)
        for gi, group in enumerate(groups):
            sub = batch.rows(_rows_of(batch, group))
            if dist.on:  # this rank's whole groups and pairs (normalizers are the batch's)
                sub = sub.rows(dist.own_rows(sub))
            chunks = (
                microbatches(sub, cfg.tokens_per_microbatch, by_prompt=cfg.share_prompts)
                if sub.size
                else []  # a rank can have no rows of a term (fewer units than ranks)
            )
            prev = _stash_grads(params) if split else None
            wants = {x for t in group for x in t.needs}
            mixer = next((t for t in group if "ift_inputs" in t.needs), None)
            chunks = _even(dist, chunks)
            for ci, idx in enumerate(chunks):
                mb = sub.rows(idx) if idx is not None else batch.rows([0])
                out = st.backend.forward(
                    st.model,
                    mb,
                    with_entropy="entropy" in wants,
                    value_head=st.value_head if "values" in wants else None,
                    with_vocab="vocab_logp" in wants,
                    mix=(mb.needs["greedy_pred_BT"], mixer.params["mix"]) if mixer else None,
                )
                if idx is None:  # FSDP2 padding: a pass that contributes nothing
                    dist.scaled(_zero(out)).backward()
                    continue
                loss = None
                for t in group:
                    value, stats = _term_value(t, out, mb, norms[t.name], prepared.get(t.name))
                    c = t.coef(coefs)
                    loss = c * value if loss is None else loss + c * value
                    out_m[f"loss/{t.name}"] += float(value.detach())
                    for key, (s, n) in stats.items():
                        acc = stat_sums[f"{t.name}/{key}"]
                        acc[0] += s
                        acc[1] += n
                if first:
                    bm = mb.behav_mask_BT
                    mismatch[0] += float(((out.logp.detach() - mb.behav_logp_BT).abs() * bm).sum())
                    mismatch[1] += float(bm.sum())
                if gi == len(groups) - 1 and ci == len(chunks) - 1:
                    casts.close()  # before the last backward: let the shared bf16 weights go
                dist.scaled(loss).backward()
            if split:
                dist.reduce_grads(params)  # the term's gradient over all ranks
                name, c = group[0].name, group[0].coef(coefs) or 1.0
                if name in dot_terms and g_val is not None:  # the term's own gradient · g_val
                    out_m[f"grad_dot/{name}"] = _dot(params, g_val, dist) / c
                norm = _merge_grads(params, prev, dist) / abs(c)
                if name in stage.grad_norm_terms:
                    out_m[f"grad_norm/{name}"] = norm
    if not split:
        dist.reduce_grads(params)
    if dist.on:  # the losses and statistics of every rank's rows
        out_m, stat_sums, mismatch = _sum_over_ranks(dist, out_m, stat_sums, mismatch)
    clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    gnorm = torch.nn.utils.clip_grad_norm_(params, clip)
    losses = [v for key, v in out_m.items() if key.startswith("loss/")]
    if math.isfinite(float(gnorm)) and all(math.isfinite(v) for v in losses):
        opt.step()
        st.backend.weights_changed()
    else:  # a non-finite loss or gradient never reaches the weights or the optimizer moments
        out_m["optim/skipped_updates"] = 1.0
    opt.zero_grad(set_to_none=True)  # free the gradients before the next sampling
    out_m["optim/grad_norm"] = float(gnorm)
    for key, (s, n) in stat_sums.items():
        out_m[key] = s / n if n else 0.0
    if first and mismatch[1]:
        out_m["rollout/logp_mismatch"] = mismatch[0] / mismatch[1]
    return dict(out_m)


def _even(dist: Dist, chunks: list) -> list:
    """Under FSDP2 each forward and backward pass is a collective (the units gather their
    weights and reduce-scatter their gradients), so every rank runs as many micro-batches as
    the rank with the most: the others are padded with None (a pass of zero weight)."""
    if not dist.shards:
        return chunks
    most = max(dist.gather(len(chunks), "the micro-batch count"))
    return [*chunks, *([None] * (most - len(chunks)))]


def _zero(out) -> torch.Tensor:
    """0 that depends on every output of a forward pass (so its backward reaches every unit)."""
    return sum(x.sum() * 0.0 for x in out if x is not None and x.requires_grad)


def _sum_over_ranks(dist: Dist, out_m: dict, stat_sums: dict, mismatch: list[float]):
    """The update's loss parts, (sum, count) statistics and sampler mismatch summed over
    ranks (a rank without rows of a term has none of its keys). Gradient norms and dot
    products are left as they are: they were taken on the summed gradients."""
    mine = {k: v for k, v in out_m.items() if k.startswith("loss/")}
    parts = dist.gather((mine, dict(stat_sums), mismatch), "the loss sum")
    out = defaultdict(float, {k: v for k, v in out_m.items() if not k.startswith("loss/")})
    stats: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    mis = [0.0, 0.0]
    for losses, st_sums, mm in parts:
        for k, v in losses.items():
            out[k] += v
        for k, (a, n) in st_sums.items():
            stats[k][0] += a
            stats[k][1] += n
        mis[0] += mm[0]
        mis[1] += mm[1]
    return out, stats, mis


def _prepare(batch: Batch, terms: list[Term]) -> dict[str, dict[str, torch.Tensor]]:
    """Once per batch, before the first update: the batch-wide statistics of the terms that
    have a `prepare` (KTO's z_0), from their rows' sequence scores."""
    out = {}
    n = batch.needs
    for t in terms:
        if t.kind.prepare is None:
            continue
        mask = batch.mask(t.sources, t.roles, t.spec.rows)
        rows = mask.bool().any(1)
        old = n.get("old_logp_BT")
        ref = n.get("ref_logp_BT")
        scores = BatchScores(
            old_logp=(old * mask).sum(1)[rows] if old is not None else None,
            ref=(ref * mask).sum(1)[rows] if ref is not None else None,
            len=mask.sum(1)[rows],
            desirable=batch.chosen_B[rows],
        )
        out[t.name] = t.kind.prepare(scores)
    return out


def _term_value(t: Term, out, mb: Batch, norm: Normalizer, prepared: dict | None = None):
    """The term's contribution from this micro-batch (a scalar) and its statistics as
    {name: (sum, count)}."""
    mask = mb.mask(t.sources, t.roles, t.spec.rows)
    n = mb.needs
    if t.kind.level == "token":
        old = n["old_logp_BT"] if "old_logp_BT" in n else out.logp.detach()
        x = TokenInputs(
            logp=out.logp,
            old_logp=old,
            adv=mb.adv_BT,
            role=mb.role_BT,
            ref_logp=n.get("ref_logp_BT"),
            entropy=out.entropy,
            values=out.values,
            old_values=n.get("old_values_BT"),
            returns=n.get("returns_BT"),
            vocab_logp=out.vocab,
            ref_vocab_logp=n.get("ref_vocab_logp_BTV"),
            mask=mask,
            reward=mb.reward_B,
            behav_logp=_behav_logp(mb, old),
        )
        res = t.kind.fn(x, **t.params)
        loss_BT, stats = res if isinstance(res, tuple) else (res, {})
        value = aggregate(loss_BT * (mb.weight_B[:, None] * mb.token_weight_BT), mask, norm)
        cnt = float(mask.sum())
        return value, {k: (float((v * mask).sum()), cnt) for k, v in stats.items()}
    # pair and seq terms: sequence scores of each row
    seq_B = (out.logp * mask).sum(1)
    len_B = mask.sum(1)
    ref_B = (n["ref_logp_BT"] * mask).sum(1) if "ref_logp_BT" in n else None
    if t.kind.level == "seq":
        rows = mask.bool().any(1).nonzero().squeeze(1)
        if not len(rows):
            return out.logp.sum() * 0.0, {}
        x = SeqInputs(
            logp=seq_B[rows],
            len=len_B[rows],
            desirable=mb.chosen_B[rows],
            ref=ref_B[rows] if ref_B is not None else None,
        )
        loss_N, stats = t.kind.fn(x, **t.params, **(prepared or {}))
        value = (loss_N * mb.weight_B[rows]).sum() / max(norm.n_seqs, 1.0)
        return value, {k: (float(v.sum()), float(len(rows))) for k, v in stats.items()}
    # pair term: the chosen and rejected row of each pair
    w_P, l_P = _pair_rows(mb, mask)
    if not len(w_P):
        return out.logp.sum() * 0.0, {}
    x = PairInputs(
        logp_w=seq_B[w_P],
        logp_l=seq_B[l_P],
        len_w=len_B[w_P],
        len_l=len_B[l_P],
        ref_w=ref_B[w_P] if ref_B is not None else None,
        ref_l=ref_B[l_P] if ref_B is not None else None,
    )
    loss_P, stats = t.kind.fn(x, **t.params)
    value = (loss_P * mb.weight_B[w_P]).sum() / max(norm.n_seqs, 1.0)
    stats = {**stats, "accuracy": (stats["margin"] > 0).float()} if "margin" in stats else stats
    return value, {k: (float(v.sum()), float(len(w_P))) for k, v in stats.items()}


def _behav_logp(mb: Batch, old_BT: torch.Tensor) -> torch.Tensor:
    """The sampler's log-probs where known (sampled tokens), the old ones elsewhere."""
    return torch.where(mb.behav_mask_BT.bool(), mb.behav_logp_BT, old_BT)


def _pair_rows(mb: Batch, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices of the chosen and the rejected side of each pair in `mb` (both in `mask`)."""
    has = mask.bool().any(1) & (mb.pair_B >= 0)
    chosen, rejected = {}, {}
    for i in has.nonzero().squeeze(1).tolist():
        (chosen if bool(mb.chosen_B[i]) else rejected)[int(mb.pair_B[i])] = i
    both = [p for p in chosen if p in rejected]
    dev = mb.device
    w_P = torch.tensor([chosen[p] for p in both], dtype=torch.long, device=dev)
    return w_P, torch.tensor([rejected[p] for p in both], dtype=torch.long, device=dev)


def _val_grad(st: RunState, val: Batch, params: list[torch.Tensor]):
    """(the gradient of the held-out rows' token-mean NLL, its value); the parameters' grads
    are left empty."""
    n = float(val.target_mask_BT.sum()) or 1.0
    total = 0.0
    own = val.rows(st.dist.own_rows(val)) if st.dist.on else val
    chunks = microbatches(own, st.cfg.tokens_per_microbatch, by_prompt=False) if own.size else []
    for idx in _even(st.dist, chunks):
        if idx is None:  # FSDP2 padding
            st.dist.scaled(_zero(st.backend.forward(st.model, val.rows([0])))).backward()
            continue
        mb = own.rows(idx)
        out = st.backend.forward(st.model, mb)
        loss = -(out.logp * mb.target_mask_BT).sum() / n
        st.dist.scaled(loss).backward()
        total += float(loss.detach())
    st.dist.reduce_grads(params)
    (total,) = st.dist.sum_floats([total], "the held-out loss sum")
    return _stash_grads(params), total


def _dot(params: list[torch.Tensor], other: list[torch.Tensor | None], dist: Dist) -> float:
    """Σ_p ⟨p.grad, other_p⟩ over the parameters where both exist (under FSDP2: of the local
    shards, summed over ranks)."""
    out = 0.0
    for p, g in zip(params, other):
        if p.grad is not None and g is not None:
            out += float((local(p.grad).double() * local(g).double()).sum())
    return dist.sum_floats([out], "a gradient dot product")[0] if dist.shards else out


def _stash_grads(params: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """Take the accumulated gradients out (so the next backward holds one term's gradient)."""
    prev = [p.grad for p in params]
    for p in params:
        p.grad = None
    return prev


def _merge_grads(params: list[torch.Tensor], prev: list[torch.Tensor | None], dist: Dist) -> float:
    """The norm of the gradient just accumulated, then add back the stashed ones."""
    grads = [local(p.grad) for p in params if p.grad is not None]
    norm = (
        float(torch.linalg.vector_norm(torch.stack([g.detach().float().norm() for g in grads])))
        if grads
        else 0.0
    )
    if dist.shards:  # the local shards' norms, combined over ranks
        norm = math.sqrt(dist.sum_floats([norm * norm], "a gradient norm")[0])
    for p, g in zip(params, prev):
        if g is not None:
            p.grad = g if p.grad is None else p.grad.add_(g)
    return norm if math.isfinite(norm) else float("nan")


# ---------------------------------------------------------------------------------- metrics


def _batch_metrics(st: RunState, batch: Batch, items: list[Item]) -> dict[str, float]:
    n_pad = int(batch.attention_mask_BT.sum())
    if st.cfg.share_prompts:  # tokens the model ran (about): each distinct prompt once
        prompts = {tuple(it.prompt_ids) for it in items}
        n_run = sum(map(len, prompts)) + sum(len(it.completion_ids) for it in items)
    else:
        n_run = n_pad
    return {
        "perf/train_tokens": float(n_run),
        "perf/target_tokens": float(batch.target_mask_BT.sum()),
        "rollout/items": float(sum(it.reward is not None for it in items)),
        "rollout/trained_items": float(len(items)),
    }


__all__ = ["RunState", "train_step"]
