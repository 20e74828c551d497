"""The one generic fedsim ``ClientApp``; strategies plug their client-side handler into it.

A node learns its world in a setup exchange at the start of a run (``query.hello`` and
``query.setup``): the resolved scenario and its partition's example indices are kept in
the node's ``Context.state``, so the same code serves the in-process grid, Ray actors and
real SuperNodes. Under a ServerApp that is not fedsim's, the ServerApp sends that exchange
with :func:`fedsim.apps.setup.connect_nodes`, or the run names a scenario file in its
run config (``fedsim-scenario``) and each node sets itself up from it; otherwise every
reply is an error saying so. Train replies carry the node's ``partition-id`` (a
``ConfigRecord`` under ``"node"``), so strategies keyed by client need no fedsim grid. Datasets and a model instance are cached per process, keyed by the
scenario, and the model is reset in place from each incoming message. The model and the
training examples live on ``runtime.device``: the examples are moved there once per run
(per process), each node's partition is gathered there once and kept.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fedsim import registry
from fedsim.records import PARTITION_ID, prebuilt, put, reply_message, to_record, to_state_dict
from fedsim.scenario import Scenario, from_json
from fedsim.training import derive_seed, evaluate, local_sgd, resolve_device, seed_torch_rng, torch_generator

STATE_KEY = "fedsim"
CRASH = "fedsim.crash"  # config flags the fault-injection layer sets (fedsim.world.faults)
DELAY = "fedsim.delay"
INDEX_KEY = "fedsim.data.partition"
# Record a Byzantine world layer adds to a compromised client's train instruction when
# the scenario's attack poisons data (label flip): the client then trains on that data.
POISON_KEY = "fedsim.poison"

app = ClientApp()


@dataclass
class _Shared:
    scenario: Scenario
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int

    def __post_init__(self):
        # the model's own parameter and buffer tensors, reset in place from each message
        self.targets = self.model.state_dict(keep_vars=True)


@functools.lru_cache(maxsize=4)
def _shared(blob: str) -> _Shared:
    from fedsim.data.datasets import load_dataset
    from fedsim.models import build_model

    scenario = from_json(blob)
    device = resolve_device(getattr(scenario.runtime, "device", "cpu"))  # deployments train on CPU
    ds = load_dataset(scenario.dataset.name, scenario.dataset.raw_params(), scenario.seed)
    model = build_model(scenario.model.name, scenario.model.raw_params(), ds.input_shape, ds.num_classes).to(device)
    x, y = torch.from_numpy(ds.x_train).to(device), torch.from_numpy(ds.y_train).to(device)
    return _Shared(scenario, model, x, y, ds.num_classes)


_partitions: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}


def _partition(blob: str, pid: int, indices: Array) -> tuple[torch.Tensor, torch.Tensor]:
    """The node's examples, cached per (scenario, partition): indices never change in a run."""
    if (blob, pid) not in _partitions:
        if any(key[0] != blob for key in _partitions):
            _partitions.clear()  # a new run in this process: drop the last run's copies
            _envs.clear()
        shared = _shared(blob)
        idx = torch.from_numpy(indices.numpy().copy()).to(shared.x.device)
        _partitions[(blob, pid)] = (shared.x[idx], shared.y[idx])
    return _partitions[(blob, pid)]


