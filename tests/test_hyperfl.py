"""HyperFL: the hypernetwork generates the extractor, the two local phases touch what they
should, only φ leaves a client, v_i and ϕ_i persist privately, personalised accuracy."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fedsim
from fedsim.defenses import hyperfl
from fedsim.models import build_model
from fedsim.scenario import ScenarioError


SMALL_CNN = {"target": "cnn", "channels": [4, 8], "features": 16, "embed_dim": 8, "hyper_hidden": 16}


def _net(params=SMALL_CNN, shape=(1, 8, 8), seed=0):
    torch.manual_seed(seed)
    return build_model("hyperfl", params, shape, 10)


def _data(n=30, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def _flat(tensors):
    return torch.cat([t.detach().reshape(-1) for t in tensors])


# ------------------------------------------------------------- the hypernetwork


def test_phi_is_the_hypernetwork_only_and_generates_every_extractor_tensor():
    net = _net()
    extractor = net.extractor  # the template (outside φ)
    names = {n for n, _ in extractor.named_parameters()}
    assert set(net.generate(torch.zeros(8))) == names  # no key-name mismatch (§4.5's ResNet bug)
    assert {k.split(".")[0] for k in net.state_dict()} == {"body", "heads"}
    # φ = body (8→16) + one 16→numel(W) head per tensor
    n_theta = sum(p.numel() for p in extractor.parameters())
    assert sum(p.numel() for p in net.parameters()) == 8 * 16 + 16 + 17 * n_theta


def test_generated_weights_are_h_of_v_and_functional_call_matches_a_hand_built_module():
    net = _net()
    v = torch.randn(8)
    theta = net.generate(v)
    u = F.relu(net.body.weight @ v + net.body.bias)
    for name, w in theta.items():
        head = net.heads[name.replace(".", "_")]
        torch.testing.assert_close(w, (head.weight @ u + head.bias).view_as(w))
    module = hyperfl.feature_extractor(hyperfl.TargetParams(target="cnn", channels=[4, 8], features=16), (1, 8, 8))
    module.load_state_dict({k: t.detach() for k, t in theta.items()}, strict=True)
    x, _ = _data()
    torch.testing.assert_close(net.features(x, theta), module(x))
    with pytest.raises(RuntimeError, match="personalised"):
        net(x)  # no global predictor


def test_a_generated_key_that_names_no_parameter_is_an_error():
    net = _net()
    theta = net.generate(torch.randn(8))
    theta["1weight"] = theta.pop("0.weight")  # the official ResNet-LPM code's missing dot
    with pytest.raises(Exception, match="weight"):
        net.features(_data()[0], theta)


# ------------------------------------------------------------- the local phases


def _phase_setup():
    net = _net()
    v, head = hyperfl.initial_state(0, 1, 8, 16, 10)
    x, y = _data()
    return net, v, head, x, y


OPTS = {"num_classes": 10, "momentum": 0.5, "weight_decay": 5e-4}


def test_phase_1_changes_only_the_head_and_phase_2_only_phi_and_v():
    net, v, head, x, y = _phase_setup()
    phi0, v0, head0 = _flat(net.parameters()), v.clone(), head.clone()
    hyperfl.train_head(net, v, head, x, y, [torch.arange(0, 15), torch.arange(15, 30)], lr=0.1, **OPTS)
    assert torch.equal(_flat(net.parameters()), phi0) and torch.equal(v, v0)
    assert not torch.equal(head, head0)

    head1 = head.clone()
    hyperfl.train_hyper(net, v, head, x, y, [torch.arange(0, 15), torch.arange(15, 30)], lr=0.02,
                        max_grad_norm=50.0, **OPTS)
    assert torch.equal(head, head1)
    assert not torch.equal(_flat(net.parameters()), phi0) and not torch.equal(v, v0)


def test_phase_2_clips_the_gradients_of_phi_and_v_separately():
    """One plain SGD step with a tiny clip: each of Δφ and Δv has norm lr·clip (not a joint
    norm of lr·clip over both)."""
    net, v, head, x, y = _phase_setup()
    phi0, v0 = _flat(net.parameters()), v.clone()
    lr, clip = 0.5, 1e-3
    hyperfl.train_hyper(net, v, head, x, y, [torch.arange(30)], num_classes=10, lr=lr, momentum=0.0,
                        weight_decay=0.0, max_grad_norm=clip)
    assert (_flat(net.parameters()) - phi0).norm().item() == pytest.approx(lr * clip, rel=1e-3)
    assert (v - v0).norm().item() == pytest.approx(lr * clip, rel=1e-3)


def test_phase_2_gradient_of_v_is_the_vjp_through_the_generated_weights():
    """∂loss/∂v = (∂θ/∂v)ᵀ ∂loss/∂θ: the paper's two-stage chain rule equals autograd."""
    net, v, head, x, y = _phase_setup()
    v = v.clone().requires_grad_(True)
    theta = net.generate(v)
    detached = {k: t.detach().requires_grad_(True) for k, t in theta.items()}
    loss = F.cross_entropy(hyperfl.classify(net.features(x, detached), head, 10), y)
    g_theta = torch.autograd.grad(loss, list(detached.values()))
    vjp = torch.autograd.grad(list(theta.values()), v, grad_outputs=g_theta)[0]
    v2 = v.detach().clone().requires_grad_(True)
    direct = torch.autograd.grad(F.cross_entropy(hyperfl.personalised_logits(net, v2, head, x, 10), y), v2)[0]
    torch.testing.assert_close(vjp, direct)


