"""Decentralized runs: the ServerApp plays the network, every node keeps its own model.

There is no point-to-point messaging between Flower nodes: every node-to-node transfer
goes through the ServerApp, which here acts only as the wire (the verified relay pattern
of Flower §6). ``Network`` delivers a node's outgoing model to the nodes it is addressed
to, counts the bytes of every transfer on its (sender, receiver) link, keeps a virtual
clock on ``fedsim.world.network.NetworkModel`` and the churn trace's view of who is up. It
keeps no model of its own: node i's model lives in node i's ``Context.state`` under
``MODEL_KEY``. The relay's own legs (node → ServerApp → node) are an artefact of the
simulation and are not link traffic; neither are the set-up message that gives every
node the same seeded initial model nor the evaluator's model pulls.

``DecentralizedLoop`` drives a ``DecentralizedStrategy`` round by round and records one
row per round through the ``Recorder``. Evaluation (every ``eval_every`` rounds and the
last) pulls the models of the evaluation nodes (all up nodes, or a fixed seeded sample of
``eval_nodes`` of them) and records over them: ``node_acc_mean``/``_min``/``_max``/
``_std``, ``consensus_distance`` = (1/n) Σ_i ‖x_i − x̄‖² (Shi et al. 2023, "model
consistency"), and the accuracy of x̄ (``consensus_acc``). ``test_acc``/``test_loss``
are the mean over node models, or, for a strategy whose output is one model (MoDeST's
latest aggregate, as the Plexus paper evaluates it), that model's.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from pydantic import Field

from fedsim.apps import client
from fedsim.world.network import Membership, NetworkModel, NetworkParams, local_work
from fedsim.recorder import Recorder
from fedsim.registry import Params
from fedsim.training import evaluate, seed_sequence, seeded_torch_rng
from fedsim.world.base import Fleet

if TYPE_CHECKING:
    from fedsim.apps.setup import ServerSetup

MODEL_KEY = "dfl.model"
INIT = f"{MessageType.QUERY}.dfl_init"
PULL = f"{MessageType.QUERY}.dfl_model"


class DecentralizedParams(Params):
    eval_nodes: int | None = Field(
        None, ge=1, description="evaluate a fixed seeded sample of this many nodes (default: all)"
    )


# ------------------------------------------------------------------------- node side


def node_env(context: Context) -> client.ClientEnv:
    """The node's data, model, state and seeded RNG (the generic ClientApp's environment)."""
    return client._env(context)


@contextmanager
def seeded_torch(env: client.ClientEnv, server_round: int) -> Iterator[None]:
    """Torch's global RNG (dropout masks) seeded from (seed, round, node) while a node trains."""
    seed = int(seed_sequence(env.scenario.seed, server_round, env.partition_id, "torch").generate_state(1)[0])
    with seeded_torch_rng(seed, env.device):
        yield


@client.app.query("dfl_init")
def init_node(msg: Message, context: Context) -> Message:
    """Keep the initial model as this node's own model."""
    context.state[MODEL_KEY] = msg.content["arrays"]
    return Message(RecordDict(), reply_to=msg)


@client.app.query("dfl_model")
def report_model(msg: Message, context: Context) -> Message:
    """Send a model this node holds (its own by default) to whoever asked."""
    key = str(msg.content["config"]["key"])
    return Message(RecordDict({"arrays": context.state[key]}), reply_to=msg)


def weighted_sum(terms: list[tuple[float, ArrayRecord]]) -> ArrayRecord:
    """Σ_k w_k · x_k over ArrayRecords with the same keys, in float64, cast back to each dtype.

    Integer arrays (counters, not parameters) are taken from the first record.
    """
    first = terms[0][1]
    out: dict[str, Array] = {}
    for key, array in first.items():
        ref = array.numpy()
        if not np.issubdtype(ref.dtype, np.floating):
            out[key] = array
            continue
        acc = np.zeros(ref.shape, dtype=np.float64)
        for weight, record in terms:
            acc += weight * record[key].numpy()
        out[key] = Array(acc.astype(ref.dtype))
    return ArrayRecord(out)


def flat(record: ArrayRecord) -> np.ndarray:
    """The floating-point arrays of a record as one float64 vector."""
    parts = [a.numpy().ravel() for a in record.values() if np.issubdtype(np.dtype(a.dtype), np.floating)]
    return np.concatenate(parts).astype(np.float64)


