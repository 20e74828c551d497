"""Fed-SGM (defenses/sgm.py): the Gaussian sketch, L2 clipping, the noise scale, shared
per-round sketches, the secret that never reaches the server, GLOBAL_OPT, the accountants."""

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

import fedsim
from fedsim.defenses import sgm
from fedsim import privacy
from fedsim.apps.client import ClientEnv
from fedsim.models import build_model
from fedsim.records import to_record
from fedsim.scenario import validate
from fedsim.world.base import Fleet
from fedsim.strategies.stateful import record_vector


def _sgm_scenario(tiny, **strategy):
    data = dict(tiny)
    data["model"] = {"name": "mlp", "hidden": [16]}
    data["strategy"] = {"name": "sgm", "fraction_train": 0.5, "sketch_dim": 256, "sigma_g": 0.3, **strategy}
    return data


# -------------------------------------------------------------------------- sketch


def test_sketch_and_desketch_are_R_and_R_transpose_across_blocks():
    d, b = 37, 2 * sgm.BLOCK_ROWS + 5  # three blocks, the last one short
    R = sgm.sketch_matrix(11, b, d)
    assert R.shape == (b, d)
    x, y = torch.randn(d, dtype=torch.float64), torch.randn(b, dtype=torch.float64)
    torch.testing.assert_close(sgm.sketch(x, 11, b), R.double() @ x)
    torch.testing.assert_close(sgm.desketch(y, 11, d), R.double().T @ y)
    assert torch.equal(sgm.sketch_matrix(11, b, d), R)  # a function of (secret, b, d)
    assert not torch.allclose(sgm.sketch_matrix(12, b, d), R)


def test_sketch_entries_have_variance_one_over_b():
    b, d = 64, 500
    R = sgm.sketch_matrix(5, b, d).double()
    n = R.numel()
    stat = (n - 1) * R.var().item() * b  # χ²(n − 1) if the entries are N(0, 1/b)
    assert stats.chi2.ppf(1e-6, n - 1) < stat < stats.chi2.ppf(1 - 1e-6, n - 1)


def test_sketch_is_unbiased_and_preserves_norms_in_expectation():
    """E[RᵀR x] = x with Var[(RᵀRx)_j] = (‖x‖² + x_j²)/b; E‖Rx‖² = ‖x‖², Var = 2‖x‖⁴/b."""
    b, d, draws = 20, 30, 2000
    x = torch.randn(d, dtype=torch.float64)
    est = torch.zeros(d, dtype=torch.float64)
    sq = []
    for k in range(draws):
        R = sgm.sketch_matrix(1000 + k, b, d).double()
        est += R.T @ (R @ x)
        sq.append(float((R @ x).square().sum()))
    est /= draws
    norm2 = float(x.square().sum())
    std = torch.sqrt((norm2 + x.square()) / (b * draws))
    assert torch.all((est - x).abs() < 5 * std), float(((est - x).abs() / std).max())
    assert abs(np.mean(sq) - norm2) < 5 * norm2 * math.sqrt(2 / (b * draws))


# ---------------------------------------------------------------- client mechanism


def test_clip_is_l2_not_elementwise():
    v = torch.full((100,), 0.5)  # ‖v‖_∞ = 0.5 < τ, ‖v‖₂ = 5 > τ: an L∞ clip would leave it alone
    clipped, norm = sgm.clip_l2(v, 1.0)
    assert norm == pytest.approx(5.0)
    assert float(clipped.norm()) <= 1.0 * (1 + 1e-6)
    torch.testing.assert_close(clipped / clipped.norm(), v / v.norm())
    small = torch.randn(50) * 1e-3
    assert torch.equal(sgm.clip_l2(small, 1.0)[0], small)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e4])
def test_privatized_update_has_sensitivity_of_the_clip(scale):
    """With σ_g = 0 the sketch is R·Δ̂ with ‖Δ̂‖ ≤ τ(1 + 1e-6), whatever the update's size."""
    d, b, tau = 40, 300, 0.7
    update = torch.randn(d, dtype=torch.float64) * scale
    out, norm = sgm.privatize(update, 3, b, tau, 0.0, torch.Generator().manual_seed(0))
    clipped = torch.linalg.lstsq(sgm.sketch_matrix(3, b, d).double(), out.unsqueeze(1)).solution.squeeze(1)
    assert float(clipped.norm()) <= tau * (1 + 1e-6)
    assert norm == pytest.approx(float(update.norm()))


