"""Flower records as flat vectors: robust rules and Byzantine attacks work on rows of a matrix."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict


def flatten(record: ArrayRecord) -> torch.Tensor:
    """The arrays of a record, raveled and concatenated in record order."""
    return torch.from_numpy(np.concatenate([a.numpy().ravel() for a in record.values()]))


def unflatten(vector: torch.Tensor, like: ArrayRecord) -> ArrayRecord:
    """Inverse of ``flatten``: keys, shapes and dtypes from ``like``."""
    out, start = ArrayRecord(), 0
    for key, arr in like.items():
        a = arr.numpy()
        out[key] = Array(vector[start : start + a.size].numpy().reshape(a.shape).astype(a.dtype))
        start += a.size
    return out


def only_arrays(content: RecordDict) -> tuple[str, ArrayRecord]:
    """(key, record) of a reply's one ArrayRecord (Flower's strategies require exactly one)."""
    key = next(iter(content.array_records))
    return key, content.array_records[key]


def num_examples(content: RecordDict, key: str = "num-examples") -> float:
    """A reply's weight: ``key`` of its (one) MetricRecord."""
    return float(next(iter(content.metric_records.values()))[key])