# ----------------------------------------------------------------------- server side


class Network:
    """Node-to-node delivery through the ServerApp, with per-link byte counters and a virtual clock."""

    def __init__(self, fleet: Fleet, setup: ServerSetup, work_factor: float = 1.0):
        sc = setup.scenario
        self.fleet = fleet
        self.n = sc.num_clients
        self.model = NetworkModel(sc.network or NetworkParams(), self.n, sc.seed)
        self.membership = Membership(sc.churn, self.n, sc.seed)
        # examples processed by one local run on each node (× passes per example)
        self.work = [local_work(sc.client, size) * work_factor for size in setup.partition_sizes]
        self.clock = np.zeros(self.n)  # each node's virtual time (synchronous gossip)
        self.now = 0.0  # virtual time of the latest recorded event
        self.link_bytes: Counter[tuple[int, int]] = Counter()
        self.sent = np.zeros(self.n, dtype=np.int64)
        self.received = np.zeros(self.n, dtype=np.int64)
        self.round_bytes: Counter[str] = Counter()  # sent this round, per category
        self.round_received = 0
        self.failed: list[int] = []

    @property
    def up(self) -> list[int]:
        return sorted(self.membership.up)

    def ask(self, message_type: str, contents: dict[int, RecordDict]) -> dict[int, RecordDict]:
        """Deliver one message to each node (partition id → content); their replies.

        A node whose ClientApp raises is recorded in ``failed`` and left out of the replies.
        """
        messages = [Message(content, self.fleet.node[pid], message_type) for pid, content in contents.items()]
        out: dict[int, RecordDict] = {}
        for reply in self.fleet.send_and_receive(messages):
            pid = self.fleet.partition_of(reply)
            if reply.has_error():
                self.failed.append(pid)
            else:
                out[pid] = reply.content
        return out

    def pull(self, pids: list[int], key: str = MODEL_KEY) -> dict[int, ArrayRecord]:
        """Models the evaluator fetches from nodes (not link traffic)."""
        cfg = RecordDict({"config": ConfigRecord({"key": key})})
        return {pid: rec["arrays"] for pid, rec in self.ask(PULL, {pid: cfg for pid in pids}).items()}

    def carry(self, src: int, dst: int, nbytes: int, category: str = "model", delivered: bool = True) -> None:
        """Count ``nbytes`` sent from node src to node dst (received too, unless dst is down)."""
        self.link_bytes[(src, dst)] += nbytes
        self.sent[src] += nbytes
        self.round_bytes[category] += nbytes
        if delivered:
            self.received[dst] += nbytes
            self.round_received += nbytes

    # ---- synchronous rounds (gossip): per-node clocks
    def train_time(self, pids) -> None:
        """Every node in ``pids`` runs one local training."""
        for pid in pids:
            self.clock[pid] += self.model.compute_time(pid, self.work[pid])

    def exchange_time(self, graph: nx.Graph, nbytes: dict[int, int]) -> None:
        """One gossip step: each sender's model to each neighbour; a node mixes once all have arrived."""
        ready = self.clock.copy()
        for src in sorted(nbytes):
            for dst in sorted(graph.neighbors(src)):
                ready[dst] = max(ready[dst], self.model.send(src, dst, nbytes[src], self.clock[src]))
        self.clock = ready

    def take_metrics(self) -> dict:
        """This round's link traffic (up: sent by nodes, down: received) and the run's totals so far."""
        out = {
            "bytes_up": int(sum(self.round_bytes.values())),
            "bytes_down": int(self.round_received),
            "bytes_total": int(self.sent.sum()),
            "bytes_sent_node_max": int(self.sent.max()),
            "bytes_sent_node_mean": float(self.sent.mean()),
            "virtual_time": float(self.now),
        }
        if set(self.round_bytes) - {"model"}:
            out |= {f"bytes_{cat}": int(v) for cat, v in sorted(self.round_bytes.items())}
        self.round_bytes.clear()
        self.round_received = 0
        return out


