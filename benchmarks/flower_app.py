"""A plain Flower app (no fedsim) doing the benchmark's work: the runtime-overhead baseline (d).

Data, partitions and local training are the same functions fedsim uses; the app itself is
Flower's own: a ``ClientApp`` that trains its partition and Flower's ``FedAvg.start`` loop.
Settings come from environment variables so that Ray workers see them too.
"""

from __future__ import annotations

import functools
import os
import time

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedsim.data.datasets import load_dataset
from fedsim.models import build_model
from fedsim.data.partition import make_partitions
from fedsim.registry import get
from fedsim.training import evaluate, local_sgd, torch_generator

# The benchmark's workloads: the smallest (overhead-bound) and the main job's local training.
WORKLOADS = {
    "mlp": {"model": ("mlp", {"hidden": [64]}), "client": {"epochs": 1, "batch_size": 32, "lr": 0.1, "momentum": 0.0}},
    "cnn": {"model": ("cnn", {}), "client": {"epochs": 2, "batch_size": 16, "lr": 0.05, "momentum": 0.9}},
}


def workload() -> dict:
    return WORKLOADS[os.environ.get("BENCH_WORKLOAD", "mlp")]


def new_model(ds):
    name, params = workload()["model"]
    return build_model(name, params, ds.input_shape, ds.num_classes)


@functools.lru_cache(maxsize=4)
def world(num_clients: int, name: str):
    ds = load_dataset("digits", {}, 0)
    parts = make_partitions("iid", get("partitioner", "iid").params(), ds.y_train, num_clients, 0)
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    return ds, [(x[p], y[p]) for p in parts], new_model(ds)


def this_world():
    return world(int(os.environ["BENCH_CLIENTS"]), os.environ.get("BENCH_WORKLOAD", "mlp"))


clientapp = ClientApp()


@clientapp.train()
def train(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    pid = int(context.node_config["partition-id"])
    _, parts, model = this_world()
    x, y = parts[pid]
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    rnd = int(msg.content["config"]["server-round"])
    loss, _ = local_sgd(model, x, y, steps=None, **workload()["client"], gen=torch_generator(0, rnd, pid, "shuffle"))
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(x)})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)


def server_app(rounds: int, stamps: list[float]) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        n = int(os.environ["BENCH_CLIENTS"])
        ds, _, model = this_world()
        xt, yt = torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test)

        def central(rnd: int, arrays: ArrayRecord) -> MetricRecord:
            model.load_state_dict(arrays.to_torch_state_dict())
            loss, acc = evaluate(model, xt, yt)
            stamps.append(time.perf_counter())
            return MetricRecord({"loss": loss, "acc": acc})

        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            init = new_model(ds)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(init.state_dict()), num_rounds=rounds, evaluate_fn=central)

    return app
