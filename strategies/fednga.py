"""Fed-NGA (Zuo et al., "Efficient Federated Learning against Byzantine Attacks and Data
Heterogeneity via Aggregating Normalized Gradients", NeurIPS 2025, arXiv 2408.09539), Alg. 1:

    α_m = S_m / Σ_j S_j                                  (data-size weights)
    every round t, every client m at the broadcast model w^t:
        g_m = ∇F_m(w^t; ξ_m)                             (one minibatch gradient)
    w^{t+1} = w^t − η_t Σ_m α_m g_m / ‖g_m‖₂

This module also holds the *update path* that Fed-NGA and the robust baselines of
``strategies/robust.py`` share, so that every rule aggregates the same uploads:

- client (``upload_update``): the update at w^t, either one stochastic gradient on a
  minibatch of ``client.batch_size`` examples (the paper's protocol; ``client.lr``,
  ``epochs``, ``steps``, ``momentum`` and ``weight_decay`` are then unused), or, with
  ``client_update: local_sgd``, w^t − y after the scenario's local SGD;
- server (``ServerDescent``): w^{t+1} = w^t − η_t · R(updates), R the rule, η_t the
  step-size schedule below.

Step size: η_t = lr / (1 + lr_decay · t)^lr_power, t = round − 1. This is the theory's
η/(t + c)^{1/2+δ} up to a constant, and with the defaults (0.5, 0.002, 1/2) the MNIST
schedule of Sec. 4.1, η_t = 1/(2√(0.002t + 1)) (read from the paper's text; unverified
against the PDF).

Zero-norm updates: g/‖g‖ is undefined for g = 0 (the paper does not say); such an update
contributes the zero vector and keeps its weight α_m, so the step shrinks by α_m. The
round reports how many there were (``zero_norm_updates``).
"""

from __future__ import annotations

from abc import abstractmethod

from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as flwr_strategy
from pydantic import Field

from fedsim.apps.client import ClientEnv
from fedsim.batched import Cohort
from fedsim.records import checked_replies, num_examples, only_arrays, stack, train_metrics, unflatten
from fedsim.registry import register
from fedsim.sampling import SeededSampling
from fedsim.training import batches
from fedsim.strategies.fedavg import FedAvgParams, sampling_kwargs

# ---------------------------------------------------------------------------- the client


def upload_update(content: RecordDict, env: ClientEnv) -> RecordDict:
    """Client of the update path: one minibatch gradient at w^t (Alg. 1), or w^t − y after local SGD."""
    model = env.load(content["arrays"])
    rnd = int(content["config"]["server-round"])
    params = dict(model.named_parameters())
    if str(content["config"]["client-update"]) == "gradient":
        idx = next(batches(len(env.x), env.scenario.client.batch_size, 1, 1, env.generator(rnd, "minibatch")))
        model.train()
        loss = F.cross_entropy(model(env.x[idx]), env.y[idx])
        update = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
        train_loss = loss.item()
    else:
        start = {k: p.detach().clone() for k, p in params.items()}
        train_loss, _ = env.train(rnd)
        update = {k: start[k] - p.detach() for k, p in params.items()}
    return _upload(update, train_loss, len(env.x))


def upload_update_batched(cohort: Cohort) -> list[RecordDict]:
    """``upload_update`` for a cohort: every client's minibatch gradient at w^t from one
    stacked call, or w^t − y after the cohort's stacked local SGD."""
    if str(cohort.contents[0]["config"]["client-update"]) == "gradient":
        sched = cohort.schedule("minibatch", cohort.envs[0].scenario.client.batch_size, 1, 1)
        update, losses = cohort.gradient(sched, 0)(cohort.start)
    else:
        params, losses = cohort.local_sgd()
        update = {k: cohort.start[k] - p for k, p in params.items()}
    return [
        _upload({k: v[i] for k, v in update.items()}, float(losses[i]), len(env.x)) for i, env in enumerate(cohort.envs)
    ]


