"""One training step, top to bottom: sample, score, build experience, advantages, forward,
terms, aggregate, backward, optimizer step, controller, metrics.

    L = (1 - mu)·AGG_rl(pg term on rollout tokens [+ shaped term on in-group demos])
        + mu·AGG_expert(expert term on demonstration tokens)
        + kl_coef·AGG_rl(KL) - entropy_coef·AGG_rl(H)

Every method is a setting of this one function (see `tandem.methods`). One update per batch:
the "old" log-probs are the current ones detached (the ratio is 1 in value, its gradient is
the policy gradient), so no extra forward pass is spent on them, as TRL does when
num_iterations = 1.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tandem.algo.advantages import equal_reward_groups, get_advantage
from tandem.algo.aggregate import aggregate, make_normalizer
from tandem.algo.terms import get_expert_term, get_pg_term, kl_penalty, shaped_pg
from tandem.config import RunConfig
from tandem.encode import Encoder
from tandem.model.castcache import bf16_weights
from tandem.model.logprobs import shared_prompt_logprobs, token_logprobs
from tandem.model.sampler import sample
from tandem.rewards.safe import score_batch
from tandem.train.data import ExampleStream
from tandem.train.experience import Item, collate, microbatches


@dataclass
class RunState:
    """Everything a step reads or changes. Composed, not subclassed."""

    cfg: RunConfig
    model: Any
    tokenizer: Any
    encoder: Encoder
    optimizer: torch.optim.Optimizer
    scheduler: Any
    mu: Any  # controller: value(step), update(step, stats), state_dict()
    task: Any
    train_stream: ExampleStream
    demo_stream: ExampleStream
    eos_ids: list[int]
    ref_model: Any = None
    sample_model: Any = None
    """A `SampleCopy` (bf16 weights for sampling) when `model.autocast_bf16` is set and the
    weights are fp32, else None (sampling uses the policy itself)."""
    extra: dict = field(default_factory=dict)


class SampleCopy:
    """A bf16 copy of the policy's weights, refreshed from the policy before each use: the model
    the sampler decodes with, and (through `tandem.model.castcache`) the bf16 weights of the
    autocast training forward of the same step.

    Decoding is bound by reading weights, and bf16 weights halve that (decode step at batch 16:
    130 -> 71-90 ms on SmolLM2-135M). Between uses the buffers are refreshed in place (`copy_`);
    a training step `release`s them after its last forward pass, so each layer's copy is freed as
    the backward pass leaves it (bf16 2x8x32 peak 3.06 -> 2.91 GB on tcmalloc), and the next
    `refresh` allocates them again. On glibc's malloc that reallocation page-faults (casting into
    a fresh 113 MB tensor cost 3x a `copy_`, docs/LOG.md); on tcmalloc, which the `tandem`
    command preloads, it reuses freed memory. Autocast would otherwise cast every linear weight
    again in each training forward, so the copy replaces those casts rather than adding memory at
    the training peak.
    """

    def __init__(self, model: torch.nn.Module):
        self.module = copy.deepcopy(model).to(torch.bfloat16).eval()
        # requires_grad stays True (it only ever runs under inference mode): measured 80-90 vs
        # 100-120 ms per decode step with requires_grad_(False), for reasons not yet understood.
        for p in self.module.parameters():  # allocated on first use (never, in SFT-only runs)
            p.data = torch.empty(0, dtype=torch.bfloat16, device=p.device)

    def refresh(self, policy: torch.nn.Module) -> None:
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

    @contextlib.contextmanager
    def active(self, policy: torch.nn.Module):
        self.refresh(policy)
        yield self.module

    def pairs(self, policy: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(policy weight, its bf16 copy) for `castcache.bf16_weights` (current only after
        `refresh` with no optimizer step since)."""
        return [
            (p, c.detach())
            for p, c in zip(policy.parameters(), self.module.parameters(), strict=True)
        ]


def make_sample_model(model, cfg: RunConfig) -> SampleCopy | None:
    """A bf16 sampling copy under autocast with fp32 weights, else None."""
    if not cfg.model.autocast_bf16 or next(model.parameters()).dtype != torch.float32:
        return None
    return SampleCopy(model)


def sampling_model(st: RunState):
    """Context manager giving the module to sample from (the bf16 copy, or the policy)."""
    if st.sample_model is not None:
        return st.sample_model.active(st.model)
    return contextlib.nullcontext(st.model)


