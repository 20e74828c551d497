"""Byzantine clients: each attack's formula on hand-made updates, the compromised set, the world layer."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

import fedsim
from fedsim.attacks.byzantine import ByzantineClients, compromised_clients, lie_z_max
from fedsim import registry
from fedsim.apps.client import POISON_KEY
from fedsim.runtimes.inprocess import _set_task_identity
from fedsim.scenario import ScenarioError
from fedsim.training import torch_generator

HONEST = torch.tensor([[1.0, 2.0, 0.0], [3.0, 6.0, 1.0], [2.0, -2.0, 2.0]])
OWN = torch.tensor([[5.0, 5.0, 5.0], [-1.0, 0.0, 1.0]])


def attack(name, **params):
    entry = registry.get("byzantine", name)
    return entry.factory(entry.params(**params), HONEST, OWN, torch_generator(0, 1, "byzantine"))


def rows(vector):
    return vector.expand(len(OWN), -1)


def test_each_attack_writes_the_vector_its_formula_defines():
    torch.testing.assert_close(attack("all_ones"), torch.ones(2, 3))
    torch.testing.assert_close(attack("all_ones", value=-2.5), torch.full((2, 3), -2.5))
    # sign flip: −scale · Σ honest = −3 · (6, 6, 3)
    torch.testing.assert_close(attack("sign_flip"), rows(torch.tensor([-18.0, -18.0, -9.0])))
    torch.testing.assert_close(attack("sign_flip", scale=1.0), rows(torch.tensor([-6.0, -6.0, -3.0])))
    # LIE: μ + z·σ, μ = (2, 2, 1), population σ = (√(2/3), √(32/3), √(2/3))
    mu, sigma = torch.tensor([2.0, 2.0, 1.0]), torch.tensor([2 / 3, 32 / 3, 2 / 3]).sqrt()
    torch.testing.assert_close(attack("lie"), rows(mu + 0.7 * sigma))
    torch.testing.assert_close(attack("lie", z=-1.5), rows(mu - 1.5 * sigma))
    # ALIE's z_max (Baruch et al.): n = 5, b = 2 -> s = ⌊3.5⌋ − 2 = 1, z = Φ⁻¹(4/5) = 0.8416
    assert lie_z_max(5, 2) == pytest.approx(0.841621, abs=1e-6)
    assert lie_z_max(50, 10) == pytest.approx(0.467699, abs=1e-6)  # s = 16, Φ⁻¹(0.68)
    torch.testing.assert_close(attack("lie", z=None), rows(mu + lie_z_max(5, 2) * sigma))
    # FoE / IPM: −ε · mean honest
    torch.testing.assert_close(attack("foe"), rows(torch.tensor([-0.2, -0.2, -0.1])))
    torch.testing.assert_close(attack("foe", epsilon=6.0), rows(torch.tensor([-12.0, -12.0, -6.0])))
    # Gaussian: std · N(0, 1) from the layer's generator, independent of the honest uploads
    gauss = registry.get("byzantine", "gaussian")
    g = attack("gaussian")
    assert g.shape == OWN.shape and not torch.equal(g[0], g[1])  # one draw per compromised client
    other_honest = gauss.factory(gauss.params(), -5 * HONEST, OWN, torch_generator(0, 1, "byzantine"))
    torch.testing.assert_close(other_honest, g)  # the honest uploads do not enter
    other_round = gauss.factory(gauss.params(), HONEST, OWN, torch_generator(0, 2, "byzantine"))
    assert not torch.allclose(other_round, g)  # a fresh draw every round
    torch.testing.assert_close(gauss.factory(gauss.params(std=1.0), HONEST, OWN, torch_generator(0, 1, "byzantine")),
                               g / 9.0)  # the default std is 9 (Fed-NGA App. B)
    big = registry.get("byzantine", "gaussian").factory(
        registry.get("byzantine", "gaussian").params(std=9.0), HONEST, torch.zeros(4, 50_000), torch_generator(0, 2, "x")
    )
    assert float(big.mean()) == pytest.approx(0.0, abs=0.1) and float(big.std()) == pytest.approx(9.0, rel=0.01)
    # label flip: y -> C − 1 − y
    flip = registry.get("byzantine", "label_flip")
    torch.testing.assert_close(flip.factory(flip.params(), torch.tensor([0, 3, 9]), 10), torch.tensor([9, 6, 0]))


def test_compromised_set_is_fixed_per_seed_and_counted_by_number_or_weight():
    sizes = [100, 10, 30, 60, 200, 5, 45, 50, 150, 350]
    total = sum(sizes)  # 1000
    a = compromised_clients(7, sizes, 0.3, "count")
    assert len(a) == 3 and len(set(a)) == 3 and all(0 <= i < 10 for i in a)  # round(0.3 · 10)
    assert len({tuple(compromised_clients(s, sizes, 0.3, "count")) for s in range(7, 13)}) > 1  # the seed picks
    assert compromised_clients(7, sizes, 0.0, "weight") == []
    # equal sizes: by weight is by count, and the realised weight is the target exactly
    assert len(compromised_clients(7, [40] * 10, 0.3, "weight")) == 3
    # by weight: adding one client changes the share by at most 350/1000, so the closest
    # prefix of the seeded order is within 175/1000 of the target (hand bound), and no set
    # beyond 1000·(target + 0.175) examples is ever chosen
    for target in (0.1, 0.2, 0.3, 0.4):
        chosen = compromised_clients(7, sizes, target, "weight")
        assert abs(sum(sizes[i] for i in chosen) / total - target) <= 0.175
    # growing the target never shrinks the set (a prefix of one fixed order)
    sets = [set(compromised_clients(7, sizes, t, "weight")) for t in (0.1, 0.2, 0.3, 0.4)]
    assert all(s <= t for s, t in zip(sets, sets[1:]))


# ------------------------------------------------- the layer, driven by hand-made client replies


class StubFleet(Grid):
    """Node id = 100 + partition; each train instruction is answered by ``answer(pid, content)``."""

    def __init__(self, answer):
        self.answer = answer
        self.seen: list[Message] = []

    def partition_of(self, message):
        nid = message.metadata.src_node_id if message.metadata.reply_to_message_id else message.metadata.dst_node_id
        return nid - 100

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for i, m in enumerate(messages):
            self.seen.append(m)
            m.metadata.__dict__["_message_id"] = f"m{i}"
            out.append(Message(self.answer(m.metadata.dst_node_id - 100, m.content), reply_to=m))
        return out

    def take_metrics(self):
        return {"bytes_up": 1}

    run = None
    set_run = create_message = get_node_ids = push_messages = pull_messages = None


def _setup(strategy, byzantine, sizes):
    sc = fedsim.load_scenario(
        {"name": "t", "seed": 5, "rounds": 1, "num_clients": len(sizes), "strategy": {"name": strategy}, "byzantine": byzantine}
    )
    return SimpleNamespace(scenario=sc, partition_sizes=sizes)


def _uploads(pid):
    return np.array([pid, 2.0 * pid, 1.0], np.float32), np.array([[pid - 1.0]], np.float32)


def _record(arrays):
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def _answer(pid, content):
    a, b = _uploads(pid)
    return RecordDict({"arrays": _record({"w": a, "b": b}), "metrics": MetricRecord({"num-examples": 10})})


def _train(n, model=None):
    _set_task_identity(123)
    arrays = _record({"w": np.zeros(3, np.float32), "b": np.zeros((1, 1), np.float32)} if model is None else model)
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})})
    return [Message(content, 100 + pid, "train") for pid in range(n)]


def _vec(reply):
    return np.concatenate([reply.content["arrays"]["w"].numpy(), reply.content["arrays"]["b"].numpy().ravel()])


@pytest.fixture
def gradient_upload(monkeypatch):
    """A strategy registered as FedSGD is (``upload="gradient"``): its replies are the gradients."""
    entry = dataclasses.replace(registry.get("strategy", "fedavg"), name="grad_upload", extras={"upload": "gradient"})
    monkeypatch.setitem(registry._entries["strategy"], "grad_upload", entry)
    return "grad_upload"


@pytest.mark.parametrize("strategy", ["fednga", "grad_upload"])
def test_layer_forges_compromised_update_uploads_from_the_honest_ones(strategy, gradient_upload):
    sizes = [10] * 6
    byz = {"name": "sign_flip", "fraction": 0.5, "count_by": "count"}
    layer = ByzantineClients(StubFleet(_answer), _setup(strategy, byz, sizes))
    bad = sorted(layer.compromised)
    assert len(bad) == 3 and set(bad) <= set(range(6))  # half of 6 equal clients
    # a non-zero model sent: an update upload is replaced as is (a model upload would be x + Δ')
    sent = {"w": np.array([1.0, -2.0, 3.0], np.float32), "b": np.array([[4.0]], np.float32)}
    replies = layer.send_and_receive(_train(6, sent))
    honest = [p for p in range(6) if p not in bad]
    flipped = -3.0 * sum(np.concatenate([u.ravel() for u in _uploads(p)]) for p in honest)
    for p, r in enumerate(replies):
        expected = flipped if p in bad else np.concatenate([u.ravel() for u in _uploads(p)])
        np.testing.assert_allclose(_vec(r), expected, rtol=1e-6)
        assert r.content["arrays"]["b"].numpy().shape == (1, 1)
    assert layer.take_metrics() == {"bytes_up": 1, "byzantine_clients": bad, "byzantine_weight": 0.5}
    assert layer.take_metrics()["byzantine_clients"] == []  # reset per round


def test_layer_attacks_the_model_delta_of_model_uploading_strategies():
    """FedAvg uploads models y: the attack acts on Δ = y − x and the client uploads x + Δ'."""
    sizes = [10] * 4
    layer = ByzantineClients(StubFleet(_answer), _setup("fedavg", {"name": "foe", "fraction": 0.25, "count_by": "count", "epsilon": 2.0}, sizes))
    (bad,) = layer.compromised
    x = {"w": np.array([1.0, 1.0, 1.0], np.float32), "b": np.array([[0.5]], np.float32)}
    x_vec = np.array([1.0, 1.0, 1.0, 0.5], np.float32)
    replies = layer.send_and_receive(_train(4, x))
    deltas = [np.concatenate([u.ravel() for u in _uploads(p)]) - x_vec for p in range(4) if p != bad]
    np.testing.assert_allclose(_vec(replies[bad]), x_vec - 2.0 * np.mean(deltas, axis=0), rtol=1e-6)


