"""Partitioners: split a dataset's training examples across clients.

The label-based partitioners follow flwr-datasets (``IidPartitioner``,
``DirichletPartitioner``, ``PathologicalPartitioner``, ``ShardPartitioner``), computed with
NumPy on the label array: the same random draws in the same order, so the same partitions
(``tests/test_partition.py`` checks equality with flwr-datasets' output), without
flwr-datasets decoding every example as a Python row (~1 ms a client), so 10^5 clients
split in about a second. Every partitioner returns, for client i, the indices of its
examples: client i is partition i on every runtime.

Dirichlet convention: flwr-datasets draws, per class, a share over clients
p_c ~ Dir(alpha·1_N) (the Yurochkin et al. lineage), re-drawing until every client holds
``min_partition_size`` examples.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from fedsim.registry import Params, get, register
from fedsim.training import seed_sequence


class IidParams(Params):
    pass


class DirichletParams(Params):
    alpha: float = Field(0.5, gt=0, description="concentration of each class's shares over the clients")
    min_partition_size: int = Field(10, ge=0, description="redraw until every client holds this many examples")
    self_balancing: bool = Field(False, description="stop giving a class to clients already above the mean size")


class PathologicalParams(Params):
    classes_per_client: int = Field(2, ge=1, description="classes each client holds")
    class_assignment_mode: Literal["random", "deterministic", "first-deterministic"] = Field(
        "random", description="how classes are given out (flwr-datasets PathologicalPartitioner)"
    )


class ShardParams(Params):
    shards_per_client: int = Field(2, ge=1, description="label-sorted shards dealt to each client")


def split_sorted(values: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
    """Cut ``values`` into consecutive blocks of ``sizes`` and sort each block, vectorised:
    one ``lexsort`` of (value, block) instead of one sort per client, then views."""
    block = np.repeat(np.arange(len(sizes)), sizes)
    ordered = values[np.lexsort((values, block))]
    return np.split(ordered, np.cumsum(sizes)[:-1])


@register("partitioner", "iid", params=IidParams)
def iid(params: IidParams, labels, num_clients, seed, groups=None):
    """IID: equal-size random shards of a seeded permutation.

    flwr-datasets' ``IidPartitioner`` on the permuted indices, computed with NumPy: its
    ``load_partition(i)`` is ``Dataset.shard(num_clients, i, contiguous=True)``, i.e. the
    i-th of ``np.array_split``'s blocks (the first ``n mod N`` clients get one more);
    ``tests/test_partition.py`` checks equality with flwr-datasets.
    """
    if num_clients > len(labels):
        raise ValueError(f"iid: {num_clients} clients but only {len(labels)} examples")
    perm = np.random.default_rng(seed).permutation(len(labels))
    sizes = np.full(num_clients, len(labels) // num_clients)
    sizes[: len(labels) % num_clients] += 1
    return split_sorted(perm, sizes)


def group_by_client(clients: np.ndarray, examples: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """Client i's examples (sorted) from parallel arrays (client of each assignment, example)."""
    order = np.lexsort((examples, clients))
    return np.split(examples[order], np.cumsum(np.bincount(clients, minlength=num_clients))[:-1])


@register("partitioner", "dirichlet", params=DirichletParams,
          min_examples=lambda p, n: n * max(p.min_partition_size, 1))
