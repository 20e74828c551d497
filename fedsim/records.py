"""Flower records as flat vectors: robust rules and Byzantine attacks work on rows of a matrix."""

from __future__ import annotations

import math

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict


def stack(records: list[ArrayRecord]) -> torch.Tensor:
    """n records as the rows of one (n × d) tensor: each record's arrays raveled in record order.

    Every array is decoded once, straight into its row (no per-record concatenation).
    """
    first = list(records[0].values())
    out = np.empty((len(records), sum(math.prod(a.shape) for a in first)), dtype=first[0].dtype)
    for row, record in zip(out, records):
        start = 0
        for arr in record.values():
            a = arr.numpy()
            row[start : start + a.size] = a.ravel()
            start += a.size
    return torch.from_numpy(out)


def flatten(record: ArrayRecord) -> torch.Tensor:
    """The arrays of a record, raveled and concatenated in record order."""
    return stack([record])[0]


def unflatten(vector: torch.Tensor, like: ArrayRecord) -> ArrayRecord:
    """Inverse of ``flatten``: keys, shapes and dtypes from ``like``."""
    out, start = ArrayRecord(), 0
    for key, arr in like.items():
        size = math.prod(arr.shape)
        out[key] = Array(vector[start : start + size].numpy().reshape(arr.shape).astype(arr.dtype))
        start += size
    return out


def only_arrays(content: RecordDict) -> tuple[str, ArrayRecord]:
    """(key, record) of a reply's one ArrayRecord (Flower's strategies require exactly one)."""
    key = next(iter(content.array_records))
    return key, content.array_records[key]


def num_examples(content: RecordDict, key: str = "num-examples") -> float:
    """A reply's weight: ``key`` of its (one) MetricRecord."""
    return float(next(iter(content.metric_records.values()))[key])
