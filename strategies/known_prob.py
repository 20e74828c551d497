"""The known-participation-probability oracle of FedAU's experiments (Wang & Ji, ICLR 2024,
Sec. 5 "known participation statistics"; IBM/fedau ``main.py``, ``-weighting known_prob``):

    x ← x + η · (1/N) Σ_{n∈S_t} Δ_n / p_n

the unbiased aggregate that FedAU's estimated weights ω_n ≈ 1/p_n imitate. It is the one
strategy allowed to know p_n: its factory reads them through the explicit oracle channel
``fedsim.world.participation.probabilities(setup)``, which computes the same p_n as the world's
participation layer from the scenario (all ones when the scenario has no participation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.apps.client import fedavg_train
from fedsim.batched import fedavg_batched
from fedsim.world.participation import probabilities
from fedsim.registry import register
from fedsim.strategies.deltas import UpdateAggregation, UpdateParams


@dataclass(frozen=True)
class KnownProbState:
    probabilities: np.ndarray  # p_n, given by the oracle


class KnownProb(UpdateAggregation):
    def __init__(self, p: np.ndarray, global_lr: float, seed: int, fraction_evaluate: float = 1.0):
        super().__init__(len(p), global_lr, seed, fraction_evaluate)
        self.state = KnownProbState(np.asarray(p, dtype=np.float64))

    def direction(self, participants: np.ndarray, deltas: np.ndarray) -> tuple[np.ndarray, dict]:
        return (1.0 / self.state.probabilities[participants]) @ deltas / self.num_clients, {}


@register("strategy", "known_prob", params=UpdateParams, client=fedavg_train, batched=fedavg_batched)
def known_prob(params: UpdateParams, setup) -> KnownProb:
    """Oracle baseline: updates divided by the true p_n, averaged over all N (FedAU, Sec. 5)."""
    return KnownProb(probabilities(setup), params.global_lr, setup.scenario.seed, params.fraction_evaluate)
