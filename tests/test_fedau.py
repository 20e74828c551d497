"""FedAU and its baselines on tensors alone: interval estimates, cutoff, normalisation, memories."""

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedsim.world.participation import Bernoulli
from fedsim.runtimes.inprocess import _set_task_identity
from fedsim.strategies.deltas import state_nbytes
from fedsim.strategies.fedau import FedAU, aggregation_weights, fedau_direction, init_intervals, update_intervals
from fedsim.strategies.fedavg_updates import average_updates
from fedsim.strategies.fedvarp import FedVarp
from fedsim.strategies.known_prob import KnownProb
from fedsim.strategies.mifa import MIFA


def run_intervals(rows, cutoff=None):
    """Weights ω^t used in each round t = 1.. of a participation matrix (rounds × clients)."""
    state = init_intervals(len(rows[0]))
    used = []
    for row in rows:
        used.append(aggregation_weights(state))
        state = update_intervals(state, np.asarray(row, dtype=bool), cutoff)
    return np.array(used), state


def test_weights_are_the_mean_of_intervals_completed_before_the_round():
    # client 0 participates in rounds 2, 3, 7: intervals 2 (ends round 2), 1 (round 3), 4 (round 7)
    # client 1 participates in every round: intervals of 1
    # client 2 participates in round 5 only: interval 5 (ends round 5)
    part = {0: {2, 3, 7}, 1: set(range(1, 10)), 2: {5}}
    rows = [[t in part[n] for n in range(3)] for t in range(1, 10)]
    used, state = run_intervals(rows)
    expected = {
        0: [1, 1, 2, 1.5, 1.5, 1.5, 1.5, 7 / 3, 7 / 3],  # round 3 uses [2] only: its own interval is not in yet
        1: [1, 1, 1, 1, 1, 1, 1, 1, 1],
        2: [1, 1, 1, 1, 1, 5, 5, 5, 5],
    }
    for n, want in expected.items():
        np.testing.assert_allclose(used[:, n], want)
    np.testing.assert_array_equal(state.count, [3, 9, 1])
    np.testing.assert_array_equal(state.gap, [2, 0, 4])  # rounds since the last participation


def test_the_cutoff_records_a_censored_interval_of_length_K():
    rows = [[False]] * 7 + [[True]]  # absent 7 rounds, then present in round 8
    used, state = run_intervals(rows, cutoff=3)
    # censored intervals of 3 close at rounds 3 and 6; round 8 closes an interval of 2 (rounds 7, 8)
    np.testing.assert_allclose(used[:, 0], [1, 1, 1, 3, 3, 3, 3, 3])
    assert state.count[0] == 3 and state.gap[0] == 0
    assert state.mean[0] == pytest.approx((3 + 3 + 2) / 3)
    _, uncut = run_intervals(rows)  # K = ∞: one interval of 8
    assert uncut.count[0] == 1 and uncut.mean[0] == 8


def test_the_aggregate_divides_by_all_N_clients():
    deltas = np.array([[1.0, 2.0], [3.0, -1.0]])  # two participants
    weights = np.array([2.0, 0.5])
    np.testing.assert_allclose(fedau_direction(deltas, weights, num_clients=10), [(2 + 1.5) / 10, (4 - 0.5) / 10])
    np.testing.assert_allclose(average_updates(deltas, 10, "all"), [0.4, 0.1])
    np.testing.assert_allclose(average_updates(deltas, 10, "participants"), [2.0, 0.5])
    np.testing.assert_allclose(average_updates(np.zeros((0, 2)), 10, "participants"), [0.0, 0.0])


class FakeGrid:
    """Node ids 100 + partition id; only ``reachable`` partitions are listed."""

    def __init__(self, reachable):
        self.reachable = reachable

    def get_node_ids(self):
        return [100 + p for p in self.reachable]


def train_round(strategy, rnd, x, models, reachable):
    """One configure/aggregate round where partition p answers with model ``models[p]``."""
    _set_task_identity(7)
    grid = FakeGrid(reachable)
    instructions = list(strategy.configure_train(rnd, ArrayRecord([x]), ConfigRecord(), grid))
    assert sorted(m.metadata.dst_node_id - 100 for m in instructions) == sorted(reachable)
    replies = []
    for m in instructions:
        m.metadata.__dict__["_message_id"] = f"m{rnd}-{m.metadata.dst_node_id}"
        p = m.metadata.dst_node_id - 100
        content = RecordDict({"arrays": ArrayRecord([models[p]]), "metrics": MetricRecord({"num-examples": 5, "train_loss": 0.5}),
                              "node": ConfigRecord({"partition-id": p})})  # as fedsim's ClientApp reports it
        replies.append(Message(content, reply_to=m))
    arrays, metrics = strategy.aggregate_train(rnd, replies)
    return arrays.to_numpy_ndarrays()[0], metrics


def test_fedau_server_round_keys_state_by_partition_and_steps_with_eta_over_N():
    n, eta = 4, 2.0
    strategy = FedAU(n, eta, seed=0, cutoff=None)
    x = np.zeros(3, dtype=np.float32)
    models = {p: np.full(3, p + 1.0, dtype=np.float32) for p in range(n)}
    # round 1: partitions 0, 2 answer; no interval completed before, so ω = 1
    x1, m1 = train_round(strategy, 1, x, models, [0, 2])
    np.testing.assert_allclose(x1, eta * (1 + 3) / n)
    assert m1["omega_max"] == 1.0 and m1["server_state_bytes"] == 3 * 8 * n
    # round 2: only partition 2; its interval [1] → ω = 1; partition 0 (absent) keeps ω = 1
    x2, _ = train_round(strategy, 2, x1, models, [2])
    np.testing.assert_allclose(x2, x1 + eta * (3 - x1) / n, rtol=1e-6)
    # round 3: partition 0 answers after an interval of 1 (round 1) → ω_0 = 1; state: 0 closes [1, 2]
    x3, _ = train_round(strategy, 3, x2, models, [0, 1])
    # partition 1 has no completed interval before round 3 → ω_1 = 1
    np.testing.assert_allclose(x3, x2 + eta * ((1 - x2) + (2 - x2)) / n, rtol=1e-6)
    np.testing.assert_array_equal(strategy.state.count, [2, 1, 2, 0])
    np.testing.assert_allclose(aggregation_weights(strategy.state), [1.5, 3.0, 1.0, 1.0])
    assert strategy.artifacts()["fedau_weights"]["omega"] == [1.5, 3.0, 1.0, 1.0]