class DecentralizedStrategy(ABC):
    """A decentralized algorithm: one round of node-to-node protocol at a time, no global model."""

    work_factor: float = 1.0  # forward-backward passes per training example (SAM: 2)

    def __init__(self, params: DecentralizedParams, setup: ServerSetup):
        self.params = params
        self.setup = setup

    def start(self, net: Network) -> None:
        """Every node starts from the same seeded initial model (set-up, not link traffic)."""
        init = ArrayRecord(self.setup.model.state_dict())
        net.ask(INIT, {pid: RecordDict({"arrays": init}) for pid in range(net.n)})

    @abstractmethod
    def round(self, rnd: int, net: Network) -> dict:
        """Run round ``rnd``; its metrics (``train_loss``, ``clients_sampled``, ``clients_replied``, ...)."""

    def output_model(self, net: Network) -> ArrayRecord | None:
        """The one model the system outputs, if it has one (else node models are evaluated)."""
        return None


class DecentralizedLoop:
    """Rounds of a decentralized strategy on the network; one recorded row per round."""

    def __init__(self, setup: ServerSetup, strategy: DecentralizedStrategy, fleet: Fleet, recorder: Recorder):
        self.setup = setup
        self.scenario = setup.scenario
        self.strategy = strategy
        self.fleet = fleet
        self.recorder = recorder
        self.model = setup.model
        self.tester, self.x_test, self.y_test = setup.test_kit()
        n = self.scenario.num_clients
        k = strategy.params.eval_nodes
        if k is None or k >= n:
            self.eval_nodes = list(range(n))
        else:
            rng = np.random.default_rng(seed_sequence(self.scenario.seed, "eval-nodes"))
            self.eval_nodes = sorted(int(i) for i in rng.choice(n, size=k, replace=False))
        self.final: ArrayRecord | None = None

    def run(self) -> Network:
        net = Network(self.fleet, self.setup, self.strategy.work_factor)
        self.strategy.start(net)
        self.fleet.take_metrics()
        for rnd in range(1, self.scenario.rounds + 1):
            self.round(rnd, net)
        if self.final is not None:
            self.model.load_state_dict(self.final.to_torch_state_dict())
        return net

    def round(self, rnd: int, net: Network) -> None:
        start = time.perf_counter()
        net.failed = []
        metrics = self.strategy.round(rnd, net)
        row = {
            "round": rnd,
            "train_loss": metrics.pop("train_loss", None),
            "test_loss": None,
            "test_acc": None,
            "clients_sampled": metrics.pop("clients_sampled"),
            "clients_replied": metrics.pop("clients_replied"),
            "failed_clients": sorted(set(net.failed)),
            "nodes_up": len(net.membership.up),
        }
        row.update(metrics)
        if rnd % self.scenario.evaluation.eval_every == 0 or rnd == self.scenario.rounds:
            row.update(self.evaluate(net))
        self.fleet.take_metrics()  # the relay's own legs through the ServerApp are not link traffic
        row.update(net.take_metrics())
        row["seconds"] = time.perf_counter() - start
        self.recorder.log(row)

    def _test(self, record: ArrayRecord) -> tuple[float, float]:
        self.tester.load_state_dict(record.to_torch_state_dict())
        return evaluate(self.tester, self.x_test, self.y_test, self.scenario.evaluation.batch_size)

    def evaluate(self, net: Network) -> dict:
        row: dict = {"nodes_evaluated": 0, "bytes_sent_per_node": [int(b) for b in net.sent]}
        pids = [p for p in self.eval_nodes if p in net.membership.up]
        models = net.pull(pids)
        if models:
            order = sorted(models)
            results = [self._test(models[p]) for p in order]
            losses = np.array([r[0] for r in results])
            accs = np.array([r[1] for r in results])
            vectors = np.stack([flat(models[p]) for p in order])
            consensus = weighted_sum([(1.0 / len(order), models[p]) for p in order])
            row |= {
                "test_loss": float(losses.mean()),
                "test_acc": float(accs.mean()),
                "node_acc_mean": float(accs.mean()),
                "node_acc_min": float(accs.min()),
                "node_acc_max": float(accs.max()),
                "node_acc_std": float(accs.std()),
                "consensus_distance": float(((vectors - vectors.mean(axis=0)) ** 2).sum(axis=1).mean()),
                "consensus_acc": self._test(consensus)[1],
                "nodes_evaluated": len(order),
            }
            self.final = consensus
        output = self.strategy.output_model(net)
        if output is not None:
            row["test_loss"], row["test_acc"] = self._test(output)
            self.final = output
        return row
