"""Controllers: small stateful objects that set one coefficient per step.

A controller answers ``value(step)`` (CHORD's μ, a KL β, a sampling temperature, whether SASR
takes an SFT or an RL step, a Prefix-RFT prefix-length bound) and reads each step's statistics
in ``update(step, stats)``: the step's metrics, including ``grad_norm/<term>`` for the terms
named in its ``wants_grad_norms`` (the step then measures each term's gradient separately).
``step`` counts from the start of the controller's stage (0 for the first step of a
single-stage run). Its state goes into every checkpoint through ``state_dict()`` /
``load_state_dict()``, so a resumed run continues exactly; ``metrics()`` adds a few numbers
to the step's log (``ctl/<name>/<key>``).

Registry `CONTROLLERS` (kind -> class and settings); `build_controller(spec, seed)` builds one
from its config spec (a spec field ``seed`` left null takes the run's seed).
"""

from __future__ import annotations

import math
import random
from typing import Any, Protocol

from pydantic import Field

from tandem.errors import ConfigError
from tandem.registry import Registry, Spec


class Controller(Protocol):
    """What the training step needs from a coefficient controller."""

    wants_grad_norms: tuple[str, ...]
    grad_dots: tuple[str, tuple[str, ...]] | None
    """(a source, terms): at steps where `dots_at` is true the step draws that source (no term
    trains on it), takes the gradient g_val of its token-mean NLL, and logs
    ``grad_dot/<term>`` = g_term · g_val for each term (AMFT's look-ahead)."""

    def dots_at(self, step: int) -> bool:
        """Whether step ``step`` (counted from the stage's first) measures `grad_dots`."""
        ...

    def value(self, step: int) -> float:
        """The coefficient at step ``step`` (counted from the stage's first step)."""
        ...

    def update(self, step: int, stats: dict[str, float]) -> None:
        """Read the statistics of step ``step`` after it ran; may be a no-op."""
        ...

    def eval_update(self, step: int, stats: dict[str, float]) -> None:
        """Read an evaluation's metrics (`eval/accuracy`, ...) after step ``step``, before the
        checkpoint of that step is written; may be a no-op."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def metrics(self) -> dict[str, float]: ...


CONTROLLERS: Registry[type] = Registry("controller")


class _Base:
    """Defaults: no statistics read, state = the settings, no metrics."""

    kind = ""
    wants_grad_norms: tuple[str, ...] = ()
    grad_dots: tuple[str, tuple[str, ...]] | None = None
    _state_keys: tuple[str, ...] = ()

    def dots_at(self, step: int) -> bool:
        return False

    def update(self, step: int, stats: dict[str, float]) -> None:
        return None

    def eval_update(self, step: int, stats: dict[str, float]) -> None:
        return None

    def metrics(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **{k: getattr(self, k) for k in self._state_keys}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(
                f"state_dict is for controller {state.get('kind')!r}, not {self.kind!r}"
            )
        for k in self._state_keys:
            setattr(self, k, state[k])


class ConstantSpec(Spec):
    """A fixed coefficient."""

    value: float = 0.0


@CONTROLLERS.register("constant", ConstantSpec, "a fixed value")
class Constant(_Base):
    """value(step) = value. CHORD-φ's μ = 0.1, a fixed KL β, etc."""

    kind = "constant"
    _state_keys = ("_value",)

    def __init__(self, value: float) -> None:
        self._value = float(value)

    def value(self, step: int) -> float:
        return self._value


class WarmupCosineSpec(Spec):
    """Linear warm-up from 0 to `peak`, cosine decay to `valley`, then `valley`."""

    peak: float = 0.5
    valley: float = 0.02
    warmup_steps: int = Field(0, ge=0)
    decay_steps: int = Field(1, ge=0)


