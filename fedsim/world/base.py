"""The simulated world: ``Grid`` wrappers between a strategy and the runtime grid.

The strategy talks to a Grid and sees only what a real server would see. ``Fleet`` is the
innermost layer: it sets the nodes up (partition ids, scenario), lists node ids in
partition order (so seeded sampling picks the same clients on every runtime), returns
replies in partition order (so aggregation sums in the same order everywhere) and counts
the bytes that cross it. Further layers (participation, faults, Byzantine clients,
eavesdroppers) wrap it with ``GridWrapper``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedsim.records import index_array, records_in
from fedsim.state import Checkpointable


class GridWrapper(Grid):
    """A Grid that forwards everything to ``inner``; layers override what they change."""

    def __init__(self, inner: Grid):
        self.inner = inner

    @property
    def run(self):
        return self.inner.run

    def set_run(self, run) -> None:
        self.inner.set_run(run)

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.inner.send_and_receive(messages, timeout=timeout)

    def partition_of(self, message: Message) -> int:
        return self.inner.partition_of(message)

    def partition_of_node(self, node_id: int) -> int:
        return self.inner.partition_of_node(node_id)

    def start_round(self, server_round: int) -> None:
        """The server starts round ``server_round``: layers whose world changes per round
        (participation, churn) advance here, before the strategy looks at the nodes."""
        self.inner.start_round(server_round)

    def take_metrics(self) -> dict:
        """This round's metrics of every layer below and this one (then reset)."""
        return self.inner.take_metrics()

    def artifacts(self) -> dict:
        """End-of-run records of every layer (name -> JSON-able), written to the run directory."""
        return self.inner.artifacts()

    def world_state(self) -> list[dict]:
        """Checkpointable state of this layer and every layer below, top first."""
        own = self.state_dict() if isinstance(self, Checkpointable) else {}
        return [own, *self.inner.world_state()]

    def load_world_state(self, states: list[dict]) -> None:
        if isinstance(self, Checkpointable):
            self.load_state_dict(states[0])
        self.inner.load_world_state(states[1:])


def payload_bytes(content: RecordDict) -> int:
    """Bytes of the arrays a message carries (the model-sized part of its payload)."""
    return sum(rec.count_bytes() for rec in records_in(content, ArrayRecord))


def total_payload_bytes(contents: Iterable[RecordDict]) -> int:
    """``Σ payload_bytes(c)``, each distinct record measured once (a round's instructions
    all carry the same global model record)."""
    sizes: dict[int, int] = {}
    total = 0
    for content in contents:
        for rec in records_in(content, ArrayRecord):
            if id(rec) not in sizes:
                sizes[id(rec)] = rec.count_bytes()
            total += sizes[id(rec)]
    return total


NODE_UNAVAILABLE = 5  # flwr ErrorCode.NODE_UNAVAILABLE: the code of the replies fedsim writes for silent nodes