def dirichlet(params: DirichletParams, labels, num_clients, seed, groups=None):
    """Label skew: per class, shares over clients ~ Dir(alpha).

    flwr-datasets' ``DirichletPartitioner`` computed with NumPy on the label array (its
    ``load_partition`` decodes every example as a row, ~1 ms a client): one
    ``default_rng(seed)``; for each class k in sorted order, p_k ~ Dir(alpha·1_N) (with
    ``self_balancing``, clients already above the mean size get share 0 and the rest are
    renormalised); the class's examples, in dataset order, are cut at
    ``int(len · cumsum(p_k))``; the whole draw is repeated (at most 10 more times) until
    every client holds ``min_partition_size`` examples. ``tests/test_partition.py`` checks
    equality with flwr-datasets.
    """
    rng = np.random.default_rng(seed)
    alpha = np.full(num_clients, float(params.alpha))
    mean_size = len(labels) / num_clients
    by_class = [np.flatnonzero(labels == k) for k in np.unique(labels)]
    for attempt in range(11):
        sizes = np.zeros(num_clients, dtype=np.int64)
        owners, members = [], []
        for idx in by_class:
            shares = rng.dirichlet(alpha)
            if params.self_balancing:
                shares = np.where(sizes > mean_size, 0.0, shares)
                shares = shares / sum(shares.tolist())  # Python's sum, as flwr-datasets adds them
            cuts = (np.cumsum(shares) * len(idx)).astype(int)[:-1]
            counts = np.diff(np.concatenate([[0], np.clip(cuts, 0, len(idx)), [len(idx)]]))
            owners.append(np.repeat(np.arange(num_clients), counts))
            members.append(idx)
            sizes += counts
        if sizes.min() >= params.min_partition_size:
            return group_by_client(np.concatenate(owners), np.concatenate(members), num_clients)
    raise ValueError(
        f"dirichlet: after 11 draws some client holds fewer than min_partition_size="
        f"{params.min_partition_size} examples (alpha={params.alpha}); raise alpha or lower min_partition_size"
    )


@register("partitioner", "pathological", params=PathologicalParams)
def pathological(params: PathologicalParams, labels, num_clients, seed, groups=None):
    """Pathological: each client holds exactly k classes.

    flwr-datasets' ``PathologicalPartitioner`` computed with NumPy: client i's classes
    (``random``: ``rng.choice(classes, k, replace=False)`` per client in order;
    ``deterministic``: classes i..i+k-1 mod C; ``first-deterministic``: class i mod C, then
    random draws until k distinct), then each class's examples (dataset order) are cut by
    ``np.array_split`` into as many pieces as clients hold it, dealt in client order.
    ``tests/test_partition.py`` checks equality with flwr-datasets.
    """
    classes = np.unique(labels).tolist()
    k = params.classes_per_client
    if k > len(classes):
        raise ValueError(f"pathological: classes_per_client={k} but the dataset has {len(classes)} classes")
    rng = np.random.default_rng(seed)
    mode = params.class_assignment_mode
    held: list[list] = []
    for pid in range(num_clients):
        if mode == "random":
            held.append(rng.choice(classes, size=k, replace=False).tolist())
        elif mode == "deterministic":
            held.append([classes[(pid + i) % len(classes)] for i in range(k)])
        else:  # first-deterministic
            mine = [classes[pid % len(classes)]]
            while len(mine) < k:
                label = rng.choice(classes, size=1)[0]
                if label not in mine:
                    mine.append(label)
            held.append(mine)
    holders: dict = {c: [] for c in classes}
    for pid, mine in enumerate(held):
        for c in mine:
            holders[c].append(pid)
    owners, members = [], []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if len(holders[c]) > len(idx):
            raise ValueError(f"pathological: class {c} is held by {len(holders[c])} clients but has only "
                             f"{len(idx)} examples; lower num_clients or classes_per_client")
        if holders[c]:
            counts = [len(piece) for piece in np.array_split(np.empty(len(idx)), len(holders[c]))]
            owners.append(np.repeat(holders[c], counts))
            members.append(idx)
    return group_by_client(np.concatenate(owners), np.concatenate(members), num_clients)