@CONTROLLERS.register("warmup_cosine", WarmupCosineSpec, "warm-up then cosine decay (CHORD's μ)")
class WarmupCosine(_Base):
    """CHORD's μ schedule: linear warm-up, cosine decay, then a floor (ALGORITHMS.md §6).

    With k = step, W = warmup_steps, D = decay_steps:

        k < W:          μ = peak · k / W
        W ≤ k < W + D:  μ = valley + (peak − valley) · ½(1 + cos(π (k − W) / D))
        k ≥ W + D:      μ = valley

    Source: CHORD (arXiv 2508.11408), Trinity-RFT `mu_schedule_function` in
    trinity/algorithm/policy_loss_fn/chord_policy_loss.py (commit 0414330); this matches it
    branch for branch, including W = 0 (no warm-up, μ starts at peak) and D = 0 (μ = valley from
    step W on). Trinity evaluates it at its trainer's ``global_step``; here ``step`` is tandem's
    step index, so μ = 0 at step 0 when W > 0. Paper settings: CHORD-μ W=0, D=200, peak 0.9,
    valley 0.05; combined example W=200, D=400, peak 0.5, valley 0.02.
    """

    kind = "warmup_cosine"
    _state_keys = ("peak", "valley", "warmup_steps", "decay_steps")

    def __init__(self, peak: float, valley: float, warmup_steps: int, decay_steps: int) -> None:
        if warmup_steps < 0 or decay_steps < 0:
            raise ConfigError(
                f"warmup_steps and decay_steps must be >= 0, got {warmup_steps}, {decay_steps}"
            )
        self.peak, self.valley = float(peak), float(valley)
        self.warmup_steps, self.decay_steps = int(warmup_steps), int(decay_steps)

    def value(self, step: int) -> float:
        w, d = self.warmup_steps, self.decay_steps
        if step < w:
            return self.peak * step / w
        if step >= w + d:
            return self.valley
        cosine = 0.5 * (1.0 + math.cos(math.pi * (step - w) / d))
        return self.valley + (self.peak - self.valley) * cosine


class CosineSpec(Spec):
    """Cosine from `start` to `end` over `steps` steps, then `end`."""

    start: float
    end: float
    steps: int = Field(ge=1)


@CONTROLLERS.register("cosine", CosineSpec, "cosine from start to end (Prefix-RFT's schedule)")
class Cosine(_Base):
    """y(k) = end + ½(1 + cos(π·min(k, N)/N))·(start − end), N = steps.

    Prefix-RFT's `CosineDecayController` (ZeroYuHuang/prefix_rft `scheduler/global_step.py`
    at 5f5d2a1, warm-up 0), which the paper uses for the lower bound of the prefix ratio,
    0.95 -> 0.05. Rising (end > start) uses the same formula.
    """

    kind = "cosine"
    _state_keys = ("start", "end", "steps")

    def __init__(self, start: float, end: float, steps: int) -> None:
        self.start, self.end, self.steps = float(start), float(end), int(steps)

    def value(self, step: int) -> float:
        frac = min(max(step, 0), self.steps) / self.steps
        return self.end + 0.5 * (1.0 + math.cos(math.pi * frac)) * (self.start - self.end)


class PeriodicSpec(Spec):
    """1 at one step in every `period`, 0 at the others."""

    period: int = Field(ge=1)
    """Steps per cycle: with period k + 1, k steps at 0 then one at 1 (SFT every k RL steps)."""
    phase: int | None = Field(None, ge=0)
    """The step of each cycle at 1 (0-based); default: the cycle's last step, period − 1."""


@CONTROLLERS.register("periodic", PeriodicSpec, "1 once every `period` steps (interleaving)")
class Periodic(_Base):
    """value(k) = 1 if k mod period == phase else 0. As a term's coefficient (and `1-name` for
    the other terms) it interleaves two objectives: one SFT step after every period − 1 RL
    steps, the fixed-schedule form of ReLIFT's interleaving (arXiv 2506.07527)."""

    kind = "periodic"
    _state_keys = ("period", "phase")

    def __init__(self, period: int, phase: int | None) -> None:
        self.period = int(period)
        self.phase = self.period - 1 if phase is None else int(phase)
        if not 0 <= self.phase < self.period:
            raise ConfigError(f"phase must be in [0, period), got {phase} with period {period}")

    def value(self, step: int) -> float:
        return 1.0 if step % self.period == self.phase else 0.0


class StepDecaySpec(Spec):
    """A value held, then lowered by a fixed amount every few steps, down to a floor."""

    start: float = 1.0
    by: float = 0.1
    """Lowered by this much every `every` steps after `delay`."""
    every: int = Field(10, ge=1)
    delay: int = Field(50, ge=0)
    floor: float = 0.5


