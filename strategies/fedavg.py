"""FedAvg (McMahan et al., AISTATS 2017, arXiv 1602.05629), on Flower's Message-API FedAvg.

Server: x ← Σ_{i∈S_t} (n_i / Σ_j n_j) · y_i, the example-weighted mean of the returned
models (Alg. 1, η_g = 1). Client: ``fedsim.apps.client.fedavg_train`` (local SGD from x).
"""

from __future__ import annotations

from flwr.serverapp import strategy as flwr_strategy
from pydantic import Field

from fedsim.apps.client import fedavg_train
from fedsim.batched import fedavg_batched
from fedsim.records import checked_replies, num_examples, train_metrics, weighted_mean
from fedsim.registry import Params, register
from fedsim.sampling import SeededSampling


class FedAvgParams(Params):
    fraction_train: float = Field(1.0, gt=0, le=1, description="fraction of clients sampled per round")
    min_train_nodes: int = Field(1, ge=1)
    fraction_evaluate: float = Field(1.0, ge=0, le=1, description="fraction for federated evaluation")


class ExampleWeightedMean:
    """Flower FedAvg's ``aggregate_train`` (same checks, same sums in the same order) with
    ``fedsim.records.weighted_mean``, which reads each ``.npy`` header once, and the
    reply checks run on ``ReplyView``s (``fedsim.records.checked_replies``)."""

    def aggregate_train(self, server_round, replies):
        valid, views = checked_replies(self, replies)
        if not valid:
            return None, None
        weights = [num_examples(v.content, self.weighted_by_key) for v in views]
        arrays = weighted_mean([v[self.arrayrecord_key] for v in views], weights)
        return arrays, train_metrics(self, views)


class FedAvg(SeededSampling, ExampleWeightedMean, flwr_strategy.FedAvg):
    """Flower's FedAvg with a cohort that is a function of (seed, round)."""


def sampling_kwargs(params: FedAvgParams, setup) -> dict:
    n = setup.scenario.num_clients
    return {
        "seed": setup.scenario.seed,
        "fraction_train": params.fraction_train,
        "min_train_nodes": min(params.min_train_nodes, n),
        "fraction_evaluate": params.fraction_evaluate,
        "min_evaluate_nodes": 1 if params.fraction_evaluate else 0,
        "min_available_nodes": 1,
    }


@register("strategy", "fedavg", params=FedAvgParams, client=fedavg_train, batched=fedavg_batched, canary="bypass")
def fedavg(params: FedAvgParams, setup) -> FedAvg:
    """FedAvg: example-weighted average of client models (McMahan et al. 2017)."""
    return FedAvg(**sampling_kwargs(params, setup))
