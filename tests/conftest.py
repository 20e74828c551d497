import os

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


@pytest.fixture
def tiny(tmp_path):
    """A small, fast scenario mapping (digits, 4 clients, 3 rounds, MLP)."""
    return {
        "name": "tiny",
        "seed": 3,
        "rounds": 3,
        "num_clients": 4,
        "dataset": {"name": "digits"},
        "partition": {"name": "dirichlet", "alpha": 0.5, "min_partition_size": 5},
        "model": {"name": "mlp", "hidden": [32]},
        "strategy": {"name": "fedavg", "fraction_train": 0.75},
        "client": {"epochs": 1, "batch_size": 16, "lr": 0.1},
        "output": {"dir": str(tmp_path / "runs"), "progress": False},
    }