@CONTROLLERS.register("step_decay", StepDecaySpec, "held, then stepped down to a floor (ReMix λ)")
class StepDecay(_Base):
    """value(k) = max(start − by·⌈max(k − delay, 0)/every⌉, floor): ReMix's λ of the KL-convex
    constraint (arXiv 2507.06892), 1 until step 50, then 0.1 lower every 10 steps, floor 0.5."""

    kind = "step_decay"
    _state_keys = ("start", "by", "every", "delay", "floor")

    def __init__(self, start: float, by: float, every: int, delay: int, floor: float) -> None:
        self.start, self.by, self.floor = float(start), float(by), float(floor)
        self.every, self.delay = int(every), int(delay)

    def value(self, step: int) -> float:
        n = math.ceil(max(step - self.delay, 0) / self.every)
        return max(self.start - self.by * n, self.floor)


class AmftSpec(Spec):
    """μ of L = (1 − μ)·L_RL + μ·L_SFT, learned by a one-step look-ahead meta-gradient."""

    init: float = Field(0.5, ge=0.0, le=1.0)
    """μ at the stage's first step (AMFT's README: 0.5; its config: 0.8)."""
    meta_lr: float = Field(1e-4, ge=0.0)
    """η_μ of the meta-gradient step (AMFT: 1e-4, for a 7B model's gradient dot products;
    small models need far larger: the bundled recipe and the learning test say theirs)."""
    entropy_lr: float = Field(5e-4, ge=0.0)
    """Per step, μ += entropy_lr·(H_target − H): more imitation when entropy falls."""
    target_entropy: float | None = None
    """H_target; null: the first step's `rollout/entropy` (AMFT measures it after warm-up)."""
    every: int = Field(20, ge=1)
    """Meta-gradient steps: one in `every` (AMFT's meta_update_freq 20)."""
    min: float = Field(0.05, ge=0.0, le=1.0)
    max: float = Field(0.95, ge=0.0, le=1.0)
    sft_term: str = "sft"
    rl_term: str = "pg"
    val_source: str = "val"
    """The source whose token-mean NLL is the held-out objective (a `demos` source on the
    `held_out` stream)."""


@CONTROLLERS.register("amft", AmftSpec, "μ by a look-ahead meta-gradient + entropy (AMFT)")
class Amft(_Base):
    """AMFT's μ (arXiv 2508.06944), checked against TSYJ-He/AMFT (0e030f4,
    `src/controller/adaptive_weight_controller.py`): with θ' = θ − α·[(1 − μ)·g_RL + μ·g_SFT]
    one look-ahead step, dL_val(θ')/dμ ≈ −α·g_val·(g_SFT − g_RL) to first order, so every
    `every` steps μ ← μ − η_μ·dL_val/dμ = μ + η_μ·α·g_val·(g_SFT − g_RL): μ rises when the
    SFT gradient helps the held-out NLL more than the RL gradient does. Every step also
    μ += entropy_lr·(H_target − H) (H = `rollout/entropy`), then μ is clipped to [min, max].
    The held-out objective is the validation NLL, as the authors' code (its `val_utility_loss`
    is a cross-entropy on validation labels), and g_val, g_SFT, g_RL are measured by the step
    (`grad_dots`: logged `grad_dot/<term>`). Deviations: the authors' code adds η·(−α·dot),
    i.e. it climbs the validation loss (a sign slip by the derivation above); here μ descends
    it. The look-ahead uses the PG term's gradient only (the RL entropy bonus is left out).
    α is the step's learning rate (`optim/lr`). Metrics: `mu`, `meta_grad` (the last
    dL_val/dμ), `entropy_push`."""

    kind = "amft"
    _state_keys = ("mu", "target", "last_meta", "last_push")

    def __init__(
        self,
        init: float,
        meta_lr: float,
        entropy_lr: float,
        target_entropy: float | None,
        every: int,
        min: float,
        max: float,
        sft_term: str,
        rl_term: str,
        val_source: str,
    ) -> None:
        if min > max:
            raise ConfigError(f"amft: min ({min}) must not exceed max ({max})")
        self.mu, self.target = float(init), target_entropy
        self.meta_lr, self.entropy_lr, self.every = meta_lr, entropy_lr, every
        self.lo, self.hi = min, max
        self.sft_term, self.rl_term = sft_term, rl_term
        self.grad_dots = (val_source, (sft_term, rl_term))
        self.last_meta = 0.0
        self.last_push = 0.0

    @staticmethod
    def reads_terms(spec: AmftSpec) -> tuple[str, ...]:
        return (spec.sft_term, spec.rl_term)

    def dots_at(self, step: int) -> bool:
        return step % self.every == 0

    def value(self, step: int) -> float:
        return self.mu

    def update(self, step: int, stats: dict[str, float]) -> None:
        h = stats.get("rollout/entropy")
        if self.target is None and h is not None:
            self.target = h
        d_sft = stats.get(f"grad_dot/{self.sft_term}")
        d_rl = stats.get(f"grad_dot/{self.rl_term}")
        mu = self.mu
        if d_sft is not None and d_rl is not None:
            self.last_meta = -stats["optim/lr"] * (d_sft - d_rl)  # dL_val/dμ
            mu -= self.meta_lr * self.last_meta
        if h is not None and self.target is not None:
            self.last_push = self.entropy_lr * (self.target - h)
            mu += self.last_push
        self.mu = min(max(mu, self.lo), self.hi)

    def metrics(self) -> dict[str, float]:
        return {"mu": self.mu, "meta_grad": self.last_meta, "entropy_push": self.last_push}


