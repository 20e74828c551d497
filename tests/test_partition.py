"""Partitions: reproducible per seed, disjoint, and skewed as their parameters say."""

import numpy as np
import pytest

from fedsim.data.datasets import load_dataset
from fedsim.data.partition import label_histograms, make_partitions
from fedsim.registry import get


def parts(name, seed, n=20, **params):
    y = load_dataset("digits", {}, 0).y_train
    p = get("partitioner", name).params(**params)
    return y, make_partitions(name, p, y, n, seed)


def skew(y, partitions):
    """Mean total-variation distance between each client's label mix and the global one."""
    hist = label_histograms(partitions, y, 10).astype(float)
    local = hist / hist.sum(1, keepdims=True)
    glob = np.bincount(y, minlength=10) / len(y)
    return float(np.mean(0.5 * np.abs(local - glob).sum(1)))


@pytest.mark.parametrize("name, params", [("iid", {}), ("dirichlet", {"alpha": 0.3}), ("pathological", {"classes_per_client": 2}), ("shard", {"shards_per_client": 2})])
def test_same_seed_same_partition_and_disjoint(name, params):
    y, a = parts(name, 7, **params)
    _, b = parts(name, 7, **params)
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    flat = np.concatenate(a)
    assert len(np.unique(flat)) == len(flat)  # no example in two clients
    _, c = parts(name, 8, **params)
    assert any(not np.array_equal(u, v) for u, v in zip(a, c, strict=True))


def test_iid_covers_everything_in_equal_shares():
    y, p = parts("iid", 0)
    sizes = [len(i) for i in p]
    assert sum(sizes) == len(y) and max(sizes) - min(sizes) <= 1


def test_dirichlet_small_alpha_is_measurably_more_skewed_than_iid():
    y, iid = parts("iid", 0)
    _, d03 = parts("dirichlet", 0, alpha=0.3)
    _, d10 = parts("dirichlet", 0, alpha=10.0)
    assert skew(y, iid) < 0.15
    assert skew(y, d03) > 2 * skew(y, iid)
    assert skew(y, d03) > skew(y, d10)


def test_pathological_gives_exactly_k_classes():
    y, p = parts("pathological", 0, classes_per_client=2)
    assert all(len(np.unique(y[i])) <= 2 for i in p)


def test_dirichlet_respects_min_partition_size():
    _, p = parts("dirichlet", 1, alpha=0.3, min_partition_size=15)
    assert min(len(i) for i in p) >= 15
