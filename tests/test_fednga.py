"""Fed-NGA and the robust baselines: rules on hand-made updates, the client upload, the round's timing."""

import dataclasses
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

import fedsim
from fedsim import registry
from fedsim.runtimes.inprocess import _set_task_identity
from fedsim.strategies.fednga import FedNGA, UpdatePathParams, normalized_average, step_size, upload_update
from fedsim.strategies.robust import CClip, centered_clip, geometric_median


def reply(node, arrays, n):
    instr = Message(RecordDict(), dst_node_id=node, message_type="train")
    instr.metadata.__dict__["_message_id"] = f"m{node}"
    content = RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": n, "train_loss": 1.0})})
    return Message(content, reply_to=instr)


def server_round(strategy, w, updates, sizes, rnd=1):
    """One configure/aggregate cycle of an update-path strategy on hand-made uploads."""
    _set_task_identity(123)
    strategy.current = ArrayRecord([w])  # what configure_train keeps: the model it sent
    replies = [reply(i + 10, [u], n) for i, (u, n) in enumerate(zip(updates, sizes))]
    arrays, metrics = strategy.aggregate_train(rnd, replies)
    return arrays.to_numpy_ndarrays()[0], metrics


RNG = np.random.default_rng(0)
W = RNG.normal(size=6).astype(np.float32)
UPDATES = [RNG.normal(size=6).astype(np.float32) * s for s in (1.0, 10.0, 0.1, 3.0)]
SIZES = [10, 30, 20, 40]
PATH = UpdatePathParams(lr=0.5, lr_decay=0.002, lr_power=0.5)


def test_fednga_aggregate_is_the_weighted_mean_of_normalized_updates():
    alpha = np.array(SIZES) / sum(SIZES)
    expected = sum(a * u / np.linalg.norm(u) for a, u in zip(alpha, UPDATES))
    got, zeros = normalized_average(torch.tensor(np.stack(UPDATES)), torch.tensor(alpha, dtype=torch.float32))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    assert zeros == 0
    # through the strategy: w ← w − η_t Σ α_m g_m/‖g_m‖ with η_3 = 0.5/√(1 + 0.002·2)
    new, metrics = server_round(FedNGA(path=PATH, seed=0), W, UPDATES, SIZES, rnd=3)
    eta = 0.5 / np.sqrt(1.004)
    np.testing.assert_allclose(new, W - eta * expected, rtol=1e-5)
    assert metrics["server_lr"] == pytest.approx(eta) == step_size(PATH, 3)


def test_fednga_ignores_positive_rescaling_of_any_update():
    base, _ = server_round(FedNGA(path=PATH, seed=0), W, UPDATES, SIZES)
    for i, factor in [(0, 1e3), (1, 1e-4), (3, 7.5)]:
        scaled = [u * factor if j == i else u for j, u in enumerate(UPDATES)]
        again, _ = server_round(FedNGA(path=PATH, seed=0), W, scaled, SIZES)
        np.testing.assert_allclose(again, base, rtol=1e-5, atol=1e-6)


def test_zero_updates_contribute_nothing_but_keep_their_weight():
    updates = UPDATES[:2] + [np.zeros(6, np.float32)]
    sizes = [10, 30, 60]
    new, metrics = server_round(FedNGA(path=PATH, seed=0), W, updates, sizes)
    expected = 0.1 * UPDATES[0] / np.linalg.norm(UPDATES[0]) + 0.3 * UPDATES[1] / np.linalg.norm(UPDATES[1])
    np.testing.assert_allclose(new, W - 0.5 * expected, rtol=1e-5)
    assert metrics["zero_norm_updates"] == 1