def test_fedau_with_everyone_always_present_is_the_plain_mean_of_models():
    rng = np.random.default_rng(1)
    strategy = FedAU(5, 1.0, seed=0, cutoff=None)
    x = rng.normal(size=6).astype(np.float32)
    for rnd in range(1, 5):
        models = {p: rng.normal(size=6).astype(np.float32) for p in range(5)}
        x, metrics = train_round(strategy, rnd, x, models, list(range(5)))
        np.testing.assert_allclose(x, np.mean(list(models.values()), axis=0), rtol=1e-5, atol=1e-6)
        assert metrics["omega_min"] == metrics["omega_max"] == 1.0


def test_known_prob_divides_each_update_by_its_probability_and_by_N():
    p = np.array([0.5, 0.25, 1.0])
    strategy = KnownProb(p, 1.0, seed=0)
    x = np.zeros(2, dtype=np.float32)
    models = {0: np.array([1.0, 0.0], np.float32), 1: np.array([0.0, 1.0], np.float32), 2: np.ones(2, np.float32)}
    x1, metrics = train_round(strategy, 1, x, models, [0, 1])
    np.testing.assert_allclose(x1, [(1 / 0.5) / 3, (1 / 0.25) / 3])
    assert metrics["server_state_bytes"] == p.nbytes


def test_mifa_averages_every_clients_latest_update_over_N():
    n = 3
    strategy = MIFA(n, 1.0, seed=0)
    x = np.zeros(2, dtype=np.float32)
    # round 1: client 0 sends Δ = (3, 0); memory [(3,0), 0, 0] → step (1, 0)
    x1, m = train_round(strategy, 1, x, {0: np.array([3.0, 0.0], np.float32)}, [0])
    np.testing.assert_allclose(x1, [1.0, 0.0])
    assert m["server_state_bytes"] == n * 2 * 4 + 2 * 8  # N×d float32 memory + float64 row mean
    # round 2: nobody answers; MIFA still applies the memory's mean (1, 0)
    x2, _ = train_round(strategy, 2, x1, {}, [])
    np.testing.assert_allclose(x2, [2.0, 0.0])
    # round 3: client 1 sends Δ = (0, 6) relative to x2; memory [(3,0), (0,6), 0] → step (1, 2)
    x3, _ = train_round(strategy, 3, x2, {1: x2 + np.array([0.0, 6.0], np.float32)}, [1])
    np.testing.assert_allclose(x3, x2 + [1.0, 2.0])
    np.testing.assert_allclose(strategy.state.updates, [[3, 0], [0, 6], [0, 0]])


def test_fedvarp_corrects_participants_with_the_memory_before_the_round():
    n = 2
    strategy = FedVarp(n, 1.0, seed=0)
    x = np.zeros(1, dtype=np.float32)
    # round 1: memory 0; client 0 sends Δ = 4 → v = 0 + (4 − 0) = 4; memory [4, 0]
    x1, _ = train_round(strategy, 1, x, {0: np.array([4.0], np.float32)}, [0])
    np.testing.assert_allclose(x1, [4.0])
    # round 2: nobody → v = 0 (as in the official code)
    x2, _ = train_round(strategy, 2, x1, {}, [])
    np.testing.assert_allclose(x2, [4.0])
    # round 3: client 1 sends Δ = 2 → v = mean(4, 0) + (2 − 0) = 4; memory [4, 2]
    x3, m = train_round(strategy, 3, x2, {1: x2 + np.float32(2.0)}, [1])
    np.testing.assert_allclose(x3, x2 + 4.0)
    # round 4: both send Δ = 1 → v = mean(4, 2) + mean(1 − 4, 1 − 2) = 3 − 2 = 1
    x4, _ = train_round(strategy, 4, x3, {0: x3 + np.float32(1.0), 1: x3 + np.float32(1.0)}, [0, 1])
    np.testing.assert_allclose(x4, x3 + 1.0)
    assert m["server_state_bytes"] == state_nbytes(strategy.state) == n * 1 * 4 + 1 * 8


def test_estimated_weights_are_within_10_percent_of_inverse_probability():
    """Bernoulli(p_n) participation, p_n known to the test only: after 20 000 rounds every
    client with p_n ≥ 0.1 has ω_n within 10% of 1/p_n (the relative standard error at
    p = 0.1 is about 0.95/√2000 ≈ 2%, so a miss is a > 4σ event)."""
    p = np.array([0.1, 0.12, 0.15, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0, 0.05, 0.02])
    process = Bernoulli(p, seed=11)
    state = init_intervals(len(p))
    for rnd in range(1, 20_001):
        state = update_intervals(state, process.available(rnd))
    omega = aggregation_weights(state)
    ok = p >= 0.1
    rel = np.abs(omega[ok] * p[ok] - 1)
    assert rel.max() < 0.10, dict(zip(p[ok], omega[ok]))