def _upload(update: dict[str, torch.Tensor], train_loss: float, num_examples: int) -> RecordDict:
    return RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in update.items()}),
            "metrics": MetricRecord({"train_loss": train_loss, "num-examples": num_examples}),
        }
    )


# ---------------------------------------------------------------------------- the server


class UpdatePathParams(FedAvgParams):
    """Shared by Fed-NGA and the robust baselines: uploads, step size, full participation."""

    client_update: Literal["gradient", "local_sgd"] = Field(
        "gradient", description="one minibatch gradient (Fed-NGA) or w − y after the scenario's local SGD"
    )
    lr: float = Field(0.5, gt=0, description="η in η_t = η / (1 + lr_decay·t)^lr_power")
    lr_decay: float = Field(0.002, ge=0)
    lr_power: float = Field(0.5, ge=0)


def step_size(params: UpdatePathParams, server_round: int) -> float:
    """η_t = lr / (1 + lr_decay · t)^lr_power with t = server_round − 1."""
    return params.lr / (1.0 + params.lr_decay * (server_round - 1)) ** params.lr_power


class ServerDescent:
    """Mix in first: the rule below it combines the uploads; the server steps w ← w − η_t · R."""

    def __init__(self, *args, path: UpdatePathParams, **kwargs):
        super().__init__(*args, **kwargs)
        self.path = path
        self.current: ArrayRecord | None = None  # w^t, the model sent this round

    def configure_train(self, server_round, arrays, config, grid):
        self.current = arrays
        config["client-update"] = self.path.client_update
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        direction, metrics = super().aggregate_train(server_round, replies)
        if direction is None:
            return None, metrics
        lr = step_size(self.path, server_round)
        new = ArrayRecord()
        for key, arr in self.current.items():
            w = arr.numpy()
            new[key] = Array((w - lr * direction[key].numpy()).astype(w.dtype)) if key in direction else arr
        metrics["server_lr"] = lr
        return new, metrics


class VectorRule(flwr_strategy.FedAvg):
    """A rule on the uploads as rows of one matrix: ``combine(updates, weights) -> (vector, metrics)``."""

    @abstractmethod
    def combine(self, updates: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The aggregated update of the (n × d) uploads with weights α (n,), and metrics."""

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        valid, views = checked_replies(self, replies)
        if not valid:
            return None, None
        records = [only_arrays(v.content)[1] for v in views]
        updates = stack(records)
        weights = torch.tensor([num_examples(v.content, self.weighted_by_key) for v in views], dtype=updates.dtype)
        vector, extra = self.combine(updates, weights / weights.sum())
        metrics = train_metrics(self, views)
        metrics.update(extra)
        return unflatten(vector, records[0]), metrics


# ------------------------------------------------------------------------------ Fed-NGA


def normalized_average(updates: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Σ_m α_m g_m / ‖g_m‖₂ (Alg. 1, server step), zero updates contributing 0; O(n·d).

    α_m = S_m / Σ_j S_j over the clients that replied (all M under full participation).
    Returns the vector and the number of zero-norm updates.
    """
    norms = torch.linalg.vector_norm(updates, dim=1)
    nonzero = norms > 0
    scale = torch.where(nonzero, alpha.to(updates.dtype) / torch.where(nonzero, norms, 1.0), 0.0)
    return scale @ updates, int((~nonzero).sum())


class NormalizedAveraging(VectorRule):
    def combine(self, updates, weights):
        vector, zeros = normalized_average(updates, weights)
        return vector, {"zero_norm_updates": zeros}


class FedNGA(ServerDescent, SeededSampling, NormalizedAveraging):
    """Fed-NGA: w ← w − η_t Σ_m α_m g_m/‖g_m‖ on a (seed, round)-determined cohort (all by default)."""


@register("strategy", "fednga", params=UpdatePathParams, client=upload_update, batched=upload_update_batched, upload="update")
def fednga(params: UpdatePathParams, setup) -> FedNGA:
    """Fed-NGA: data-weighted mean of normalized client gradients (Zuo et al. 2025)."""
    return FedNGA(path=params, **sampling_kwargs(params, setup))
