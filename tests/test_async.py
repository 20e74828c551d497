"""Asynchronous FL on the virtual clock: event order and staleness on hand-made traces,
FedBuff's and FedAsync's server rules against hand computations, the synchronous
baselines' deadline and over-selection, determinism, traces, and validation."""

import json
import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from typer.testing import CliRunner

import fedsim
from fedsim.apps.asynchronous import Arrival, Task, build_devices
from fedsim.apps.setup import prepare
from fedsim.cli import app
from fedsim.scenario import ScenarioError, load
from fedsim.strategies.fedasync import FedAsync, FedAsyncParams, staleness_weight
from fedsim.strategies.fedbuff import FedBuff, FedBuffParams
from fedsim.world.devices import Availability, read_trace, renewal_intervals, write_trace

runner = CliRunner()
EXAMPLES = 8  # client: {steps: 1, batch_size: 8}: every task trains on 8 examples


def write_csv(path, rows):
    """rows: (client, start, end, task seconds); huge bandwidth and no latency, so a task
    lasts its compute time, 8 examples × seconds_per_example (+ ~1e-11 s of transfer)."""
    lines = ["client,start,end,seconds_per_example,bandwidth,latency"]
    lines += [f"{c},{s},{e},{d / EXAMPLES},1e15,0" for c, s, e, d in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def scenario(tmp_path, rows, strategy, budget, concurrency=3, rounds=1000, **extra):
    num_clients = max(r[0] for r in rows) + 1
    return {
        "name": "async",
        "seed": 5,
        "rounds": rounds,
        "num_clients": num_clients,
        "dataset": {"name": "digits"},
        "partition": {"name": "iid"},
        "model": {"name": "mlp", "hidden": [16]},
        "strategy": strategy,
        "client": {"steps": 1, "batch_size": EXAMPLES, "lr": 0.1},
        "asynchronous": {"time_budget": budget, "concurrency": concurrency},
        "devices": {"trace": write_csv(tmp_path / "trace.csv", rows)},
        "output": {"dir": str(tmp_path / "runs"), "progress": False, "plot": False, "save_model": False},
        **extra,
    }


def events(result, kinds=("start", "arrive", "lost", "cancel", "update", "deadline")):
    """The run's event log with times rounded (transfers add ~1e-11 s per task)."""
    log = json.loads((result.run_dir / "events.json").read_text())
    return [(round(t, 6), kind, client, version) for t, kind, client, version in log if kind in kinds]


def test_event_order_and_staleness_on_a_hand_made_trace(tmp_path, torch_one_thread):
    # durations 5, 3, 4.25 s; client 2 comes online at t = 1; concurrency 3 (all start)
    rows = [(0, 0, "inf", 5.0), (1, 0, "inf", 3.0), (2, 1, "inf", 4.25)]
    res = fedsim.run(scenario(tmp_path, rows, {"name": "fedasync", "alpha": 0.5}, budget=10.2))
    arrivals = [(t, c, v) for t, kind, c, v in events(res) if kind == "arrive"]
    starts = [(t, c, v) for t, kind, c, v in events(res) if kind == "start"]
    # by hand: t=3 client 1 (τ0, σ0) → v1, restarts; t=5 client 0 (τ0, σ1) → v2; t=5.25
    # client 2 (τ0, σ2) → v3; t=6 client 1 (τ1, σ2) → v4; t=9 client 1 (τ4, σ0) → v5;
    # t=9.5 client 2 (τ3, σ2) → v6; t=10 client 0 (τ2, σ4) → v7
    assert sorted(starts[:2]) == [(0.0, 0, 0), (0.0, 1, 0)]
    assert starts[2:] == [(1.0, 2, 0), (3.0, 1, 1), (5.0, 0, 2), (5.25, 2, 3), (6.0, 1, 4), (9.0, 1, 5),
                          (9.5, 2, 6), (10.0, 0, 7)]
    assert arrivals == [(3.0, 1, 0), (5.0, 0, 1), (5.25, 2, 2), (6.0, 1, 3), (9.0, 1, 4), (9.5, 2, 5), (10.0, 0, 6)]
    rows_ = res.metrics[res.metrics["round"] > 0]
    assert [s for (s,) in rows_["staleness"]] == [0, 1, 2, 2, 0, 2, 4]
    assert rows_["virtual_time"].round(6).tolist() == [3.0, 5.0, 5.25, 6.0, 9.0, 9.5, 10.0]
    # α_t = α·(σ+1)^(−1/2) (default polynomial, a = 0.5)
    np.testing.assert_allclose(rows_["alpha_t"], [0.5 * (s + 1) ** -0.5 for s in (0, 1, 2, 2, 0, 2, 4)])
    summary = json.loads((res.run_dir / "async.json").read_text())
    assert summary["staleness_histogram"] == {"0": 2, "1": 1, "2": 3, "4": 1}
    assert summary["staleness_mean"] == pytest.approx(11 / 7)
    assert summary["contributions"] == [2, 3, 2]
    assert summary["virtual_time"] == pytest.approx(10.0)


def test_a_client_going_offline_mid_training_loses_its_work(tmp_path, torch_one_thread):
    # client 0 (5 s tasks) is online [0, 4) and from t = 6; client 1 (3 s) always
    rows = [(0, 0, 4, 5.0), (0, 6, "inf", 5.0), (1, 0, "inf", 3.0)]
    res = fedsim.run(scenario(tmp_path, rows, {"name": "fedasync"}, budget=11.5, concurrency=2))
    log = events(res, ("start", "arrive", "lost"))
    assert (4.0, "lost", 0, 1) in log  # offline at 4 s, before its task would end at 5 s
    assert (6.0, "start", 0, 1) in log  # back online at 6: it starts again from version 1
    arrivals = [(t, c, v) for t, kind, c, v in log if kind == "arrive"]
    # client 1 at 3, 6, 9; client 0's only reply at 11, with staleness 3 − 1 = 2
    assert arrivals == [(3.0, 1, 0), (6.0, 1, 1), (9.0, 1, 2), (11.0, 0, 3)]
    summary = json.loads((res.run_dir / "async.json").read_text())
    assert summary["lost"] == 1 and summary["contributions"] == [1, 3]
    assert summary["staleness_histogram"] == {"0": 3, "2": 1}
    last = res.metrics.iloc[-1]
    assert last["lost"] == 1 and last["round"] == 4


def _record(value: float) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.array([value]))})