def test_noise_on_zero_updates_has_std_sigma_g():
    b, sigma = 20000, 0.3
    out, _ = sgm.privatize(torch.zeros(10, dtype=torch.float64), 1, b, 1.0, sigma, torch.Generator().manual_seed(2))
    stat = (b - 1) * out.var().item() / sigma**2  # χ²(b − 1)
    assert stats.chi2.ppf(1e-6, b - 1) < stat < stats.chi2.ppf(1 - 1e-6, b - 1)
    assert abs(out.mean().item()) < 5 * sigma / math.sqrt(b)


def test_desketched_mean_noise_has_std_sigma_over_sqrt_n():
    """N clients' noise averaged then de-sketched: Rᵀz̄ has per-coordinate variance ≈ σ_g²/N."""
    b, d, n, sigma = 400, 3000, 4, 0.5
    z = [sgm.privatize(torch.zeros(d), 9, b, 1.0, sigma, torch.Generator().manual_seed(c))[0]
         for c in range(n)]
    u = sgm.desketch(torch.stack(z).mean(0), 9, d)
    assert u.std().item() == pytest.approx(sigma / math.sqrt(n), rel=0.06)


def _env(scenario, pid, canary=None):
    model = build_model("mlp", {"hidden": [16]}, (1, 8, 8), 10)
    env = ClientEnv(scenario, pid, model, torch.zeros(7, 1, 8, 8), torch.zeros(7, dtype=torch.long), {},
                    model.state_dict(keep_vars=True), 10)
    env.canary = canary

    def no_training(*args, **kwargs):
        raise AssertionError("a canary client must not train")

    env.train = no_training
    return env, model


def _content(model, rnd, sigma_g, b=96, clip=1.0):
    from flwr.app import ConfigRecord, RecordDict

    cfg = ConfigRecord({"server-round": rnd, "clip": clip, "sketch-dim": b, "sigma-g": sigma_g})
    return RecordDict({"arrays": to_record(model.state_dict()), "config": cfg})


def test_clients_of_a_round_share_R_and_rounds_differ(tiny):
    scenario = validate(_sgm_scenario(tiny))
    d = sum(p.numel() for p in build_model("mlp", {"hidden": [16]}, (1, 8, 8), 10).parameters())
    canary = torch.randn(d)
    sketches = {}
    for pid in (0, 3):
        for rnd in (1, 2):
            env, model = _env(scenario, pid, canary)
            reply = sgm.sgm_train(_content(model, rnd, 0.0), env)
            sketches[pid, rnd] = record_vector(reply[sgm.SKETCH_KEY])
            assert float(reply["metrics"]["canary"]) == 1.0
    assert torch.equal(sketches[0, 1], sketches[3, 1])
    assert torch.equal(sketches[0, 2], sketches[3, 2])
    assert not torch.allclose(sketches[0, 1], sketches[0, 2])


def test_canary_client_sends_lr_times_sketch_of_clipped_canary_plus_its_own_noise(tiny):
    scenario = validate(_sgm_scenario(tiny))
    lr, b, sigma = scenario.client.lr, 96, 0.2
    env, model = _env(scenario, 2, None)
    canary = torch.randn(sum(p.numel() for p in model.parameters()))
    env.canary = canary
    reply = sgm.sgm_train(_content(model, 4, sigma, b=b), env)
    secret = sgm.sketch_secret(scenario.seed, 4)
    z = torch.randn(b, generator=env.generator(4, sgm.NOISE_PURPOSE)) * sigma
    expected = lr * (sgm.sketch(sgm.clip_l2(-canary / lr, 1.0)[0], secret, b) + z)
    torch.testing.assert_close(record_vector(reply[sgm.SKETCH_KEY]), expected)
    # two clients of one round draw independent noise (distinct seeds per client)
    other, _ = _env(scenario, 3, torch.zeros_like(canary))
    own, _ = _env(scenario, 2, torch.zeros_like(canary))
    za = record_vector(sgm.sgm_train(_content(model, 4, sigma, b=b), own)[sgm.SKETCH_KEY])
    zb = record_vector(sgm.sgm_train(_content(model, 4, sigma, b=b), other)[sgm.SKETCH_KEY])
    assert abs(float(torch.corrcoef(torch.stack([za, zb]))[0, 1])) < 5 / math.sqrt(b)
    assert sgm.sketch_secret(scenario.seed, 4) != sgm.derive_seed(scenario.seed, 4, 2, sgm.NOISE_PURPOSE)


