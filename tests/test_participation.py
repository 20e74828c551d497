"""Participation processes, the world layer, the FedAU family in real runs, the weights plot."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

import fedsim
from fedsim.cli import app
from fedsim.apps.setup import prepare
from fedsim.world.participation import Bernoulli, Cyclic, Markov, client_uniforms, label_correlated, make_process, probabilities
from fedsim.scenario import ScenarioError, load
from fedsim.strategies.fedau import aggregation_weights, init_intervals, update_intervals

runner = CliRunner()


def matrix(process, rounds):
    return np.array([process.available(t) for t in range(1, rounds + 1)])


def test_bernoulli_frequencies_match_p_and_draws_depend_on_seed_round_client_only():
    p = np.array([0.05, 0.3, 0.7, 1.0])
    m = matrix(Bernoulli(p, seed=1), 5000)
    se = np.sqrt(p * (1 - p) / 5000)
    assert np.all(np.abs(m.mean(0) - p) <= 4 * se + 1e-12)
    # a client's draws do not depend on how many clients there are
    more = matrix(Bernoulli(np.concatenate([p, [0.5, 0.5]]), seed=1), 200)
    np.testing.assert_array_equal(more[:, :4], m[:200])
    assert not np.array_equal(matrix(Bernoulli(p, seed=2), 200), m[:200])
    np.testing.assert_array_equal(client_uniforms(1, 7, 3, "x"), client_uniforms(1, 7, 6, "x")[:3])


def test_markov_chain_has_stationary_probability_p_and_the_configured_transitions():
    p = np.array([0.1, 0.5, 0.9])
    proc = Markov(p, seed=4, transition=0.2)
    np.testing.assert_allclose(proc.to_on, [0.2 / 1.8, 0.2, 0.2])  # 0.2·(1/0.1 − 1) = 1.8 > 1: rescaled
    np.testing.assert_allclose(proc.to_off, [1.0, 0.2, 0.2 / 9])
    m = matrix(proc, 20_000)
    np.testing.assert_allclose(m.mean(0), p, atol=0.03)
    prev, nxt = m[:-1], m[1:]
    for was, now, rate in ((~prev, nxt, proc.to_on), (prev, ~nxt, proc.to_off)):
        seen = (was & now).sum(0) / was.sum(0)  # each step from a state is a fresh Bernoulli(rate)
        assert np.all(np.abs(seen - rate) <= 4 * np.sqrt(rate * (1 - rate) / was.sum(0)) + 1e-12)
    with pytest.raises(ValueError, match="cannot go back"):
        proc.available(5)


def reference_cyclic(active, inactive, countdown, rounds):
    """IBM/fedau's WorkerSampler.cyclic_update, step by step (the test's own copy of the rule)."""
    on, out = False, []
    for _ in range(rounds):
        if countdown == 0:
            on = not on
            countdown = active if on else inactive
        countdown -= 1
        out.append(on)
    return np.array(out)


def test_cyclic_is_periodic_with_active_fraction_p_and_matches_the_reference_rule():
    p = np.array([0.3, 0.01, 0.5, 1.0, 0.77])
    proc = Cyclic(p, seed=9, period=10)
    np.testing.assert_array_equal(proc.active_rounds, [3, 1, 5, 10, 8])
    np.testing.assert_array_equal(proc.inactive_rounds, [7, 9, 5, 1, 2])
    assert np.all((0 <= proc.phase) & (proc.phase < proc.inactive_rounds))
    m = matrix(proc, 60)
    for n in range(len(p)):
        ref = reference_cyclic(proc.active_rounds[n], proc.inactive_rounds[n], proc.phase[n], 60)
        np.testing.assert_array_equal(m[:, n], ref)


def test_label_correlated_probabilities_follow_the_fedau_formula():
    hist = np.array([[10, 0, 0], [5, 5, 0], [0, 0, 2], [1, 1, 2]])
    p = label_correlated(hist, alpha=0.1, mean=0.2, p_min=0.05, rng=np.random.default_rng(3))
    v = np.random.default_rng(3).dirichlet(0.1 * np.ones(3))
    q = hist / hist.sum(1, keepdims=True)
    np.testing.assert_allclose(p, np.clip(3 * 0.2 * q @ v, 0.05, 1))
    assert p.min() >= 0.05


@pytest.fixture
def au(tiny):
    """tiny with FedAU, six clients of equal-ish size and explicit Bernoulli probabilities."""
    return {
        **tiny,
        "rounds": 12,
        "num_clients": 6,
        "partition": {"name": "dirichlet_shares", "alpha": 1.0, "min_partition_size": 20},
        "strategy": {"name": "fedau"},
        "participation": {"name": "bernoulli", "probabilities": {"kind": "explicit", "values": [0.5, 0.3, 0.2, 0.15, 0.1, 0.1]}},
        "client": {"epochs": 0, "steps": 2, "batch_size": 16, "lr": 0.1},
        "evaluation": {"eval_every": 6},
    }


def test_fedau_run_sees_exactly_the_available_clients_and_estimates_from_them(au):
    res = fedsim.run(au)
    sc = load(au)
    process = make_process(prepare(sc))
    masks = matrix(process, sc.rounds)
    df = res.metrics
    np.testing.assert_array_equal(df["clients_available"], masks.sum(1))
    np.testing.assert_array_equal(df["clients_replied"], masks.sum(1))  # only reachable clients are asked
    assert (df["clients_available"] == 0).any()  # a round with nobody: the run goes on
    state = init_intervals(6)
    for row in masks:
        state = update_intervals(state, row)
    truth = json.loads((res.run_dir / "participation.json").read_text())
    assert truth["probabilities"] == [0.5, 0.3, 0.2, 0.15, 0.1, 0.1]
    assert truth["available_rounds"] == masks.sum(0).tolist()
    weights = json.loads((res.run_dir / "fedau_weights.json").read_text())
    np.testing.assert_allclose(weights["omega"], aggregation_weights(state))
    assert (res.run_dir / "fedau_weights.png").stat().st_size > 1000
    assert (df["server_state_bytes"] == 3 * 8 * 6).all()
    assert {"omega_mean", "omega_std", "omega_min", "omega_max"} <= set(df.columns)


def test_plot_weights_command(au):
    res = fedsim.run(au, rounds=3, output__plot=False)
    assert not (res.run_dir / "fedau_weights.png").exists()
    result = runner.invoke(app, ["plot-weights", str(res.run_dir)])
    assert result.exit_code == 0, result.output
    assert (res.run_dir / "fedau_weights.png").stat().st_size > 1000
    (res.run_dir / "fedau_weights.json").unlink()
    result = runner.invoke(app, ["plot-weights", str(res.run_dir)])
    assert result.exit_code == 2 and "fedau_weights.json" in result.output


def test_with_every_p_one_fedau_equals_fedavg(tiny):
    """Shards give every client the same number of examples, so Flower's example-weighted
    FedAvg is the plain mean; FedAU with p_n = 1 (ω_n = 1, all N present) must equal it."""
    common = {**tiny, "rounds": 4, "partition": {"name": "shard", "shards_per_client": 2}}
    a = fedsim.run({**common, "strategy": {"name": "fedavg"}})
    b = fedsim.run(
        {
            **common,
            "strategy": {"name": "fedau"},
            "participation": {"name": "bernoulli", "probabilities": {"kind": "constant", "value": 1.0}},
        }
    )
    cols = ["train_loss", "test_loss", "test_acc"]
    pd.testing.assert_frame_equal(a.metrics[cols], b.metrics[cols], rtol=1e-5)
    for pa, pb in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True):
        np.testing.assert_allclose(pa.numpy(), pb.numpy(), rtol=1e-4, atol=1e-6)


def test_mifa_reports_its_n_by_d_memory_and_oracle_reads_the_true_probabilities(au):
    res = fedsim.run(au, rounds=2, strategy__name="mifa")
    d = sum(v.numel() for v in res.model.state_dict().values())
    assert (res.metrics["server_state_bytes"] == 6 * d * 4 + d * 8).all()
    sc = load(au)
    np.testing.assert_allclose(probabilities(prepare(sc)), [0.5, 0.3, 0.2, 0.15, 0.1, 0.1])
    oracle = fedsim.run(au, rounds=2, strategy__name="known_prob")
    assert (oracle.metrics["server_state_bytes"] == 6 * 8).all()


def test_drawn_and_label_correlated_probabilities(au):
    def p_of(spec=None):
        section = {"name": "markov"} | ({"probabilities": spec} if spec else {})
        return probabilities(prepare(load({**au, "participation": section})))

    u = p_of({"kind": "uniform", "low": 0.2, "high": 0.4})
    assert u.shape == (6,) and np.all((0.2 <= u) & (u <= 0.4)) and np.ptp(u) > 0
    b = p_of({"kind": "beta", "a": 0.5, "b": 5.0, "min": 0.05})
    assert np.all((0.05 <= b) & (b <= 1))
    lc = p_of({"kind": "label_correlated"})
    np.testing.assert_array_equal(lc, p_of())  # the FedAU set-up is the default
    assert np.all(lc >= 0.02)


@pytest.mark.parametrize(
    "participation, expected",
    [
        ({"name": "bernouli"}, ["participation.name", "unknown participation 'bernouli'", "bernoulli"]),
        ({"name": "markov", "transition": 0}, ["participation.transition", "greater than 0"]),
        ({"name": "cyclic", "probabilities": {"kind": "constant", "value": 1.5}}, ["participation.probabilities", "less than or equal to 1"]),
        ({"name": "bernoulli", "probabilities": {"kind": "sometimes"}}, ["participation.probabilities", "sometimes"]),
    ],
)
def test_bad_participation_sections_are_named(tiny, tmp_path, participation, expected):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**tiny, "participation": participation}))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    for piece in expected:
        assert piece in result.output, (piece, result.output)


def test_explicit_probabilities_must_cover_every_client(au):
    au["participation"]["probabilities"]["values"] = [0.5, 0.5]
    with pytest.raises(ValueError, match="expected 6 probabilities"):
        probabilities(prepare(load(au)))
    with pytest.raises(ScenarioError):
        load({**au, "participation": {"name": "bernoulli", "probabilities": {"kind": "explicit", "values": [0.0]}}})


def test_dirichlet_shares_split_covers_every_example_once_with_skewed_label_mixes():
    from fedsim.data.datasets import load_dataset
    from fedsim.data.partition import label_histograms, make_partitions
    from fedsim.registry import get

    y = load_dataset("digits", {}, 0).y_train
    params = get("partitioner", "dirichlet_shares").params(alpha=0.1, min_partition_size=5)
    parts = make_partitions("dirichlet_shares", params, y, 20, seed=1)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(y)))
    assert min(len(p) for p in parts) >= 5
    hist = label_histograms(parts, y, 10)
    top_share = hist.max(1) / hist.sum(1)
    assert np.median(top_share) > 0.6  # Dir(0.1): most clients are dominated by one class
    again = make_partitions("dirichlet_shares", params, y, 20, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
