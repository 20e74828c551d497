"""Partitions: reproducible per seed, disjoint, and skewed as their parameters say."""

import warnings

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


# ------------------------------------------- NumPy partitioners == flwr-datasets' own


def flwr_reference(partitioner, labels):
    """flwr-datasets' partition of ``labels``: each client's example indices, sorted."""
    from datasets import Dataset

    partitioner.dataset = Dataset.from_dict({"label": labels, "idx": np.arange(len(labels))})
    return [np.sort(np.asarray(partitioner.load_partition(i)["idx"])) for i in range(partitioner.num_partitions)]


def small_labels(n, seed, classes=10):
    return np.random.default_rng(seed).integers(0, classes, n)


@pytest.mark.parametrize("n, clients, seed", [(100, 7, 0), (1437, 20, 3), (50, 50, 1), (1000, 1, 2)])
def test_iid_equals_flwr_datasets(n, clients, seed):
    from flwr_datasets.partitioner import IidPartitioner

    labels = small_labels(n, seed)
    ours = make_partitions("iid", get("partitioner", "iid").params(), labels, clients, seed)
    perm = np.random.default_rng(seed).permutation(n)
    ref = [np.sort(perm[p]) for p in flwr_reference(IidPartitioner(num_partitions=clients), labels[perm])]
    assert len(ours) == clients
    assert all(np.array_equal(a, b) for a, b in zip(ours, ref, strict=True))


@pytest.mark.parametrize("n, clients, k, seed", [(100, 7, 2, 0), (1437, 20, 2, 3), (1000, 30, 3, 5), (999, 10, 1, 4)])
def test_shard_equals_flwr_datasets(n, clients, k, seed):
    from flwr_datasets.partitioner import ShardPartitioner

    labels = small_labels(n, seed)
    ours = make_partitions("shard", get("partitioner", "shard").params(shards_per_client=k), labels, clients, seed)
    ref = flwr_reference(
        ShardPartitioner(num_partitions=clients, partition_by="label", num_shards_per_partition=k, seed=seed), labels
    )
    assert all(np.array_equal(a, b) for a, b in zip(ours, ref, strict=True))


@pytest.mark.parametrize("n, clients, alpha, min_size, balance, seed", [
    (300, 7, 0.5, 5, False, 0), (1437, 20, 0.3, 10, False, 3), (1000, 10, 1.0, 1, True, 4),
    (500, 25, 0.1, 1, False, 1), (800, 5, 100.0, 10, True, 2), (200, 12, 0.5, 3, False, 7),
])
def test_dirichlet_equals_flwr_datasets(n, clients, alpha, min_size, balance, seed):
    from flwr_datasets.partitioner import DirichletPartitioner

    labels = small_labels(n, seed, classes=6 if seed % 2 else 10)
    params = get("partitioner", "dirichlet").params(alpha=alpha, min_partition_size=min_size, self_balancing=balance)
    ours = make_partitions("dirichlet", params, labels, clients, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flwr-datasets warns on each redraw
        ref = flwr_reference(DirichletPartitioner(num_partitions=clients, partition_by="label", alpha=alpha,
                                                  min_partition_size=min_size, self_balancing=balance, seed=seed), labels)
    assert len(ours) == clients
    assert all(np.array_equal(a, b) for a, b in zip(ours, ref, strict=True))


def test_dirichlet_that_cannot_meet_min_size_fails_like_flwr_datasets():
    from flwr_datasets.partitioner import DirichletPartitioner

    labels = small_labels(100, 0)
    params = get("partitioner", "dirichlet").params(alpha=0.05, min_partition_size=10)
    with pytest.raises(ValueError, match="min_partition_size"):
        make_partitions("dirichlet", params, labels, 10, 0)
    with warnings.catch_warnings(), pytest.raises(ValueError, match="max number of attempts"):
        warnings.simplefilter("ignore")
        flwr_reference(DirichletPartitioner(num_partitions=10, partition_by="label", alpha=0.05,
                                            min_partition_size=10, seed=0), labels)


@pytest.mark.parametrize("mode", ["random", "deterministic", "first-deterministic"])
@pytest.mark.parametrize("n, clients, k, seed", [(300, 7, 2, 0), (1437, 20, 3, 3), (500, 13, 1, 1), (900, 4, 5, 2)])
def test_pathological_equals_flwr_datasets(mode, n, clients, k, seed):
    from flwr_datasets.partitioner import PathologicalPartitioner

    labels = small_labels(n, seed)
    params = get("partitioner", "pathological").params(classes_per_client=k, class_assignment_mode=mode)
    ours = make_partitions("pathological", params, labels, clients, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unused classes
        ref = flwr_reference(PathologicalPartitioner(num_partitions=clients, partition_by="label",
                                                     num_classes_per_partition=k, class_assignment_mode=mode,
                                                     seed=seed), labels)
    assert all(np.array_equal(a, b) for a, b in zip(ours, ref, strict=True))


def test_natural_groups_by_user():
    groups = np.array([3, 1, 3, 2, 1, 1, 3, 2])
    got = make_partitions("natural", get("partitioner", "natural").params(), np.zeros(8, int), 3, 0, groups)
    assert [p.tolist() for p in got] == [[1, 4, 5], [3, 7], [0, 2, 6]]


def test_every_label_partitioner_splits_a_million_examples_over_100k_clients_fast():
    import time

    labels = small_labels(1_000_000, 0)
    for name, params in [("iid", {}), ("shard", {"shards_per_client": 2}),
                         ("dirichlet", {"alpha": 5.0, "min_partition_size": 1}), ("pathological", {"classes_per_client": 2})]:
        params = get("partitioner", name).params(**params)  # (loads the registry off the clock)
        start = time.perf_counter()
        got = make_partitions(name, params, labels, 100_000, 0)
        assert time.perf_counter() - start < 5.0
        assert len(got) == 100_000 and sum(len(p) for p in got) <= 1_000_000