def test_local_split_is_fixed_disjoint_and_seeded_per_client():
    train, test = hyperfl.local_split(50, 0.2, 0, 3)
    assert len(test) == 10 and len(train) == 40
    assert set(train.tolist()).isdisjoint(test.tolist()) and set(train.tolist()) | set(test.tolist()) == set(range(50))
    assert torch.equal(hyperfl.local_split(50, 0.2, 0, 3)[1], test)
    assert not torch.equal(hyperfl.local_split(50, 0.2, 0, 4)[1], test)


# ------------------------------------------------------------------ end to end


@pytest.fixture
def scenario(tiny):
    tiny.update(
        rounds=2,
        model={"name": "hyperfl", "target": "mlp", "features": 16, "embed_dim": 8, "hyper_hidden": 16},
        strategy={"name": "hyperfl", "hyper_epochs": 1, "batch_size": 16, "fraction_train": 1.0},
        evaluation={"federated": True},
    )
    return tiny


def test_only_phi_is_uploaded_and_private_state_persists_across_rounds(scenario, monkeypatch):
    """A real in-process run: replies the strategy receives hold exactly φ's keys; each
    client starts round 2 from the (v_i, ϕ_i) it saved in round 1; clients differ."""
    replies, started, saved = [], [], {}
    aggregate, client_state, save_state = hyperfl.HyperFL.aggregate_train, hyperfl.client_state, hyperfl.save_state

    def spy_aggregate(self, server_round, messages):
        messages = list(messages)
        replies.extend(m.content for m in messages)
        return aggregate(self, server_round, messages)

    def spy_state(env, net):
        v, head = client_state(env, net)
        started.append((env.partition_id, v.clone(), head.clone()))
        return v, head

    def spy_save(env, key, vector):
        saved.setdefault((env.partition_id, key), []).append(vector.clone())
        return save_state(env, key, vector)

    monkeypatch.setattr(hyperfl.HyperFL, "aggregate_train", spy_aggregate)
    monkeypatch.setattr(hyperfl, "client_state", spy_state)
    monkeypatch.setattr(hyperfl, "save_state", spy_save)
    result = fedsim.run(scenario)

    phi_keys = set(result.model.state_dict())
    assert len(replies) == 8
    for content in replies:
        assert set(content["arrays"].keys()) == phi_keys  # no head, no embedding
        assert set(content.keys()) == {"arrays", "metrics", "node"}  # node: who replied, nothing private
        assert set(content["node"].keys()) == {"partition-id"}
        assert {"train_loss", "num-examples"} <= set(content["metrics"].keys())
    starts = {}
    for pid, v, head in started:  # per client: round-1 train, round-1 evaluation, round-2 train, ...
        starts.setdefault(pid, []).append((v, head))
    for pid, (train1, eval1, train2, eval2) in starts.items():
        v_init, head_init = hyperfl.initial_state(scenario["seed"], pid, 8, 16, 10)
        assert torch.equal(train1[0], v_init) and torch.equal(train1[1], head_init)
        v_saved, head_saved = saved[(pid, hyperfl.V_KEY)], saved[(pid, hyperfl.HEAD_KEY)]
        assert len(v_saved) == len(head_saved) == 2  # saved once per training round
        for start in (eval1, train2):  # round 2 starts from what round 1 saved
            assert torch.equal(start[0], v_saved[0]) and torch.equal(start[1], head_saved[0])
        assert torch.equal(eval2[0], v_saved[1])
        assert not torch.equal(v_saved[0], v_init) and not torch.equal(v_saved[1], v_saved[0])
        assert not torch.equal(head_saved[0], head_init)
    final_vs = [saved[(pid, hyperfl.V_KEY)][-1] for pid in sorted(starts)]
    assert all(not torch.equal(a, b) for i, a in enumerate(final_vs) for b in final_vs[i + 1 :])
    m = result.metrics
    assert m["test_acc"].isna().all() and m["fed_acc"].notna().all()  # personalised evaluation only


