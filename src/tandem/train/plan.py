"""A run's stages, built from the config: for each, its sources, terms, controllers, estimator,
filters and update plan, ready for `train_step`.

A single-stage run is one stage. A pipeline (`stages:` in the config) is several, in order; at
the first step of each the loop resets the optimizer moments (`reset_optimizer`) and, where the
stage asks (`reference: stage_start`), makes the reference model a copy of the policy. The
stage's controllers count steps from its first step. All sources' and controllers' state is in
`state_dict`, so it goes into every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tandem.algo.advantages import ADVANTAGES, estimator_needs
from tandem.algo.controllers import CONTROLLERS, Controller, build_controller
from tandem.algo.objective import TERMS, TermKind, TermSpec, params_of, term_needs
from tandem.config import SIZE_FIELDS, RunConfig, StageConfig, UpdatePhase, parse_coef
from tandem.experience import TRAINED_ROLES
from tandem.tasks import get_task
from tandem.tasks.base import Example
from tandem.train.sources import SOURCES, Sizes, Source, example_pools


@dataclass
class Term:
    """One term of a stage's objective, ready to evaluate."""

    name: str
    spec: TermSpec
    kind: TermKind
    params: dict[str, Any]
    needs: frozenset[str]
    roles: tuple[str, ...]
    coef_ref: tuple[str | None, float, float]

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(self.spec.sources)

    def coef(self, coefs: dict[str, float]) -> float:
        name, scale, offset = self.coef_ref
        return offset if name is None else offset + scale * coefs[name]

    @property
    def always_zero(self) -> bool:
        return self.coef_ref[0] is None and self.coef_ref[2] == 0.0


