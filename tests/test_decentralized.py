"""Decentralized learning: mixing matrices, gossip = W^Q, D-PSGD = FedAvg on K_N, link bytes, MoDeST."""

import json

import networkx as nx
import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, RecordDict

import fedsim
from fedsim import registry
from fedsim.apps import client
from fedsim.apps.decentralized import INIT, Network, flat
from fedsim.apps.setup import prepare
from fedsim.world.network import ChurnEvent, Membership, NetworkModel, NetworkParams, local_work
from fedsim.runtimes.inprocess import InProcessGrid
from fedsim.scenario import ScenarioError, load
from fedsim.world.topology import (
    ErdosRenyiParams,
    GridParams,
    RandomRegularParams,
    Topology,
    TopologyParams,
    check_mixing,
    metropolis_hastings,
    spectral_gap,
    uniform,
)
from fedsim.world.base import Fleet
from fedsim.strategies import modest
from fedsim.strategies.modest import ACTIVE, LEFT, SUSPECT, bump, merge, sample_order


def scenario(tmp_path, **over):
    base = {
        "name": "dfl",
        "seed": 5,
        "rounds": 3,
        "num_clients": 6,
        "dataset": {"name": "digits"},
        "partition": {"name": "iid"},
        "model": {"name": "mlp", "hidden": [16]},
        "strategy": {"name": "dpsgd"},
        "client": {"epochs": 1, "batch_size": 16, "lr": 0.1},
        "output": {"dir": str(tmp_path / "runs"), "progress": False, "plot": False, "save_model": False},
    }
    return base | over


# ------------------------------------------------------------------------ topologies


@pytest.mark.parametrize("n", [5, 8, 13])
@pytest.mark.parametrize("rule", [metropolis_hastings, uniform])
def test_ring_mixing_is_doubly_stochastic_with_the_closed_form_gap(n, rule):
    graph = nx.cycle_graph(n)
    w = rule(graph)
    check_mixing(w, graph)
    np.testing.assert_allclose(w[0, [n - 1, 0, 1]], [1 / 3, 1 / 3, 1 / 3])
    # eigenvalues 1/3 + 2/3 cos(2πk/n): the gap is 1 − (1/3 + 2/3 cos(2π/n))
    assert spectral_gap(w) == pytest.approx(2 / 3 * (1 - np.cos(2 * np.pi / n)), abs=1e-12)


@pytest.mark.parametrize("n", [2, 7, 16])
@pytest.mark.parametrize("rule", [metropolis_hastings, uniform])
def test_complete_graph_mixing_is_the_average_with_gap_one(n, rule):
    w = rule(nx.complete_graph(n))
    np.testing.assert_allclose(w, np.full((n, n), 1 / n), atol=1e-15)
    assert spectral_gap(w) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(
    "name, params, n",
    [
        ("ring", TopologyParams(), 10),
        ("torus", GridParams(), 12),
        ("grid", GridParams(rows=3), 12),
        ("exponential", TopologyParams(), 16),
        ("erdos_renyi", ErdosRenyiParams(p=0.3), 15),
        ("random_regular", RandomRegularParams(degree=3), 12),
        ("complete", TopologyParams(mixing="uniform"), 6),
    ],
)
def test_every_topology_gives_a_symmetric_doubly_stochastic_w_on_a_connected_graph(name, params, n):
    w, graph, gap = Topology(name, params, n, seed=1).mixing(1)
    assert nx.is_connected(graph) and graph.number_of_nodes() == n
    np.testing.assert_allclose(w, w.T)
    np.testing.assert_allclose(w.sum(axis=0), 1)
    np.testing.assert_allclose(w.sum(axis=1), 1)
    assert (w >= 0).all() and 0 < gap <= 1


def test_topology_shapes_and_time_varying_draws():
    torus = Topology("torus", GridParams(), 16, 0).graph(1)
    assert {d for _, d in torus.degree} == {4}
    assert sorted(Topology("exponential", TopologyParams(), 8, 0).graph(1).neighbors(0)) == [1, 2, 4, 6, 7]
    tv = Topology("random_regular", RandomRegularParams(degree=4, time_varying=True), 12, 0)
    assert set(tv.graph(1).edges) != set(tv.graph(2).edges)  # fresh neighbours every round
    assert set(tv.graph(2).edges) == set(Topology("random_regular", tv.params, 12, 0).graph(2).edges)
    static = Topology("random_regular", RandomRegularParams(degree=4), 12, 0)
    assert set(static.graph(1).edges) == set(static.graph(9).edges)


