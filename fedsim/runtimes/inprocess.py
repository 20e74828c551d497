"""The ``inprocess`` runtime: ``InProcessGrid`` calls the ClientApp directly in this process,
one message after another: no Ray, no polling, no serialization. Deterministic.

Flower internals used here (``Run``, ``TaskIdentity``) stay in this one module; the
tests pin them against the installed flwr minor version.
"""

from __future__ import annotations

import gc
import itertools
from collections.abc import Iterable
from uuid import uuid4

import numpy as np
import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

# Flower internals (adapter): the Run a Grid reports and the process-global task identity
# that Message construction reads.
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedsim.scenario import Scenario

CLIENT_APP_ERROR = 2  # flwr ErrorCode.CLIENT_APP_RAISED_EXCEPTION


def _set_task_identity(run_id: int) -> None:
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID


class SimulatedGrid(Grid):
    """What every simulated grid of a run shares: the seeded run id and node ids (node i
    holds partition i; every grid built for the run, and each Ray worker's, agrees on
    them) and Flower's message plumbing. Subclasses deliver the messages."""

    def __init__(self, num_nodes: int, seed: int = 0):
        rng = np.random.default_rng([seed, 0x6E6F6465])
        ids = rng.choice(2**62, size=num_nodes, replace=False) + 2  # 0, 1 are reserved
        self._run = Run.create_empty(int(rng.integers(1, 2**62)))
        _set_task_identity(self._run.run_id)
        self._node_ids = ids.tolist()
        self._partition = {nid: i for i, nid in enumerate(self._node_ids)}

    def partition_ids(self) -> dict[int, int]:
        """Node id -> partition id, known here without asking every node (``Fleet.connect``)."""
        return self._partition

    @property
    def run(self) -> Run:
        return self._run

    def set_run(self, run: Run) -> None:
        self._run = run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        return self.pull_messages(self.push_messages(messages))


class InProcessGrid(SimulatedGrid):
    """A Flower ``Grid`` that runs the ClientApp synchronously in the calling process.

    Node ids come from a seeded RNG; node i holds partition i and keeps one ``Context``
    for the whole run (``Context.state`` persists across rounds, as on a SuperNode),
    made when the node first gets a message.
    A ClientApp that raises produces an error reply; the run goes on.
    """

    def __init__(self, client_app: ClientApp, num_nodes: int, seed: int = 0):
        super().__init__(num_nodes, seed)
        self.client_app = client_app
        # a node's Context is made when it first gets a message: 10^5 idle nodes cost nothing
        self.contexts: dict[int, Context] = {}
        self._replies: dict[str, Message] = {}
        self._id_prefix, self._id_count = uuid4().hex[:16], itertools.count()

    def context(self, node_id: int) -> Context:
        """Node ``node_id``'s Context (persists for the run, as on a SuperNode)."""
        if node_id not in self.contexts:
            self.contexts[node_id] = Context(
                run_id=self._run.run_id,
                node_id=node_id,
                node_config={"partition-id": self._partition[node_id], "num-partitions": len(self._node_ids)},
                state=RecordDict(),
                run_config={},
            )
        return self.contexts[node_id]

    def new_id(self) -> str:
        """A message id unique in this grid: its random prefix and a counter (a uuid4 each
        costs more than the rest of a small client's round trip)."""
        return f"{self._id_prefix}{next(self._id_count):016x}"

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Run the ClientApp on each message, in order. Clients seed torch's global RNG
        (``fedsim.apps.client.train``); the host's stream is restored once afterwards."""
        ids = []
        with torch.random.fork_rng(devices=_cuda_devices()):
            for msg in messages:
                msg_id = msg.metadata.message_id or self.new_id()  # a routing grid may have set it
                msg.metadata.__dict__["_message_id"] = msg_id
                context = self.context(msg.metadata.dst_node_id)
                try:
                    reply = self.client_app(msg, context)
                except Exception as exc:  # a failing client is recorded, never fatal
                    reply = Message(Error(CLIENT_APP_ERROR, f"{type(exc).__name__}: {exc}"), reply_to=msg)
                reply.metadata.__dict__["_message_id"] = self.new_id()
                self._replies[msg_id] = reply
                ids.append(msg_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]


def _cuda_devices() -> list[int]:
    """The GPUs whose RNG clients may have seeded: every device once CUDA is initialised."""
    return list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []


def run_inprocess(server_app: ServerApp, client_app: ClientApp, scenario: Scenario) -> None:
    """Run server and clients in this process with ``runtime.threads`` torch threads.

    Small models train many times faster single-threaded (thread hand-off dominates their
    tiny kernels), so the default is 1; the previous setting is restored afterwards.
    """
    serve(server_app, InProcessGrid(client_app, scenario.num_clients, scenario.seed), scenario)


def serve(server_app: ServerApp, grid: Grid, scenario: Scenario) -> None:
    """Run ``server_app`` on ``grid`` with ``runtime.threads`` torch threads.

    What is alive when the run starts (imported modules, datasets, models) is moved out
    of the garbage collector's generations for the run (``gc.freeze``, undone afterwards):
    the collections that a round's many small Flower objects trigger then walk only what
    the run made.
    """
    context = Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={})
    threads = torch.get_num_threads()
    torch.set_num_threads(getattr(scenario.runtime, "threads", 1))  # ray: the driver's thread
    gc.freeze()
    try:
        server_app(grid, context)
    finally:
        gc.unfreeze()
        torch.set_num_threads(threads)
