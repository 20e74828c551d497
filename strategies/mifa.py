"""MIFA, "Fast Federated Learning in the Presence of Arbitrary Device Unavailability" (Gu et
al., NeurIPS 2021, arXiv 2106.04159), as FedAU's experiments run it (IBM/fedau ``main.py``,
``-weighting mifa``):

    memory G_n ∈ R^d for every client n, initially 0
    for n ∈ S_t:  G_n ← Δ_n                 # the client's latest update
    x ← x + η · (1/N) Σ_{all n} G_n         # also in rounds where nobody participated

Clients that never participated contribute their initial zero. The server holds the
N×d memory (float32) and the running mean of its rows (float64, d), updated with the
changed rows only; ``server_state_bytes`` reports both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.apps.client import fedavg_train
from fedsim.batched import fedavg_batched
from fedsim.registry import register
from fedsim.strategies.deltas import UpdateAggregation, UpdateParams


@dataclass(frozen=True)
class UpdateMemory:
    """The latest update of every client (rows, N×d) and the mean of the rows."""

    updates: np.ndarray  # (N, d) float32
    mean: np.ndarray  # (d,) float64: (1/N) Σ_n updates[n]


def init_memory(num_clients: int, dim: int) -> UpdateMemory:
    return UpdateMemory(np.zeros((num_clients, dim), dtype=np.float32), np.zeros(dim, dtype=np.float64))


def remember(memory: UpdateMemory, participants: np.ndarray, deltas: np.ndarray) -> UpdateMemory:
    """Replace the participants' rows with their new updates (in place) and refresh the mean."""
    new = deltas.astype(np.float32)
    change = new.astype(np.float64) - memory.updates[participants]
    memory.updates[participants] = new
    return UpdateMemory(memory.updates, memory.mean + change.sum(axis=0) / len(memory.updates))


class MemoryAggregation(UpdateAggregation):
    """An update aggregation with the N×d memory of every client's latest update (MIFA, FedVarp)."""

    def __init__(self, num_clients: int, global_lr: float, seed: int, fraction_evaluate: float = 1.0):
        super().__init__(num_clients, global_lr, seed, fraction_evaluate)
        self.state: UpdateMemory | None = None  # allocated when the model size is known

    def memory(self, dim: int) -> UpdateMemory:
        if self.state is None:
            self.state = init_memory(self.num_clients, dim)
        return self.state


class MIFA(MemoryAggregation):
    def direction(self, participants: np.ndarray, deltas: np.ndarray) -> tuple[np.ndarray, dict]:
        self.state = remember(self.memory(deltas.shape[1]), participants, deltas)
        return self.state.mean.copy(), {}


@register("strategy", "mifa", params=UpdateParams, client=fedavg_train, batched=fedavg_batched)
def mifa(params: UpdateParams, setup) -> MIFA:
    """MIFA: average of every client's latest update, kept in an N×d memory (Gu et al. 2021)."""
    return MIFA(setup.scenario.num_clients, params.global_lr, setup.scenario.seed, params.fraction_evaluate)