@pytest.mark.parametrize(
    "name, params, rule",
    [
        ("mean", {}, lambda U, a: (a[:, None] * U).sum(0)),
        ("median", {}, lambda U, a: np.sort(U, axis=0)[2]),
        ("trimmed_mean", {"beta": 0.25}, lambda U, a: np.sort(U, axis=0)[1:-1].mean(0)),  # ⌊0.25·5⌋ = 1 cut per tail
        ("krum", {"num_malicious_nodes": 1}, lambda U, a: U[0]),
        ("multikrum", {"num_malicious_nodes": 1, "num_nodes_to_select": 2}, lambda U, a: (U[0] * 10 + U[1] * 30) / 40),
    ],
)
def test_robust_rules_step_along_their_aggregate(name, params, rule):
    # four clustered updates and one far outlier. Krum (f = 1: n − f − 2 = 2 neighbours) scores
    # rows 0..3 as 0.02+0.08, 0.02+0.10, 0.08+0.10, 0.13+0.13 (squared distances)
    U = np.array([[1.0, 0.0], [1.1, 0.1], [0.8, 0.2], [1.3, -0.2], [40.0, -40.0]], np.float32)
    sizes = [10, 30, 20, 40, 50]
    entry = registry.get("strategy", name)
    strategy = entry.factory(entry.params(**params), _setup(len(U)))
    w = np.array([0.5, -0.5], np.float32)
    new, _ = server_round(strategy, w, list(U), sizes)
    alpha = np.array(sizes) / sum(sizes)
    np.testing.assert_allclose(new, w - 0.5 * rule(U, alpha), rtol=1e-5)


def _setup(n):
    class Setup:  # what a strategy factory reads from ServerSetup
        scenario = fedsim.load_scenario({"name": "t", "rounds": 1, "num_clients": n})

    return Setup()


def test_geometric_median_resists_an_outlier_and_weights_count():
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [100.0, 100.0]], dtype=torch.float64)
    z, steps = geometric_median(pts, torch.full((5,), 0.2, dtype=torch.float64), nu=1e-5, ftol=1e-10, max_iter=1000)
    # by symmetry the minimiser lies on the diagonal: compare with a fine search along it
    t = torch.linspace(0, 2, 200001, dtype=torch.float64)
    diag = torch.stack([t, t], 1)
    objective = torch.cdist(diag, pts).sum(1)
    best = float(t[objective.argmin()])
    assert float(z[0]) == pytest.approx(best, abs=1e-3) and float(z[1]) == pytest.approx(best, abs=1e-3)
    assert best < 1.0  # the outlier at (100, 100) moves it from the centre 0.5 but not out of the square
    assert 1 < steps < 1000
    # collinear, weighted: the weighted median of the line (weight 0.6 at x = 1)
    line = torch.tensor([[0.0], [1.0], [10.0]])
    z, _ = geometric_median(line, torch.tensor([0.2, 0.6, 0.2]), nu=1e-8, ftol=1e-12, max_iter=1000)
    assert float(z) == pytest.approx(1.0, abs=1e-4)


def test_centered_clipping_on_hand_made_updates_and_its_centre_persists():
    ups = torch.tensor([[3.0, 4.0], [0.5, 0.0]])
    # from 0 with τ = 1: (3,4) is clipped to (0.6, 0.8), (0.5, 0) is kept; mean (0.55, 0.4)
    np.testing.assert_allclose(centered_clip(ups, torch.zeros(2), 1.0, 1).numpy(), [0.55, 0.4], rtol=1e-6)
    two = centered_clip(ups, torch.zeros(2), 1.0, 2)
    v1 = torch.tensor([0.55, 0.4])
    d = ups - v1
    step = (d * torch.clamp(1.0 / d.norm(dim=1, keepdim=True), max=1.0)).mean(0)
    np.testing.assert_allclose(two.numpy(), (v1 + step).numpy(), rtol=1e-6)
    # the strategy clips round t's updates around round t−1's aggregate
    strategy = CClip(path=PATH, cclip=registry.get("strategy", "cclip").params(tau=1.0), seed=0)
    w = np.zeros(2, np.float32)
    server_round(strategy, w, [u.numpy() for u in ups], [1, 1])
    np.testing.assert_allclose(strategy.center.numpy(), [0.55, 0.4], rtol=1e-6)
    new, _ = server_round(strategy, w, [u.numpy() for u in ups], [1, 1], rnd=2)
    np.testing.assert_allclose(new, -step_size(PATH, 2) * (v1 + step).numpy(), rtol=1e-5)


