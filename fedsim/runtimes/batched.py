"""``runtime.batched: true`` on ``inprocess``: the round's train messages train as stacked
chunks (``fedsim.batched``) instead of one ClientApp call each.

``BatchedGrid`` is the in-process grid with one change: the train messages it receives
are grouped into chunks of ``runtime.batch_clients`` and handed to the strategy's
``batched`` handler, which returns for every client the records its sequential handler
returns; the scenario's defense mod (clip, noise) then runs on each reply as in the
ClientApp. Strategies and world layers see the same replies. Messages the stacked path
does not model go to the ClientApp one by one, as on the plain grid: evaluation and
queries, injected crashes and delays (``fedsim.world.faults``) and data-poisoned clients.
A chunk whose batched training raises is answered by the ClientApp message by message,
so a failing client is recorded exactly as on the sequential path.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message, MessageType
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedsim import registry
from fedsim.apps import client
from fedsim.batched import Cohort, refusal
from fedsim.runtimes.inprocess import InProcessGrid, serve
from fedsim.scenario import Scenario


class BatchedGrid(InProcessGrid):
    """An ``InProcessGrid`` that trains chunks of ``chunk`` clients as one stacked computation."""

    def __init__(self, client_app: ClientApp, num_nodes: int, seed: int = 0, chunk: int = 256):
        super().__init__(client_app, num_nodes, seed)
        self.chunk = chunk

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        messages = list(messages)
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = self.new_id()
        stacked = [m for m in messages if _stackable(m)]
        for start in range(0, len(stacked), self.chunk):
            self._train(stacked[start : start + self.chunk])
        super().push_messages([m for m in messages if not _stackable(m)])
        return [m.metadata.message_id for m in messages]

    def _train(self, messages: list[Message]) -> None:
        envs = [client._env(self.context(m.metadata.dst_node_id)) for m in messages]
        scenario = envs[0].scenario
        reason = refusal(envs[0].model)
        if reason is not None:  # a plugin model validation could not see
            raise ValueError(f"runtime.batched: {reason}; run it with runtime.batched: false")
        handler = registry.get("strategy", scenario.strategy.name).extras["batched"]
        mod = client._defense_mod(scenario)
        try:
            contents = handler(Cohort([m.content for m in messages], envs))
            if mod is not None:
                contents = [mod(m.content, c, env) for m, c, env in zip(messages, contents, envs, strict=True)]
        except Exception:  # answer message by message: the failing client gets its error reply
            super().push_messages(messages)
            return
        for msg, content, env in zip(messages, contents, envs, strict=True):
            reply = client.answer(msg, content, env.partition_id)  # as client.train does
            reply.metadata.__dict__["_message_id"] = self.new_id()
            self._replies[msg.metadata.message_id] = reply


def _stackable(msg: Message) -> bool:
    if msg.metadata.message_type != MessageType.TRAIN or client.POISON_KEY in msg.content:
        return False
    config = msg.content["config"] if "config" in msg.content else {}
    return not (config.get(client.CRASH) or config.get(client.DELAY))


def run_batched(server_app: ServerApp, client_app: ClientApp, scenario: Scenario) -> None:
    """The in-process runtime with batched clients (``runtime.batched: true``)."""
    grid = BatchedGrid(client_app, scenario.num_clients, scenario.seed, scenario.runtime.batch_clients)
    serve(server_app, grid, scenario)
