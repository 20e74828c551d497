"""FedSGD (McMahan et al., AISTATS 2017, arXiv 1602.05629, Sec. 2 "FederatedSGD").

Client k computes g_k = ∇_w ℓ(w; b_k), the gradient of the mean cross-entropy on one
minibatch b_k of ``client.batch_size`` examples (the first batch of its seeded shuffle),
in train mode (dropout is live), and uploads g_k itself. The server applies
w ← w − η·Σ_k (n_k / n)·g_k with η = ``client.lr`` (and ``client.weight_decay`` λ as
w ← w − η·(Σ_k (n_k / n)·g_k + λ·w), the SGD convention), n_k the client's number of
examples: one FedSGD round with the same batches equals FedAvg with one local step.

This is the upload of gradient-inversion threat models (the server sees a gradient of a
known model on one batch of private examples); ``attacks/`` reconstructs from it.
"""

from __future__ import annotations

import torch.nn.functional as F
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp import strategy as flwr_strategy

from fedsim.apps.client import ClientEnv
from fedsim.records import checked_replies, num_examples, to_record, to_state_dict, train_metrics, weighted_mean
from fedsim.registry import register
from fedsim.sampling import SeededSampling
from fedsim.training import batches, derive_seed, seeded_torch_rng
from fedsim.strategies.fedavg import FedAvgParams, sampling_kwargs


def fedsgd_train(content: RecordDict, env: ClientEnv) -> RecordDict:
    """Client: the gradient of the loss on one minibatch at the received model (train mode)."""
    model = env.load(content["arrays"])
    rnd = int(content["config"]["server-round"])
    idx = next(batches(len(env.x), env.scenario.client.batch_size, 1, None, env.generator(rnd, "shuffle")))
    model.train()
    model.zero_grad(set_to_none=True)
    # dropout masks from the (seed, round, client) stream, not the process's global RNG
    with seeded_torch_rng(derive_seed(env.scenario.seed, rnd, env.partition_id, "dropout"), env.device):
        loss = F.cross_entropy(model(env.x[idx]), env.y[idx])
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    metrics = MetricRecord({"train_loss": loss.item(), "num-examples": len(env.x)})
    return RecordDict({"arrays": to_record(grads), "metrics": metrics})


class FedSGD(SeededSampling, flwr_strategy.FedAvg):
    """Flower's FedAvg sampling and reply checks; aggregation is a gradient step."""

    def __init__(self, *, lr: float, weight_decay: float, **kwargs):
        super().__init__(**kwargs)
        self.lr = lr
        self.weight_decay = weight_decay
        self.current: ArrayRecord | None = None

    def configure_train(self, server_round, arrays, config, grid):
        self.current = arrays  # the model the gradients will be taken at
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        valid, views = checked_replies(self, replies)
        if not valid:
            return None, None
        weights = [num_examples(v.content, self.weighted_by_key) for v in views]
        grad = to_state_dict(weighted_mean([v[self.arrayrecord_key] for v in views], weights))
        new = to_state_dict(self.current)
        for key, g in grad.items():
            new[key] = new[key] - self.lr * (g + self.weight_decay * new[key])
        return to_record(new), train_metrics(self, views)


@register("strategy", "fedsgd", params=FedAvgParams, client=fedsgd_train, upload="gradient")
def fedsgd(params: FedAvgParams, setup) -> FedSGD:
    """FedSGD: clients upload one minibatch gradient; the server takes an SGD step (McMahan et al. 2017)."""
    client = setup.scenario.client
    return FedSGD(lr=client.lr, weight_decay=client.weight_decay, **sampling_kwargs(params, setup))