def test_layer_poisons_data_and_leaves_evaluation_and_failed_replies_alone():
    sizes = [10] * 4
    fleet = StubFleet(_answer)
    layer = ByzantineClients(fleet, _setup("fedavg", {"name": "label_flip", "fraction": 0.5, "count_by": "count"}, sizes))
    replies = layer.send_and_receive(_train(4))
    marked = [layer.partition_of(m) for m in fleet.seen if POISON_KEY in m.content]
    assert marked == sorted(layer.compromised)  # the instructions' shared record itself is left alone
    for p, r in enumerate(replies):  # data poisoning never rewrites a reply
        np.testing.assert_allclose(_vec(r), np.concatenate([u.ravel() for u in _uploads(p)]))
    evaluate = [Message(RecordDict(), 100 + p, "evaluate") for p in range(4)]
    layer.send_and_receive(evaluate)
    assert not any(POISON_KEY in m.content for m in fleet.seen[4:])
    assert layer.take_metrics()["byzantine_clients"] == sorted(layer.compromised)


def test_a_poisoned_client_trains_on_flipped_labels():
    """The client hook: a train instruction carrying POISON_KEY is served with y -> C − 1 − y."""
    from fedsim.apps.client import app
    from fedsim.runtimes.inprocess import InProcessGrid
    from fedsim.world.base import Fleet
    from fedsim.strategies.fednga import upload_update  # noqa: F401  (registers fednga)

    sc = fedsim.load_scenario(
        {"name": "t", "seed": 1, "rounds": 1, "num_clients": 2, "model": {"name": "mlp", "hidden": [8]},
         "strategy": {"name": "fednga"}, "byzantine": {"name": "label_flip", "fraction": 0.5}}
    )
    from fedsim.data.datasets import load_dataset
    from fedsim.models import build_model

    ds = load_dataset("digits", {}, 1)
    parts = [np.arange(0, 40), np.arange(40, 90)]
    fleet = Fleet(InProcessGrid(app, 2, seed=1), 2)
    import json

    fleet.connect(json.dumps(sc.to_dict()), parts)
    model = build_model("mlp", {"hidden": [8]}, ds.input_shape, ds.num_classes)
    w = ArrayRecord(model.state_dict())

    def ask(poison):
        content = RecordDict({"arrays": w, "config": ConfigRecord({"server-round": 2, "client-update": "gradient"})})
        if poison:
            content = RecordDict({**content, POISON_KEY: ConfigRecord()})
        (r,) = fleet.send_and_receive([Message(content, fleet.node[0], "train")])
        return r.content["arrays"]

    x, y = torch.from_numpy(ds.x_train[parts[0]]), torch.from_numpy(ds.y_train[parts[0]])
    idx = torch.randperm(40, generator=torch_generator(1, 2, 0, "minibatch"))[: sc.client.batch_size]
    for poison, labels in ((False, y), (True, 9 - y)):
        model.load_state_dict(w.to_torch_state_dict())
        model.zero_grad()
        F.cross_entropy(model(x[idx]), labels[idx]).backward()
        got = ask(poison)
        for key, p in model.named_parameters():
            np.testing.assert_allclose(got[key].numpy(), p.grad.numpy(), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------ in runs


def test_run_reports_the_fixed_compromised_set_every_round(tiny):
    tiny["strategy"] = {"name": "fednga"}
    tiny["byzantine"] = {"name": "gaussian", "fraction": 0.3}
    m = fedsim.run(tiny).metrics
    from fedsim.apps.setup import prepare

    sizes = prepare(fedsim.load_scenario(tiny)).partition_sizes
    bad = list(m["byzantine_clients"].iloc[0])
    assert bad and all(list(b) == bad for b in m["byzantine_clients"])  # fixed for the run
    realised = sum(sizes[i] for i in bad) / sum(sizes)
    assert m["byzantine_weight"].iloc[0] == pytest.approx(realised)
    assert abs(realised - 0.3) <= max(sizes) / (2 * sum(sizes))  # the closest prefix: within half a client
    again = fedsim.run(tiny).metrics
    pd.testing.assert_series_equal(m["train_loss"], again["train_loss"])  # attacks are seeded


def test_byzantine_section_is_validated_with_a_clear_message(tiny):
    with pytest.raises(ScenarioError, match=r"'byzantine.name'.*unknown byzantine 'sign-flip'"):
        fedsim.load_scenario({**tiny, "byzantine": {"name": "sign-flip"}})
    with pytest.raises(ScenarioError, match=r"'byzantine.fraction'.*less than 1"):
        fedsim.load_scenario({**tiny, "byzantine": {"name": "lie", "fraction": 1.5}})
    with pytest.raises(ScenarioError, match=r"'byzantine.std'.*unknown key"):
        fedsim.load_scenario({**tiny, "byzantine": {"name": "lie", "std": 2}})


@pytest.mark.slow
def test_compromised_set_and_attacked_run_are_identical_on_inprocess_and_ray(tiny):
    tiny["strategy"] = {"name": "fednga"}
    tiny["byzantine"] = {"name": "lie", "fraction": 0.3}
    a = fedsim.run(tiny).metrics
    b = fedsim.run(tiny, runtime={"name": "ray", "client_resources": {"num_cpus": 1}}).metrics
    cols = ["byzantine_clients", "byzantine_weight", "train_loss", "test_loss", "test_acc"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