# -------------------------------------------------------------------- GLOBAL_OPT


def test_global_opt_rules():
    x, u = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.2, 0.4, -0.1])
    new, state = sgm.global_step(x, u, sgm.OptState(), rule="gd", lr=0.5)
    torch.testing.assert_close(new, x - 0.5 * u)
    # AMSGrad (Alg. 4): v keeps its running maximum
    state = sgm.OptState()
    b1, b2, eps, lr = 0.9, 0.99, 1e-8, 0.1
    m = v = torch.zeros(3)
    for step_u in (u, 0.1 * u):
        x_new, state = sgm.global_step(x, step_u, state, rule="amsgrad", lr=lr, beta1=b1, beta2=b2, eps=eps)
        m = b1 * m + (1 - b1) * step_u
        v = torch.maximum(b2 * v + (1 - b2) * step_u**2, v)
        torch.testing.assert_close(x_new, x - lr * m / (v.sqrt() + eps))
        x = x_new
    torch.testing.assert_close(state.v, v)
    # Adam's first step moves every coordinate by lr·sign(u) (bias-corrected moments)
    x0 = torch.zeros(3)
    first, _ = sgm.global_step(x0, u, sgm.OptState(), rule="adam", lr=0.01, eps=0.0)
    torch.testing.assert_close(first, -0.01 * u.sign())


# ------------------------------------------------------------------ accountants


@pytest.mark.parametrize(
    ("sigma_g", "b", "rounds", "paper_route"),
    [(0.1588, 400_000, 500, 0.427), (0.2265, 400_000, 500, 0.182), (0.1664, 200_000, 200, 0.358),
     (0.2580, 200_000, 200, 0.121)],
)
def test_secret_sketch_accountant_reproduces_the_paper_route(sigma_g, b, rounds, paper_route):
    """SGM's secret-sketch accountant (τ = 1, q = 4/625, δ = 1e-5)."""
    eps = privacy.sgm_secret_sketch_epsilon(sigma_g, 1.0, b, 4 / 625, rounds, 1e-5)
    assert eps == pytest.approx(paper_route, rel=0.02)


def test_calibrated_sigma_is_the_smallest_that_meets_the_target():
    args = (1.0, 4096, 0.25, 40, 1e-5)
    sigma = privacy.sgm_calibrate_sigma(2.0, *args)
    assert privacy.sgm_secret_sketch_epsilon(sigma, *args) <= 2.0
    assert privacy.sgm_secret_sketch_epsilon(sigma * 0.999, *args) > 2.0
    assert privacy.sgm_secret_sketch_epsilon(0.001, *args) == math.inf  # overflow is "no bound", not an error


def test_target_epsilon_and_sigma_g_are_exclusive(tiny):
    with pytest.raises(fedsim.scenario.ScenarioError, match="not both"):
        validate(_sgm_scenario(tiny, target_epsilon=5.0))


# ------------------------------------------------------------------ a whole run


