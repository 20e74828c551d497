"""FedAvg on client updates with a global learning rate, averaged over the participants or
over all N clients: the two FedAvg normalisations FedAU is compared with (Wang & Ji, ICLR
2024, Sec. 5; IBM/fedau ``main.py``, ``-weighting average_participating`` and
``average_all``).

    normalize = participants:  x ← x + η · (1/|S_t|) Σ_{n∈S_t} Δ_n    (0 if S_t is empty)
    normalize = all:           x ← x + η · (1/N)     Σ_{n∈S_t} Δ_n

Both are unweighted (every client counts once, as in the official code), unlike the
example-weighted ``fedavg`` strategy. Under heterogeneous participation both weight client
n's objective in proportion to p_n, i.e. they target Σ_n p_n F_n (up to scale) instead of
(1/N) Σ_n F_n; averaging over all N also shrinks the step by about Σ_n p_n / N. The README
of IBM/fedau tunes η to 1.78 (participants) and 10 (all).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from fedsim.apps.client import fedavg_train
from fedsim.batched import fedavg_batched
from fedsim.registry import register
from fedsim.strategies.deltas import UpdateAggregation, UpdateParams


class FedAvgUpdatesParams(UpdateParams):
    normalize: Literal["participants", "all"] = Field(
        "participants", description="divide the sum of updates by |S_t| (participants) or by N (all)"
    )


def average_updates(deltas: np.ndarray, num_clients: int, normalize: str) -> np.ndarray:
    """Σ_{n∈S_t} Δ_n divided by |S_t| or N; the zero vector when nobody participated."""
    if len(deltas) == 0:
        return np.zeros(deltas.shape[1])
    return deltas.sum(axis=0) / (len(deltas) if normalize == "participants" else num_clients)


class FedAvgUpdates(UpdateAggregation):
    def __init__(self, num_clients: int, global_lr: float, seed: int, normalize: str, fraction_evaluate: float = 1.0):
        super().__init__(num_clients, global_lr, seed, fraction_evaluate)
        self.normalize = normalize

    def direction(self, participants: np.ndarray, deltas: np.ndarray) -> tuple[np.ndarray, dict]:
        return average_updates(deltas, self.num_clients, self.normalize), {}


@register("strategy", "fedavg_updates", params=FedAvgUpdatesParams, client=fedavg_train, batched=fedavg_batched)
def fedavg_updates(params: FedAvgUpdatesParams, setup) -> FedAvgUpdates:
    """FedAvg on updates with global lr η, averaged over participants or over all N clients."""
    sc = setup.scenario
    return FedAvgUpdates(sc.num_clients, params.global_lr, sc.seed, params.normalize, params.fraction_evaluate)
