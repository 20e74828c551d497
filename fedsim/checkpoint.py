"""Checkpoints: a run's whole state in one file that loads with ``torch.load(weights_only=True)``.

Contents: the round reached, the global model, the strategy's state, every client's
``Context.state`` (fetched from the nodes with a ``query.checkpoint`` message and given
back with ``query.restore``), and the world layers' state. No RNG position is stored:
every random draw is derived from (seed, round, client, purpose), so a resumed run draws
exactly what an uninterrupted one would. Only tensors, numbers, strings, bytes, lists and
dicts are written; the file is replaced atomically, so a run killed mid-write keeps the
previous checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedsim import atomic
from fedsim.records import decode, encode

FILE = "checkpoint.pt"


def record_to_tree(record: RecordDict) -> dict[str, Any]:
    """A ``RecordDict`` as plain containers and tensors."""
    tree: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, ArrayRecord):
            tree[key] = {"kind": "arrays", "items": {k: torch.from_numpy(decode(a)) for k, a in value.items()}}
        elif isinstance(value, MetricRecord):
            tree[key] = {"kind": "metrics", "items": dict(value)}
        elif isinstance(value, ConfigRecord):
            tree[key] = {"kind": "config", "items": dict(value)}
        else:
            raise TypeError(f"cannot checkpoint record {key!r} of type {type(value).__name__}")
    return tree


def tree_to_record(tree: dict[str, Any]) -> RecordDict:
    """Inverse of ``record_to_tree``."""
    out = RecordDict()
    for key, value in tree.items():
        items = value["items"]
        if value["kind"] == "arrays":
            out[key] = ArrayRecord({k: encode(np.asarray(t.numpy())) for k, t in items.items()})
        elif value["kind"] == "metrics":
            out[key] = MetricRecord(items)
        else:
            out[key] = ConfigRecord(items)
    return out


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read back (truncated, corrupt, not fedsim's)."""


KEYS = ("round", "global", "strategy", "world", "clients")


def save(run_dir: Path, state: dict[str, Any]) -> Path:
    """Write atomically (fedsim.atomic): a failed write keeps the previous checkpoint."""
    return atomic.write_with(Path(run_dir) / FILE, lambda tmp: torch.save(state, tmp))


def load(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / FILE
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: no {FILE} (was output.checkpoint_every set?)")
    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... on bad bytes
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {str(exc)[:200]}); "
                              "it may be truncated: restart the run or restore a copy") from None
    missing = [k for k in KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a fedsim checkpoint (missing {', '.join(missing)})")
    return state