def _arrival(sent: float, trained: float, version: int, staleness: int) -> Arrival:
    reply = RecordDict({"arrays": _record(trained), "metrics": MetricRecord({"train_loss": 0.0, "num-examples": 1})})
    return Arrival(Task(0, 0, version, _record(sent), 0.0, 1.0, False), reply, staleness)


def _value(record: ArrayRecord) -> float:
    return float(record["w"].numpy()[0])


def test_fedbuff_server_step_equals_a_hand_computation():
    # K = 2, η_g = 1, β = 0, s(σ) = 1/√(1+σ), divided by K; Δ = x_τ − y
    buff = FedBuff(FedBuffParams(buffer_size=2), concurrency=4)
    x0 = _record(0.0)
    assert buff.arrive(x0, _arrival(0.0, 1.0, 0, 0), 1.0).model is None  # A: Δ = −1
    step = buff.arrive(x0, _arrival(0.0, 3.0, 0, 0), 2.0)  # B: Δ = −3 → Δ̄ = −2, x1 = 2
    assert _value(step.model) == pytest.approx(2.0)
    x1 = step.model
    assert buff.arrive(x1, _arrival(0.0, 2.0, 0, 1), 3.0).model is None  # C: τ0, σ1, Δ = −2
    step = buff.arrive(x1, _arrival(2.0, 4.0, 1, 0), 4.0)  # D: τ1, σ0, Δ = −2
    assert _value(step.model) == pytest.approx(2 + (2 / math.sqrt(2) + 2) / 2)  # 3.7071
    assert _value(step.model) == pytest.approx(3.70710678)
    # with server momentum β = 0.9, η_g = 0.5: m1 = −2, x1 = 1; m2 = 0.9·(−2) + Δ̄2, x2 = x1 − 0.5·m2
    buff = FedBuff(FedBuffParams(buffer_size=2, server_lr=0.5, server_momentum=0.9), concurrency=4)
    buff.arrive(x0, _arrival(0.0, 1.0, 0, 0), 1.0)
    x1 = buff.arrive(x0, _arrival(0.0, 3.0, 0, 0), 2.0).model
    assert _value(x1) == pytest.approx(1.0)
    buff.arrive(x1, _arrival(0.0, 2.0, 0, 1), 3.0)  # Δ = −2, weight 1/√2
    x2 = buff.arrive(x1, _arrival(1.0, 3.0, 1, 0), 4.0).model  # Δ = −2
    assert _value(x2) == pytest.approx(2.753553390593274)  # 1 − 0.5·(−1.8 − 1.7071068)


