"""MoDeST (de Vos et al., arXiv 2302.13837 v1, 2023; final version Plexus, EuroMLSys 2025).

Decentralized sampling: no server and no fixed graph. Each round k trains on a sample
S_k of s nodes that every node can derive by itself from its view of the population:

    Sample(k, s): order the view's active ids by md5(seed-id-k) (v1 code ``sample_manager.py``;
                  the run seed stands in for the per-run public keys the code hashes),
                  ping them in that order and keep the first s that answer.
    on TRAIN(k, x̄, view) at node i:              (Alg. 2 of the final paper)
        merge view; x_i ← local SGD from x̄ (the ``client:`` section)
        send AGGREGATE(k+1, x_i, view) to the first ``aggregators`` nodes of Sample(k+1)
    on AGGREGATE(k+1, x_j, view) at an aggregator:
        merge view; Θ ← Θ ∪ {x_j} (one per sender)
        once |Θ| ≥ ⌊|S_k| · sf⌋:  x̄ ← mean(Θ);  send TRAIN(k+1, x̄, view) to Sample(k+1, s)
        on the aggregation timeout: go on if |Θ| ≥ min(3, ⌊|S_k|·sf⌋), else drop the round

Population views travel with every model transfer and are merged. A view maps every node
id to (index, status): a node that joins or leaves raises its own index and announces
(JOIN | LEAVE) to min(10·s, |view|) random peers, which keep the announcement pending
until after their next sample is derived (v1 code) so that a join does not split the
samples of one round; merging keeps the higher (index, status). Round 1 is started by
the lowest-id node that is up, which sends the initial model to Sample(1).

What is simulated (the paper runs an asyncio discrete-event simulator, so does fedsim):
the ServerApp runs an event loop on a virtual clock (heap of timed deliveries) and acts
as the wire: it delivers TRAIN/AGGREGATE messages at their arrival times
(``fedsim.world.network.NetworkModel``: latency, bandwidth, queued uplinks; training takes
examples × seconds-per-example on the node), answers pings for the nodes that are up
(a ping to a node that is down costs ``ping_timeout``), and fires aggregation timeouts.
Everything a node decides (sample order, aggregation, view merges, announcements) is
decided by the node's own handler from its own state. Churn comes from the scenario's
``churn:`` trace: events of round k happen when round k's aggregate exists, before its
sample is pinged; a crash is silent, a leave is announced. The aggregator holding round
k's model is never among the nodes that crash or leave at round k (MoDeST v1 has no way to
recover the only copy of the model). Deviation, stated: v1 drops peers from samples by an
inactivity threshold on last-active rounds; here an aggregator marks a peer that missed its
ping as suspect in its view, and the mark spreads with the views (a later JOIN with a
higher index clears it).

Bytes are counted per category: ``model`` (TRAIN and AGGREGATE payloads), ``view``
(views piggybacked on them), ``ping`` (ping and pong, ``PING_BYTES`` each) and
``membership`` (announcements, bootstrap views). The output model is the latest
aggregate x̄ (what the Plexus paper evaluates); node models are evaluated as well.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
from collections import defaultdict

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from pydantic import Field

from fedsim.apps import client
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
from fedsim.training import seed_sequence

TRAIN = f"{MessageType.TRAIN}.modest_train"
AGGREGATE = f"{MessageType.TRAIN}.modest_aggregate"
SAMPLE = f"{MessageType.TRAIN}.modest_sample"
KICKOFF = f"{MessageType.TRAIN}.modest_kickoff"
SETUP = f"{MessageType.QUERY}.modest_setup"
ANNOUNCE = f"{MessageType.QUERY}.modest_announce"
MEMBERSHIP = f"{MessageType.QUERY}.modest_membership"
VIEW = f"{MessageType.QUERY}.modest_view"

VIEW_KEY = "modest.view"
PENDING_KEY = "modest.pending"
BUFFER_KEY = "modest.buffer"
AGGREGATE_KEY = "modest.aggregate"
SUM_KEY = "modest.sum"  # Σ of the models in Θ
ROUNDS_KEY = "modest.rounds"

# A view entry is one int64: index · 4 + status, so that merging two views is an
# elementwise max (higher index wins; at equal index the later status in this order).
ABSENT, ACTIVE, SUSPECT, LEFT = 0, 1, 2, 3
PING_BYTES = 64  # a ping or pong: ids, round and message header
ANNOUNCE_FANOUT = 10  # announcements go to min(10·s, |view|) peers (v1 code)


class ModestParams(DecentralizedParams):
    sample_size: int = Field(10, ge=1, description="s: nodes per round (v1 code 10, Plexus 13)")
    success_fraction: float = Field(0.8, gt=0, le=1, description="sf: aggregate once ⌊s·sf⌋ models arrived")
    aggregators: int = Field(1, ge=1, description="aggregators per round (Plexus: 1)")
    aggregation_timeout: float = Field(60.0, gt=0, description="virtual seconds an aggregator waits")
    min_models_on_timeout: int = Field(3, ge=1, description="on timeout, aggregate only with this many")
    ping_timeout: float = Field(5.0, gt=0, description="virtual seconds before an unanswered ping fails")


# ------------------------------------------------------------------------------- views


def sample_order(view: np.ndarray, rnd: int, seed: int) -> list[int]:
    """The active ids of ``view`` ordered by md5(seed-id-round): Sample(k, s) is its first s that answer."""
    active = np.flatnonzero(view % 4 == ACTIVE)
    return sorted((int(i) for i in active), key=lambda i: hashlib.md5(f"{seed}-{i}-{rnd}".encode()).digest())


def merge(view: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Merge two views: per id, the entry with the higher (index, status)."""
    return np.maximum(view, other)