class TargetEntropySpec(Spec):
    """A sampling temperature that holds the rollouts' entropy at a target (AceReason's rule)."""

    init: float = Field(1.0, gt=0.0)
    """The temperature at the first step."""
    target: float = Field(0.3, gt=0.0)
    """The entropy to hold (AceReason-Nemotron 1.1: about 0.3)."""
    rate: float = Field(1.0, gt=0.0)
    """log T moves by rate·(target − H) per re-check."""
    tolerance: float = Field(0.02, ge=0.0)
    """No change while |H − target| is within this (re-check only when entropy drifts)."""
    min_temperature: float = Field(0.1, gt=0.0)
    max_temperature: float = Field(2.0, gt=0.0)
    stat: str = "rollout/entropy"
    """The metric it reads: the mean −log p of the sampled tokens under the sampling
    distribution (an unbiased estimate of its entropy at the current temperature)."""


@CONTROLLERS.register(
    "target_entropy", TargetEntropySpec, "temperature holding a target rollout entropy"
)
class TargetEntropy(_Base):
    """AceReason-Nemotron 1.1 (arXiv 2506.13284) chooses the RL sampling temperature so that the
    temperature-adjusted entropy stays about 0.3, re-checking when entropy drifts (the paper
    sweeps T; the rule's exact form is not public, ALGORITHMS.md's RECON). Here it is a feedback
    loop on the measured entropy H of each step's rollouts at the current temperature T:

        |H − target| > tolerance:  T ← clip(T·exp(rate·(target − H)), min, max)

    H rises with T, so T falls when the rollouts are too random and rises when they are too
    sure. Use its name as a source's `temperature`. Its state (T) is in every checkpoint."""

    kind = "target_entropy"
    _state_keys = ("temperature",)

    def __init__(
        self,
        init: float,
        target: float,
        rate: float,
        tolerance: float,
        min_temperature: float,
        max_temperature: float,
        stat: str,
    ) -> None:
        if min_temperature > max_temperature:
            raise ConfigError(
                f"min_temperature ({min_temperature}) must be <= max_temperature ({max_temperature})"
            )
        self.temperature = float(init)
        self.target, self.rate, self.tolerance = float(target), float(rate), float(tolerance)
        self.lo, self.hi, self.stat = float(min_temperature), float(max_temperature), stat
        self.last: float | None = None

    def value(self, step: int) -> float:
        return self.temperature

    def update(self, step: int, stats: dict[str, float]) -> None:
        h = stats.get(self.stat)
        if h is None:
            return
        self.last = float(h)
        if abs(h - self.target) > self.tolerance:
            t = self.temperature * math.exp(self.rate * (self.target - h))
            self.temperature = min(max(t, self.lo), self.hi)

    def metrics(self) -> dict[str, float]:
        return {"temperature": self.temperature} | (
            {"entropy": self.last} if self.last is not None else {}
        )


class TldrSpec(Spec):
    """The long-data share of a short/long SFT mixture, re-weighted at each evaluation from
    accuracy and length against two reference points (TLDR)."""

    init: float = Field(0.5, gt=0.0, lt=1.0)
    """The long share at the start (TLDR: a 1:1 mixture)."""
    eta: float = Field(4.0, gt=0.0)
    """Step size of the exponentiated update (TLDR's ETA)."""
    smoothing: float = Field(1e-4, ge=0.0, lt=1.0)
    """c: α ← (1 − c)·α + c/2 after each update."""
    acc_short: float
    acc_long: float
    """Accuracy of a model trained on short-only and on long-only data (the reference points)."""
    len_short: float
    len_long: float
    """Their mean response lengths on the same evaluation."""
    stat_acc: str = "eval/accuracy"
    stat_len: str = "eval/len_mean"


