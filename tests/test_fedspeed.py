"""FedSpeed and its baselines (SCAFFOLD, FedDyn, FedSAM): update rules on tensors, a
heterogeneous quadratic with a known optimum, client state across rounds and runtimes."""

from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from torch import nn

import fedsim
from fedsim.models import build_model
from fedsim.runtimes.inprocess import _set_task_identity
from fedsim.training import batches, local_sgd, torch_generator
from fedsim.strategies import feddyn, fedspeed, scaffold
from fedsim.strategies.fedsam import sam_gradient, sam_perturbation
from fedsim.strategies.stateful import add_to_grads, gradient, local_descent, model_vector, prox_correction, vector_record



pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny tensors (tests/conftest.py)


# ----------------------------------------------------------------- local steps, SAM


def _mlp_and_data(seed=0):
    torch.manual_seed(seed)
    model = build_model("mlp", {"hidden": [16]}, (1, 8, 8), 10)
    x = torch.rand(40, 1, 8, 8)
    y = torch.randint(0, 10, (40,))
    return model, x, y


def test_fedspeed_local_update_with_rho_0_and_lamb_0_is_plain_sgd_step_for_step():
    model, x, y = _mlp_and_data()
    reference = build_model("mlp", {"hidden": [16]}, (1, 8, 8), 10)
    reference.load_state_dict(model.state_dict())
    opts = dict(epochs=2, steps=None, batch_size=8, lr=0.1, momentum=0.0, weight_decay=1e-3)
    loss_ref, steps_ref = local_sgd(reference, x, y, **opts, gen=torch_generator(0, 1, 0, "shuffle"))

    idx = batches(len(x), 8, 2, None, torch_generator(0, 1, 0, "shuffle"))
    h = torch.randn(model_vector(model).numel())  # a nonzero dual: multiplied by lamb = 0
    loss, steps = fedspeed.local_update(
        model, ((x[i], y[i]) for i in idx), h, lr=0.1, rho=0.0, alpha=0.9, lamb=0.0,
        sam_normalize=False, weight_decay=1e-3,
    )
    assert steps == steps_ref == 10
    assert loss == loss_ref
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p, q)


def test_fedspeed_local_update_adds_the_prox_correction_term():
    """One step: w1 = x − η(∇f(x) + lamb·(x − x + h)) = x − η∇f(x) − η·lamb·h."""
    model, x, y = _mlp_and_data()
    w0 = model_vector(model)
    gradient(model, (x, y))
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    h = torch.randn_like(w0)
    fedspeed.local_update(model, [(x, y)], h, lr=0.1, rho=0.0, alpha=1.0, lamb=0.5, sam_normalize=True)
    torch.testing.assert_close(model_vector(model), w0 - 0.1 * (g + 0.5 * h), rtol=0, atol=1e-6)


def test_fedspeed_code_variant_clips_like_fl_simulator_where_clipping_binds():
    """FL-Simulator client/fedspeed.py: p.grad = g2 + lamb·(h − x); clip_grad_norm(·, 10);
    SGD with weight_decay = wd + lamb, so (wd + lamb)·w is added after clipping, unclipped.
    At ‖x‖ ≈ 100 with lamb 0.1 the unclipped lamb·x alone has norm ≈ 10: clipping binds and
    clipping lamb·(w − x + h) + g2 (then adding wd·w) gives another step."""
    model, x, y = _mlp_and_data()
    with torch.no_grad():
        scale = 100.0 / model_vector(model).norm()
        for p in model.parameters():
            p.mul_(scale)
    w0 = model_vector(model)
    assert w0.norm().item() == pytest.approx(100.0, rel=1e-5)
    gradient(model, (x, y))
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    h = 5.0 * torch.randn(w0.numel(), generator=torch.Generator().manual_seed(1))
    lr, lamb, wd = 0.1, 0.1, 1e-3
    clipped = g + lamb * (h - w0)
    assert clipped.norm() > 10  # clipping binds
    clipped = clipped * (10.0 / clipped.norm())
    expected = w0 - lr * (clipped + (wd + lamb) * w0)
    old_rule = g + lamb * h  # fedsim before the fix: clip(g2 + lamb·(w − x + h)) + wd·w, w = x
    old_step = w0 - lr * (old_rule * min(1.0, 10.0 / old_rule.norm().item()) + wd * w0)
    assert (old_step - expected).abs().max() > 0.05  # 1000x the tolerance: the test tells the rules apart
    fedspeed.local_update(model, [(x, y)], h, lr=lr, rho=0.0, alpha=1.0, lamb=lamb, sam_normalize=True,
                          max_grad_norm=10.0, weight_decay=wd, fold_prox_into_decay=True)
    torch.testing.assert_close(model_vector(model), expected, rtol=0, atol=1e-4)


