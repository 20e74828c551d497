"""FedProx (Li et al., MLSys 2020, arXiv 1812.06127), on Flower's Message-API FedProx.

Client i minimises f_i(w) + (μ/2)·‖w − x‖² (Eq. 2), i.e. adds μ·(w − x) to every local
gradient; Flower's FedProx only sends μ as ``config["proximal-mu"]``, so the client
handler here adds the term. Server: as FedAvg.
"""

from __future__ import annotations

import torch
from flwr.app import RecordDict
from flwr.serverapp import strategy as flwr_strategy
from pydantic import Field

from fedsim.apps.client import ClientEnv
from fedsim.batched import Cohort, Correction
from fedsim.registry import register
from fedsim.sampling import SeededSampling
from fedsim.strategies.fedavg import ExampleWeightedMean, FedAvgParams, sampling_kwargs


class FedProxParams(FedAvgParams):
    mu: float = Field(0.01, ge=0, description="proximal coefficient μ")


class FedProx(SeededSampling, ExampleWeightedMean, flwr_strategy.FedProx):
    """Flower's FedProx with a cohort that is a function of (seed, round)."""


def fedprox_train(content: RecordDict, env: ClientEnv) -> RecordDict:
    """Local SGD on f_i(w) + (μ/2)‖w − x‖² from the global model x."""
    model = env.load(content["arrays"])
    mu = float(content["config"]["proximal-mu"])
    params = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params]

    def proximal_term() -> None:
        for p, x in zip(params, anchor, strict=True):
            p.grad.add_(p.detach() - x, alpha=mu)

    loss, _ = env.train(int(content["config"]["server-round"]), grad_hook=proximal_term if mu else None)
    return env.reply(loss)


def fedprox_batched(cohort: Cohort) -> list[RecordDict]:
    """``fedprox_train`` for a cohort: μ·(w − x) added to every client's gradients."""
    mu = torch.tensor([float(c["config"]["proximal-mu"]) for c in cohort.contents], dtype=torch.float64)
    params, losses = cohort.local_sgd(correction=Correction(coef=mu, anchor=cohort.vector(cohort.start)))
    return cohort.replies(params, losses)


@register("strategy", "fedprox", params=FedProxParams, client=fedprox_train, batched=fedprox_batched, canary="bypass")
def fedprox(params: FedProxParams, setup) -> FedProx:
    """FedProx: FedAvg with a proximal term μ/2‖w − x‖² in local training (Li et al. 2020)."""
    return FedProx(proximal_mu=params.mu, **sampling_kwargs(params, setup))
