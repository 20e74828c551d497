"""The simulated physical network: compute speed, link latency and bandwidth, churn.

Two optional scenario sections live here:

- ``network:`` (``NetworkParams``): per-node compute time per training example, link
  bandwidth and latency, and their spread across nodes. Decentralized runs always keep
  a virtual clock on it (defaults if the section is absent); centralized runs get one
  (``virtual_time`` in every row) when the section is given.
- ``churn:`` (a list of ``ChurnEvent``): nodes that crash, leave or join at the start of
  a round, e.g. ``{round: 20, action: crash, fraction: 0.8}``.

What is simulated (and what is not): a transfer of b bytes from node i to node j takes
b / min(bw_i, bw_j) on i's uplink, which sends one transfer at a time (concurrent sends
queue), then arrives after the one-way latency (lat_i + lat_j) / 2. Downlinks and the
core network are not congested. Local training on node i takes examples × c_i seconds.
Per-node c_i, bw_i and lat_i are the configured values times a log-normal factor of
spread ``heterogeneity`` (slower compute, lower bandwidth, longer latency), drawn once
per run from (seed, "network"). This follows the network model of the MoDeST/Plexus
simulator (per-node compute and bandwidth, pairwise latency, an uplink scheduler) with
synthetic instead of trace-driven values.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from fedsim.registry import Params


class NetworkParams(Params):
    compute_seconds_per_example: float = Field(
        0.005, gt=0, description="seconds for one training example's forward and backward pass"
    )
    bandwidth: float = Field(1.25e6, gt=0, description="bytes per second of each node's link (10 Mbit/s)")
    latency: float = Field(0.05, ge=0, description="one-way link latency in seconds")
    heterogeneity: float = Field(0.0, ge=0, description="log-normal spread (sigma) of per-node speeds")
    server_bandwidth: float | None = Field(
        None, gt=0, description="centralized runs: the server's bandwidth (unset: unlimited, as Plexus' FL baseline)"
    )


class ChurnEvent(Params):
    """Nodes that crash (silently), leave (announcing it) or join at the start of ``round``."""

    round: int = Field(ge=1)
    action: Literal["crash", "leave", "join"]
    fraction: float | None = Field(None, gt=0, le=1, description="a seeded draw of this fraction of all N nodes")
    nodes: list[int] | None = Field(None, description="these partition ids")

    @model_validator(mode="after")
    def _one_selector(self) -> ChurnEvent:
        if (self.fraction is None) == (self.nodes is None):
            raise ValueError("give exactly one of 'fraction' or 'nodes'")
        return self


def local_work(client_cfg, num_examples: int) -> int:
    """Training examples one local run processes (``client:`` epochs, or exactly ``steps`` batches)."""
    if client_cfg.steps is None:
        return client_cfg.epochs * num_examples
    per_epoch = math.ceil(num_examples / client_cfg.batch_size)
    full, rest = divmod(client_cfg.steps, per_epoch)
    return full * num_examples + min(rest * client_cfg.batch_size, num_examples)


class NetworkModel:
    """Per-node compute speed, bandwidth and latency; transfer times with queued uplinks."""

    def __init__(self, params: NetworkParams, n: int, seed: int):
        self.params = params
        from fedsim.training import seed_sequence  # torch: not at import time (the CLI starts fast)

        rng = np.random.default_rng(seed_sequence(seed, "network"))

        def spread() -> np.ndarray:
            return rng.lognormal(0.0, params.heterogeneity, n) if params.heterogeneity else np.ones(n)

        self.seconds_per_example = params.compute_seconds_per_example * spread()
        self.bandwidth = params.bandwidth / spread()
        self.node_latency = params.latency * spread()
        self.uplink_free = np.zeros(n)

    def compute_time(self, node: int, examples: float) -> float:
        return float(examples * self.seconds_per_example[node])

    def latency(self, src: int, dst: int) -> float:
        return float(self.node_latency[src] + self.node_latency[dst]) / 2

    def send(self, src: int, dst: int, nbytes: int, now: float) -> float:
        """Queue ``nbytes`` on src's uplink at ``now``; the time the transfer arrives at dst."""
        start = max(now, self.uplink_free[src])
        done = start + nbytes / min(self.bandwidth[src], self.bandwidth[dst])
        self.uplink_free[src] = done
        return float(done + self.latency(src, dst))

    def star_round(self, clients: list[int], down_bytes: list[int], up_bytes: list[int], work: list[float]) -> float:
        """Duration of a centralized round: the server sends, clients train and reply; the slowest counts.

        The server's sends queue on its uplink when ``server_bandwidth`` is set; otherwise
        each download is limited by the client's bandwidth only. Server latency is zero.
        """
        server_bw = self.params.server_bandwidth
        server_free, slowest = 0.0, 0.0
        for node, down, up, examples in zip(clients, down_bytes, up_bytes, work, strict=True):
            if server_bw is None:
                arrive = down / self.bandwidth[node]
            else:
                server_free += down / min(server_bw, self.bandwidth[node])
                arrive = server_free
            arrive += self.node_latency[node] / 2
            done = arrive + self.compute_time(node, examples) + up / self.bandwidth[node] + self.node_latency[node] / 2
            slowest = max(slowest, done)
        return float(slowest)


class Membership:
    """Which nodes are up, replaying the scenario's churn trace round by round.

    Nodes named in a ``join`` event (by id) before any other event for them start out
    absent. ``fraction`` events draw round(fraction · N) nodes, seeded by (seed, round,
    event), among the nodes the action applies to (up nodes for crash/leave, absent ones
    for join), never among ``exempt`` nodes.
    """

    def __init__(self, events: list[ChurnEvent], n: int, seed: int):
        self.events = sorted(events, key=lambda e: e.round)
        self.n = n
        self.seed = seed
        first: dict[int, str] = {}
        for e in self.events:
            for i in e.nodes or []:
                first.setdefault(i, e.action)
        self.up = set(range(n)) - {i for i, action in first.items() if action == "join"}
        self.applied = 0

    def apply(self, rnd: int, exempt: set[int] | frozenset = frozenset()) -> list[tuple[int, str]]:
        """Apply the events of rounds ≤ ``rnd`` not yet applied; the (node, action) changes."""
        changes = []
        while self.applied < len(self.events) and self.events[self.applied].round <= rnd:
            event = self.events[self.applied]
            pool = sorted((set(range(self.n)) - self.up) if event.action == "join" else (self.up - set(exempt)))
            if event.nodes is not None:
                chosen = [i for i in event.nodes if i in pool]
            else:
                from fedsim.training import seed_sequence

                rng = np.random.default_rng(seed_sequence(self.seed, event.round, "churn", self.applied))
                count = min(len(pool), round(event.fraction * self.n))
                chosen = sorted(int(i) for i in rng.choice(pool, size=count, replace=False)) if count else []
            for i in chosen:
                (self.up.add if event.action == "join" else self.up.discard)(i)
                changes.append((i, event.action))
            self.applied += 1
        return changes
