"""DIFF2 and DP-GD (defenses/diff2.py): per-sample clipping, the recursive estimator
against a hand-written loop, T = 1 = DP-GD, the noise scale, the accountant.

No utility test: on the bundled data (diabetes, n·P = 353) DIFF2 did not beat DP-GD at
equal ε in the sweeps reported in the README's DIFF2 section."""

import copy
import math

import numpy as np
import pytest
import torch
from scipy import stats

import fedsim
from fedsim.defenses import diff2
from fedsim.apps.setup import prepare
from fedsim.models import build_model
from fedsim.privacy import diff2_calibrated_sigmas, diff2_epsilon, diff2_sigmas
from fedsim.scenario import validate
from fedsim.training import task_loss, torch_generator


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _fc10(seed=0, d_in=10, out=1):
    torch.manual_seed(seed)
    return build_model("fc10", {}, (d_in,), out)


def _vector(model):
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()


def _hand_gradients(model, x, y, at):
    """Per-sample gradients with one backward pass per example (no torch.func)."""
    m = copy.deepcopy(model)
    torch.nn.utils.vector_to_parameters(at, m.parameters())
    rows = []
    for xi, yi in zip(x, y):
        loss = task_loss(m(xi[None]), yi[None])
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(m.parameters()))]))
    return torch.stack(rows)


# ------------------------------------------------------------------ client statistic


@pytest.mark.parametrize("regression", [True, False])
def test_per_sample_gradients_match_one_backward_per_example(regression):
    model = _fc10(out=1 if regression else 3)
    x = torch.randn(7, 10)
    y = torch.randn(7) if regression else torch.randint(0, 3, (7,))
    at = _vector(model) + 0.1 * torch.randn(_vector(model).shape)
    rows, losses = diff2.per_sample_gradients(model, x, y, at, weight_decay=0.01)
    torch.testing.assert_close(rows, _hand_gradients(model, x, y, at) + 0.01 * at, rtol=1e-5, atol=1e-6)
    assert losses.shape == (7,)


def test_clipping_bounds_every_per_sample_gradient_and_difference():
    model = _fc10()
    x, y = 3 * torch.randn(50, 10), 3 * torch.randn(50)
    at = _vector(model)
    prev = at + 0.3 * torch.randn(at.shape)
    for other, radius in ((None, 0.05), (prev, 2.0 * float((at - prev).norm()) / 50)):
        rows, _ = diff2.per_sample_gradients(model, x, y, at)
        if other is not None:
            rows = rows - diff2.per_sample_gradients(model, x, y, other)[0]
        clipped = diff2.clip_rows(rows, radius)
        norms = torch.linalg.vector_norm(clipped, dim=1)
        assert (norms <= radius * (1 + 1e-6)).all()
        assert (norms > 0.99 * radius).sum() > 10  # the radius was binding for many examples
        small = torch.linalg.vector_norm(rows, dim=1) <= radius  # rows inside the ball are untouched
        torch.testing.assert_close(clipped[small], rows[small])
        stat, _ = diff2.client_statistic(model, x, y, at, other, radius)
        torch.testing.assert_close(stat, clipped.mean(0))
    assert diff2.clip_rows(rows, 0.0).abs().max() == 0  # x = x_prev: C_r = 0


def test_the_difference_clip_radius_is_c2_times_the_last_step():
    rule = diff2.Diff2Rule(restart=3, clip=1.5, diff_clip=4.0, lr=0.1, sigma1=0.0, sigma2=0.0, seed=0)
    x, prev = torch.randn(20), torch.randn(20)
    assert [rule.plan(r, x, prev)[0] for r in range(1, 8)] == [True, False, False, True, False, False, True]
    assert rule.plan(1, x, prev)[1] == 1.5
    assert rule.plan(2, x, prev)[1] == pytest.approx(4.0 * float((x - prev).norm()), rel=1e-6)


# ------------------------------------------------------------------ runs vs by hand


def _scenario(tmp_path, strategy, rounds=5, clients=3, seed=4, weight_decay=0.0):
    return {
        "name": "d2", "seed": seed, "rounds": rounds, "num_clients": clients,
        "dataset": {"name": "diabetes"}, "partition": {"name": "iid"}, "model": {"name": "fc10"},
        "strategy": strategy, "client": {"weight_decay": weight_decay},
        "output": {"dir": str(tmp_path / "runs"), "progress": False},
    }


