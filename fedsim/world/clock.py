"""A world layer that keeps a virtual clock for centralized runs (``network:`` section).

Each ``send_and_receive`` is one star-shaped exchange: the server sends every message,
the clients that reply train (train messages: ``client:`` local work; other messages are
not timed) and send their reply back; the exchange lasts as long as its slowest client
(``NetworkModel.star_round``). ``virtual_time`` (seconds since the start) joins every row,
so FedAvg-style baselines get a time-to-accuracy on the same network model as the
decentralized strategies.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from flwr.app import Message, MessageType

from fedsim.registry import register
from fedsim.world.network import NetworkModel, local_work
from fedsim.world.base import GridWrapper, payload_bytes


class VirtualClock(GridWrapper):
    def __init__(self, inner, setup):
        super().__init__(inner)
        sc = setup.scenario
        self.model = NetworkModel(sc.network, sc.num_clients, sc.seed)
        self.work = [local_work(sc.client, size) for size in setup.partition_sizes]
        self.now = 0.0

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        down = {self.partition_of(m): payload_bytes(m.content) for m in messages}
        trains = {self.partition_of(m) for m in messages if m.metadata.message_type.startswith(MessageType.TRAIN)}
        clients = [self.partition_of(r) for r in replies if not r.has_error()]
        self.now += self.model.star_round(
            clients,
            [down[c] for c in clients],
            [payload_bytes(r.content) for r in replies if not r.has_error()],
            [self.work[c] if c in trains else 0 for c in clients],
        )
        return replies

    def take_metrics(self) -> dict:
        return self.inner.take_metrics() | {"virtual_time": self.now}


@register("world_layer", "clock", order=10,
          description="virtual clock: times each exchange with the `network:` section's model")
def clock_layer(setup, grid: GridWrapper, run_dir: Path) -> GridWrapper:
    return grid if setup.scenario.network is None else VirtualClock(grid, setup)