def test_fedbuff_drops_updates_staler_than_max_staleness():
    buff = FedBuff(FedBuffParams(buffer_size=1, max_staleness=2), concurrency=1)
    step = buff.arrive(_record(0.0), _arrival(0.0, 1.0, 0, 3), 1.0)
    assert step.model is None and step.metrics == {"dropped_stale": 1}
    assert _value(buff.arrive(_record(0.0), _arrival(0.0, 1.0, 1, 2), 2.0).model) == pytest.approx(3 ** -0.5)


def test_fedasync_staleness_weights_and_mixing_hand_values():
    poly = FedAsyncParams(staleness={"kind": "polynomial", "a": 0.5}).staleness
    assert [staleness_weight(poly, s) for s in (0, 1, 3, 8)] == pytest.approx([1, 0.70710678, 0.5, 1 / 3])
    hinge = FedAsyncParams(staleness={"kind": "hinge", "a": 10, "b": 4}).staleness
    assert [staleness_weight(hinge, s) for s in (0, 4, 5, 6, 10)] == pytest.approx([1, 1, 1 / 11, 1 / 21, 1 / 61])
    const = FedAsyncParams(staleness={"kind": "constant"}).staleness
    assert staleness_weight(const, 7) == 1.0
    # x_0 = 0, y = 1, α = 0.5: σ0 constant → 0.5; polynomial σ3 → α_t = 0.25; hinge σ5 → 0.5/11
    cases = [({"kind": "constant"}, 0, 0.5), ({"kind": "polynomial", "a": 0.5}, 3, 0.25),
             ({"kind": "hinge", "a": 10, "b": 4}, 5, 0.5 / 11)]
    for spec, sigma, expected in cases:
        strategy = FedAsync(FedAsyncParams(alpha=0.5, staleness=spec), concurrency=1)
        # the server mixes with the current model x_t (here 0), whatever x_τ the client started from
        step = strategy.arrive(_record(0.0), _arrival(-7.0, 1.0, 0, sigma), 1.0)
        assert _value(step.model) == pytest.approx(expected)


def _durations(n):
    return [(c, 0, "inf", float(c + 1)) for c in range(n)]  # client c's task lasts c + 1 seconds


@pytest.mark.parametrize(
    ("deadline", "min_fraction", "close", "arrived", "reports", "abandoned"),
    [(None, 0.8, 10.0, 10, 10, 0),  # 13 selected, the 10 fastest report by t = 10; the rest discarded
     (8.5, 0.8, 8.5, 8, 8, 0),      # deadline 8.5: 8 reports ≥ 0.8·10, aggregate at t = 8.5
     (8.5, 0.9, 8.5, 8, 0, 1)],     # 8 < 0.9·10: the round is abandoned at t = 8.5
)
def test_sync_round_with_over_selection_and_deadline(tmp_path, torch_one_thread, deadline, min_fraction, close,
                                                      arrived, reports, abandoned):
    strategy = {"name": "sync_fedavg", "clients_per_round": 10, "over_selection": 1.3, "deadline": deadline,
                "min_fraction": min_fraction}
    res = fedsim.run(scenario(tmp_path, _durations(13), strategy, budget=close + 0.5))
    log = events(res)
    assert sorted(c for t, kind, c, v in log if kind == "start" and t == 0) == list(range(13))
    first_close = [e for e in log if e[1] in ("cancel", "update")][0][0]
    assert first_close == close
    cancelled = sorted(c for t, kind, c, v in log if kind == "cancel" and t == close)
    assert cancelled == list(range(arrived, 13))  # clients whose task outlasts the round
    summary = json.loads((res.run_dir / "async.json").read_text())
    assert summary["arrivals"] == arrived
    assert summary["server_updates"] == (0 if abandoned else 1)
    assert sum(summary["contributions"]) == reports
    if not abandoned:
        assert res.metrics.iloc[1]["virtual_time"] == pytest.approx(close)
        assert res.metrics.iloc[1]["round_seconds"] == pytest.approx(close)