def test_upload_is_two_orders_larger_than_fedavg_with_the_same_target_net(scenario, tmp_path):
    scenario["model"] = {"name": "hyperfl", "target": "cnn", "channels": [4, 8], "features": 32}
    scenario["rounds"] = 1
    hyper = fedsim.run(scenario).metrics
    base = dict(scenario, model={"name": "hyperfl_target", "target": "cnn", "channels": [4, 8], "features": 32},
                strategy={"name": "fedavg", "fraction_train": 1.0}, evaluation={"federated": False})
    fedavg = fedsim.run(base).metrics
    ratio = hyper["bytes_up"].iloc[0] / fedavg["bytes_up"].iloc[0]
    assert ratio > 20  # 64 → 128 → numel(θ): about 129·|θ| / (|θ| + head)


def test_scenario_without_federated_evaluation_or_with_another_model_is_rejected(scenario):
    with pytest.raises((ValueError, ScenarioError), match="federated"):
        fedsim.run(dict(scenario, evaluation={"federated": False}))
    with pytest.raises((ValueError, ScenarioError), match="model 'hyperfl'"):
        fedsim.run(dict(scenario, model={"name": "mlp"}))


def test_personalised_accuracy_beats_chance_clearly(scenario):
    scenario.update(rounds=8, partition={"name": "iid"},
                    strategy={"name": "hyperfl", "hyper_epochs": 2, "batch_size": 16, "fraction_train": 1.0})
    m = fedsim.run(scenario).metrics
    assert m["fed_acc"].iloc[-1] > 0.8  # chance: 0.1 (IID labels); 0.91 at seed 3
    assert m["fed_acc"].iloc[-1] > m["fed_acc"].iloc[0]


# ------------------------------------------------------- the informed attacker (§6.3 (b))


@pytest.fixture
def attacked(scenario):
    """One phase-2 step on one example per client, client 1's round-2 upload attacked."""
    scenario.update(
        model={"name": "hyperfl", **SMALL_CNN},
        strategy={"name": "hyperfl", "head_epochs": 0, "hyper_steps": 1, "batch_size": 1, "fraction_train": 1.0},
        eavesdropper={"name": "ig", "rounds": [2], "targets": [1], "iterations": 2, "save_grid": False},
    )
    return scenario