def bump(entry: int, status: int) -> int:
    """A node's own entry after it announces ``status``: index + 1."""
    return (entry // 4 + 1) * 4 + status


def _view(record: ArrayRecord) -> np.ndarray:
    return record["view"].numpy().copy()


def _record(view: np.ndarray) -> ArrayRecord:
    return ArrayRecord({"view": Array(np.ascontiguousarray(view, dtype=np.int64))})


# ------------------------------------------------------------------------- node side


def _load_view(state, key: str = VIEW_KEY) -> np.ndarray:
    return _view(state[key])


def _rounds(state) -> MetricRecord:
    return state[ROUNDS_KEY]


def _order_and_flush(env, rnd: int) -> list[int]:
    """Sample order for ``rnd`` from the current view, then apply pending announcements."""
    view = _load_view(env.state)
    order = sample_order(view, rnd, env.scenario.seed)
    env.state[VIEW_KEY] = _record(merge(view, _load_view(env.state, PENDING_KEY)))
    env.state[PENDING_KEY] = _record(np.zeros_like(view))
    return order


def _merge_incoming(state, content: RecordDict) -> None:
    if "view" in content:
        state[VIEW_KEY] = _record(merge(_load_view(state), _view(content["view"])))


@client.app.query("modest_setup")
def modest_setup(msg: Message, context: Context) -> Message:
    """The node's initial view of the population (empty for a node that joins later)."""
    view = _view(msg.content["view"])
    context.state[VIEW_KEY] = _record(view)
    context.state[PENDING_KEY] = _record(np.zeros_like(view))
    context.state[ROUNDS_KEY] = MetricRecord({"trained": 0, "aggregated": 0, "buffer-round": 0})
    return Message(RecordDict(), reply_to=msg)


@client.app.train("modest_train")
def modest_train(msg: Message, context: Context) -> Message:
    """TRAIN(k, x̄, view): train from x̄; reply with x_i, the view and the order of Sample(k+1)."""
    env = node_env(context)
    cfg = msg.content["config"]
    rnd = int(cfg["round"])
    rounds = _rounds(env.state)
    if rnd <= int(rounds["trained"]):
        return Message(RecordDict({"config": ConfigRecord({"accepted": False})}), reply_to=msg)
    rounds["trained"] = rnd
    _merge_incoming(env.state, msg.content)
    view = _load_view(env.state)
    me = env.partition_id
    if view[me] % 4 != ACTIVE:  # suspected or unknown while alive: re-announce itself
        view[me] = bump(int(view[me]), ACTIVE)
        env.state[VIEW_KEY] = _record(view)
    env.load(msg.content["arrays"])
    with seeded_torch(env, rnd):
        loss, _ = env.train(rnd)
    env.state[MODEL_KEY] = ArrayRecord(env.model.state_dict())
    order = _order_and_flush(env, rnd + 1)
    reply = RecordDict(
        {
            "arrays": env.state[MODEL_KEY],
            "view": env.state[VIEW_KEY],
            "metrics": MetricRecord({"train_loss": loss, "num-examples": len(env.x)}),
            "config": ConfigRecord({"accepted": True, "order": order}),
        }
    )
    return Message(reply, reply_to=msg)


@client.app.train("modest_aggregate")
def modest_aggregate(msg: Message, context: Context) -> Message:
    """AGGREGATE(k, x_j, view): add x_j to Θ_k; once enough arrived (or on timeout), x̄ ← mean(Θ_k)."""
    env = node_env(context)
    params = env.scenario.strategy.params
    cfg = msg.content["config"]
    rnd, force = int(cfg["round"]), bool(cfg["timeout"])
    rounds = _rounds(env.state)
    _merge_incoming(env.state, msg.content)
    if rnd <= int(rounds["aggregated"]) or rnd < int(rounds["buffer-round"]):
        return Message(RecordDict({"config": ConfigRecord({"done": False, "count": 0})}), reply_to=msg)
    if rnd > int(rounds["buffer-round"]):  # a newer round: Θ starts empty
        rounds["buffer-round"] = rnd
        env.state[BUFFER_KEY] = ConfigRecord({"senders": []})
    senders = list(env.state[BUFFER_KEY]["senders"])
    if not force and int(cfg["sender"]) not in senders:
        senders.append(int(cfg["sender"]))
        x_j = msg.content["arrays"]
        env.state[SUM_KEY] = x_j if len(senders) == 1 else weighted_sum([(1.0, env.state[SUM_KEY]), (1.0, x_j)])
        env.state[BUFFER_KEY] = ConfigRecord({"senders": senders})
    need = max(1, math.floor(int(cfg["sample-size"]) * params.success_fraction))
    if force:
        need = min(need, params.min_models_on_timeout)
    if not senders or len(senders) < need:
        return Message(RecordDict({"config": ConfigRecord({"done": False, "count": len(senders)})}), reply_to=msg)
    env.state[AGGREGATE_KEY] = weighted_sum([(1.0 / len(senders), env.state[SUM_KEY])])
    rounds["aggregated"] = rnd
    order = _order_and_flush(env, rnd)
    return Message(
        RecordDict({"config": ConfigRecord({"done": True, "count": len(senders), "order": order})}), reply_to=msg
    )


@client.app.train("modest_kickoff")
def modest_kickoff(msg: Message, context: Context) -> Message:
    """Start round 1: this node's (initial) model is the first aggregate; reply the order of Sample(1)."""
    env = node_env(context)
    env.state[AGGREGATE_KEY] = env.state[MODEL_KEY]
    _rounds(env.state)["aggregated"] = 1
    order = _order_and_flush(env, 1)
    return Message(RecordDict({"config": ConfigRecord({"done": True, "count": 1, "order": order})}), reply_to=msg)


@client.app.train("modest_sample")
def modest_sample(msg: Message, context: Context) -> Message:
    """The pings are answered: mark the peers that missed them; reply TRAIN's payload (x̄, view)."""
    failed = list(msg.content["config"]["failed"])
    view = _load_view(context.state)
    view[failed] = np.maximum(view[failed], view[failed] // 4 * 4 + SUSPECT)
    context.state[VIEW_KEY] = _record(view)
    return Message(RecordDict({"arrays": context.state[AGGREGATE_KEY], "view": context.state[VIEW_KEY]}), reply_to=msg)


@client.app.query("modest_view")
def modest_view(msg: Message, context: Context) -> Message:
    """A joining node's bootstrap peer sends it its view."""
    return Message(RecordDict({"view": context.state[VIEW_KEY]}), reply_to=msg)


@client.app.query("modest_announce")
def modest_announce(msg: Message, context: Context) -> Message:
    """This node joins (with a bootstrap view) or leaves: raise its index, pick peers to tell."""
    env = node_env(context)
    cfg = msg.content["config"]
    _merge_incoming(env.state, msg.content)
    view = _load_view(env.state)
    me = env.partition_id
    view[me] = bump(int(view[me]), ACTIVE if cfg["action"] == "join" else LEFT)
    env.state[VIEW_KEY] = _record(view)
    others = np.array([i for i in np.flatnonzero(view % 4 == ACTIVE) if i != me], dtype=np.int64)
    fanout = min(ANNOUNCE_FANOUT * env.scenario.strategy.params.sample_size, len(others))
    gen = np.random.default_rng(seed_sequence(env.scenario.seed, int(cfg["round"]), me, "announce"))
    peers = sorted(int(i) for i in gen.choice(others, size=fanout, replace=False)) if fanout else []
    entry = np.zeros_like(view)
    entry[me] = view[me]
    return Message(RecordDict({"view": _record(entry), "config": ConfigRecord({"peers": peers})}), reply_to=msg)


@client.app.query("modest_membership")
def modest_membership(msg: Message, context: Context) -> Message:
    """An announcement from a peer: pending until this node has derived its next sample."""
    pending = merge(_load_view(context.state, PENDING_KEY), _view(msg.content["view"]))
    context.state[PENDING_KEY] = _record(pending)
    return Message(RecordDict(), reply_to=msg)


# ----------------------------------------------------------------------- server side


class LivenessError(RuntimeError):
    """Nobody trains, sends or aggregates any more: the run cannot reach its next round."""


class Modest(DecentralizedStrategy):
    """The network's event loop for MoDeST: timed deliveries, pings, timeouts and churn."""

    def __init__(self, params: ModestParams, setup):
        super().__init__(params, setup)
        self.seed = setup.scenario.seed
        self.events: list = []  # heap of (time, seq, kind, payload)
        self.seq = itertools.count()
        self.started = 0  # the highest round whose TRAIN messages went out
        self.latest: tuple[int, int] | None = None  # (aggregator, round) of the newest x̄
        self.training: dict[int, int] = {}  # node -> the round it is training for
        self.aggregated: dict[int, int] = {}  # aggregator -> newest round it aggregated
        self.timers: set[tuple[int, int]] = set()
        self.stats: dict[int, dict] = defaultdict(lambda: {"losses": [], "aggregators": set(), "dropped": 0})

    # ---- protocol
    def start(self, net: Network) -> None:
        super().start(net)
        up = net.up
        initial = np.full(net.n, ABSENT, dtype=np.int64)
        initial[up] = ACTIVE
        unknown = np.full(net.n, ABSENT, dtype=np.int64)  # a node that joins later knows nobody yet
        views = {pid: _record(initial if pid in up else unknown) for pid in range(net.n)}
        net.ask(SETUP, {pid: RecordDict({"view": view}) for pid, view in views.items()})
        first = up[0]
        reply = net.ask(KICKOFF, {first: RecordDict()})[first]
        self.aggregated[first] = 1
        self.dispatch(net, first, 1, list(reply["config"]["order"]))

    def round(self, rnd: int, net: Network) -> dict:
        """Run the event loop until round ``rnd``'s models are aggregated (x̄ of round rnd + 1 exists)."""
        while self.started < rnd + 1:
            if not self.events:
                raise LivenessError(
                    f"liveness violated at virtual time {net.now:.1f} s: round {rnd} cannot complete "
                    f"({len(net.membership.up)} nodes up)"
                )
            when, _, kind, payload = heapq.heappop(self.events)
            net.now = when
            getattr(self, f"on_{kind}")(net, **payload)
        stats = self.stats[rnd]
        nxt = self.stats[rnd + 1]
        return {
            "train_loss": float(np.mean(stats["losses"])) if stats["losses"] else None,
            "clients_sampled": len(stats["sample"]),
            "clients_replied": nxt["aggregated_models"],
            "sample": stats["sample"],
            "aggregators": len(nxt["aggregators"]),
            "pings_failed": stats["pings_failed"],
            "rounds_dropped": nxt["dropped"],
            "round_time": nxt["started_at"] - stats["started_at"],
        }

    def output_model(self, net: Network) -> ArrayRecord:
        node, _ = self.latest
        return net.pull([node], AGGREGATE_KEY)[node]

    def push(self, when: float, kind: str, **payload) -> None:
        heapq.heappush(self.events, (when, next(self.seq), kind, payload))

    def ping(self, net: Network, src: int, order: list[int], want: int, now: float):
        """Ping ``order`` in windows of the answers still missing: (first ``want`` that answered, failed, time)."""
        up = net.membership.up
        alive, failed, pos = [], [], 0
        while len(alive) < want and pos < len(order):
            window = order[pos : pos + want - len(alive)]
            pos += len(window)
            wait = 0.0
            for peer in window:
                if peer == src:
                    alive.append(peer)
                    continue
                net.carry(src, peer, PING_BYTES, "ping", delivered=peer in up)
                if peer in up:
                    net.carry(peer, src, PING_BYTES, "ping")
                    alive.append(peer)
                    wait = max(wait, 2 * net.model.latency(src, peer))
                else:
                    failed.append(peer)
                    wait = max(wait, self.params.ping_timeout)
            now += wait
        return sorted(alive, key=order.index), failed, now

    def send(self, net: Network, src: int, dst: int, content: RecordDict, now: float) -> float:
        """Put a model and a view on the wire from src to dst; its arrival time."""
        if src == dst:
            return now
        model, view = content["arrays"].count_bytes(), content["view"].count_bytes()
        delivered = dst in net.membership.up
        net.carry(src, dst, model, "model", delivered)
        net.carry(src, dst, view, "view", delivered)
        return net.model.send(src, dst, model + view, now)

    def dispatch(self, net: Network, agg: int, rnd: int, order: list[int]) -> None:
        """Aggregator ``agg`` holds x̄ of round ``rnd``: churn of the round, Sample(rnd) by ping, TRAIN."""
        self.churn(net, rnd, agg)
        sample, failed, now = self.ping(net, agg, order, self.params.sample_size, net.now)
        payload = net.ask(SAMPLE, {agg: RecordDict({"config": ConfigRecord({"failed": failed})})})[agg]
        content = RecordDict(
            {
                "arrays": payload["arrays"],
                "view": payload["view"],
                "config": ConfigRecord({"round": rnd, "sample-size": len(sample)}),
            }
        )
        for dst in sample:
            self.push(self.send(net, agg, dst, content, now), "train", dst=dst, rnd=rnd, content=content)
        if rnd > self.started:
            self.started = rnd
            self.latest = (agg, rnd)
            self.stats[rnd].update(sample=sample, pings_failed=len(failed), started_at=net.now)

    def on_train(self, net: Network, dst: int, rnd: int, content: RecordDict) -> None:
        if dst not in net.membership.up:
            return  # delivered to a node that is down: lost
        reply = net.ask(TRAIN, {dst: content}).get(dst)
        if reply is None or not reply["config"]["accepted"]:
            return
        self.training[dst] = rnd  # a newer TRAIN cancels an unfinished older one
        self.stats[rnd]["losses"].append(float(reply["metrics"]["train_loss"]))
        done = net.now + net.model.compute_time(dst, net.work[dst])
        self.push(done, "trained", node=dst, rnd=rnd, reply=reply, sample_size=int(content["config"]["sample-size"]))

    def on_trained(self, net: Network, node: int, rnd: int, reply: RecordDict, sample_size: int) -> None:
        if node not in net.membership.up or self.training.get(node) != rnd:
            return  # crashed or cancelled meanwhile
        order = list(reply["config"]["order"])
        aggregators, _, now = self.ping(net, node, order, self.params.aggregators, net.now)
        content = RecordDict(
            {
                "arrays": reply["arrays"],
                "view": reply["view"],
                "config": ConfigRecord(
                    {"round": rnd + 1, "sender": node, "sample-size": sample_size, "timeout": False}
                ),
            }
        )
        for agg in aggregators:
            self.push(self.send(net, node, agg, content, now), "aggregate", dst=agg, rnd=rnd + 1, content=content)

    def on_aggregate(self, net: Network, dst: int, rnd: int, content: RecordDict) -> None:
        if dst not in net.membership.up:
            return
        self.stats[rnd]["aggregators"].add(dst)
        if (dst, rnd) not in self.timers and self.aggregated.get(dst, 0) < rnd:
            self.timers.add((dst, rnd))
            self.push(net.now + self.params.aggregation_timeout, "timeout", dst=dst, rnd=rnd)
        self.aggregate(net, dst, rnd, content)

    def on_timeout(self, net: Network, dst: int, rnd: int) -> None:
        if dst not in net.membership.up or self.aggregated.get(dst, 0) >= rnd:
            return
        size = len(self.stats[rnd - 1]["sample"])
        cfg = ConfigRecord({"round": rnd, "sender": -1, "sample-size": size, "timeout": True})
        if not self.aggregate(net, dst, rnd, RecordDict({"config": cfg})):
            self.stats[rnd]["dropped"] += 1

    def aggregate(self, net: Network, dst: int, rnd: int, content: RecordDict) -> bool:
        reply = net.ask(AGGREGATE, {dst: content}).get(dst)
        if reply is None or not reply["config"]["done"]:
            return False
        self.aggregated[dst] = rnd
        self.stats[rnd]["aggregated_models"] = int(reply["config"]["count"])
        self.dispatch(net, dst, rnd, list(reply["config"]["order"]))
        return True

    def churn(self, net: Network, rnd: int, agg: int) -> None:
        """The trace's events at round ``rnd``: crashes are silent, leaves and joins are announced."""
        for node, action in net.membership.apply(rnd, exempt={agg}):
            if action == "crash":
                continue
            content = RecordDict({"config": ConfigRecord({"action": action, "round": rnd})})
            if action == "join":
                bootstrap = self.bootstrap_peer(net, node, rnd)
                if bootstrap is not None:
                    view = net.ask(VIEW, {bootstrap: RecordDict()})[bootstrap]["view"]
                    net.carry(bootstrap, node, view.count_bytes(), "membership")
                    content["view"] = view
            reply = net.ask(ANNOUNCE, {node: content})[node]
            peers = list(reply["config"]["peers"])
            up = net.membership.up
            for peer in peers:
                net.carry(node, peer, reply["view"].count_bytes(), "membership", delivered=peer in up)
            net.ask(MEMBERSHIP, {p: RecordDict({"view": reply["view"]}) for p in peers if p in up})

    def bootstrap_peer(self, net: Network, node: int, rnd: int) -> int | None:
        """A random node that is up, from which a joining node copies its first view."""
        others = [p for p in net.up if p != node]
        if not others:
            return None
        rng = np.random.default_rng(seed_sequence(self.seed, rnd, node, "bootstrap"))
        return int(rng.choice(others))


@register("strategy", "modest", params=ModestParams, decentralized=True)
def modest(params: ModestParams, setup) -> Modest:
    """MoDeST: decentralized sampling, aggregators push the average to the next sample (de Vos et al. 2023)."""
    return Modest(params, setup)