class Fleet(GridWrapper):
    """The clients of one run, addressed by partition id; meters traffic; times rounds out.

    ``send_and_receive`` pushes the messages, then pulls the replies every
    ``poll_interval`` seconds until all are in or ``timeout`` seconds have passed. A node
    that has not replied by then (a crashed SuperNode, a lost link) gets an error reply
    "no reply within T s", so the round goes on with the others and the recorder lists
    the node under ``failed_clients``. Error replies the SuperLink writes on a node's
    behalf (node unavailable) are re-addressed to come from that node.
    """

    def __init__(self, inner: Grid, num_clients: int, timeout: float | None = None, poll_interval: float = 0.005):
        super().__init__(inner)
        self.num_clients = num_clients
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.partition: dict[int, int] = {}
        self.node: dict[int, int] = {}
        self.bytes_down = 0
        self.bytes_up = 0
        self.ready: set[int] = set()  # nodes that have their scenario and indices
        self._scenario_json: str | None = None
        self._partitions: list[np.ndarray] = []
        self._setup_s: float | None = None
        self._node_ids: list[int] | None = None

    def connect(self, scenario_json: str, partitions: list[np.ndarray], wait_s: float = 300.0,
                lazy: bool = True) -> None:
        """Learn which node holds which partition; set the nodes up with the scenario and
        their example indices.

        A grid that knows its nodes' partitions (``partition_ids()``, the in-process grid)
        is not asked node by node, and a node is set up only when it is first addressed:
        start-up costs O(1) messages and each round O(cohort), whatever ``num_clients``.
        Otherwise (SuperNodes, Ray) every node says which partition it holds (``hello``)
        and all are set up here, so that a missing node stops the run at once. ``wait_s``
        bounds the wait for the nodes and each of the set-up exchanges. ``lazy=False`` sets every
        node up here in any case (for ServerApps that then talk to the grid directly)."""
        known = getattr(self.inner, "partition_ids", None)
        if known is not None:
            self.partition = dict(known())
            self.node = {pid: nid for nid, pid in self.partition.items()}
            self._check_partitions()
            self._node_ids = [self.node[pid] for pid in range(self.num_clients)]
            self._scenario_json, self._partitions, self._setup_s = scenario_json, partitions, wait_s
            if not lazy:
                self._set_up(self._node_ids)
            return
        deadline = time.monotonic() + wait_s
        while len(nodes := sorted(self.inner.get_node_ids())) < self.num_clients:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(nodes)} of {self.num_clients} nodes connected in {wait_s:.0f} s")
            time.sleep(max(self.poll_interval, 0.05))
        hello = [Message(RecordDict(), nid, f"{MessageType.QUERY}.hello") for nid in nodes]
        for reply in self._exchange(hello, wait_s):
            pid = int(reply.content["node"]["partition-id"])
            if pid in self.node:
                raise RuntimeError(f"two nodes hold partition {pid}: each SuperNode needs its own partition-id")
            self.partition[reply.metadata.src_node_id] = pid
            self.node[pid] = reply.metadata.src_node_id
        self._check_partitions()
        self._node_ids = [self.node[pid] for pid in range(self.num_clients)]
        self._scenario_json, self._partitions, self._setup_s = scenario_json, partitions, wait_s
        self._set_up(self._node_ids)

    def _check_partitions(self) -> None:
        bad = sorted(pid for pid in self.node if not 0 <= pid < self.num_clients)
        if bad:
            raise RuntimeError(f"a node holds partition {bad[0]}, but the scenario has {self.num_clients} clients")
        missing = sorted(set(range(self.num_clients)) - set(self.node))
        if missing:
            raise RuntimeError(f"no node holds partitions {missing}")

    def _set_up(self, nodes: Iterable[int]) -> None:
        """Send the scenario and their indices to those of ``nodes`` not yet set up (one batch)."""
        if self._scenario_json is None:
            return
        todo = sorted({nid for nid in nodes if nid not in self.ready}, key=self.partition.__getitem__)
        if not todo:
            return
        self.ready.update(todo)
        setup = [
            Message(
                RecordDict(
                    {
                        "setup": ConfigRecord({"scenario": self._scenario_json}),
                        "partition": ArrayRecord({"indices": index_array(self._partitions[self.partition[nid]])}),
                    }
                ),
                nid,
                f"{MessageType.QUERY}.setup",
            )
            for nid in todo
        ]
        self._exchange(setup, self._setup_s)

    def _exchange(self, messages: list[Message], timeout: float | None, what: str = "node set-up") -> list[Message]:
        """Messages every node must answer (set-up, checkpoints): an error stops the run."""
        replies = self._send(messages, timeout)
        errors = [r for r in replies if r.has_error()]
        if errors:
            raise RuntimeError(f"{what} failed: {errors[0].error.reason}")
        return replies

    def _send(self, messages: list[Message], timeout: float | None) -> list[Message]:
        """Set up the addressed nodes if needed; push, then pull until every message has a
        reply or ``timeout`` runs out."""
        self._set_up(m.metadata.dst_node_id for m in messages)
        pushed = set(self.inner.push_messages(messages))
        pending = {m.metadata.message_id: m for m in messages if m.metadata.message_id in pushed}
        unsent = [m for m in messages if m.metadata.message_id not in pending]
        replies = [Message(Error(NODE_UNAVAILABLE, "the message could not be sent"), reply_to=m) for m in unsent]
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            for reply in self.inner.pull_messages(list(pending)):
                instruction = pending.pop(reply.metadata.reply_to_message_id, None)
                if instruction is None:
                    continue
                if reply.has_error() and reply.metadata.src_node_id != instruction.metadata.dst_node_id:
                    # written by the SuperLink on the node's behalf (e.g. node unavailable)
                    reply = Message(reply.error, reply_to=instruction)
                replies.append(reply)
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.poll_interval)
        replies += [Message(Error(NODE_UNAVAILABLE, f"no reply within {timeout:g} s"), reply_to=m) for m in pending.values()]
        return replies

    def get_node_ids(self) -> list[int]:
        if self._node_ids is None:  # not connected (tests that fill ``partition`` themselves)
            return [self.node[pid] for pid in range(self.num_clients) if pid in self.node]
        return self._node_ids

    def partition_of(self, message: Message) -> int:
        """Partition id of the node that sent a reply (or is addressed by an instruction)."""
        nid = message.metadata.src_node_id if message.metadata.reply_to_message_id else message.metadata.dst_node_id
        return self.partition[nid]

    def partition_of_node(self, node_id: int) -> int:
        return self.partition[node_id]

    def start_round(self, server_round: int) -> None:
        """The fleet itself does not change between rounds."""

    def artifacts(self) -> dict:
        return {}

    def world_state(self) -> list[dict]:
        return []

    def load_world_state(self, states: list[dict]) -> None:
        """The fleet's own state is re-made by ``connect``; clients' by ``restore``."""

    def client_states(self, partitions: Iterable[int] | None = None) -> dict[int, RecordDict]:
        """Every set-up node's (or the given partitions') persistent ``Context.state`` (for a
        checkpoint; the informed eavesdropper), by partition id. Nodes never addressed have
        an empty state and are not asked."""
        if partitions is None:
            nodes = [nid for nid in self.get_node_ids() if nid in self.ready or self._scenario_json is None]
        else:
            nodes = [self.node[pid] for pid in partitions]
        msgs = [Message(RecordDict(), nid, f"{MessageType.QUERY}.checkpoint") for nid in nodes]
        return {self.partition_of(r): r.content for r in self._exchange(msgs, self.timeout, "checkpoint")}

    def restore_client_states(self, states: dict[int, RecordDict]) -> None:
        msgs = [Message(states[pid], self.node[pid], f"{MessageType.QUERY}.restore") for pid in sorted(states)]
        self._exchange(msgs, self.timeout, "restoring client state")

    def take_metrics(self) -> dict:
        """Bytes down and up since the last call."""
        out = {"bytes_down": self.bytes_down, "bytes_up": self.bytes_up}
        self.bytes_down = self.bytes_up = 0
        return out

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        self.bytes_down += total_payload_bytes(m.content for m in messages)
        replies = self._send(messages, timeout or self.timeout)
        self.bytes_up += total_payload_bytes(r.content for r in replies if not r.has_error())
        return sorted(replies, key=self.partition_of)
