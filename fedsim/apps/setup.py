"""What the server side knows before a run starts: the dataset, the partitions and the
seeded initial model (``prepare``), handed to every strategy and world layer."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
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


def prepare(scenario: Scenario) -> ServerSetup:
    """Dataset, partitions and the seeded initial model of a scenario."""
    ds = load_dataset(scenario.dataset.name, scenario.dataset.raw_params(), scenario.seed)
    parts = make_partitions(
        scenario.partition.name, scenario.partition.params, ds.y_train, scenario.num_clients, scenario.seed, ds.groups
    )
    with seeded_torch_rng(derive_seed(scenario.seed, "model-init")):  # models are built on CPU
        model = build_model(scenario.model.name, scenario.model.raw_params(), ds.input_shape, ds.num_classes)
    warm_up()  # torch's lazy imports happen now, not in round 1's time
    return ServerSetup(scenario, ds, parts, model)
