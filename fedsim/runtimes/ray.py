"""The ``ray`` runtime: every core (of this machine or of a Ray cluster, ``runtime.address``)
trains a share of each round's cohort.

``engine: actors`` (the default) is fedsim's own grid on Ray: ``workers`` long-lived
actors each hold the ClientApp, the dataset (loaded once per actor, at the first set-up
message) and the ``Context`` of the clients it owns, in an ``InProcessGrid`` of its own.
Client i belongs to worker i mod W for the whole run, so its ``Context.state`` (SCAFFOLD
controls, FedDyn duals, ...) persists across rounds exactly as on a SuperNode. The driver's
``RayGrid`` sends each worker its share of the round's messages in one call (a chunk per
call, not a call per client), and returns the replies in message order. Every client runs
the same code with the same seeds on one torch thread as on ``inprocess``, so a run gives
the same metrics on both.

``engine: flower`` runs Flower's Simulation Engine (``flwr.simulation.run_simulation``, one
Ray call per client message), the reference path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from uuid import uuid4

import torch
from flwr.app import Message
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedsim.runtimes.inprocess import InProcessGrid, SimulatedGrid, serve
from fedsim.scenario import RayRuntime, Scenario


class ClientWorker:
    """A Ray actor: the ClientApp and the contexts of the clients it owns."""

    def __init__(self, client_app: ClientApp, num_nodes: int, seed: int, threads: int):
        torch.set_num_threads(threads)
        self.grid = InProcessGrid(client_app, num_nodes, seed)  # the same node ids as the driver's

    def handle(self, messages: list[Message]) -> list[Message]:
        """Run this worker's messages of one push, in order; one reply each."""
        return self.grid.send_and_receive(messages)


class RayGrid(SimulatedGrid):
    """A Flower ``Grid`` whose nodes live in ``workers`` (handles of ``ClientWorker`` actors):
    node i (partition i) is served by worker i mod W for the whole run."""

    def __init__(self, workers: list, num_nodes: int, seed: int = 0):
        super().__init__(num_nodes, seed)
        self.workers = workers
        self.owner = {nid: i % len(workers) for i, nid in enumerate(self._node_ids)}
        self._pending: dict[str, tuple] = {}  # message id -> (ObjectRef of its worker's call, position)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        groups: dict[int, list[Message]] = {}
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid4().hex
            groups.setdefault(self.owner[msg.metadata.dst_node_id], []).append(msg)
            ids.append(msg.metadata.message_id)
        for worker, group in groups.items():
            ref = self.workers[worker].handle.remote(group)
            for position, msg in enumerate(group):
                self._pending[msg.metadata.message_id] = (ref, position)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """Wait for the workers' calls that hold these messages; their replies in the given order."""
        import ray

        wanted = [self._pending.pop(i) for i in message_ids if i in self._pending]
        refs = list(dict.fromkeys(ref for ref, _ in wanted))
        results = dict(zip(refs, ray.get(refs), strict=True))
        return [results[ref][position] for ref, position in wanted]


def run_ray(server_app: ServerApp, client_app: ClientApp, scenario: Scenario) -> None:
    """Run on Ray: fedsim's worker actors (``engine: actors``) or Flower's Simulation Engine
    (``engine: flower``); ``runtime.address`` attaches to a running Ray cluster."""
    rt = scenario.runtime
    assert isinstance(rt, RayRuntime)
    if rt.engine == "flower":
        _run_flower(server_app, client_app, scenario)
        return
    import ray

    started = not ray.is_initialized()
    if started:
        init_args: dict = {"address": rt.address} if rt.address else {"num_cpus": os.cpu_count()}
        ray.init(**init_args, include_dashboard=False, logging_level=logging.ERROR)
    res = rt.client_resources
    actor = ray.remote(num_cpus=res.num_cpus, num_gpus=res.num_gpus)(ClientWorker)
    threads = max(1, int(res.num_cpus))
    workers = [actor.remote(client_app, scenario.num_clients, scenario.seed, threads) for _ in range(_workers(rt, scenario))]
    try:
        serve(server_app, RayGrid(workers, scenario.num_clients, scenario.seed), scenario)
    finally:
        for worker in workers:
            ray.kill(worker)
        if started:
            ray.shutdown()


def _workers(rt: RayRuntime, scenario: Scenario) -> int:
    """``runtime.workers``, else as many actors as the cluster's CPUs (and GPUs) admit."""
    import ray

    if rt.workers is not None:
        return min(rt.workers, scenario.num_clients)
    total = ray.cluster_resources()
    res = rt.client_resources
    count = int(total.get("CPU", 1) // res.num_cpus)
    if res.num_gpus > 0:
        count = min(count, int(total.get("GPU", 0) // res.num_gpus))
    if count < 1:
        raise ValueError(f"runtime.client_resources ({res.num_cpus} CPU, {res.num_gpus} GPU) fit no Ray worker on {total}")
    return min(count, scenario.num_clients)


def _run_flower(server_app: ServerApp, client_app: ClientApp, scenario: Scenario) -> None:
    """Flower's Simulation Engine, one ClientApp actor call per message."""
    from flwr.simulation import run_simulation

    rt = scenario.runtime
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
