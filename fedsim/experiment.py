"""One federated run: build the world from a scenario, run the ServerApp on a runtime, record.

The ServerApp's ``main`` sets the fleet up, then drives the strategy through Flower's
Message-API calls (``configure_train`` → ``send_and_receive`` → ``aggregate_train``, and the
same for federated evaluation), evaluating the global model on the held-out test set every
``eval_every`` rounds and recording one row per round.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from torch import nn

from fedsim import client, registry
from fedsim.data import Dataset, load_dataset
from fedsim.models import build_model
from fedsim.partition import make_partitions
from fedsim.recorder import Recorder
from fedsim.runtime import RUNTIMES
from fedsim.scenario import Scenario
from fedsim.training import derive_seed, evaluate
from fedsim.world import Fleet, GridWrapper


@dataclass
class ServerSetup:
    """What the server side knows when it builds a strategy."""

    scenario: Scenario
    dataset: Dataset
    partitions: list[np.ndarray]
    model: nn.Module  # the initial global model (seeded)

    @property
    def partition_sizes(self) -> list[int]:
        return [len(p) for p in self.partitions]


@dataclass
class RunResult:
    scenario: Scenario
    metrics: pd.DataFrame
    model: nn.Module
    run_dir: Path

    @property
    def final_accuracy(self) -> float:
        return float(self.metrics["test_acc"].dropna().iloc[-1])


def prepare(scenario: Scenario) -> ServerSetup:
    """Dataset, partitions and the seeded initial model of a scenario."""
    ds = load_dataset(scenario.dataset.name, scenario.dataset.raw_params(), scenario.seed)
    parts = make_partitions(
        scenario.partition.name, scenario.partition.params, ds.y_train, scenario.num_clients, scenario.seed, ds.groups
    )
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(scenario.seed, "model-init"))
        model = build_model(scenario.model.name, scenario.model.raw_params(), ds.input_shape, ds.num_classes)
    return ServerSetup(scenario, ds, parts, model)


class FederatedLoop:
    """The server's round loop: a strategy driving the world's grid."""

    def __init__(self, setup: ServerSetup, strategy, grid: GridWrapper, recorder: Recorder):
        self.setup = setup
        self.scenario = setup.scenario
        self.strategy = strategy
        self.grid = grid  # the world as the strategy sees it
        self.recorder = recorder
        self.model = setup.model
        self.x_test = torch.from_numpy(setup.dataset.x_test)
        self.y_test = torch.from_numpy(setup.dataset.y_test)

    def run(self) -> ArrayRecord:
        arrays = ArrayRecord(self.model.state_dict())
        for rnd in range(1, self.scenario.rounds + 1):
            arrays = self.round(rnd, arrays)
        self.model.load_state_dict(arrays.to_torch_state_dict())
        return arrays

    def round(self, rnd: int, arrays: ArrayRecord) -> ArrayRecord:
        start = time.perf_counter()
        sc = self.scenario
        messages = list(self.strategy.configure_train(rnd, arrays, ConfigRecord(), self.grid))
        replies = self.grid.send_and_receive(messages)
        agg_start = time.perf_counter()
        new_arrays, train_metrics = self.strategy.aggregate_train(rnd, replies)
        agg_seconds = time.perf_counter() - agg_start
        if new_arrays is not None:
            arrays = new_arrays
        failed = [self.grid.partition_of(r) for r in replies if r.has_error()]
        row = {
            "round": rnd,
            "train_loss": _metric(train_metrics, "train_loss"),
            "test_loss": None,
            "test_acc": None,
            "clients_sampled": len(messages),
            "clients_replied": len(replies) - len(failed),
            "failed_clients": failed,
        }
        # whatever else the strategy reports (weight spreads, memory, ...)
        row.update({k: v for k, v in (train_metrics or {}).items() if k not in row and k != "num-examples"})
        if sc.evaluation.federated:
            eval_msgs = list(self.strategy.configure_evaluate(rnd, arrays, ConfigRecord(), self.grid))
            fed = self.strategy.aggregate_evaluate(rnd, self.grid.send_and_receive(eval_msgs))
            row["fed_loss"], row["fed_acc"] = _metric(fed, "eval_loss"), _metric(fed, "eval_acc")
        if rnd % sc.evaluation.eval_every == 0 or rnd == sc.rounds:
            self.model.load_state_dict(arrays.to_torch_state_dict())
            row["test_loss"], row["test_acc"] = evaluate(
                self.model, self.x_test, self.y_test, sc.evaluation.batch_size
            )
        row.update(self.grid.take_metrics())
        row["aggregate_seconds"] = agg_seconds
        row["seconds"] = time.perf_counter() - start
        self.recorder.log(row)
        return arrays


def _metric(record, key: str) -> float | None:
    if record is None or key not in record:
        return None
    value = float(record[key])
    return None if math.isnan(value) else value


def build_world(setup: ServerSetup, fleet: Fleet, run_dir: Path) -> GridWrapper:
    """Stack the scenario's world layers on the fleet; the strategy talks to the top one.

    Order, strategy side first: participation → faults → byzantine → eavesdropper → fleet.
    """
    from attacks import eavesdropper

    grid: GridWrapper = eavesdropper.build(setup, fleet, run_dir)
    return grid


def make_server_app(setup: ServerSetup, recorder: Recorder) -> ServerApp:
    """A ServerApp closed over this run's setup and recorder (it runs in this process)."""
    entry = registry.get("strategy", setup.scenario.strategy.name)
    strategy = entry.factory(setup.scenario.strategy.params, setup)
    scenario_json = json.dumps(setup.scenario.to_dict(), sort_keys=True)
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        fleet = Fleet(grid, setup.scenario.num_clients)
        fleet.connect(scenario_json, setup.partitions)
        FederatedLoop(setup, strategy, build_world(setup, fleet, recorder.dir), recorder).run()

    return app


def run_scenario(scenario: Scenario) -> RunResult:
    """Run one validated scenario on its runtime; returns metrics, final model, run dir."""
    logging.getLogger("flwr").setLevel(logging.WARNING)
    setup = prepare(scenario)
    recorder = Recorder(scenario)
    try:
        RUNTIMES[scenario.runtime.name](make_server_app(setup, recorder), client.app, scenario)
    finally:
        recorder.close()
    metrics = recorder.finish(setup.model)
    return RunResult(scenario, metrics, setup.model, recorder.dir)
