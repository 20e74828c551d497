"""What the server side knows before a run starts: the dataset, the partitions and the
seeded initial model (``prepare``), handed to every strategy and world layer; and
``connect_nodes``, which sets fedsim's ClientApp up under any Flower ServerApp."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.serverapp import Grid
from torch import nn

from fedsim.data.datasets import Dataset, load_dataset
from fedsim.data.partition import make_partitions
from fedsim.models import build_model
from fedsim.scenario import Scenario
from fedsim.training import derive_seed, resolve_device, seeded_torch_rng, warm_up


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

    @property
    def device(self) -> torch.device:
        """``runtime.device`` of this run (deployments: CPU)."""
        return resolve_device(getattr(self.scenario.runtime, "device", "cpu"))

    def test_kit(self) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        """A model to load global models into for testing, and the test set, on the run's
        device (on CPU the initial model itself, whose final state the run returns)."""
        device = self.device
        model = self.model if device.type == "cpu" else copy.deepcopy(self.model).to(device)
        x, y = torch.from_numpy(self.dataset.x_test), torch.from_numpy(self.dataset.y_test)
        return model, x.to(device), y.to(device)


def partitions_of(scenario: Scenario, ds: Dataset | None = None) -> list[np.ndarray]:
    """Every client's example indices (the same on the server and on self-set-up nodes)."""
    ds = ds or load_dataset(scenario.dataset.name, scenario.dataset.raw_params(), scenario.seed)
    return make_partitions(
        scenario.partition.name, scenario.partition.params, ds.y_train, scenario.num_clients, scenario.seed, ds.groups
    )


def prepare(scenario: Scenario) -> ServerSetup:
    """Dataset, partitions and the seeded initial model of a scenario."""
    ds = load_dataset(scenario.dataset.name, scenario.dataset.raw_params(), scenario.seed)
    parts = partitions_of(scenario, ds)
    with seeded_torch_rng(derive_seed(scenario.seed, "model-init")):  # models are built on CPU
        model = build_model(scenario.model.name, scenario.model.raw_params(), ds.input_shape, ds.num_classes)
    warm_up()  # torch's lazy imports happen now, not in round 1's time
    return ServerSetup(scenario, ds, parts, model)


def connect_nodes(grid: Grid, scenario: Scenario | str | Path | dict, wait_s: float = 300.0) -> ServerSetup:
    """Set fedsim's ClientApp up on the nodes of any Flower ``Grid`` (bring your own ServerApp).

    Sends fedsim's ``query.hello`` (each node answers with its ``node_config["partition-id"]``)
    and ``query.setup`` (the resolved scenario and that partition's example indices), the
    exchange fedsim's own ServerApp starts every run with. Call it at the top of your
    ServerApp's ``main``; then drive the nodes with any strategy, starting from
    ``ArrayRecord(setup.model.state_dict())``. Waits up to ``wait_s`` seconds for
    ``num_clients`` nodes; raises RuntimeError when a node is missing or refuses.
    """
    from fedsim.scenario import load
    from fedsim.world.base import Fleet

    if not isinstance(scenario, Scenario):
        scenario = load(scenario)
    setup = prepare(scenario)
    Fleet(grid, scenario.num_clients).connect(json.dumps(scenario.to_dict(), sort_keys=True), setup.partitions, wait_s,
                                             lazy=False)
    return setup
