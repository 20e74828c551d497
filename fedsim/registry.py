"""One registry of named components: datasets, partitioners, models, strategies, ...

A component is registered with a factory, a pydantic params model (unknown keys are
errors) and a one-line description. Scenarios name components by their registered name
plus keyword parameters, which are validated against the component's params model.

Third-party packages add components through the entry-point group ``fedsim.plugins``:
each entry point names a module (imported for its ``register`` calls) or a callable
(called once with no arguments).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, ConfigDict

KINDS = ("dataset", "partitioner", "model", "strategy", "world_layer")
PLUGIN_GROUP = "fedsim.plugins"

# Modules whose import registers the built-in components.
_BUILTIN_MODULES = (
    "fedsim.data.datasets",
    "fedsim.data.partition",
    "fedsim.data.images",
    "fedsim.models",
    "fedsim.world.clock",
    "fedsim.world.audit",
    "fedsim.world.faults",
    "fedsim.world.participation",
    "fedsim.world.topology",
    "fedsim.strategies",
    "fedsim.attacks.byzantine",
    "fedsim.attacks.eavesdropper",
    "fedsim.attacks.ig",
    "fedsim.attacks.dia",
    "fedsim.attacks.gifd",
    "fedsim.attacks.standalone",
    "fedsim.defenses",
)


class Params(BaseModel):
    """Base of every component's params model: strict, immutable, no unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    factory: Callable[..., Any]
    params: type[Params]
    description: str
    extras: dict[str, Any] = field(default_factory=dict)


_entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
_loaded = False


def register(
    kind: str,
    name: str,
    params: type[Params] = Params,
    description: str | None = None,
    **extras: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``factory`` as component ``name`` of ``kind``.

    ``extras`` carry kind-specific companions (a strategy's client-side handler).
    """
    if kind not in _entries:
        raise ValueError(f"unknown component kind {kind!r}; kinds: {', '.join(_entries)}")

    def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
        text = description or summary(factory.__doc__)
        _entries[kind][name] = Entry(kind, name, factory, params, text, dict(extras))
        return factory

    return deco


def summary(doc: str | None) -> str:
    """A docstring's first paragraph on one line (its lines joined; never cut mid-sentence)."""
    paragraph = (doc or "").strip().split("\n\n", 1)[0]
    return " ".join(line.strip() for line in paragraph.splitlines())


def add_kind(kind: str) -> None:
    """Open a new component kind (attacks, defenses, ... register theirs)."""
    _entries.setdefault(kind, {})


def load() -> None:
    """Import built-in components and installed plugins (once per process)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    for ep in entry_points(group=PLUGIN_GROUP):
        obj = ep.load()
        if callable(obj) and not isinstance(obj, type(importlib)):
            obj()


def get(kind: str, name: str) -> Entry:
    load()
    try:
        return _entries[kind][name]
    except KeyError:
        known = ", ".join(sorted(_entries.get(kind, {}))) or "none"
        raise KeyError(f"unknown {kind} {name!r}; registered: {known}") from None


def names(kind: str) -> list[str]:
    load()
    return sorted(_entries[kind])


def entries() -> dict[str, list[Entry]]:
    load()
    return {kind: [reg[n] for n in sorted(reg)] for kind, reg in _entries.items()}
