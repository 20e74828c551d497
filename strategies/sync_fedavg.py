"""Synchronous FedAvg / FedAvgM on the virtual clock, with a deadline and over-selection.

The synchronous baselines asynchronous FL is measured against, on the same devices and
clock (``fedsim.apps.asynchronous``). A round (Bonawitz et al. 2019, "Towards Federated
Learning at Scale", Sec. 2.2: selection, configuration, reporting) opens at t_0:

- *selection*: ⌈r·K⌉ idle, online clients are picked (K = ``clients_per_round``, the goal
  count; r = ``over_selection`` ≥ 1, e.g. 1.3); while fewer are online the server keeps
  selecting as clients come online;
- *reporting*: the round closes at the K-th report (later reports are discarded: their
  work is wasted), when every selected client has reported or dropped out, or at the
  ``deadline`` t_0 + D, whichever comes first; stragglers are ignored;
- it is *completed* if at least q·K reports came in (q = ``min_fraction``), else
  *abandoned* (the model is unchanged), and the next round opens at once.

Without deadline and over-selection this is FedAvg waiting for its whole cohort.

The server step is FedAvgM (Hsu, Qi, Brown 2019, arXiv 1909.06335, Alg. "FedAvgM") on
the example-weighted mean of the reported updates Δ_i = x − y_i (McMahan et al. 2017,
Alg. 1 weights n_i / Σ n_j):

    Δ̄ = Σ_i n_i Δ_i / Σ_i n_i ;   m ← β·m + Δ̄ ;   x ← x − η_g·m

β = 0 and η_g = 1 give FedAvg (x ← Σ_i n_i y_i / Σ_i n_i).
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import ArrayRecord
from pydantic import Field

from fedsim.apps.asynchronous import Arrival, EventStrategy, Step, Task
from fedsim import records
from fedsim.apps.client import fedavg_train
from fedsim.registry import Params, register
from fedsim.strategies.deltas import Layout


class ServerMomentum:
    """FedAvgM's server optimizer on pseudo-gradients Δ̄: m ← β·m + Δ̄; x ← x − η_g·m."""

    def __init__(self, server_lr: float, momentum: float):
        self.server_lr = server_lr
        self.momentum = momentum
        self.m: np.ndarray | None = None  # the server momentum buffer (explicit state)

    def step(self, x: np.ndarray, delta: np.ndarray) -> np.ndarray:
        self.m = delta if self.m is None else self.momentum * self.m + delta
        return x - self.server_lr * self.m


def update(arrival: Arrival, layout: Layout) -> np.ndarray:
    """Δ = x_τ − y (FLSim's ``before − after``): the model the client received minus its reply."""
    return layout.flatten(arrival.task.sent) - layout.flatten(arrival.reply["arrays"])


def num_examples(arrival: Arrival) -> float:
    return records.num_examples(arrival.reply)


class SyncFedAvgParams(Params):
    clients_per_round: int = Field(10, ge=1, description="K: reports a round needs (the goal count)")
    over_selection: float = Field(1.0, ge=1, description="r: select ⌈r·K⌉ clients (Bonawitz et al.: 1.3)")
    deadline: float | None = Field(None, gt=0, description="virtual seconds after which a round closes (null: wait)")
    min_fraction: float = Field(0.8, gt=0, le=1, description="q: a round with fewer than q·K reports is abandoned")
    server_lr: float = Field(1.0, gt=0, description="η_g")
    server_momentum: float = Field(0.0, ge=0, lt=1, description="β (0: FedAvg, > 0: FedAvgM)")


class SyncFedAvg(EventStrategy):
    def __init__(self, params: SyncFedAvgParams, num_clients: int):
        self.params = params
        self.goal = min(params.clients_per_round, num_clients)
        self.select = min(math.ceil(params.over_selection * self.goal), num_clients)
        self.optimizer = ServerMomentum(params.server_lr, params.server_momentum)
        self.abandoned = 0
        self._open(0.0)

    def _open(self, now: float) -> None:
        self.opened = now
        self.selected = 0
        self.outstanding = 0
        self.reports: list[Arrival] = []

    def wanted(self, now: float, busy: int) -> int:
        return self.select - self.selected

    def started(self, task: Task) -> None:
        self.selected += 1
        self.outstanding += 1

    def deadline(self) -> float | None:
        return None if self.params.deadline is None else self.opened + self.params.deadline

    def arrive(self, x: ArrayRecord, arrival: Arrival, now: float) -> Step:
        self.outstanding -= 1
        self.reports.append(arrival)
        return self._close(now) if len(self.reports) == self.goal or self._all_in() else Step()

    def failed(self, task: Task, now: float) -> Step:
        self.outstanding -= 1
        return self._close(now) if self._all_in() else Step()

    def _all_in(self) -> bool:
        return self.selected == self.select and self.outstanding == 0

    def on_deadline(self, x: ArrayRecord, now: float) -> Step:
        return self._close(now)

    def _close(self, now: float) -> Step:
        """Complete the round with its reports (≥ q·K) or abandon it; open the next one."""
        reports, opened = self.reports, self.opened
        self._open(now)
        if len(reports) < self.params.min_fraction * self.goal:
            self.abandoned += 1
            return Step(cancel=True, metrics={"rounds_abandoned": self.abandoned})
        layout = Layout(reports[0].task.sent)
        weights = np.array([num_examples(a) for a in reports])
        mean = np.average(np.stack([update(a, layout) for a in reports]), axis=0, weights=weights)
        new = self.optimizer.step(layout.flatten(reports[0].task.sent), mean)
        return Step(model=layout.unflatten(new), cancel=True, used=reports,
                    metrics={"rounds_abandoned": self.abandoned, "round_seconds": now - opened})


@register("strategy", "sync_fedavg", params=SyncFedAvgParams, client=fedavg_train, event_driven=True)
def sync_fedavg(params: SyncFedAvgParams, setup) -> SyncFedAvg:
    """Synchronous FedAvg/FedAvgM on the virtual clock, with deadline and over-selection (Bonawitz et al. 2019)."""
    return SyncFedAvg(params, setup.scenario.num_clients)
