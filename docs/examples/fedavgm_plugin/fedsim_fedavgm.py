"""FedAvgM (Hsu, Qi & Brown 2019, arXiv 1909.06335, Alg. 1): FedAvg with server momentum.

A complete fedsim plugin: a params model, a strategy and its registration. The server
keeps a momentum buffer v and, each round t, with Δ_t = x_t − mean_{S_t} y_i (the
example-weighted mean of the returned models y_i):

    v_{t+1} = β·v_t + Δ_t              (Alg. 1, server momentum β)
    x_{t+1} = x_t − η·v_{t+1}           (server learning rate η)

With β = 0 and η = 1 it is FedAvg. The update rule is Flower's own ``FedAvgM``;
fedsim's ``SeededSampling`` makes each round's cohort a function of (seed, round).
"""

from __future__ import annotations

from flwr.serverapp import strategy as flwr_strategy
from pydantic import Field

from fedsim.apps.client import fedavg_train
from fedsim.registry import register
from fedsim.sampling import SeededSampling
from fedsim.strategies.fedavg import FedAvgParams, sampling_kwargs


class FedAvgMParams(FedAvgParams):
    """FedAvg's sampling keys plus the server optimiser's two."""

    server_lr: float = Field(1.0, gt=0, description="server learning rate η")
    server_momentum: float = Field(0.9, ge=0, lt=1, description="server momentum β")


class FedAvgM(SeededSampling, flwr_strategy.FedAvgM):
    """Flower's FedAvgM with a cohort that is a function of (seed, round)."""


@register("strategy", "fedavgm", params=FedAvgMParams, client=fedavg_train)
def fedavgm(params: FedAvgMParams, setup) -> FedAvgM:
    """FedAvgM: FedAvg with server momentum (Hsu et al. 2019)."""
    return FedAvgM(server_learning_rate=params.server_lr, server_momentum=params.server_momentum,
                   **sampling_kwargs(params, setup))