@register("partitioner", "shard", params=ShardParams, min_examples=lambda p, n: n * p.shards_per_client)
def shard(params: ShardParams, labels, num_clients, seed, groups=None):
    """Shards: sort by label, deal equal shards (McMahan et al. 2017, Sec. 3).

    flwr-datasets' ``ShardPartitioner`` (``num_shards_per_partition``, incomplete shards
    dropped), computed with NumPy: the examples sorted by label (stably, as Arrow sorts),
    shard size ⌊n / (N·k)⌋, ``default_rng(seed).permutation`` of the ⌊n / size⌋ usable
    shards, the first N·k of them dealt k per client in order; ``tests/test_partition.py``
    checks equality with flwr-datasets.
    """
    k = params.shards_per_client
    size = len(labels) // (num_clients * k)
    if size == 0:
        raise ValueError(f"shard: {num_clients} clients × {k} shards need at least that many examples, "
                         f"the dataset has {len(labels)}")
    order = np.argsort(labels, kind="stable")
    shards = np.random.default_rng(seed).permutation(len(labels) // size)[: num_clients * k]
    positions = (shards.reshape(num_clients, k, 1) * size + np.arange(size)).reshape(num_clients, k * size)
    return list(np.sort(order[positions], axis=1))


@register("partitioner", "natural", params=IidParams)
def natural(params: IidParams, labels, num_clients, seed, groups=None):
    """Natural: the dataset's own users (LEAF synthetic), one per client."""
    if groups is None:
        raise ValueError("the 'natural' partitioner needs a dataset with natural users")
    users = np.unique(groups)
    if len(users) != num_clients:
        raise ValueError(f"dataset has {len(users)} users but num_clients is {num_clients}")
    order = np.argsort(groups, kind="stable")  # = flatnonzero(groups == u) per user, in one pass
    return np.split(order, np.cumsum(np.bincount(np.searchsorted(users, groups)))[:-1])


class DirichletSharesParams(Params):
    alpha: float = Field(0.1, gt=0, description="concentration α_d of each client's label mix")
    min_partition_size: int = Field(1, ge=1, description="redraw the label mixes until every client has this many")


@register("partitioner", "dirichlet_shares", params=DirichletSharesParams,
          min_examples=lambda p, n: n * p.min_partition_size)
def dirichlet_shares(params: DirichletSharesParams, labels, num_clients, seed, groups=None):
    """Label skew, FedAU set-up: per-client label mix q_n ~ Dir(alpha), classes split by shares.

    As ``partition`` in IBM/fedau ``util/util.py``: every client draws q_n ~ Dir(α_d·1_C);
    the examples of class c (in dataset order) are cut into consecutive blocks, client n
    taking the fraction q_{n,c} / Σ_m q_{m,c} (block ends rounded), so client sizes differ.
    The official code can leave a client empty (and then divides by zero); here the label
    mixes are redrawn from the next seeded stream until every client holds
    ``min_partition_size`` examples.
    """
    num_classes = int(labels.max()) + 1
    by_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    for attempt in range(1000):
        rng = np.random.default_rng(seed_sequence(seed, "dirichlet-shares", attempt))
        q = rng.dirichlet(params.alpha * np.ones(num_classes), size=num_clients)
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c, idx in enumerate(by_class):
            ends = np.round(len(idx) * np.cumsum(q[:, c]) / q[:, c].sum()).astype(np.int64)
            starts = np.concatenate([[0], ends[:-1]])
            for n in range(num_clients):
                parts[n].append(idx[starts[n] : ends[n]])
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= params.min_partition_size:
            return out
    raise ValueError(
        f"dirichlet_shares: no draw in 1000 gave every one of {num_clients} clients "
        f"{params.min_partition_size} examples; raise alpha or lower num_clients"
    )


def make_partitions(name: str, params: Params, labels, num_clients, seed, groups=None):
    """Partition indices for every client; checks they are disjoint and non-empty."""
    if num_clients > len(labels):
        raise ValueError(f"num_clients={num_clients} exceeds the dataset's {len(labels)} training examples")
    try:
        parts = get("partitioner", name).factory(params, labels, num_clients, seed, groups)
    except (ValueError, IndexError) as exc:  # the partitioner's own checks
        raise ValueError(f"partition {name!r} of {len(labels)} examples over num_clients={num_clients}: {exc}") from None
    if len(parts) != num_clients:
        raise ValueError(f"partitioner {name!r} made {len(parts)} partitions, not {num_clients}")
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise ValueError(f"partitioner {name!r} left clients {empty} without data")
    return parts


def label_histograms(parts: list[np.ndarray], labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_clients, num_classes) counts of each label per client."""
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])