def test_mixing_checks_reject_what_is_not_doubly_stochastic():
    star = nx.star_graph(4)
    with pytest.raises(ValueError, match="regular graphs"):
        uniform(star)
    w = metropolis_hastings(star)
    w[0, 1] += 0.1
    with pytest.raises(ValueError, match="not symmetric"):
        check_mixing(w, star)
    with pytest.raises(ValueError, match="not neighbours"):
        check_mixing(np.full((5, 5), 0.2), star)


def test_nodes_that_are_down_are_cut_out_of_w():
    w, graph, _ = Topology("ring", TopologyParams(), 6, 0).mixing(1, up=[0, 1, 2, 4])
    np.testing.assert_allclose(w[3], np.eye(6)[3])  # node 3 keeps its model
    assert sorted(graph.edges) == [(0, 1), (1, 2)] and graph.degree[4] == 0
    np.testing.assert_allclose(w.sum(axis=0), 1)


# ------------------------------------------------------------------- gossip protocol


def open_network(sc):
    setup = prepare(sc)
    grid = InProcessGrid(client.app, sc.num_clients, sc.seed)
    fleet = Fleet(grid, sc.num_clients)
    fleet.connect(json.dumps(sc.to_dict(), sort_keys=True), setup.partitions)
    return setup, Network(fleet, setup)


def test_q_gossip_steps_apply_w_to_the_q_and_links_count_every_model(tmp_path):
    sc = load(scenario(tmp_path, strategy={"name": "dpsgd", "gossip_steps": 3}, topology={"name": "ring"}))
    setup, net = open_network(sc)
    strategy = registry.get("strategy", "dpsgd").factory(sc.strategy.params, setup)
    rng = np.random.default_rng(0)
    shapes = {k: v.shape for k, v in setup.model.state_dict().items()}
    models = {
        pid: ArrayRecord({k: Array(rng.normal(size=s).astype(np.float32)) for k, s in shapes.items()})
        for pid in range(6)
    }
    net.ask(INIT, {pid: RecordDict({"arrays": m}) for pid, m in models.items()})
    gap = strategy.gossip(1, net, dict(models))
    after = net.pull(list(range(6)))
    w = strategy.topology.mixing(1)[0]
    x = np.stack([flat(models[p]) for p in range(6)])
    got = np.stack([flat(after[p]) for p in range(6)])
    np.testing.assert_allclose(got, np.linalg.matrix_power(w, 3) @ x, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, w @ x, atol=1e-3)  # really three steps
    assert gap == pytest.approx(2 / 3 * (1 - np.cos(2 * np.pi / 6)))
    size = models[0].count_bytes()
    for src in range(6):
        for dst in range(6):
            expected = 3 * size if (src - dst) % 6 in (1, 5) else 0
            assert net.link_bytes[(src, dst)] == expected, (src, dst)
    assert net.sent.tolist() == [2 * 3 * size] * 6 and net.received.tolist() == [2 * 3 * size] * 6


