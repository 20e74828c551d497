"""FedBuff (Nguyen et al., AISTATS 2022, "Federated Learning with Buffered Asynchronous
Aggregation", arXiv 2106.06639), Alg. 1.

Up to ``concurrency`` clients train at once; each runs Q local SGD steps from the model
x_τ it downloaded and uploads Δ = y_0 − y_Q = x_τ − y (client, Alg. 1 L2-L6; computed
here from the uploaded model, as FLSim's ``before − after``). The server (Alg. 1 L7-L13):

    on arrival of Δ_k with staleness σ_k = t − τ_k:
        Δ̄ ← Δ̄ + s(σ_k)·Δ_k ;  k ← k + 1                 (L9, "staleness scaling")
        if k = K:
            Δ̄ ← Δ̄ / K                                     (L11)
            x ← ServerOpt(x, Δ̄) ;  t ← t + 1 ;  Δ̄ ← 0, k ← 0   (L12)

with s(σ) = 1/√(1 + σ) (the paper's staleness scaling; FedScale's ``async_aggregator``
cites the same section) and ServerOpt the FedAvgM step of the paper's comparison:
m ← β·m + Δ̄ ; x ← x − η_g·m (``fedsim.strategies.sync_fedavg.ServerMomentum``).
Updates older than ``max_staleness`` versions are dropped (FLSim, FedScale). Every update
counts once (FLSim's default equal example weights).
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord
from pydantic import Field

from fedsim.apps.asynchronous import Arrival, EventStrategy, Step
from fedsim.apps.client import fedavg_train
from fedsim.registry import Params, register
from fedsim.strategies.deltas import Layout
from fedsim.strategies.fedasync import PolynomialStaleness, Staleness, staleness_weight
from fedsim.strategies.sync_fedavg import ServerMomentum, update


class FedBuffParams(Params):
    buffer_size: int = Field(10, ge=1, description="K: client updates per server update")
    server_lr: float = Field(1.0, gt=0, description="η_g")
    server_momentum: float = Field(0.0, ge=0, lt=1, description="β of the server's FedAvgM step")
    staleness: Staleness = Field(default_factory=PolynomialStaleness, description="s(σ); default (1 + σ)^(−1/2)")
    max_staleness: int | None = Field(None, ge=0, description="drop updates staler than this (null: keep all)")


class FedBuff(EventStrategy):
    def __init__(self, params: FedBuffParams, concurrency: int):
        self.params = params
        self.concurrency = concurrency
        self.optimizer = ServerMomentum(params.server_lr, params.server_momentum)
        self.buffer: np.ndarray | None = None  # Σ s(σ_k)·Δ_k over the buffered updates
        self.buffered: list[Arrival] = []
        self.dropped = 0

    def wanted(self, now: float, busy: int) -> int:
        return self.concurrency - busy

    def arrive(self, x: ArrayRecord, arrival: Arrival, now: float) -> Step:
        limit = self.params.max_staleness
        if limit is not None and arrival.staleness > limit:
            self.dropped += 1
            return Step(metrics={"dropped_stale": self.dropped})
        layout = Layout(x)
        weighted = staleness_weight(self.params.staleness, arrival.staleness) * update(arrival, layout)
        self.buffer = weighted if self.buffer is None else self.buffer + weighted
        self.buffered.append(arrival)
        if len(self.buffered) < self.params.buffer_size:
            return Step()
        new = self.optimizer.step(layout.flatten(x), self.buffer / self.params.buffer_size)
        used, self.buffered, self.buffer = self.buffered, [], None
        return Step(model=layout.unflatten(new), used=used, metrics={"dropped_stale": self.dropped})


@register("strategy", "fedbuff", params=FedBuffParams, client=fedavg_train, event_driven=True)
def fedbuff(params: FedBuffParams, setup) -> FedBuff:
    """FedBuff: buffered asynchronous aggregation of K staleness-scaled updates (Nguyen et al. 2022)."""
    return FedBuff(params, setup.scenario.asynchronous.concurrency)