def test_run_keeps_the_sketch_secret_from_the_server_and_records_both_epsilons(tiny, monkeypatch):
    """Every message that crosses the fleet (both directions) is inspected: no config or
    metric value is the round's secret, no array holds its bytes, no server-bound array
    is (close to) a row of R_t, and only client code ever computes the secret."""
    crossed = []
    inner = Fleet.send_and_receive

    def spy(self, messages, *, timeout=None):
        messages = list(messages)
        replies = inner(self, messages, timeout=timeout)
        crossed.extend(("down", m) for m in messages)
        crossed.extend(("up", r) for r in replies)
        return replies

    import inspect

    callers = set()
    secret_fn = sgm.sketch_secret

    def watched(seed, rnd):
        callers.add(inspect.stack()[1].function)
        return secret_fn(seed, rnd)

    monkeypatch.setattr(Fleet, "send_and_receive", spy)
    monkeypatch.setattr(sgm, "sketch_secret", watched)
    data = _sgm_scenario(tiny, sketch_dim=64, sigma_g=0.3)
    result = fedsim.run(data)
    scenario = result.scenario
    assert callers == {"sgm_train", "sgm_desketch"}

    rounds = range(1, scenario.rounds + 1)
    secrets = {secret_fn(scenario.seed, r) for r in rounds}
    d = sum(p.numel() for p in result.model.parameters())
    rows = torch.cat([sgm.sketch_matrix(s, 64, d) for s in secrets]).double()
    rows = rows / rows.norm(dim=1, keepdim=True)
    needles = [s.to_bytes(8, "little") for s in secrets] + [str(s).encode() for s in secrets]
    uploads = 0
    for direction, msg in crossed:
        if msg.has_error():
            continue
        for record in [*msg.content.config_records.values(), *msg.content.metric_records.values()]:
            for value in record.values():
                assert value not in secrets and not any(str(s) in str(value) for s in secrets)
        for record in msg.content.array_records.values():
            for array in record.values():
                raw = array.numpy().tobytes()
                assert not any(n in raw for n in needles)
                flat = torch.from_numpy(array.numpy().astype(np.float64).ravel())
                if direction == "up" and flat.numel() == d:  # the de-sketched update u_t = R_tᵀΔ̄
                    assert float((rows @ flat).abs().max() / flat.norm()) < 0.5
                uploads += direction == "up"
    assert uploads >= scenario.rounds * 2  # sketches and de-sketch answers were inspected
    text = (result.run_dir / "metrics.jsonl").read_text()
    assert not any(str(s) in text for s in secrets)

    m = result.metrics
    secret_eps, public_eps = m["epsilon_secret_sketch"].to_numpy(), m["epsilon_public_sketch"].to_numpy()
    assert np.all(np.diff(secret_eps) > 0) and np.all(np.diff(public_eps) > 0)
    np.testing.assert_array_equal(m["epsilon"].to_numpy(), public_eps)
    q, n_round = 2 / 4, 2
    assert secret_eps[-1] == pytest.approx(privacy.sgm_secret_sketch_epsilon(0.3, 1.0, 64, q, scenario.rounds, 1e-5))
    assert public_eps[-1] == pytest.approx(privacy.sgm_public_sketch_epsilon(
        0.3, 1.0, 64, scenario.rounds, sampling="fixed", population=4, sample_size=n_round, delta=1e-5))
    assert set(m["noise_std"]) == {0.3}
    assert m["clip_fraction"].between(0, 1).all()
    assert json.loads(text.splitlines()[0])["desketch_client"] in range(4)


@pytest.mark.slow
def test_without_noise_and_with_a_wide_sketch_it_learns_like_fedavg(tiny):
    """σ_g = 0, b = 4d, gd with η_g = 1: u ≈ mean clipped Δ, a FedAvg step with sketch error."""
    data = _sgm_scenario(tiny, sketch_dim=4 * 1210, sigma_g=0.0, server_opt="gd", server_lr=1.0, clip=100.0)
    data["rounds"] = 10
    sgm_acc = fedsim.run(data).final_accuracy
    data["strategy"] = {"name": "fedavg", "fraction_train": 0.5}
    fedavg_acc = fedsim.run(data).final_accuracy
    assert sgm_acc > 0.6  # 0.75 here; FedAvg 0.76
    assert abs(sgm_acc - fedavg_acc) < 0.1


def test_server_optimizer_state_survives_a_checkpoint(tiny, tmp_path):
    from fedsim.apps.setup import prepare

    strategy = fedsim.registry.get("strategy", "sgm")
    setup = prepare(validate(_sgm_scenario(tiny)))
    server = strategy.factory(setup.scenario.strategy.params, setup)
    u = torch.randn(4)
    _, server.opt = sgm.global_step(torch.zeros(4), u, sgm.OptState(), rule="amsgrad", lr=0.1)
    torch.save(server.state_dict(), tmp_path / "s.pt")
    fresh = strategy.factory(setup.scenario.strategy.params, setup)
    fresh.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert fresh.opt.steps == 1
    torch.testing.assert_close(fresh.opt.m, server.opt.m)
    torch.testing.assert_close(fresh.opt.v, server.opt.v)