def test_client_uploads_one_minibatch_gradient_or_its_local_sgd_update():
    """Through the generic ClientApp: ∇ on the (seed, round, client) minibatch, or w − y after local SGD."""
    import json

    from fedsim.apps.client import app
    from fedsim.data.datasets import load_dataset
    from fedsim.models import build_model
    from fedsim.runtimes.inprocess import InProcessGrid
    from fedsim.training import local_sgd, torch_generator
    from fedsim.world.base import Fleet

    sc = fedsim.load_scenario(
        {"name": "t", "seed": 2, "rounds": 1, "num_clients": 2, "model": {"name": "mlp", "hidden": [8]},
         "strategy": {"name": "fednga"}, "client": {"batch_size": 16, "lr": 0.1, "steps": 3}}
    )
    ds = load_dataset("digits", {}, 2)
    parts = [np.arange(0, 40), np.arange(40, 90)]
    fleet = Fleet(InProcessGrid(app, 2, seed=2), 2)
    fleet.connect(json.dumps(sc.to_dict()), parts)
    model = build_model("mlp", {"hidden": [8]}, ds.input_shape, ds.num_classes)
    w = ArrayRecord(model.state_dict())
    x, y = torch.from_numpy(ds.x_train[parts[1]]), torch.from_numpy(ds.y_train[parts[1]])

    def upload(mode):
        content = RecordDict({"arrays": w, "config": ConfigRecord({"server-round": 4, "client-update": mode})})
        (r,) = fleet.send_and_receive([Message(content, fleet.node[1], "train")])
        assert r.content["metrics"]["num-examples"] == 50
        return r.content["arrays"]

    got = upload("gradient")
    idx = torch.randperm(50, generator=torch_generator(2, 4, 1, "minibatch"))[:16]
    model.load_state_dict(w.to_torch_state_dict())
    F.cross_entropy(model(x[idx]), y[idx]).backward()
    for key, p in model.named_parameters():
        np.testing.assert_allclose(got[key].numpy(), p.grad.numpy(), rtol=1e-5, atol=1e-7)
    got = upload("local_sgd")
    model.load_state_dict(w.to_torch_state_dict())
    local_sgd(model, x, y, **sc.client.model_dump(), gen=torch_generator(2, 4, 1, "shuffle"))
    for key, p in model.named_parameters():
        np.testing.assert_allclose(got[key].numpy(), w[key].numpy() - p.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_fednga_run_learns_and_records_aggregation_time_without_the_attack(tiny, monkeypatch):
    """aggregate_seconds times aggregate_train only: a slow attack in the world layer is not in it."""
    tiny.update(rounds=5, strategy={"name": "fednga", "lr": 1.0, "lr_decay": 0.0})
    clean = fedsim.run(tiny).metrics
    assert clean["aggregate_seconds"].notna().all() and (clean["aggregate_seconds"] > 0).all()
    assert clean["test_loss"].iloc[-1] < clean["test_loss"].iloc[0] - 0.2  # it learns

    entry = registry.get("byzantine", "all_ones")

    def slow(*args):
        time.sleep(0.5)
        return entry.factory(*args)

    monkeypatch.setitem(registry._entries["byzantine"], "all_ones", dataclasses.replace(entry, factory=slow))
    tiny["byzantine"] = {"name": "all_ones", "fraction": 0.25, "count_by": "count"}
    attacked = fedsim.run(tiny).metrics
    assert all(len(b) == 1 for b in attacked["byzantine_clients"])  # one of 4 clients, every round
    assert (attacked["seconds"] > 0.5).all()
    assert (attacked["aggregate_seconds"] < 0.5).all()  # it would be ≥ 0.5 s if the attack were inside