def test_informed_observation_replays_the_real_clients_upload_exactly(attacked, monkeypatch):
    """In a real run: the view's one SGD step of g(f(x; h(v_i; φ)); ϕ_i) on the ground-truth
    example reproduces the φ the client uploaded (clip included; round 2, so v_i must be
    the state from before the round), and that example is the one the client trained on."""
    from fedsim.attacks import eavesdropper
    from fedsim.attacks.inversion.replay import compute_upload
    from fedsim.apps.setup import prepare

    observed, trained = [], []
    observe, train_hyper = eavesdropper.Attacker.observe, hyperfl.train_hyper

    def spy_observe(self, *args):
        observed.append(observe(self, *args))
        return observed[-1]

    def spy_train(net, v, head, x, y, minibatches, **kw):
        trained.extend((x[idx], y[idx]) for idx in minibatches)
        return train_hyper(net, v, head, x, y, minibatches, **kw)

    monkeypatch.setattr(eavesdropper.Attacker, "observe", spy_observe)
    monkeypatch.setattr(hyperfl, "train_hyper", spy_train)
    res = fedsim.run(attacked)
    (obs,) = observed
    assert isinstance(obs.model, hyperfl.InformedModel) and (obs.round, obs.client, obs.kind) == (2, 1, "update")
    assert {n for n, _ in obs.model.named_parameters()} == set(res.model.state_dict())  # exactly φ
    assert obs.local.steps == 1 and obs.local.max_grad_norm == 50.0
    setup = prepare(res.scenario)
    truth = eavesdropper.GroundTruth(res.scenario, setup.dataset.x_train, setup.dataset.y_train, setup.partitions)
    x, y = truth.examples(2, 1, obs.kind)
    assert len(x) == 1 and any(torch.equal(x, xb) and torch.equal(y, yb) for xb, yb in trained)
    params = {n: p.detach().requires_grad_() for n, p in obs.model.named_parameters()}
    expected = compute_upload(obs.model, params, x, y, "update", obs.local)
    for name, value in obs.upload.items():
        torch.testing.assert_close(value, expected[name], atol=1e-6, rtol=1e-5)
    # with the initial v_i (what the server would hold without the fetch) it does not match
    v0, _ = hyperfl.initial_state(attacked["seed"], 1, 8, 16, 10)
    assert not torch.equal(obs.model.v, v0)
    assert np.isfinite(res.metrics["attack_psnr"].iloc[1]) and np.isnan(res.metrics["attack_psnr"].iloc[0])
    assert res.metrics["attack_label_acc"].iloc[1] == 1.0  # the probe rule


def test_informed_attack_needs_one_phase_2_step_and_keeps_other_strategies_out(attacked):
    from fedsim.attacks.eavesdropper import upload_kind

    assert upload_kind(fedsim.load_scenario(attacked)) == "update"
    for change in ({"head_epochs": 1}, {"hyper_steps": None}):
        bad = dict(attacked, strategy={**attacked["strategy"], **change})
        with pytest.raises(ValueError, match="head_epochs: 0 and strategy.hyper_steps: 1"):
            fedsim.run(bad)
    with pytest.raises(ValueError, match="own client objective"):
        upload_kind(fedsim.load_scenario(dict(attacked, strategy={"name": "fedprox"}, model={"name": "mlp"},
                                              evaluation={"federated": False})))


def test_ig_on_an_informed_hyperfl_upload_beats_a_random_image(attacked):
    """Standalone (one client step at round 1): IG recovers the digit well above the PSNR of
    a uniform random image against the same digit."""
    from fedsim.attacks.eavesdropper import GroundTruth
    from fedsim.attacks.inversion.metrics import score
    from fedsim.attacks.standalone import attack_one_step
    from fedsim.apps.setup import prepare

    attacked["eavesdropper"].update(rounds=[1], targets=[0], iterations=300)
    sc = fedsim.load_scenario(attacked)
    (r,), _, _ = attack_one_step(sc)
    assert r["label_acc"] == 1.0
    setup = prepare(sc)
    x, y = GroundTruth(sc, setup.dataset.x_train, setup.dataset.y_train, setup.partitions).examples(1, 0, "update")
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    random_psnr = score(noise, y, x, y, (0.0, 1.0))["psnr"]
    assert r["psnr"] > random_psnr + 6, (r["psnr"], random_psnr)  # 17.7 vs 4.6 dB at seed 3


def test_local_acc_is_the_paper_metric_before_aggregation(scenario):
    """``local_acc`` (the official code's ``acc2``) is read before aggregation, ``fed_acc`` after.
    With one client the aggregate of φ is that client's φ_i, so the two coincide exactly; with
    several clients averaging changes every φ_i and they differ."""
    scenario.update(rounds=3)
    several = fedsim.run(scenario).metrics
    assert several["local_acc"].notna().all() and "local_correct" not in several
    assert (several["local_acc"] - several["fed_acc"]).abs().max() > 1e-3
    one = fedsim.run(dict(scenario, num_clients=1)).metrics
    # eval_acc travels as float32: equal to 1e-6, far below one example (1/287)
    assert one["local_acc"].tolist() == pytest.approx(one["fed_acc"].tolist(), abs=1e-6)
