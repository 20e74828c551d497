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


@pytest.fixture
def torch_one_thread():
    """Tiny tensors: thread hand-off would dominate; one torch thread for the test."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
