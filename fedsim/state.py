"""Explicit, checkpointable state of server-side objects (strategies, world layers).

An object lists the attributes that make up its state in ``checkpoint_fields``; they may
hold numbers, strings, NumPy arrays, frozen dataclasses of those (fedsim's own), lists,
dicts or None. ``state_dict()`` turns them into plain containers and tensors that
``torch.load(weights_only=True)`` reads back; ``load_state_dict`` rebuilds them. Dataclass
types are re-created only from fedsim's own packages, never from arbitrary names.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import numpy as np
import torch

_OWN_PACKAGES = ("fedsim.", "strategies.", "attacks.", "defenses.")


def to_tree(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"ndarray": torch.from_numpy(np.ascontiguousarray(value).copy())}
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        fields = {f.name: to_tree(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"dataclass": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    if isinstance(value, dict):
        return {"dict": {str(k): to_tree(v) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"list": [to_tree(v) for v in value]}
    if value is None or isinstance(value, (bool, int, float, str, bytes, torch.Tensor)):
        return value
    raise TypeError(f"cannot checkpoint a {type(value).__name__}")


def from_tree(tree: Any) -> Any:
    if not isinstance(tree, dict):
        return tree
    if "ndarray" in tree:
        return tree["ndarray"].numpy().copy()
    if "dict" in tree:
        return {k: from_tree(v) for k, v in tree["dict"].items()}
    if "list" in tree:
        return [from_tree(v) for v in tree["list"]]
    module, _, name = tree["dataclass"].partition(":")
    if not module.startswith(_OWN_PACKAGES):
        raise ValueError(f"checkpoint names a type outside fedsim: {tree['dataclass']}")
    cls = importlib.import_module(module)
    for part in name.split("."):
        cls = getattr(cls, part)
    return cls(**{k: from_tree(v) for k, v in tree["fields"].items()})


class Checkpointable:
    """Mixin: the attributes named in ``checkpoint_fields`` are the object's state."""

    checkpoint_fields: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, Any]:
        return {name: to_tree(getattr(self, name)) for name in self.checkpoint_fields}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self.checkpoint_fields:
            setattr(self, name, from_tree(state[name]))