def test_fedspeed_prox_split_changes_nothing_without_clipping():
    steps = []
    for fold in (False, True):
        model, x, y = _mlp_and_data()
        h = torch.randn(model_vector(model).numel(), generator=torch.Generator().manual_seed(2))
        fedspeed.local_update(model, [(x[:20], y[:20]), (x[20:], y[20:])], h, lr=0.1, rho=0.05, alpha=1.0,
                              lamb=0.3, sam_normalize=True, weight_decay=1e-3, fold_prox_into_decay=fold)
        steps.append(model_vector(model))
    torch.testing.assert_close(steps[0], steps[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("rho", [0.05, 2.0])
def test_sam_perturbation_has_norm_rho(rho):
    grads = [torch.randn(3, 4), torch.randn(7), torch.randn(2, 2, 2)]
    e = sam_perturbation(grads, rho, normalize=True)
    norm = torch.linalg.vector_norm(torch.cat([t.reshape(-1) for t in e]))
    assert norm.item() == pytest.approx(rho, rel=1e-6)
    # along the gradient; unnormalised ascent is ρ·g
    assert torch.allclose(e[0] / grads[0], e[1][0] / grads[1][0] * torch.ones(3, 4))
    raw = sam_perturbation(grads, rho, normalize=False)
    assert all(torch.equal(r, rho * g) for r, g in zip(raw, grads))


def test_sam_gradient_is_the_gradient_at_the_perturbed_point_and_restores_w():
    model, x, y = _mlp_and_data()
    w0 = [p.detach().clone() for p in model.parameters()]
    gradient(model, (x, y))
    g1 = [p.grad.clone() for p in model.parameters()]
    e = sam_perturbation(g1, 0.05)
    probe, _, _ = _mlp_and_data()
    with torch.no_grad():
        for p, w, ei in zip(probe.parameters(), w0, e):
            p.copy_(w + ei)
    gradient(probe, (x, y))
    g2 = [p.grad for p in probe.parameters()]

    sam_gradient(model, (x, y), rho=0.05, alpha=0.25)
    for p, w, a, b in zip(model.parameters(), w0, g1, g2):
        assert torch.equal(p, w)  # weights restored exactly
        torch.testing.assert_close(p.grad, 0.75 * a + 0.25 * b)  # quasi-gradient (1−α)g1 + αg2


# --------------------------------------------- a heterogeneous quadratic, optimum known

N, D, M, K = 5, 3, 10, 20


@pytest.fixture(scope="module")
def quadratic():
    """f_i(w) = ½‖A_i w − b_i‖², different curvatures per client; x* in closed form."""
    gen = torch.Generator().manual_seed(0)
    A = [torch.randn(M, D, generator=gen, dtype=torch.float64) * (0.3 + 0.15 * i) for i in range(N)]
    b = [3 * torch.randn(M, generator=gen, dtype=torch.float64) for _ in range(N)]
    H = [a.T @ a for a in A]
    x_star = torch.linalg.solve(sum(H), sum(a.T @ v for a, v in zip(A, b)))
    lr = 0.5 / max(torch.linalg.eigvalsh(h).max().item() for h in H)
    return A, b, H, x_star, lr


class _Point(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w.clone())


def _objective(model, batch):
    a, v = batch
    r = a @ model.w - v
    return 0.5 * r @ r


def _local(q, i, x, direction=None, correction=None, steps=K):
    """Full-batch gradient steps on client i from x; returns the local model."""
    A, b, _, _, lr = q
    model = _Point(x)
    local_descent(
        model, [(A[i], b[i])] * steps, lr=lr, direction=direction or partial(gradient, objective=_objective),
        correction=correction,
    )
    return model_vector(model)


def _zeros():
    return torch.zeros(D, dtype=torch.float64)


def test_fedavg_with_many_local_steps_misses_the_optimum(quadratic):
    x_star = quadratic[3]
    x = _zeros()
    for _ in range(30):
        x = torch.stack([_local(quadratic, i, x) for i in range(N)]).mean(0)
    assert (x - x_star).norm() > 0.5  # client drift: a fixed point far from x*


def test_scaffold_controls_follow_option_ii(quadratic):
    """c_i⁺ = c_i − c + (x − y)/(Kη) is the mean gradient along the local path, c stays
    the mean of all c_i under partial participation, and x converges to x* (5 local steps:
    SCAFFOLD needs η_l ~ 1/(K L), so fewer steps at this η_l converge faster)."""
    A, b, H, x_star, lr = quadratic
    steps = 5
    x, c = _zeros(), _zeros()
    controls = [_zeros() for _ in range(N)]
    rng = np.random.default_rng(0)
    for t in range(50):
        cohort = sorted(rng.choice(N, size=3, replace=False)) if t < 10 else range(N)
        delta_y, delta_c = [], []
        for i in cohort:
            y = _local(quadratic, i, x, correction=add_to_grads(c - controls[i]), steps=steps)
            new = scaffold.client_control_update(controls[i], c, x, y, steps, lr)
            if t == 0:  # option II = mean of ∇f_i over the K iterates y_0..y_{K−1}
                path, w = [], x.clone()
                for _ in range(steps):
                    g = H[i] @ w - A[i].T @ b[i]
                    path.append(g)
                    w = w - lr * (g - controls[i] + c)
                torch.testing.assert_close(new, torch.stack(path).mean(0))
                torch.testing.assert_close(w, y)
            delta_y.append(y - x)
            delta_c.append(new - controls[i])
            controls[i] = new
        x, c = scaffold.server_update(x, c, delta_y, delta_c, N)
        torch.testing.assert_close(c, torch.stack(controls).mean(0))
    assert (x - x_star).norm() < 1e-8
    for i in range(N):  # at the fixed point c_i = ∇f_i(x*), c = ∇f(x*) = 0
        torch.testing.assert_close(controls[i], H[i] @ x_star - A[i].T @ b[i], atol=1e-6, rtol=0)


def test_feddyn_converges_to_the_optimum(quadratic):
    x_star, alpha = quadratic[3], 4.0
    x, h = _zeros(), _zeros()
    duals = [_zeros() for _ in range(N)]
    for _ in range(40):
        ys = []
        for i in range(N):
            y = _local(quadratic, i, x, correction=prox_correction(x, alpha, offset=-duals[i]))
            duals[i] = feddyn.client_dual_update(duals[i], y, x, alpha)
            ys.append(y)
        x, h = feddyn.server_update(x, h, ys, alpha, N)
    assert (x - x_star).norm() < 1e-6


def _fedspeed_rounds(quadratic, rho, alpha, lamb, rounds, variant="paper"):
    duals = [_zeros() for _ in range(N)]
    x, h_mean = _zeros(), _zeros()

    def direction(model, batch):  # ρ = 0: the plain gradient, exactly (tested above)
        if rho == 0:
            return gradient(model, batch, _objective)
        return sam_gradient(model, batch, rho=rho, alpha=alpha, normalize=False, objective=_objective)

    for _ in range(rounds):
        returned = []
        for i in range(N):
            y = _local(quadratic, i, x, direction=direction, correction=prox_correction(x, lamb, offset=lamb * duals[i]))
            duals[i] = fedspeed.client_state_update(duals[i], y, x)
            returned.append(y + duals[i] if variant == "paper" else y)
        if variant == "paper":
            x = fedspeed.paper_server_update(returned)
        else:
            x, h_mean = fedspeed.code_server_update(x, h_mean, returned, N)
    return x


def test_fedspeed_converges_to_the_optimum(quadratic):
    x_star = quadratic[3]
    for variant in ("paper", "code"):
        x = _fedspeed_rounds(quadratic, rho=0.0, alpha=0.9, lamb=4.0, rounds=40, variant=variant)
        assert (x - x_star).norm() < 1e-6, variant


def test_fedspeed_with_perturbation_converges_to_its_sam_fixed_point(quadratic):
    """With the raw ascent x + ρ∇f_i, the quasi-gradient of a quadratic is (I + αρH_i)∇f_i:
    the iterates converge to the root of Σ_i (I + αρH_i)∇f_i(x), an O(ρ) shift of x*."""
    A, b, H, x_star, _ = quadratic
    rho, alpha = 0.01, 0.9
    weights = [torch.eye(D, dtype=torch.float64) + alpha * rho * h for h in H]
    x_rho = torch.linalg.solve(
        sum(w @ h for w, h in zip(weights, H)), sum(w @ a.T @ v for w, a, v in zip(weights, A, b))
    )
    x = _fedspeed_rounds(quadratic, rho=rho, alpha=alpha, lamb=4.0, rounds=40)
    assert (x - x_rho).norm() < 1e-6
    assert (x_rho - x_star).norm() < 0.1  # while FedAvg stays > 0.5 away


# ------------------------------------------------------- server rules on messages


def _reply(node, content):
    instr = Message(RecordDict(), dst_node_id=node, message_type="train")
    instr.metadata.__dict__["_message_id"] = f"m{node}"
    return Message(content, reply_to=instr)


def _metrics(n, state_bytes=40.0, norm=1.0):
    return MetricRecord({"num-examples": n, "train_loss": 1.0, "state_bytes": state_bytes, "state_norm": norm})


def test_scaffold_server_messages_and_aggregate():
    _set_task_identity(7)
    strategy = scaffold.Scaffold(num_clients=4, global_lr=1.0, seed=0, min_available_nodes=1, min_train_nodes=1)
    x = ArrayRecord({"w": Array(np.zeros((2, 2), np.float32)), "b": Array(np.ones(2, np.float32))})

    class Grid:
        def get_node_ids(self):
            return [11, 12, 13, 14]

    messages = list(strategy.configure_train(1, x, ConfigRecord(), Grid()))
    assert len(messages) == 4
    assert all(np.array_equal(m.content["control"]["vector"].numpy(), np.zeros(6, np.float32)) for m in messages)
    rng = np.random.default_rng(0)
    ys = [rng.normal(size=6).astype(np.float32) for _ in range(2)]
    dcs = [rng.normal(size=6).astype(np.float32) for _ in range(2)]
    replies = [
        _reply(11 + k, RecordDict({
            "arrays": ArrayRecord({"w": Array(ys[k][:4].reshape(2, 2)), "b": Array(ys[k][4:])}),
            "metrics": _metrics(10 * (k + 1)),
            "control-delta": vector_record(torch.from_numpy(dcs[k])),
        }))
        for k in range(2)
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    x0 = np.array([0, 0, 0, 0, 1, 1], np.float32)
    expected = x0 + np.mean([y - x0 for y in ys], axis=0)  # unweighted, as in the paper
    np.testing.assert_allclose(np.concatenate([arrays["w"].numpy().ravel(), arrays["b"].numpy()]), expected, rtol=1e-6)
    np.testing.assert_allclose(strategy.control.numpy(), (dcs[0] + dcs[1]) / 4, rtol=1e-6)  # Σ Δc_i / N
    assert metrics["client_state_bytes"] == 80.0 and metrics["server_state_bytes"] > 24


# --------------------------------------------------- end to end: state across rounds


STATEFUL = ["scaffold", "feddyn", "fedspeed"]


def test_fedsam_with_rho_0_is_exactly_fedavg(tiny):
    a = fedsim.run(tiny)
    b = fedsim.run(tiny, strategy__name="fedsam", strategy__rho=0.0)
    cols = ["train_loss", "test_loss", "test_acc", "bytes_up"]
    pd.testing.assert_frame_equal(a.metrics[cols], b.metrics[cols])


@pytest.mark.parametrize("name", STATEFUL + ["fedspeed-code"])
def test_client_state_persists_across_rounds(tiny, name):
    """Every client starts with zero state; once it has trained, it starts with its own."""
    strategy = {"name": "fedspeed", "variant": "code"} if name == "fedspeed-code" else {"name": name}
    tiny.update(rounds=3, strategy={**strategy, "fraction_train": 1.0})
    m = fedsim.run(tiny).metrics
    d = 64 * 32 + 32 + 32 * 10 + 10
    assert m["client_state_norm"].iloc[0] == 0.0
    assert (m["client_state_norm"].iloc[1:] > 0).all()
    per_client = m["client_state_bytes"].iloc[0] / 4
    assert 4 * d <= per_client < 4 * d + 200  # one float32 vector per client (+ record keys)
    assert (m["client_state_bytes"] == 4 * per_client).all()
    server = {"scaffold": 1, "feddyn": 1, "fedspeed": 0, "fedspeed-code": 1}[name]
    assert (m["server_state_bytes"] == server * per_client).all()


def test_fedspeed_paper_and_code_variants_agree_under_full_participation(tiny):
    """The variants differ in the server rule only through which duals are averaged:
    with every client in every round, mean_P x̂_i = mean_P x_iK + mean_all h_i."""
    local = {"lamb": 0.1, "alpha": 1.0, "sam_normalize": True, "max_grad_norm": 10.0, "fraction_train": 1.0}
    tiny.update(rounds=3)
    paper = fedsim.run(tiny, strategy={"name": "fedspeed", "variant": "paper", **local}).metrics
    code = fedsim.run(tiny, strategy={"name": "fedspeed", "variant": "code", **local}).metrics
    np.testing.assert_allclose(paper["test_loss"], code["test_loss"], rtol=1e-5)
    tiny.update(strategy={"name": "fedspeed", "variant": "paper", **local, "fraction_train": 0.5})
    partial = fedsim.run(tiny).metrics
    tiny["strategy"]["variant"] = "code"
    assert not np.allclose(partial["test_loss"], fedsim.run(tiny).metrics["test_loss"], rtol=1e-3)


@pytest.mark.slow
def test_client_state_is_identical_on_inprocess_and_ray(tiny):
    tiny.update(rounds=3, strategy={"name": "scaffold", "fraction_train": 0.75})
    cols = ["train_loss", "test_loss", "test_acc", "client_state_bytes", "client_state_norm", "bytes_down", "bytes_up"]
    a = fedsim.run(tiny).metrics
    b = fedsim.run(tiny, runtime={"name": "ray", "client_resources": {"num_cpus": 1}}).metrics
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert (a["client_state_norm"].iloc[1:] > 0).all()
