"""One registry per family of parts (sources, terms, advantage estimators, controllers, filters).

A registry maps a kind's name to its entry and to the pydantic model of its settings (its
*spec*). The config is built from these specs, so the allowed values of every choice are listed
in one place: the registry. Config validation, error messages (`config error: ...: got 'x';
allowed: ...`) and `tandem recipes` all read them from here.

    TERMS = Registry("term", base=TermSpec)

    @TERMS.register("nll", summary="negative log-likelihood (SFT)")
    class _Nll(TermSpec):  # the spec: this kind's own fields, documented once
        ...

`register` adds the discriminator field ``kind: Literal[name]`` to the spec, so a union of all
of a family's specs validates ``{kind: nll, ...}`` against the right model and rejects unknown
kinds with the list of allowed ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Generic, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from tandem.errors import ConfigError

E = TypeVar("E")


class Spec(BaseModel):
    """Base of every registered spec: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def extra_needs(self) -> set[str]:
        """What this part needs the step to compute because of these settings, beyond what its
        kind always needs (e.g. GAE's reference log-probs when it has a KL penalty)."""
        return set()


class Registry(Generic[E]):
    """Kinds of one family: name -> (entry, spec model, one-line summary)."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, E] = {}
        self._specs: dict[str, type[BaseModel]] = {}
        self._summaries: dict[str, str] = {}

    def add(self, name: str, entry: E, spec: type[BaseModel], summary: str) -> E:
        """Register `entry` as kind `name`, its settings validated by `spec`."""
        if name in self._entries:
            raise ValueError(f"{self.family} {name!r} is registered twice")
        model = create_model(
            f"{spec.__name__}_{name}",
            __base__=spec,
            __doc__=spec.__doc__,
            kind=(Literal[name], name),
        )
        self._entries[name] = entry
        self._specs[name] = model
        self._summaries[name] = summary
        return entry

    def register(
        self, name: str, spec: type[BaseModel] | None = None, summary: str = ""
    ) -> Callable[[E], E]:
        """Decorator form of `add` (the decorated object is the entry; when `spec` is None the
        entry itself is the spec: a class with its own fields)."""

        def deco(entry: E) -> E:
            return self.add(name, entry, spec or entry, summary or _first_line(entry))

        return deco

    def get(self, name: str) -> E:
        """The entry of kind `name`; ConfigError naming the allowed kinds otherwise."""
        if name not in self._entries:
            raise ConfigError(f"unknown {self.family} {name!r}; allowed: {', '.join(self.names())}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def spec(self, name: str) -> type[BaseModel]:
        self.get(name)
        return self._specs[name]

    def summaries(self) -> list[tuple[str, str]]:
        return list(self._summaries.items())

    def union(self) -> Any:
        """The discriminated union of every registered spec (a type for a pydantic field)."""
        specs = tuple(self._specs.values())
        if len(specs) == 1:
            return specs[0]
        return Annotated[Union[specs], Field(discriminator="kind")]  # noqa: UP007

    def literal(self) -> Any:
        """`Literal[...]` of the registered names (a type for a pydantic field)."""
        return Literal[self.names()]


def _first_line(obj: Any) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


__all__ = ["Registry", "Spec"]