@dataclass
class ClientEnv:
    """What a client-side handler may use: its data, a model, its state and seeded RNG."""

    scenario: Scenario
    partition_id: int
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    state: RecordDict
    targets: dict[str, torch.Tensor]
    num_classes: int
    # canary audit (fedsim.world.audit): C·u_j over the trainable parameters when this client is
    # a canary this round. A strategy registered with ``canary="handler"`` uses it in its own
    # handler (as if it had trained to received + C·u_j); with ``canary="bypass"`` (clients
    # that reply their trained model) ``canary_reply`` replaces the handler for that upload
    canary: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        """Where this client's model and examples live (``runtime.device``)."""
        return self.x.device

    def load(self, arrays: ArrayRecord) -> nn.Module:
        """Reset the model in place from ``arrays`` (same keys as its state dict) and return it."""
        values = _decoded(arrays)
        if values.keys() != self.targets.keys():
            raise ValueError(f"model keys {sorted(values)} do not match {sorted(self.targets)}")
        with torch.no_grad():
            for key, target in self.targets.items():
                target.copy_(values[key])
        return self.model

    def generator(self, server_round: int, purpose: str) -> torch.Generator:
        return torch_generator(self.scenario.seed, server_round, self.partition_id, purpose)

    @functools.cached_property
    def training(self) -> dict:
        """The scenario's ``client:`` section as ``local_sgd``'s keyword arguments."""
        return self.scenario.client.model_dump()

    def train(self, server_round: int, grad_hook: Callable[[], None] | None = None, **overrides) -> tuple[float, int]:
        """The scenario's local SGD (``client:`` section, overridable per call)."""
        cfg = self.training | overrides
        return local_sgd(
            self.model, self.x, self.y, **cfg, gen=self.generator(server_round, "shuffle"), grad_hook=grad_hook
        )

    def reply(self, train_loss: float, **metrics: float) -> RecordDict:
        """Reply with the trained model and its metrics (weighted by ``num-examples``)."""
        values = {"train_loss": train_loss, "num-examples": len(self.x), **metrics}
        plain = type(train_loss) is float and all(type(v) in (float, int) for v in metrics.values())  # else Flower's checks
        return prebuilt(RecordDict, {
            "arrays": to_record(self.targets),  # the model's own tensors: its state dict, without building one
            "metrics": prebuilt(MetricRecord, values) if plain else MetricRecord(values),
        })


_last_decoded: list = [None, None]


def _decoded(arrays: ArrayRecord) -> dict[str, torch.Tensor]:
    """Decode an ArrayRecord once: in-process, a round's clients share the same record."""
    if _last_decoded[0] is not arrays:
        _last_decoded[:] = [arrays, to_state_dict(arrays)]
    return _last_decoded[1]


Handler = Callable[[RecordDict, ClientEnv], RecordDict]

SCENARIO_CONFIG = "fedsim-scenario"  # run_config key: a scenario file nodes set themselves up from


# a node's ClientEnv by (scenario, partition): the same every round while its Context's
# state is the same object (handlers that need another make one with dataclasses.replace)
_envs: dict[tuple[str, int], ClientEnv] = {}


def _env(context: Context) -> ClientEnv:
    if STATE_KEY not in context.state:
        _self_setup(context)
    node = context.state[STATE_KEY]
    blob, pid = str(node["scenario"]), int(node["partition-id"])
    env = _envs.get((blob, pid))
    if env is not None and env.state is context.state:
        return env
    shared = _shared(blob)
    x, y = _partition(blob, pid, context.state[INDEX_KEY]["indices"])
    env = _envs[(blob, pid)] = ClientEnv(shared.scenario, pid, shared.model, x, y, context.state, shared.targets, shared.num_classes)
    return env


def fedavg_train(content: RecordDict, env: ClientEnv) -> RecordDict:
    """FedAvg client (McMahan et al. 2017, Alg. 1 ClientUpdate): local SGD from the global model."""
    env.load(content["arrays"])
    loss, _ = env.train(int(content["config"]["server-round"]))
    return env.reply(loss)