def test_dpsgd_on_a_complete_graph_with_uniform_weights_is_fedavg_with_full_participation(tmp_path):
    base = scenario(tmp_path, num_clients=3, rounds=3)
    fedavg = fedsim.run(base, strategy={"name": "fedavg", "fraction_train": 1.0})
    dpsgd = fedsim.run(base, topology={"name": "complete", "mixing": "uniform"})
    sizes = prepare(load(base)).partition_sizes
    assert len(set(sizes)) == 1  # equal partitions: FedAvg's example weights are uniform too
    a, b = fedavg.metrics, dpsgd.metrics
    np.testing.assert_allclose(b["train_loss"], a["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(b["test_loss"], a["test_loss"], rtol=1e-5)
    assert np.abs(b["test_acc"] - a["test_acc"]).max() <= 1 / 360 + 1e-12
    assert (b["consensus_distance"] < 1e-10).all()
    assert (b["node_acc_min"] == b["node_acc_max"]).all()
    assert b["spectral_gap"].tolist() == pytest.approx([1.0] * 3)


def test_gossip_orders_differ_only_in_where_the_local_update_goes(tmp_path):
    """From a common x0 on K_3 with uniform W, one round gives x̄ + mean Δ everywhere (train_gossip),
    x̄ + Δ_i on node i (simultaneous: Lian et al.), and the same after gossip_train (mixing x0 is a no-op)."""
    base = scenario(tmp_path, num_clients=3, rounds=1, topology={"name": "complete", "mixing": "uniform"})
    a = fedsim.run(base).metrics.iloc[0]
    b = fedsim.run(base, strategy={"name": "dpsgd", "order": "simultaneous"}).metrics.iloc[0]
    c = fedsim.run(base, strategy={"name": "dpsgd", "order": "gossip_train"}).metrics.iloc[0]
    assert a["consensus_distance"] < 1e-10 < b["consensus_distance"]
    assert b["consensus_distance"] == pytest.approx(c["consensus_distance"], rel=1e-5)
    assert abs(a["consensus_acc"] - b["consensus_acc"]) <= 1 / 360 + 1e-12  # the same mean model
    assert a["bytes_up"] == b["bytes_up"] == c["bytes_up"]


def test_gossip_bytes_in_rows_are_degree_times_q_times_model_size(tmp_path):
    sc = scenario(tmp_path, rounds=2, topology={"name": "torus"})
    res = fedsim.run(sc, strategy={"name": "dfedsam_mgs", "gossip_steps": 2})
    size = ArrayRecord(res.model.state_dict()).count_bytes()
    m = res.metrics
    assert m["bytes_up"].tolist() == [6 * 3 * 2 * size] * 2  # 2x3 torus: degree 3
    assert m["bytes_sent_per_node"].iloc[-1] == [2 * 3 * 2 * size] * 6
    assert (m["virtual_time"].diff().dropna() > 0).all()


# -------------------------------------------------------------------------- MoDeST


def test_modest_sample_depends_only_on_the_view_round_and_seed():
    view = np.full(20, ACTIVE, dtype=np.int64)
    order = sample_order(view, 7, seed=1)
    assert sorted(order) == list(range(20))
    # another node with the same active set (entries with other indices) derives the same order
    other = view.copy()
    other[[3, 9]] = bump(ACTIVE, ACTIVE)
    assert sample_order(other, 7, seed=1) == order
    assert sample_order(view, 7, seed=1) == order  # deterministic
    assert sample_order(view, 8, seed=1) != order and sample_order(view, 7, seed=2) != order
    gone = view.copy()
    gone[[order[0], order[5]]] = [ACTIVE // 4 * 4 + SUSPECT, bump(ACTIVE, LEFT)]
    assert sample_order(gone, 7, seed=1) == [i for i in order if i not in (order[0], order[5])]


def test_view_merge_keeps_the_newest_announcement():
    a = np.array([ACTIVE, ACTIVE, bump(ACTIVE, LEFT), 0])
    b = np.array([SUSPECT, bump(SUSPECT, ACTIVE), ACTIVE, bump(0, ACTIVE)])
    merged = merge(a, b)
    assert (merged % 4).tolist() == [SUSPECT, ACTIVE, LEFT, ACTIVE]  # suspicion, rejoin, leave, join
    assert (merge(b, a) == merged).all()


def test_modest_runs_are_deterministic_and_every_round_has_one_aggregator(tmp_path):
    sc = scenario(tmp_path, num_clients=12, rounds=4, strategy={"name": "modest", "sample_size": 4})
    a = fedsim.run(sc).metrics
    b = fedsim.run(sc).metrics
    assert a["sample"].tolist() == b["sample"].tolist()
    assert a["test_acc"].tolist() == b["test_acc"].tolist()
    assert a["aggregators"].tolist() == [1] * 4  # all trainees derived the same aggregator
    assert a["clients_replied"].tolist() == [3] * 4  # ⌊4 · 0.8⌋ models per aggregate
    c = fedsim.run(sc, seed=6).metrics
    assert c["sample"].tolist() != a["sample"].tolist()


def test_modest_keeps_learning_after_80_percent_of_the_nodes_crash(tmp_path):
    sc = scenario(
        tmp_path,
        num_clients=20,
        rounds=24,
        strategy={"name": "modest", "sample_size": 5},
        churn=[{"round": 8, "action": "crash", "fraction": 0.8}],
        evaluation={"eval_every": 1},
    )
    m = fedsim.run(sc).metrics.set_index("round")
    assert m.loc[7, "nodes_up"] == 4 and m.loc[6, "nodes_up"] == 20
    after = m.loc[8:]
    assert set().union(*after["sample"]) and len(set().union(*after["sample"])) == 4  # survivors only
    assert m.loc[8, "pings_failed"] > 0 and after["rounds_dropped"].sum() == 0
    acc = m["test_acc"]
    assert acc.loc[22:24].mean() > acc.loc[6:8].mean() + 0.1  # still learning
    assert acc.loc[16:24].mean() > acc.loc[8:16].mean()


def test_modest_byte_counters_are_whole_models_and_views(tmp_path):
    sc = scenario(tmp_path, num_clients=10, rounds=3, strategy={"name": "modest", "sample_size": 4})
    res = fedsim.run(sc)
    model = ArrayRecord(res.model.state_dict()).count_bytes()
    view = ArrayRecord({"view": Array(np.zeros(10, dtype=np.int64))}).count_bytes()
    m = res.metrics
    # by hand, no churn, s = 4, one aggregator, R = 3: each round carries s TRAIN models (aggregator
    # to the sample) and s AGGREGATE models (trainers to the next aggregator), each with a view;
    # the aggregator pings the s sampled nodes and each trainer pings its aggregator, a ping and
    # a pong of PING_BYTES each: 2·s·R models and views, 2·(s + s)·R ping messages
    s, rounds = 4, 3
    assert m["bytes_model"].sum() == 2 * s * rounds * model
    assert m["bytes_view"].sum() == 2 * s * rounds * view
    assert m["bytes_ping"].sum() == 2 * (s + s) * rounds * modest.PING_BYTES
    assert (m["bytes_model"] // model == m["bytes_view"] // view).all()  # a view rides on every model
    assert (m["bytes_up"] == m[["bytes_model", "bytes_view", "bytes_ping"]].sum(axis=1)).all()


# ------------------------------------------------------------------- network model


def test_membership_replays_the_churn_trace():
    events = [
        ChurnEvent(round=3, action="crash", fraction=0.5),
        ChurnEvent(round=5, action="join", nodes=[9]),
        ChurnEvent(round=6, action="join", fraction=0.2),
    ]
    m = Membership(events, 10, seed=0)
    assert m.up == set(range(9))  # node 9 joins later
    assert m.apply(2) == []
    crashed = m.apply(3, exempt={0})
    assert len(crashed) == 5 and 0 not in {i for i, _ in crashed} and len(m.up) == 4
    assert m.apply(5) == [(9, "join")]
    assert len(m.apply(6)) == 2 and len(m.up) == 7
    again = Membership(events, 10, seed=0)
    assert again.apply(3, exempt={0}) == crashed


def test_centralized_virtual_clock_times_the_slowest_client(tmp_path):
    net = {"compute_seconds_per_example": 0.01, "bandwidth": 1e5, "latency": 0.2}
    res = fedsim.run(scenario(tmp_path, rounds=2, num_clients=3, network=net), strategy={"name": "fedavg"})
    sc = load(scenario(tmp_path, num_clients=3, network=net))
    size = ArrayRecord(res.model.state_dict()).count_bytes()
    work = max(local_work(sc.client, n) for n in prepare(sc).partition_sizes)
    expected = 2 * size / 1e5 + 0.2 + work * 0.01
    assert res.metrics["virtual_time"].tolist() == pytest.approx([expected, 2 * expected], rel=1e-3)
    model = NetworkModel(NetworkParams(bandwidth=100.0, latency=1.0), 2, 0)
    assert model.send(0, 1, 100, now=0.0) == pytest.approx(2.0)
    assert model.send(0, 1, 100, now=0.0) == pytest.approx(3.0)  # the uplink queues transfers


def test_decentralized_sections_are_validated(tmp_path):
    with pytest.raises(ScenarioError, match="'topology': only decentralized strategies"):
        load(scenario(tmp_path, strategy={"name": "fedavg"}, topology={"name": "ring"}))
    with pytest.raises(ScenarioError, match="'topology': uniform mixing is doubly stochastic only on regular"):
        load(scenario(tmp_path, num_clients=6, topology={"name": "grid", "mixing": "uniform"}))
    with pytest.raises(ScenarioError, match="'churn.0.nodes'"):
        load(scenario(tmp_path, churn=[{"round": 2, "action": "crash", "nodes": [99]}]))
    with pytest.raises(ScenarioError, match="'topology.degree'"):
        load(scenario(tmp_path, topology={"name": "ring", "degree": 3}))


@pytest.mark.slow
def test_modest_with_churn_is_identical_on_inprocess_and_ray(tmp_path):
    sc = scenario(
        tmp_path,
        num_clients=8,
        rounds=3,
        strategy={"name": "modest", "sample_size": 3},
        churn=[{"round": 2, "action": "crash", "nodes": [1, 2]}, {"round": 3, "action": "join", "nodes": [1]}],
    )
    cols = ["test_acc", "train_loss", "sample", "bytes_up", "bytes_membership", "virtual_time", "nodes_up"]
    a = fedsim.run(sc).metrics
    b = fedsim.run(sc, runtime={"name": "ray", "client_resources": {"num_cpus": 1}}).metrics
    assert a[cols].fillna(-1).to_dict("list") == b[cols].fillna(-1).to_dict("list")
    up = a["nodes_up"].tolist()  # a row's count is taken after the next round's churn
    assert up[0] < 8 and up[1] == up[0] + 1 and a["bytes_membership"].iloc[1] > 0  # crashes, then a join