def test_sync_fedavg_one_round_equals_the_example_weighted_mean(tmp_path, torch_one_thread):
    """η_g = 1, β = 0, whole cohort: the new model is Σ n_i y_i / Σ n_i of the replies (FedAvg).
    One full-batch step per client, so the clients' shuffles (seeded per task) do not matter."""
    sc = scenario(tmp_path, _durations(4), {"name": "sync_fedavg", "clients_per_round": 4}, budget=1000, rounds=1)
    sc["client"] = {"epochs": 1, "batch_size": 2000, "lr": 0.1}
    sync = fedsim.run(sc)
    ref = fedsim.run({**{k: v for k, v in sc.items() if k not in ("asynchronous", "devices")},
                      "strategy": {"name": "fedavg"}, "rounds": 1})
    for key, value in sync.model.state_dict().items():
        np.testing.assert_allclose(value.numpy(), ref.model.state_dict()[key].numpy(), rtol=1e-5, atol=1e-6)
    sizes = prepare(load(sc)).partition_sizes  # client c: n_c examples at (c + 1)/8 s each
    assert sync.metrics.iloc[-1]["virtual_time"] == pytest.approx(max(n * (c + 1) / EXAMPLES for c, n in enumerate(sizes)))


def test_same_seed_same_events_and_metrics_and_the_trace_round_trip(tmp_path, torch_one_thread):
    base = {
        "name": "det", "seed": 11, "rounds": 15, "num_clients": 8,
        "dataset": {"name": "digits"}, "partition": {"name": "dirichlet", "alpha": 0.5, "min_partition_size": 10},
        "model": {"name": "mlp", "hidden": [16]}, "strategy": {"name": "fedbuff", "buffer_size": 3},
        "client": {"steps": 2, "batch_size": 16, "lr": 0.1},
        "network": {"heterogeneity": 1.0},
        "asynchronous": {"time_budget": 40, "concurrency": 4},
        "devices": {"availability": {"mean_online": 5, "mean_offline": 2}},
        "output": {"dir": str(tmp_path / "runs"), "progress": False, "plot": False, "save_model": False},
    }
    a, b = fedsim.run(base), fedsim.run(base)
    assert events(a) == events(b)
    cols = [c for c in a.metrics.columns if c != "seconds"]
    assert a.metrics[cols].to_json() == b.metrics[cols].to_json()
    assert json.loads((a.run_dir / "async.json").read_text())["lost"] > 0  # availability bites
    # the same devices written as a trace and read back give the same run
    trace = write_trace(tmp_path / "devices.csv", build_devices(prepare(load(base))))
    c = fedsim.run({**base, "devices": {"trace": str(trace)}, "network": None})
    assert events(c) == events(a)
    assert c.metrics[cols].to_json() == a.metrics[cols].to_json()
    # another seed, other events
    assert events(fedsim.run({**base, "seed": 12})) != events(a)


def test_trace_reader_and_availability_are_pure_functions_of_time(tmp_path):
    path = write_csv(tmp_path / "t.csv", [(1, 30, 40, 1.0), (0, 0, 10, 2.0), (1, 10, 20, 1.0), (1, 50, "inf", 1.0)])
    speed, intervals = read_trace(path, 2)
    np.testing.assert_allclose(speed[:, 0], [2.0 / EXAMPLES, 1.0 / EXAMPLES])
    assert intervals[1] == [(10, 20), (30, 40), (50, math.inf)]
    sc = load(scenario(tmp_path, [(1, 30, 40, 1.0), (0, 0, 10, 2.0), (1, 10, 20, 1.0), (1, 50, "inf", 1.0)],
                       {"name": "fedasync"}, budget=100))
    devices = build_devices(prepare(sc))
    # FedScale's stateful is_active got later queries wrong; here any order gives the same answers
    queries = [15, 55, 35, 5, 45, 115, 20]
    answers = [devices.available(1, t) for t in queries]
    assert answers == [True, True, True, False, False, True, False]
    assert [devices.available(1, t) for t in reversed(queries)] == answers[::-1]
    assert devices.next_online(1, 21) == 30 and devices.online_until(1, 31) == 40
    assert devices.next_online(0, 10) == math.inf
    # the renewal process: online fraction mean_online / (mean_online + mean_offline)
    iv = renewal_intervals(Availability(mean_online=3, mean_offline=1), 40_000, np.random.default_rng(0))
    assert sum(min(e, 40_000) - s for s, e in iv) / 40_000 == pytest.approx(0.75, abs=0.02)


@pytest.mark.parametrize(
    ("change", "expected"),
    [({"runtime": {"name": "ray"}}, "runtime.name': .*inprocess runtime only"),
     ({"byzantine": {"name": "lie", "fraction": 0.2}}, "omniscient attack"),
     ({"faults": {"straggler_probability": 0.5, "straggler_delay": 1}}, "only faults.crash_probability"),
     ({"asynchronous": None}, "give asynchronous.time_budget"),
     ({"strategy": {"name": "fedavg"}}, "runs in synchronous rounds; the event-driven strategies are"),
     ({"defense": {"name": "dp", "clip": 1.0, "noise_multiplier": 1.0}}, "no accountant for asynchronous"),
     ({"output": {"checkpoint_every": 2}}, "event queue")],
)
def test_what_the_event_loop_cannot_run_is_refused_with_the_reason(tmp_path, change, expected):
    sc = scenario(tmp_path, _durations(3), {"name": "fedbuff"}, budget=10)
    with pytest.raises(ScenarioError, match=expected):
        load({**sc, **change})