@dataclass
class Stage:
    name: str
    start: int
    end: int
    config: StageConfig
    sizes: Sizes
    sources: dict[str, Source]
    terms: dict[str, Term]
    controllers: dict[str, Controller]
    advantage: Any
    filters: dict[str, Any]
    updates: list[UpdatePhase]
    lr: float
    grad_norm_terms: frozenset[str] = field(default_factory=frozenset)
    task: Any = None
    """The task this stage's sources draw from and are scored by (None: the run's)."""

    # ------------------------------------------------------------------ per step
    def coefs(self, step: int) -> dict[str, float]:
        """Every controller's value at global step `step`."""
        return {n: float(c.value(step - self.start)) for n, c in self.controllers.items()}

    def active_terms(self, coefs: dict[str, float]) -> list[Term]:
        return [t for t in self.terms.values() if t.coef(coefs) != 0.0]

    def dot_request(self, step: int) -> tuple[str, tuple[str, ...]] | None:
        """(held-out source, terms) when a controller measures gradient dot products at global
        step `step` (AMFT), else None."""
        for c in self.controllers.values():
            if c.grad_dots is not None and c.dots_at(step - self.start):
                return c.grad_dots
        return None

    def sources_for(
        self, terms: list[Term], coefs: dict[str, float], extra: tuple[str, ...] = ()
    ) -> list[Source]:
        """The sources some active term trains on (and whose `when` controller is on), and the
        `extra` ones (a held-out source a controller reads), in their listed order."""
        used = {s for t in terms for s in t.sources} | set(extra)
        out = []
        for name, src in self.sources.items():
            when = src.spec.when
            if name in used and (when is None or coefs[when] > 0):
                out.append(src)
        return out

    def needs(self, terms: list[Term]) -> set[str]:
        out = {n for t in terms for n in t.needs}
        if self.advantage is not None and "adv" in out:
            out |= estimator_needs(self.advantage)
        return out

    # ------------------------------------------------------------------- models it needs
    def holds_reference(self) -> bool:
        """True if a term, the estimator or a source of this stage can need the reference
        model (a term whose coefficient is the constant 0 never does)."""
        terms = [t for t in self.terms.values() if not t.always_zero]
        needs = {n for t in terms for n in t.needs}
        if self.advantage is not None and any("adv" in t.needs for t in terms):
            needs |= estimator_needs(self.advantage)
        return bool(needs & {"ref_logp", "ref_vocab_logp"}) or any(
            s.needs_reference for s in self.sources.values()
        )

    def holds_value_head(self) -> bool:
        terms = [t for t in self.terms.values() if not t.always_zero]
        needs = {n for t in terms for n in t.needs}
        if self.advantage is not None:
            needs |= estimator_needs(self.advantage)
        return bool(needs & {"values", "old_values"})

    # ---------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "sources": {n: s.state_dict() for n, s in self.sources.items()},
            "controllers": {n: c.state_dict() for n, c in self.controllers.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for n, s in self.sources.items():
            s.load_state_dict(state["sources"][n])
        for n, c in self.controllers.items():
            c.load_state_dict(state["controllers"][n])


def _sizes(cfg: RunConfig, st: StageConfig) -> Sizes:
    vals = {k: getattr(st, k, None) for k in SIZE_FIELDS}
    return Sizes(**{k: getattr(cfg, k) if v is None else v for k, v in vals.items()})


def _term(name: str, spec: TermSpec) -> Term:
    kind = TERMS.get(spec.kind)  # type: ignore[attr-defined]
    return Term(
        name=name,
        spec=spec,
        kind=kind,
        params=params_of(spec),
        needs=term_needs(spec),
        roles=tuple(spec.roles or TRAINED_ROLES),
        coef_ref=parse_coef(spec.coef),
    )


def build_stages(cfg: RunConfig, pools: dict[str, list[Example]], task: Any = None) -> list[Stage]:
    """The run's stages with their step ranges; the last one runs until `cfg.steps`. A stage
    with its own `task` draws from that task's training pool and is scored by its verifier;
    the others use the run's (`task`, `pools`)."""
    stages: list[Stage] = []
    start = 0
    listed = cfg.stage_list()
    for i, (name, st) in enumerate(listed):
        last = i == len(listed) - 1
        end = max(cfg.steps, start + (st.steps or 0)) if last else start + int(st.steps or 0)
        obj = st.objective
        stage_task, stage_pools = task, pools
        if st.task is not None:
            stage_task = get_task(st.task.name, st.task.params)
            pool = stage_task.examples("train", st.task.train_pool, seed=cfg.seed)
            stage_pools = example_pools(pool)
        sources: dict[str, Source] = {}
        for j, (sname, sspec) in enumerate(obj.sources.items()):
            src = SOURCES.get(sspec.kind)(sname, sspec, stage_pools, cfg.seed)  # type: ignore[attr-defined]
            src.salt = 1000 * j
            sources[sname] = src
        controllers = {n: build_controller(c, cfg.seed) for n, c in obj.controllers.items()}
        terms = {n: _term(n, t) for n, t in obj.terms.items()}
        wanted = frozenset(t for c in controllers.values() for t in c.wants_grad_norms)
        stages.append(
            Stage(
                name=name,
                start=start,
                end=end,
                config=st,
                sizes=_sizes(cfg, st),
                sources=sources,
                terms=terms,
                controllers=controllers,
                advantage=obj.advantage,
                filters=dict(obj.filters),
                updates=list(obj.updates),
                lr=st.lr or cfg.lr,
                grad_norm_terms=wanted,
                task=stage_task,
            )
        )
        start = end
    return stages


def describe(stages: list[Stage]) -> list[str]:
    """One line per stage: its steps, sources, terms with coefficients, estimator, updates."""
    lines = []
    for s in stages:
        terms = ", ".join(
            f"{t.name}={t.kind.level}:{t.spec.kind}·{t.spec.coef}" for t in s.terms.values()
        )
        srcs = ", ".join(f"{n}({src.spec.kind})" for n, src in s.sources.items())
        ups = "; ".join(
            f"{','.join(u.terms) if u.terms else 'all'} x{u.epochs} epochs x{u.minibatches} mb"
            + ("" if u.optimizer == "main" else f" [{u.optimizer} optimizer]")
            for u in s.updates
        )
        adv = s.advantage.kind if s.advantage is not None else "-"
        ctl = ", ".join(f"{n}({c.kind})" for n, c in s.controllers.items()) or "-"
        lines.append(
            f"stage {s.name} [steps {s.start}-{s.end}) lr {s.lr}: sources {srcs} | terms {terms}"
            f" | advantage {adv} | controllers {ctl} | updates {ups}"
        )
    return lines


__all__ = ["CONTROLLERS", "ADVANTAGES", "Stage", "Term", "build_stages", "describe"]
