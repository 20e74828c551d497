"""What the server side knows before a run starts: the dataset, the partitions and the
seeded initial model (``prepare``), handed to every strategy and world layer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedsim.data.datasets import Dataset, load_dataset
from fedsim.data.partition import make_partitions
from fedsim.models import build_model
from fedsim.scenario import Scenario
from fedsim.training import derive_seed


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
