"""The ``ray`` runtime: Flower's Simulation Engine (``flwr.simulation.run_simulation``, Ray
backend), optionally attached to a running Ray cluster (``runtime.address``)."""

from __future__ import annotations

import logging
import os

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedsim.scenario import RayRuntime, Scenario


def run_ray(server_app: ServerApp, client_app: ClientApp, scenario: Scenario) -> None:
    """Flower's Simulation Engine; ``runtime.address`` attaches to a running Ray cluster."""
    from flwr.simulation import run_simulation

    rt = scenario.runtime
    assert isinstance(rt, RayRuntime)
    init_args: dict = {"address": rt.address} if rt.address else {"num_cpus": os.cpu_count()}
    # run_simulation announces its own deprecation (in favour of `flwr run`) on every call;
    # fedsim keeps it behind this adapter, so only Flower's errors are shown.
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(logging.ERROR)
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=scenario.num_clients,
            backend_config={"client_resources": rt.client_resources.model_dump(), "init_args": init_args},
        )
    finally:
        flwr_logger.setLevel(level)