def _hand_run(sc_dict, restart, c1, c2, lr, sigma1=0.0, sigma2=0.0, weight_decay=0.0):
    """DIFF2 (Murata & Suzuki 2023) as a plain loop, per-sample gradients by backward passes."""
    setup = prepare(validate(sc_dict))
    x_all, y_all = torch.from_numpy(setup.dataset.x_train), torch.from_numpy(setup.dataset.y_train)
    parts = [(x_all[torch.from_numpy(p)], y_all[torch.from_numpy(p)]) for p in setup.partitions]
    model, seed, num = setup.model, sc_dict["seed"], len(parts)
    x = _vector(model)
    x_prev, v, radii, losses = x.clone(), None, [], []
    for r in range(sc_dict["rounds"]):
        anchor = r % restart == 0
        radius = c1 if anchor else c2 * float((x - x_prev).norm())
        mean = torch.zeros_like(x)
        for xp, yp in parts:
            g = _hand_gradients(model, xp, yp, x) + weight_decay * x
            if not anchor:
                g = g - (_hand_gradients(model, xp, yp, x_prev) + weight_decay * x_prev)
            scale = torch.clamp(radius / g.norm(dim=1, keepdim=True).clamp_min(1e-12), max=1.0)
            mean += (g * scale).mean(0) / num
        noise = torch.randn(x.shape, generator=torch_generator(seed, r + 1, "diff2-noise"))
        noise *= radius * (sigma1 if anchor else sigma2)
        v = mean + noise if anchor else v + mean + noise
        x_prev, x = x, x - lr * v
        radii.append(radius)
        m = copy.deepcopy(model)
        torch.nn.utils.vector_to_parameters(x_prev, m.parameters())
        with torch.no_grad():
            losses.append(float(sum(len(xp) * task_loss(m(xp), yp) for xp, yp in parts) / len(x_all)))
    return x, radii, losses


def _final_vector(result):
    return _vector(result.model)


def test_without_noise_diff2_is_its_estimator_computed_by_hand(tmp_path):
    strategy = {"name": "diff2", "epsilon": None, "restart": 3, "clip": 0.5, "diff_clip": 2.0, "lr": 0.3}
    sc = _scenario(tmp_path, strategy, rounds=7, weight_decay=0.01)
    result = fedsim.run(sc)
    x, radii, losses = _hand_run(sc, 3, 0.5, 2.0, 0.3, weight_decay=0.01)
    m = result.metrics
    torch.testing.assert_close(_final_vector(result), x, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m["clip_radius"], radii, rtol=1e-4)
    np.testing.assert_allclose(m["train_loss"], losses, rtol=1e-5)
    assert list(m["anchor"]) == [1, 0, 0, 1, 0, 0, 1]
    assert (m["noise_std"] == 0).all() and np.isinf(m["epsilon"]).all()
    assert m["test_acc"].isna().all() and m["test_loss"].notna().all()  # regression: MSE, no accuracy
    # the one-process simulation used for sweeps takes the same steps
    setup = prepare(validate(sc))
    parts = [(torch.from_numpy(setup.dataset.x_train[p]), torch.from_numpy(setup.dataset.y_train[p])) for p in setup.partitions]
    rule = diff2.make_rule(diff2.Diff2Params(**{k: v for k, v in strategy.items() if k != "name"}), 7, [len(p) for p in setup.partitions], sc["seed"])
    x_sim, sim_losses = diff2.simulate(setup.model, parts, rule, 7, weight_decay=0.01)
    torch.testing.assert_close(x_sim, x, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sim_losses, losses, rtol=1e-5)


def test_dpgd_is_diff2_with_restart_1_and_noisy_dp_gd_by_hand(tmp_path):
    """T = 1: an anchor every round, σ1 from the T = 1 formula, noise C1σ1 from the
    (seed, round, "diff2-noise") stream; diff2 with restart 1 is the same run."""
    common = {"epsilon": 3.0, "clip": 0.8, "lr": 0.2}
    sc = _scenario(tmp_path, {"name": "dpgd", **common}, rounds=4)
    dpgd = fedsim.run(sc)
    same = fedsim.run(_scenario(tmp_path, {"name": "diff2", "restart": 1, "diff_clip": 7.0, **common}, rounds=4))
    setup = prepare(validate(sc))
    sizes = setup.partition_sizes
    sigma1, _ = diff2_sigmas(3.0, 1e-5, 4, 1, min(sizes), len(sizes))
    x, radii, _ = _hand_run(sc, 1, 0.8, 0.0, 0.2, sigma1=sigma1)
    torch.testing.assert_close(_final_vector(dpgd), x, rtol=1e-4, atol=1e-5)
    assert torch.equal(_final_vector(dpgd), _final_vector(same))
    m = dpgd.metrics
    assert (m["anchor"] == 1).all() and (m["clip_radius"] == 0.8).all()
    np.testing.assert_allclose(m["noise_std"], 0.8 * sigma1, rtol=1e-12)
    eps = [diff2_epsilon(sigma1, 0.0, r, 1, min(sizes), len(sizes), 1e-5) for r in (1, 2, 3, 4)]
    np.testing.assert_allclose(m["epsilon"], eps)
    assert m["epsilon"].is_monotonic_increasing and m["epsilon"].iloc[-1] <= 3.0


