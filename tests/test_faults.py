"""Fault injection: crashing clients are recorded and the round goes on; stragglers miss deadlines."""

import fedsim


def test_crashing_clients_are_recorded_and_the_run_continues(tiny):
    res = fedsim.run(tiny, rounds=6, faults={"crash_probability": 0.4})
    m = res.metrics
    assert (m["clients_replied"] + m["failed_clients"].map(len) == m["clients_sampled"]).all()
    assert m["failed_clients"].map(len).sum() > 0
    assert (m["failed_clients"] == m["crashed_clients"]).all()  # every failure is an injected crash
    assert m["test_acc"].notna().all()
    again = fedsim.run(tiny, rounds=6, faults={"crash_probability": 0.4})
    assert list(again.metrics["crashed_clients"]) == list(m["crashed_clients"])  # seeded


def test_stragglers_past_the_deadline_are_dropped(tiny):
    res = fedsim.run(tiny, rounds=3, faults={"straggler_probability": 0.5, "straggler_delay": 0.05, "deadline": 0.01})
    m = res.metrics
    dropped = m["stragglers_dropped"].map(len)
    assert dropped.sum() > 0
    assert (m["clients_replied"] == m["clients_sampled"] - dropped).all()
    assert (m["failed_clients"].map(len) == 0).all()
    slow = fedsim.run(tiny, rounds=3, faults={"straggler_probability": 1.0, "straggler_delay": 0.05})
    assert (slow.metrics["seconds"] >= 3 * 0.05).all()  # 3 sampled clients each sleep