@app.query("hello")
def hello(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (node ids never decide it)."""
    pid = int(context.node_config["partition-id"])
    return Message(RecordDict({"node": ConfigRecord({"partition-id": pid})}), reply_to=msg)


@app.query("setup")
def setup(msg: Message, context: Context) -> Message:
    """Keep the scenario and this partition's example indices in the node's state."""
    _keep(context, str(msg.content["setup"]["scenario"]), msg.content["partition"]["indices"])
    env = _env(context)
    return Message(RecordDict({"node": MetricRecord({"num-examples": len(env.x)})}), reply_to=msg)


def _keep(context: Context, scenario_json: str, indices: Array) -> None:
    context.state[STATE_KEY] = ConfigRecord(
        {"scenario": scenario_json, "partition-id": int(context.node_config["partition-id"])}
    )
    context.state[INDEX_KEY] = ArrayRecord({"indices": indices})


def _self_setup(context: Context) -> None:
    """Set this node up from the scenario file named in ``run_config["fedsim-scenario"]``
    (a ServerApp that sent no set-up): the same partition the server side would send."""
    path = context.run_config.get(SCENARIO_CONFIG)
    if path is None or "partition-id" not in context.node_config:
        raise RuntimeError(
            f"fedsim's ClientApp on node {context.node_id} was not set up: it needs the scenario and its "
            "partition. Send fedsim's set-up messages from the ServerApp "
            "(fedsim.apps.setup.connect_nodes(grid, scenario) before the first round), or name a scenario "
            f"file in the run config ({SCENARIO_CONFIG}=FILE), with node_config partition-id on every node"
        )
    from fedsim.apps.setup import partitions_of
    from fedsim.records import index_array
    from fedsim.scenario import load

    scenario = load(str(path))
    pid = int(context.node_config["partition-id"])
    _keep(context, json.dumps(scenario.to_dict(), sort_keys=True), index_array(partitions_of(scenario)[pid]))


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Run the strategy's client handler with torch's global RNG (dropout masks, random
    layers) seeded from (seed, round, client). The RNG is left seeded: a grid that runs
    clients in the host's process keeps the host's stream (``InProcessGrid``)."""
    env = _env(context)
    if POISON_KEY in msg.content:  # compromised by a data-poisoning Byzantine attack
        attack = env.scenario.byzantine
        env = replace(env, y=registry.get("byzantine", attack.name).factory(attack.params, env.y, env.num_classes))
    entry = registry.get("strategy", env.scenario.strategy.name)
    handler: Handler = entry.extras.get("client", fedavg_train)
    if env.scenario.audit is not None:
        from fedsim.world.audit import client_canary

        trainable = sum(p.numel() for p in env.model.parameters() if p.requires_grad)
        env = replace(env, canary=client_canary(msg.content, env.scenario.seed, trainable))
        if env.canary is not None and entry.extras.get("canary") == "bypass":
            handler = canary_reply
    mod = _defense_mod(env.scenario)
    config = msg.content["config"] if "config" in msg.content else {}
    server_round = int(config.get("server-round", 0))
    if config.get(CRASH):
        raise RuntimeError(f"injected crash of client {env.partition_id} (faults.crash_probability)")
    if config.get(DELAY):
        time.sleep(float(config[DELAY]))
    seed_torch_rng(derive_seed(env.scenario.seed, server_round, env.partition_id, "torch"), env.device)
    reply = handler(msg.content, env)
    if mod is not None:  # the defense transforms what leaves the client (clip, noise)
        reply = mod(msg.content, reply, env)
    return answer(msg, reply, env.partition_id)


def answer(msg: Message, content: RecordDict, partition_id: int) -> Message:
    """The reply to ``msg``: ``content`` and ``"node": ConfigRecord({"partition-id": ...})``,
    which says who replied on any grid."""
    put(content, "node", prebuilt(ConfigRecord, {PARTITION_ID: partition_id}))
    return reply_message(content, msg)


def canary_reply(content: RecordDict, env: ClientEnv) -> RecordDict:
    """A canary client's upload: the received model plus C·u_j, no training (fedsim.world.audit)."""
    from fedsim.world.audit import apply_canary

    model = env.load(content["arrays"])
    loss, _ = evaluate(model, env.x, env.y, env.scenario.evaluation.batch_size)
    apply_canary(model, env.canary)
    return env.reply(loss)


def _defense_mod(scenario: Scenario) -> Callable | None:
    """The scenario's defense's client mod ``mod(instruction, reply, env) -> reply``, if any."""
    if scenario.defense is None:
        return None
    return registry.get("defense", scenario.defense.name).extras.get("client_mod")


@app.query("checkpoint")
def checkpoint(msg: Message, context: Context) -> Message:
    """Hand the server this node's persistent state (all but the set-up records)."""
    state = RecordDict({k: v for k, v in context.state.items() if k not in (STATE_KEY, INDEX_KEY)})
    return Message(state, reply_to=msg)


@app.query("restore")
def restore(msg: Message, context: Context) -> Message:
    """Put back the state a checkpoint holds for this node."""
    for key, value in msg.content.items():
        context.state[key] = value
    return Message(RecordDict(), reply_to=msg)


@app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    """Federated evaluation: the global model on this client's own examples, or the
    strategy's own evaluation handler (``evaluate=`` extra; personalised models)."""
    env = _env(context)
    handler: Handler | None = registry.get("strategy", env.scenario.strategy.name).extras.get("evaluate")
    if handler is not None:
        return Message(handler(msg.content, env), reply_to=msg)
    loss, acc = evaluate(env.load(msg.content["arrays"]), env.x, env.y, env.scenario.evaluation.batch_size)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": acc, "num-examples": len(env.x)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