def test_noisy_diff2_run_matches_the_hand_loop_and_records_its_noise(tmp_path):
    strategy = {"name": "diff2", "epsilon": 3.0, "noise": "calibrated", "restart": 2, "clip": 1.0, "diff_clip": 1.0, "lr": 0.1}
    sc = _scenario(tmp_path, strategy, rounds=4)
    result = fedsim.run(sc)
    sizes = prepare(validate(sc)).partition_sizes
    s1, s2 = diff2_calibrated_sigmas(3.0, 1e-5, 4, 2, min(sizes), len(sizes))
    x, radii, _ = _hand_run(sc, 2, 1.0, 1.0, 0.1, sigma1=s1, sigma2=s2)
    torch.testing.assert_close(_final_vector(result), x, rtol=1e-4, atol=1e-5)
    m = result.metrics
    np.testing.assert_allclose(m["noise_std"], np.array(radii) * np.array([s1, s2, s1, s2]), rtol=1e-4)
    assert m["epsilon"].iloc[-1] == pytest.approx(3.0, abs=2e-3)


# ----------------------------------------------------------------------- the noise


@pytest.mark.parametrize("anchor", [True, False])
def test_noise_on_zero_statistics_has_the_configured_std(anchor):
    """A χ² interval (99.9%) for the per-coordinate variance of the server's noise."""
    rule = diff2.Diff2Rule(restart=5, clip=2.0, diff_clip=3.0, lr=1.0, sigma1=0.7, sigma2=1.9, seed=11)
    d = 20_000
    x, prev = torch.zeros(d), torch.full((d,), 0.01)
    rnd = 1 if anchor else 2
    is_anchor, radius = rule.plan(rnd, x, prev)
    assert is_anchor == anchor
    x_new, v, std = rule.step(rnd, x, None if anchor else torch.zeros(d), torch.zeros(d), anchor, radius)
    expected = 2.0 * 0.7 if anchor else 3.0 * float(prev.norm()) * 1.9
    assert std == pytest.approx(expected, rel=1e-6)
    ss = float((v.double() ** 2).sum())
    lo, hi = stats.chi2.ppf([0.0005, 0.9995], d)
    assert lo <= ss / expected**2 <= hi
    assert abs(float(v.mean())) < 4 * expected / math.sqrt(d)
    torch.testing.assert_close(x_new, x - v)
    # another round draws independent noise
    _, v2, _ = rule.step(rnd + 5, x, None, torch.zeros(d), True, radius)
    assert abs(float(torch.corrcoef(torch.stack([v, v2]))[0, 1])) < 4 / math.sqrt(d)


# --------------------------------------------------------------------- accounting


@pytest.mark.parametrize(
    "eps, restart, z1, realised",
    [(3, 1, 77.5, 2.541), (3, 6, 35.4, 2.50), (3, 20, 19.4, 2.53), (3, 60, 11.2, 2.56), (5, 1, 49.0, 4.260), (5, 20, 12.2, 4.24)],
)
def test_paper_sigmas_realise_the_reference_epsilons(eps, restart, z1, realised):
    """DIFF2's privacy analysis: n_min = 1651, P = 10, R = 2000, δ = 1e-5; z = σ·n·P/2."""
    n, p, rounds = 1651, 10, 2000
    s1, s2 = diff2_sigmas(eps, 1e-5, rounds, restart, n, p)
    assert s1 * n * p / 2 == pytest.approx(z1, abs=0.06)
    if restart > 1:
        assert s2 * n * p / 2 == pytest.approx(173 if eps == 3 else 110, rel=0.005)
    got = diff2_epsilon(s1, s2, rounds, restart, n, p, 1e-5)
    assert got == pytest.approx(realised, abs=0.006 if restart > 1 else 0.001)
    assert got <= eps


@pytest.mark.parametrize("restart", [1, 15])
def test_calibrated_sigmas_spend_the_whole_budget(restart):
    s1, s2 = diff2_calibrated_sigmas(3.0, 1e-5, 300, restart, 35, 10)
    p1, p2 = diff2_sigmas(3.0, 1e-5, 300, restart, 35, 10)
    assert s1 / p1 == pytest.approx(s2 / p2) and s1 < p1  # one common factor, below the paper's
    got = diff2_epsilon(s1, s2, 300, restart, 35, 10, 1e-5)
    assert 3.0 - 5e-3 <= got <= 3.0
