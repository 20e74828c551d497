"""FedVarp, "FedVARP: Tackling the Variance Due to Partial Client Participation in Federated
Learning" (Jhunjhunwala et al., UAI 2022, arXiv 2207.14130), as FedAU's experiments run it
(IBM/fedau ``main.py``, ``-weighting fedvarp``): a SAGA-style correction with the latest
update y_n of every client.

    memory y_n ∈ R^d for every client n, initially 0
    if S_t is not empty:
        v ← (1/N) Σ_{all n} y_n  +  (1/|S_t|) Σ_{n∈S_t} (Δ_n − y_n)     # y before this round
        for n ∈ S_t:  y_n ← Δ_n
    else:  v ← 0                                                        # as in the code
    x ← x + η · v

State: the N×d memory (float32) and the mean of its rows (float64, d), as for MIFA.
"""

from __future__ import annotations

import numpy as np

from fedsim.apps.client import fedavg_train
from fedsim.batched import fedavg_batched
from fedsim.registry import register
from fedsim.strategies.deltas import UpdateParams
from fedsim.strategies.mifa import MemoryAggregation, UpdateMemory, remember


def fedvarp_direction(memory: UpdateMemory, participants: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """mean_all(y) + mean_{S_t}(Δ_n − y_n), with the memory before this round's update."""
    if len(participants) == 0:
        return np.zeros(memory.updates.shape[1])
    return memory.mean + (deltas - memory.updates[participants]).mean(axis=0)


class FedVarp(MemoryAggregation):
    def direction(self, participants: np.ndarray, deltas: np.ndarray) -> tuple[np.ndarray, dict]:
        step = fedvarp_direction(self.memory(deltas.shape[1]), participants, deltas)
        self.state = remember(self.state, participants, deltas)
        return step, {}


@register("strategy", "fedvarp", params=UpdateParams, client=fedavg_train, batched=fedavg_batched)
def fedvarp(params: UpdateParams, setup) -> FedVarp:
    """FedVarp: participants' updates corrected by an N×d memory of latest updates (Jhunjhunwala et al. 2022)."""
    return FedVarp(setup.scenario.num_clients, params.global_lr, setup.scenario.seed, params.fraction_evaluate)
