"""Fault injection: clients that crash and stragglers, as a layer of the world.

Per round and client, from (seed, round, client): with ``crash_probability`` the client's
instruction carries a crash order and the client *raises* inside the ClientApp (so the
runtime's real error path is exercised: an error reply, recorded in ``failed_clients``,
the round goes on); with ``straggler_probability`` the client sleeps ``straggler_delay``
seconds before training. With a ``deadline`` the server stops waiting: the replies of
stragglers slower than it are dropped (``stragglers_dropped``). Only training
instructions are affected.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fedsim.apps.client import CRASH, DELAY
from fedsim.registry import register
from fedsim.scenario import Faults
from fedsim.training import seed_sequence
from fedsim.world.base import GridWrapper

class FaultLayer(GridWrapper):
    def __init__(self, inner: GridWrapper, faults: Faults, seed: int):
        super().__init__(inner)
        self.faults = faults
        self.seed = seed
        self.round = 0
        self.crashed: list[int] = []
        self.dropped: list[int] = []

    def start_round(self, server_round: int) -> None:
        self.round = server_round
        self.inner.start_round(server_round)

    def _draws(self, pid: int) -> np.ndarray:
        return np.random.default_rng(seed_sequence(self.seed, self.round, pid, "faults")).random(2)

    def _inject(self, msg: Message) -> tuple[Message, float]:
        pid = self.partition_of(msg)
        crash_u, straggle_u = self._draws(pid)
        crash = crash_u < self.faults.crash_probability
        delay = self.faults.straggler_delay if straggle_u < self.faults.straggler_probability else 0.0
        if not crash and not delay:
            return msg, 0.0
        if crash:
            self.crashed.append(pid)
        content = RecordDict(dict(msg.content.items()))  # the strategy's record may be shared
        config = ConfigRecord(dict(content["config"]) if "config" in content else {})
        config[CRASH] = bool(crash)
        config[DELAY] = float(delay)
        content["config"] = config
        return Message(content, msg.metadata.dst_node_id, msg.metadata.message_type), delay

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        out, delays = [], {}
        for msg in messages:
            if msg.metadata.message_type == MessageType.TRAIN:
                msg, delay = self._inject(msg)
                delays[self.partition_of(msg)] = delay
            out.append(msg)
        replies = list(self.inner.send_and_receive(out, timeout=timeout))
        deadline = self.faults.deadline
        if deadline is None:
            return replies
        late = {pid for pid, d in delays.items() if d > deadline}
        self.dropped += sorted(late)
        return [r for r in replies if self.partition_of(r) not in late]

    def take_metrics(self) -> dict:
        out = {"crashed_clients": sorted(self.crashed), "stragglers_dropped": self.dropped}
        self.crashed, self.dropped = [], []
        return {**out, **self.inner.take_metrics()}


@register("world_layer", "faults", order=50,
          description="crashes, stragglers and a deadline from the `faults:` section")
def fault_layer(setup, grid: GridWrapper, run_dir: Path) -> GridWrapper:
    sc = setup.scenario
    return grid if sc.faults is None else FaultLayer(grid, sc.faults, sc.seed)
