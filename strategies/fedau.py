"""FedAU (Wang & Ji, "A Lightweight Method for Tackling Unknown Participation Statistics in
Federated Averaging", ICLR 2024, arXiv 2306.03401; official code IBM/fedau ``main.py``,
``-weighting adaptive``).

FedAvg whose aggregation weight for client n is an online estimate ω_n of its mean
participation interval (Alg. 2, online weight estimation), so that ω_n → 1/p_n under
Bernoulli(p_n) participation and E[ω_n I_n^t] ≈ 1: the aggregate is then unbiased for the
objective (1/N) Σ_n F_n, whatever the unknown participation probabilities (Alg. 1):

    for every client n, every round t (participants and non-participants alike):
        ω_n^t = Ω_n if M_n > 0 else 1                  # intervals completed before round t only
        if n participated:  interval S_n + 1 completes;  S_n ← 0
        else:               S_n ← S_n + 1;  if S_n = K: interval K completes (censored);  S_n ← 0
        a completed interval L updates Ω_n ← (M_n Ω_n + L) / (M_n + 1),  M_n ← M_n + 1
    x ← x + η · (1/N) · Σ_{n ∈ S_t} ω_n^t Δ_n         # N: all clients, not |S_t|

ω_n^t is computed before the round's own interval is recorded, so it is independent of
I_n^t (the condition of the unbiasedness argument). The official code keeps every interval
in a list and averages it; the running mean here is the same number with O(1) memory per
client. The cutoff K (``cutoff``; None = ∞, the code's default ``-k-adaptive 100000``)
trades bias for variance for clients that participate rarely.

The server learns who participated from the replies (partition ids via the grid; a client
whose reply is an error did not participate); it never sees p_n. Clients run plain local SGD and return their models; Δ_n = y_n − x is computed on
the server (``fedsim.strategies.deltas``). State: three length-N vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field

from fedsim.apps.client import fedavg_train
from fedsim.batched import fedavg_batched
from fedsim.registry import register
from fedsim.strategies.deltas import UpdateAggregation, UpdateParams


class FedAUParams(UpdateParams):
    cutoff: int | None = Field(None, ge=1, description="K: censor intervals at K rounds (None: infinite)")


@dataclass(frozen=True)
class IntervalState:
    """Per client n: Ω_n (mean of completed intervals), M_n (their count), S_n (current gap)."""

    mean: np.ndarray  # Ω_n, float64
    count: np.ndarray  # M_n, int64
    gap: np.ndarray  # S_n, int64: rounds since the last participation (or the start)


def init_intervals(num_clients: int) -> IntervalState:
    return IntervalState(
        np.zeros(num_clients, dtype=np.float64),
        np.zeros(num_clients, dtype=np.int64),
        np.zeros(num_clients, dtype=np.int64),
    )


def aggregation_weights(state: IntervalState) -> np.ndarray:
    """ω_n = Ω_n, or 1 for a client with no completed interval yet."""
    return np.where(state.count > 0, state.mean, 1.0)


def update_intervals(state: IntervalState, participated: np.ndarray, cutoff: int | None = None) -> IntervalState:
    """Advance every client's interval record by one round, given I^t ∈ {0,1}^N."""
    gap = np.where(participated, 0, state.gap + 1)
    censored = ~participated & (gap >= cutoff) if cutoff is not None else np.zeros_like(participated)
    closed = participated | censored
    length = np.where(participated, state.gap + 1, gap)  # the completed interval's length
    count = state.count + closed
    mean = np.where(closed, (state.count * state.mean + length) / np.maximum(count, 1), state.mean)
    return IntervalState(mean, count, np.where(censored, 0, gap))


def participation_mask(participants: np.ndarray, num_clients: int) -> np.ndarray:
    """I^t ∈ {0,1}^N from the partition ids that answered this round."""
    mask = np.zeros(num_clients, dtype=bool)
    mask[participants] = True
    return mask


def fedau_direction(deltas: np.ndarray, weights: np.ndarray, num_clients: int) -> np.ndarray:
    """(1/N) Σ_{n ∈ S_t} ω_n Δ_n: ``deltas`` rows and ``weights`` are the participants'."""
    return weights @ deltas / num_clients


class FedAU(UpdateAggregation):
    """FedAU server: adaptive weights from participation intervals, averaged over all N."""

    def __init__(self, num_clients: int, global_lr: float, seed: int, cutoff: int | None, fraction_evaluate: float = 1.0):
        super().__init__(num_clients, global_lr, seed, fraction_evaluate)
        self.cutoff = cutoff
        self.state = init_intervals(num_clients)

    def direction(self, participants: np.ndarray, deltas: np.ndarray) -> tuple[np.ndarray, dict]:
        omega = aggregation_weights(self.state)  # ω^t: intervals completed before this round
        step = fedau_direction(deltas, omega[participants], self.num_clients)
        self.state = update_intervals(self.state, participation_mask(participants, self.num_clients), self.cutoff)
        spread = {
            "omega_mean": float(omega.mean()),
            "omega_std": float(omega.std()),
            "omega_min": float(omega.min()),
            "omega_max": float(omega.max()),
        }
        return step, spread

    def artifacts(self) -> dict:
        """Final weights (those the next round would use) and completed-interval counts."""
        return {
            "fedau_weights": {
                "omega": aggregation_weights(self.state).tolist(),
                "intervals": self.state.count.tolist(),
                "cutoff": self.cutoff,
                "rounds": self.last_round,
            }
        }


@register("strategy", "fedau", params=FedAUParams, client=fedavg_train, batched=fedavg_batched, canary="bypass")
def fedau(params: FedAUParams, setup) -> FedAU:
    """FedAU: weights from online participation-interval estimates, divided by N (Wang & Ji 2024)."""
    return FedAU(setup.scenario.num_clients, params.global_lr, setup.scenario.seed, params.cutoff, params.fraction_evaluate)
