"""D-PSGD (Lian et al., NeurIPS 2017, arXiv 1705.09056) and DFedAvg: gossip averaging on a graph.

Every node i keeps its own model x_i (in its ``Context.state``); W is the round's mixing
matrix on the scenario's ``topology:`` (``fedsim.world.topology``, ring with Metropolis–Hastings
weights if absent). One round, by ``order``:

- ``train_gossip`` (default; DFedAvg, and the structure of DFedSAM Alg. 1):
  y_i ← K local SGD steps from x_i;  z_i⁽⁰⁾ = y_i;  z_i⁽q+1⁾ = Σ_j W_ij z_j⁽q⁾ for q < Q;
  x_i ← z_i⁽Q⁾.
- ``simultaneous`` (D-PSGD, Lian et al. Alg. 1): node i sends its current x_i while it
  computes its local update Δ_i = y_i − x_i at x_i, then x_i ← Σ_j (W^Q)_ij x_j + Δ_i.
  With one local step (``client: {steps: 1}``) and Q = 1 this is exactly
  x_i ← Σ_j W_ij x_j − η ∇F_i(x_i; ξ_i).
- ``gossip_train`` (the order of the DisPFL/da-dpfl code): Q gossip steps on x, then K
  local steps from the mixed model.

K local steps are the scenario's ``client:`` section (epochs or steps, batch, lr, momentum,
weight decay); the learning rate of round t is lr · lr_decay^(t−1). Each gossip step,
node j's model crosses every link (j, i) of the graph once: deg(j)·|x| bytes sent by j
(§8.5 of the strategies reference), Q times per round.

Node side: ``train.gossip_local`` runs the strategy's ``local_update`` (registered with the
strategy; plain SGD here, SAM in ``strategies/dfedsam.py``) and replies with the model the
node sends out; ``train.gossip_mix`` receives the neighbours' models with the node's row of
W and mixes them into its own model.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from pydantic import Field

from fedsim import registry
from fedsim.apps import client
from fedsim.apps.client import ClientEnv
from fedsim.apps.decentralized import (
    MODEL_KEY,
    DecentralizedParams,
    DecentralizedStrategy,
    Network,
    node_env,
    seeded_torch,
    weighted_sum,
)
from fedsim.registry import register
from fedsim.world.topology import build_topology

LOCAL = f"{MessageType.TRAIN}.gossip_local"
MIX = f"{MessageType.TRAIN}.gossip_mix"
DELTA_KEY = "dfl.delta"


class GossipParams(DecentralizedParams):
    order: Literal["train_gossip", "simultaneous", "gossip_train"] = Field(
        "train_gossip", description="local update and gossip: in sequence, in parallel (Lian), or gossip first"
    )
    lr_decay: float = Field(1.0, gt=0, le=1, description="local lr of round t: lr · lr_decay^(t−1)")


class DPSGDParams(GossipParams):
    gossip_steps: int = Field(1, ge=1, description="gossip steps Q per round")


# ------------------------------------------------------------------------- node side


def round_lr(env: ClientEnv, server_round: int) -> float:
    return env.scenario.client.lr * env.scenario.strategy.params.lr_decay ** (server_round - 1)


def sgd_update(env: ClientEnv, server_round: int) -> float:
    """K local SGD steps from the loaded model (the scenario's client section); mean loss."""
    loss, _ = env.train(server_round, lr=round_lr(env, server_round))
    return loss


@client.app.train("gossip_local")
def gossip_local(msg: Message, context: Context) -> Message:
    """Local update of this node's model; reply with what the node sends to its neighbours.

    ``send``: "trained" (train_gossip: the updated model), "start" (simultaneous: the model
    before the update, Δ kept for after the gossip) or "none" (gossip_train).
    """
    env = node_env(context)
    cfg = msg.content["config"]
    send = str(cfg["send"])
    start = env.state[MODEL_KEY]
    env.load(start)
    update = registry.get("strategy", env.scenario.strategy.name).extras["local_update"]
    server_round = int(cfg["server-round"])
    with seeded_torch(env, server_round):
        loss = update(env, server_round)
    trained = ArrayRecord(env.model.state_dict())
    if send == "start":
        env.state[DELTA_KEY] = weighted_sum([(1.0, trained), (-1.0, start)])
    else:
        env.state[MODEL_KEY] = trained
    reply = RecordDict({"metrics": MetricRecord({"train_loss": loss, "num-examples": len(env.x)})})
    if send != "none":
        reply["arrays"] = start if send == "start" else trained
    return Message(reply, reply_to=msg)


@client.app.train("gossip_mix")
def gossip_mix(msg: Message, context: Context) -> Message:
    """One gossip step: z_i ← W_ii z_i + Σ_{j∈N(i)} W_ij z_j (+ Δ_i after the last step if kept)."""
    content = msg.content
    cfg = content["config"]
    terms = [(float(cfg["self-weight"]), context.state[MODEL_KEY])]
    terms += [(float(w), content[f"from.{j}"]) for j, w in content["weights"].items()]
    if cfg["add-delta"]:
        terms.append((1.0, context.state[DELTA_KEY]))
    mixed = weighted_sum(terms)
    context.state[MODEL_KEY] = mixed
    return Message(RecordDict({"arrays": mixed}) if cfg["reply"] else RecordDict(), reply_to=msg)


# ----------------------------------------------------------------------- server side


class Gossip(DecentralizedStrategy):
    """Local updates and Q gossip steps per round over the scenario's topology (see module doc)."""

    def __init__(self, params: GossipParams, setup, gossip_steps: int):
        super().__init__(params, setup)
        sc = setup.scenario
        self.topology = build_topology(sc.topology, sc.num_clients, sc.seed)
        self.gossip_steps = gossip_steps
        self.order = params.order

    def round(self, rnd: int, net: Network) -> dict:
        net.membership.apply(rnd)
        up = net.up
        simultaneous = self.order == "simultaneous"
        losses: dict[int, float] = {}
        if self.order == "gossip_train":
            outgoing = net.pull(up)  # each node sends the model it holds
        else:
            outgoing, losses = self.local(rnd, net, up, send="start" if simultaneous else "trained")
        gap = self.gossip(rnd, net, outgoing, add_delta=simultaneous)
        if self.order == "gossip_train":
            _, losses = self.local(rnd, net, sorted(outgoing), send="none")
        if up:
            net.now = float(max(net.clock[p] for p in up))
        return {
            "train_loss": float(np.mean(list(losses.values()))) if losses else None,
            "clients_sampled": len(up),
            "clients_replied": len(losses),
            "spectral_gap": gap,
        }

    def local(self, rnd: int, net: Network, pids: list[int], send: str):
        """Local updates on ``pids``: (models they send out, their training losses)."""
        cfg = RecordDict({"config": ConfigRecord({"server-round": rnd, "send": send})})
        replies = net.ask(LOCAL, {pid: cfg for pid in pids})
        net.train_time(replies)
        models = {pid: r["arrays"] for pid, r in replies.items() if "arrays" in r}
        return models, {pid: float(r["metrics"]["train_loss"]) for pid, r in replies.items()}

    def gossip(self, rnd: int, net: Network, outgoing: dict, add_delta: bool = False) -> float:
        """Q steps z ← W z among the nodes that sent a model; the spectral gap of the round's W.

        Node j's model is delivered to each neighbour i with i's row of W; a node that fails
        drops out of the following steps (W is rebuilt on the nodes left).
        """
        members: list[int] = []
        gap = float("nan")
        for q in range(self.gossip_steps):
            last = q == self.gossip_steps - 1
            if sorted(outgoing) != members:
                members = sorted(outgoing)
                if not members:
                    break
                w, graph, gap = self.topology.mixing(rnd, members)
            sizes = {j: outgoing[j].count_bytes() for j in members}
            contents = {}
            for i in members:
                neighbours = sorted(graph.neighbors(i))
                content = RecordDict(
                    {
                        "config": ConfigRecord(
                            {"self-weight": float(w[i, i]), "reply": not last, "add-delta": add_delta and last}
                        ),
                        "weights": MetricRecord({str(j): float(w[i, j]) for j in neighbours}),
                    }
                )
                for j in neighbours:
                    content[f"from.{j}"] = outgoing[j]
                    net.carry(j, i, sizes[j])
                contents[i] = content
            net.exchange_time(graph, sizes)
            replies = net.ask(MIX, contents)
            if not last:
                outgoing = {pid: r["arrays"] for pid, r in replies.items()}
        return gap


@register("strategy", "dpsgd", params=DPSGDParams, decentralized=True, local_update=sgd_update)
def dpsgd(params: DPSGDParams, setup) -> Gossip:
    """D-PSGD / DFedAvg: local SGD, then Q gossip steps with the topology's mixing matrix."""
    return Gossip(params, setup, gossip_steps=params.gossip_steps)