def autocast_ctx(cfg: RunConfig):
    if cfg.model.autocast_bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def step_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    """Sampling randomness is a pure function of (seed, step), so a resumed run repeats it."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + salt) % (2**63))


def _forward_backward(
    st: RunState,
    batch,
    mu: float,
    norm_rl,
    norm_exp,
    before_last_backward: Callable[[], object] | None = None,
) -> dict[str, float]:
    """Forward and backward over token-budget micro-batches (gradients accumulate in .grad);
    the loss terms summed over micro-batches. `before_last_backward()` runs after the last
    forward pass."""
    cfg, obj = st.cfg, st.cfg.objective
    pg_term, expert_term = get_pg_term(obj.pg_loss), get_expert_term(obj.expert_loss)
    sums = {"loss/pg": 0.0, "loss/sft": 0.0, "loss/kl": 0.0, "loss/entropy": 0.0}
    chunks = microbatches(batch, cfg.tokens_per_microbatch, by_prompt=cfg.share_prompts)
    for i, rows in enumerate(chunks):
        mb = batch.rows(rows)
        with autocast_ctx(cfg):
            logp, ent = (shared_prompt_logprobs if cfg.share_prompts else token_logprobs)(
                st.model,
                mb.input_ids_BT,
                mb.attention_mask_BT,
                mb.target_mask_BT,
                with_entropy=obj.entropy_coef > 0,
            )
        adv_BT = mb.adv_B[:, None].expand_as(logp)
        m_off = mb.source_mask("offpolicy")
        m_rl = mb.source_mask("rollout") + m_off
        pg_tok = pg_term(
            logp,
            logp.detach(),
            adv_BT,
            clip_low=obj.clip_low,
            clip_high=obj.clip_high,
            clip_ratio_c=obj.clip_ratio_c,
        )
        if obj.demo_in_group:
            pg_tok = torch.where(m_off.bool(), shaped_pg(logp, adv_BT, obj.shaping_gamma), pg_tok)
        terms = {
            "loss/pg": aggregate(pg_tok, m_rl, norm_rl),
            "loss/sft": aggregate(expert_term(logp), mb.source_mask("expert"), norm_exp),
        }
        loss = (1.0 - mu) * terms["loss/pg"] + mu * terms["loss/sft"]
        if obj.kl_coef > 0:
            with torch.no_grad(), autocast_ctx(cfg):
                ref_logp, _ = token_logprobs(
                    st.ref_model, mb.input_ids_BT, mb.attention_mask_BT, mb.target_mask_BT
                )
            terms["loss/kl"] = aggregate(kl_penalty(logp, ref_logp, obj.kl_type), m_rl, norm_rl)
            loss = loss + obj.kl_coef * terms["loss/kl"]
        if obj.entropy_coef > 0:
            terms["loss/entropy"] = aggregate(ent, m_rl, norm_rl)
            loss = loss - obj.entropy_coef * terms["loss/entropy"]
        if i == len(chunks) - 1 and before_last_backward is not None:
            before_last_backward()
        loss.backward()
        for k, v in terms.items():
            sums[k] += float(v.detach())

    return sums


def train_step(st: RunState, step: int) -> dict[str, float]:
    cfg, obj = st.cfg, st.cfg.objective
    t0 = time.perf_counter()
    mu = float(st.mu.value(step))
    if obj.mu.kind == "stage" and step == obj.mu.switch_step:
        if obj.mu.reset_optimizer:
            st.optimizer.state.clear()  # the next stage starts with fresh Adam moments
        if st.ref_model is not None:  # the RL stage's KL reference is the SFT model (ReFT)
            st.ref_model.load_state_dict(st.model.state_dict())
            st.extra["ref_step"] = step
    use_rl, use_expert = mu < 1.0, mu > 0.0
    items: list[Item] = []
    m: dict[str, float] = {}

    # 1. sample rollouts (G per prompt; LUFFY: G-1 plus the demonstration)
    if use_rl:
        prompts = st.train_stream.take(cfg.prompts_per_step)
        n_roll = cfg.samples_per_prompt - (1 if obj.demo_in_group else 0)
        ids = [st.encoder.prompt(ex) for ex in prompts for _ in range(n_roll)]
        with sampling_model(st) as policy, autocast_ctx(cfg):
            policy.eval()
            out = sample(
                policy,
                ids,
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                eos_token_ids=st.eos_ids,
                pad_token_id=st.encoder.pad_id,
                generator=step_generator(cfg.seed, step),
            )
        m["perf/sample_s"] = time.perf_counter() - t0
        n_new = sum(len(c) for c in out.completions)
        m["perf/sample_tokens"] = float(n_new)
        m["perf/sample_tokens_per_s"] = n_new / max(m["perf/sample_s"], 1e-9)

        # 2. score (verifier errors and timeouts are isolated and counted)
        exs = [ex for ex in prompts for _ in range(n_roll)]
        texts = [st.encoder.decode(c) for c in out.completions]
        scores, counts = score_batch(st.task, exs, texts)
        for i, (c, s) in enumerate(zip(out.completions, scores)):
            items.append(Item(ids[i], c, "rollout", i // n_roll, s.reward, 0.0, out.finished[i]))
        if obj.demo_in_group:
            demo_scores, demo_counts = score_batch(
                st.task, prompts, [ex.solution or "" for ex in prompts]
            )
            for g, (ex, s) in enumerate(zip(prompts, demo_scores)):
                items.append(
                    Item(st.encoder.prompt(ex), st.encoder.demo(ex), "offpolicy", g, s.reward)
                )
            m["reward/demo_mean"] = sum(s.reward for s in demo_scores) / len(demo_scores)
        rewards = torch.tensor([s.reward for s in scores])
        m["reward/mean"] = rewards.mean().item()
        m["reward/std"] = rewards.std().item() if len(rewards) > 1 else 0.0
        m["reward/errors"] = float(counts["errors"])
        m["reward/timeouts"] = float(counts["timeouts"])
        lens = torch.tensor([len(c) for c in out.completions], dtype=torch.float32)
        m["rollout/len_mean"] = lens.mean().item()
        m["rollout/finished_frac"] = sum(out.finished) / len(out.finished)

        # 3. advantages over each group (mixed group for LUFFY), optional zero-variance filter
        r_N = torch.tensor([it.reward for it in items])
        g_N = torch.tensor([it.group for it in items])
        adv_N = get_advantage(obj.advantage)(r_N, g_N)
        keep = torch.ones_like(r_N, dtype=torch.bool)
        if obj.drop_equal_groups:
            keep = ~equal_reward_groups(r_N, g_N)
        m["rollout/groups_all_equal"] = (
            equal_reward_groups(r_N, g_N).float().sum().item() / cfg.samples_per_prompt
        )
        for it, a in zip(items, adv_N.tolist()):
            it.advantage = a
        items = [it for it, k in zip(items, keep.tolist()) if k]

    # 4. demonstrations for the expert term
    if use_expert and cfg.demos_per_step > 0:
        for ex in st.demo_stream.take(cfg.demos_per_step):
            items.append(Item(st.encoder.prompt(ex), st.encoder.demo(ex), "expert"))

    m["coef/pg"] = 1.0 - mu
    m["coef/sft"] = mu
    m["coef/kl"] = obj.kl_coef
    m["coef/entropy"] = obj.entropy_coef
    m["optim/lr"] = st.scheduler.get_last_lr()[0]
    t1 = time.perf_counter()
    if not items:  # every group was dropped: nothing to learn from this batch
        st.scheduler.step()
        st.mu.update(step, m)
        m["perf/step_s"] = time.perf_counter() - t0
        return m

    # 5. forward/backward over token-budget micro-batches; normalizers use the whole batch
    batch = collate(items, st.encoder.pad_id)
    m_rl_all = batch.source_mask("rollout", "offpolicy")
    m_exp_all = batch.source_mask("expert")
    const_len = obj.agg_const_len or cfg.max_new_tokens
    norm_rl = make_normalizer(m_rl_all, obj.agg, const_len)
    norm_exp = make_normalizer(m_exp_all, obj.expert_agg)
    st.model.train()
    st.optimizer.zero_grad(set_to_none=True)
    with contextlib.ExitStack() as shared_casts:
        if st.sample_model is not None and use_rl:
            # The training forward reuses the bf16 copy this step's sampling just refreshed.
            # Steps that did not sample (SFT) let autocast cast: refreshing the whole copy for
            # them was slower (SFT bf16 2.5 -> 3.4 s/step, docs/LOG.md). After the last forward
            # the copy is let go: the autograd graph holds the only references, so each layer's
            # bf16 weights are freed as the backward pass leaves it (lower peak, docs/LOG.md).
            shared_casts.enter_context(bf16_weights(st.sample_model.pairs(st.model)))
            shared_casts.callback(st.sample_model.release)
        sums = _forward_backward(st, batch, mu, norm_rl, norm_exp, shared_casts.close)

    # 6. optimizer step, schedule, controller
    clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    gnorm = torch.nn.utils.clip_grad_norm_(st.model.parameters(), clip)
    st.optimizer.step()
    st.optimizer.zero_grad(set_to_none=True)  # free the gradients before the next sampling
    st.scheduler.step()
    m.update(sums)
    m["loss/total"] = (
        (1 - mu) * sums["loss/pg"]
        + mu * sums["loss/sft"]
        + obj.kl_coef * sums["loss/kl"]
        - obj.entropy_coef * sums["loss/entropy"]
    )
    m["optim/grad_norm"] = float(gnorm)
    st.mu.update(step, m)

    # 7. metrics
    n_tok = int(batch.attention_mask_BT.sum())
    if cfg.share_prompts:  # tokens the model ran (about): each distinct prompt once
        prompts = {tuple(it.prompt_ids) for it in items}
        n_run = sum(map(len, prompts)) + sum(len(it.completion_ids) for it in items)
    else:
        n_run = n_tok
    m["perf/train_tokens"] = float(n_run)
    m["perf/target_tokens"] = float(batch.target_mask_BT.sum())
    m["rollout/items"] = float(sum(it.source != "expert" for it in items))
    m["rollout/expert_items"] = float(sum(it.source == "expert" for it in items))
    m["perf/train_s"] = time.perf_counter() - t1
    m["perf/step_s"] = time.perf_counter() - t0
    m["perf/tokens_per_s"] = n_tok / max(m["perf/train_s"], 1e-9)
    return m