@CONTROLLERS.register("tldr", TldrSpec, "short/long data share from eval accuracy and length")
class Tldr(_Base):
    """TLDR, "Too Long, Do Re-weighting" (arXiv 2506.02678; zzli2022/TLDR
    `dynamic_callback.py::Long2ShortDynamicLoadingCallback`, a460888): SFT on a mixture of
    short (System-1) and long (System-2) solutions whose proportions move at each evaluation:

        b_short = max((len_cur − len_short) / |len_long − len_short|, 0)   (too long: more short)
        b_long  = max((acc_long − acc_cur) / |acc_long − acc_short|, 0)    (too weak: more long)
        α ← softmax(log α + η·b);   α ← (1 − c)·α + c/2

    with α = (α_short, α_long). value(step) is α_long: use it as a `mixture` source's share of
    its long part (`share: {long: <name>}`). The reference points come from runs on short-only
    and long-only data (TLDR measures them with reference models on a dev set). It reads the
    run's evaluations (`eval.every`), not the training step's metrics."""

    kind = "tldr"
    _state_keys = ("alpha_long", "last")

    def __init__(
        self,
        init: float,
        eta: float,
        smoothing: float,
        acc_short: float,
        acc_long: float,
        len_short: float,
        len_long: float,
        stat_acc: str,
        stat_len: str,
    ) -> None:
        if acc_long == acc_short or len_long == len_short:
            raise ConfigError("tldr: the short and long reference points must differ")
        self.alpha_long = float(init)
        self.eta, self.c = float(eta), float(smoothing)
        self.acc = (float(acc_short), float(acc_long))
        self.len = (float(len_short), float(len_long))
        self.stat_acc, self.stat_len = stat_acc, stat_len
        self.last: dict[str, float] = {}

    def value(self, step: int) -> float:
        return self.alpha_long

    def eval_update(self, step: int, stats: dict[str, float]) -> None:
        acc, length = stats.get(self.stat_acc), stats.get(self.stat_len)
        if acc is None or length is None:
            return
        (a_s, a_l), (l_s, l_l) = self.acc, self.len
        b_short = max((length - l_s) / abs(l_l - l_s), 0.0)
        b_long = max((a_l - acc) / abs(a_l - a_s), 0.0)
        log_s = math.log(1.0 - self.alpha_long) + self.eta * b_short
        log_l = math.log(self.alpha_long) + self.eta * b_long
        top = max(log_s, log_l)
        e_s, e_l = math.exp(log_s - top), math.exp(log_l - top)
        alpha = e_l / (e_s + e_l)
        self.alpha_long = (1.0 - self.c) * alpha + self.c / 2
        self.last = {"b_short": b_short, "b_long": b_long}

    def metrics(self) -> dict[str, float]:
        return {"long_share": self.alpha_long, **self.last}


class AdaptiveKlSpec(Spec):
    """β that moves the measured KL towards a target (verl's AdaptiveKLController)."""

    init: float = Field(0.05, gt=0.0)
    target: float = Field(0.01, gt=0.0)
    horizon: int = Field(10000, ge=1)
    stat: str = "loss/kl"
    """The metric it reads as the current KL."""
    n_steps: int = Field(1, ge=1)
    """Samples per update that verl's formula multiplies the error by."""


@CONTROLLERS.register(
    "adaptive_kl", AdaptiveKlSpec, "KL β towards a target KL (verl, Ziegler et al.)"
)
class AdaptiveKl(_Base):
    """e = clip(KL / target − 1, −0.2, 0.2);  β ← β·(1 + e·n_steps / horizon).

    Source: verl `AdaptiveKLController.update` (core_algos.py at b178a3c), from Ziegler et al.
    2019 (arXiv 1909.08593). Updated after each step from `stat` when the step logged it.
    """

    kind = "adaptive_kl"
    _state_keys = ("beta", "target", "horizon", "stat", "n_steps")

    def __init__(self, init: float, target: float, horizon: int, stat: str, n_steps: int) -> None:
        self.beta, self.target, self.horizon = float(init), float(target), int(horizon)
        self.stat, self.n_steps = stat, int(n_steps)

    def value(self, step: int) -> float:
        return self.beta

    def update(self, step: int, stats: dict[str, float]) -> None:
        kl = stats.get(self.stat)
        if kl is None or not math.isfinite(kl):
            return
        err = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + err * self.n_steps / self.horizon