def test_a_bad_trace_names_the_file_line_and_column(tmp_path):
    sc = scenario(tmp_path, _durations(3), {"name": "fedbuff"}, budget=10)
    bad = tmp_path / "bad.csv"
    bad.write_text("client,start,end,seconds_per_example,bandwidth\n0,0,inf,0.1,1e6\n1,5,2,0.1,1e6\n")
    with pytest.raises(ScenarioError, match=r"bad.csv:3: columns 'start', 'end'"):
        load({**sc, "devices": {"trace": str(bad)}})
    bad.write_text("client,start,end,seconds_per_example,bandwidth\n0,0,inf,0.1,1e6\n1,0,inf,0.1,1e6\n")
    with pytest.raises(ScenarioError, match=r"no rows for clients \[2\]"):
        load({**sc, "devices": {"trace": str(bad)}})
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps({**sc, "devices": {"trace": str(tmp_path / "missing.csv")}}))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "missing.csv: cannot read the device trace" in result.output


def test_fedsim_trace_writes_a_trace_a_scenario_can_use(tmp_path, torch_one_thread):
    out = tmp_path / "gen.csv"
    result = runner.invoke(app, ["trace", str(out), "--clients", "6", "--horizon", "30", "--seed", "2",
                                 "--mean-online", "10", "--mean-offline", "5"])
    assert result.exit_code == 0, result.output
    speed, intervals = read_trace(out, 6)
    assert len(set(speed[:, 0])) == 6  # heterogeneous speeds
    sc = scenario(tmp_path, _durations(6), {"name": "fedbuff", "buffer_size": 2}, budget=30, rounds=4)
    res = fedsim.run({**sc, "devices": {"trace": str(out)}, "client": {"epochs": 1, "batch_size": 16, "lr": 0.1}})
    assert res.metrics["round"].max() == 4


def test_crashing_clients_and_a_byzantine_attack_compose(tmp_path, torch_one_thread):
    sc = scenario(tmp_path, _durations(6), {"name": "fedbuff", "buffer_size": 2}, budget=60, rounds=10,
                  faults={"crash_probability": 0.3}, byzantine={"name": "gaussian", "fraction": 0.34})
    res = fedsim.run(sc)
    summary = json.loads((res.run_dir / "async.json").read_text())
    assert summary["failed"] > 0
    assert sum(res.metrics["crashed_clients"].dropna().map(len)) == summary["failed"]
    assert any(res.metrics["byzantine_clients"].dropna().map(len))


def test_participation_becomes_availability(tmp_path):
    sc = load({**scenario(tmp_path, _durations(4), {"name": "fedbuff"}, budget=30),
               "devices": {"participation_period": 10},
               "participation": {"name": "cyclic", "period": 3, "probabilities": {"kind": "constant", "value": 0.34}}})
    setup = prepare(sc)
    devices = build_devices(setup)
    from fedsim.world.participation import make_process

    process = make_process(setup)
    for k in range(1, 4):
        mask = process.available(k)
        assert [devices.available(c, (k - 1) * 10 + 5) for c in range(4)] == mask.tolist()


def test_the_concurrency_cap_holds_and_every_end_at_full_load_starts_one_client(tmp_path, torch_one_thread):
    rows = [(c, 0, "inf", d) for c, d in enumerate((5.0, 3.0, 4.0, 2.5, 3.5))]
    sc = scenario(tmp_path, rows, {"name": "fedbuff", "buffer_size": 2}, budget=20, concurrency=2)
    res = fedsim.run({**sc, "output": {**sc["output"], "plot": True}})
    assert (res.run_dir / "accuracy_time.png").stat().st_size > 0
    log = events(res, ("start", "arrive"))
    in_flight, peak = 0, 0
    for t, kind, c, v in log:
        in_flight += 1 if kind == "start" else -1
        peak = max(peak, in_flight)
    assert peak == 2
    # after the first instant, starts happen only at arrivals, one per arrival
    times = sorted({t for t, *_ in log if t > 0})
    for t in times:
        at = [kind for u, kind, *_ in log if u == t]
        assert at.count("start") == at.count("arrive")