class SasrSpec(Spec):
    """SASR's step-wise choice between an SFT step (value 1) and an RL step (value 0)."""

    warmup_steps: int = Field(5, ge=1)
    """Pure SFT steps at the stage start; the last one's SFT gradient norm is G_0."""
    gamma: float = Field(1.0, gt=0.0)
    """Scale of G_0 in p_SFT = G / (G + gamma·G_0)."""
    sft_term: str = "sft"
    """The term whose gradient norm G is read (it must be the SFT step's term)."""
    seed: int | None = None
    """Seed of the Bernoulli draws; null: the run's seed."""


@CONTROLLERS.register("sasr", SasrSpec, "SASR: SFT or RL step by the SFT gradient norm")
class Sasr(_Base):
    """SASR (arXiv 2505.13026), step-wise adaptive SFT/RL (RECON: no public code was found).

        k < W:   SFT (value 1); at k = W − 1, G_0 = ‖∇L_SFT‖ of that step
        k ≥ W:   p_k = G / (G + γ·G_0),  I_k ~ Bernoulli(p_k),  value = I_k
                 (I_k = 1: an SFT step, 0: an RL step)

    G is the SFT gradient norm of the most recent SFT step (a running value, refreshed on every
    SFT step), as in a third-party pseudocode of the paper's Algorithm 1; the functional form of
    p_k and the paper's trigger on the divergence from the initial model are unverified and the
    trigger is not implemented (docs/methods.md). The draw is a pure function of (seed, step),
    so a resumed run makes the same choices. The gradient norm is read from
    ``grad_norm/<sft_term>`` (the step measures it because this controller asks for it).
    Metrics: ``p_sft``, the SFT step count and the switches in each direction.
    """

    kind = "sasr"
    _state_keys = ("g0", "g_last", "last", "sft_steps", "to_sft", "to_rl", "p")

    @staticmethod
    def reads_terms(spec: SasrSpec) -> tuple[str, ...]:
        """The terms whose gradient norms it reads (checked against the objective's terms)."""
        return (spec.sft_term,)

    def __init__(self, warmup_steps: int, gamma: float, sft_term: str, seed: int | None) -> None:
        self.warmup_steps, self.gamma, self.sft_term = int(warmup_steps), float(gamma), sft_term
        self.seed = int(seed or 0)
        self.wants_grad_norms = (sft_term,)
        self.g0: float | None = None
        self.g_last: float | None = None
        self.last: float | None = None
        self.sft_steps, self.to_sft, self.to_rl = 0, 0, 0
        self.p = 1.0

    def _p(self) -> float:
        if self.g0 is None or self.g_last is None:
            return 1.0
        return self.g_last / (self.g_last + self.gamma * self.g0 + 1e-12)

    def value(self, step: int) -> float:
        if step < self.warmup_steps:
            return 1.0
        u = random.Random(f"sasr:{self.seed}:{step}").random()
        return 1.0 if u < self._p() else 0.0

    def update(self, step: int, stats: dict[str, float]) -> None:
        v = self.value(step)
        g = stats.get(f"grad_norm/{self.sft_term}")
        if v == 1.0:
            self.sft_steps += 1
            if g is not None and math.isfinite(g):
                self.g_last = float(g)
                if step == self.warmup_steps - 1:
                    self.g0 = float(g)
        if self.last is not None and v != self.last:
            self.to_sft += int(v == 1.0)
            self.to_rl += int(v == 0.0)
        self.last = v
        self.p = self._p()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.seed = int(state["seed"])

    def metrics(self) -> dict[str, float]:
        return {
            "p_sft": self.p,
            "sft_steps": float(self.sft_steps),
            "switches_to_sft": float(self.to_sft),
            "switches_to_rl": float(self.to_rl),
        }


def build_controller(spec: Spec, seed: int = 0) -> Controller:
    """The controller `spec` describes (its kind's class, built from its settings)."""
    params = {k: v for k, v in spec.model_dump().items() if k != "kind"}
    if "seed" in params and params["seed"] is None:
        params["seed"] = seed
    return CONTROLLERS.get(spec.kind)(**params)  # type: ignore[attr-defined]


__all__ = [
    "CONTROLLERS",
    "AdaptiveKl",
    "Constant",
    "Controller",
    "Cosine",
    "Periodic",
    "Sasr",
    "TargetEntropy",
    "Tldr",
    "WarmupCosine",
    "build_controller",
]
