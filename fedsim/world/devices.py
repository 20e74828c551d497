"""Heterogeneous devices on the virtual clock: compute speed, bandwidth and availability.

Two optional scenario sections live here (read by the event-driven loop,
``fedsim.apps.asynchronous``):

- ``asynchronous:`` (``AsynchronousParams``): run the strategy as a discrete-event
  simulation on the virtual clock: the ``time_budget`` in virtual seconds, at most
  ``concurrency`` clients training at once, and when to evaluate.
- ``devices:`` (``DeviceParams``): where each client's speed and availability come from.

**Speed.** Client c's compute time per training example, its link bandwidth and latency
are those of the ``network:`` section's ``NetworkModel`` (log-normal spread
``heterogeneity``, drawn from (seed, "network")), or the trace's columns. One task of
client c — download the model, train ``client:`` local work, upload — lasts
``NetworkModel.star_round`` for that one client:
``bytes/bw_c + lat_c/2 + examples·c_c + bytes/bw_c + lat_c/2``
(FedScale's completion time, ``client_metadata.get_completion_time``: compute plus
up- and download over the device's bandwidth). The server's link is not congested.

**Availability** is a pure function of time (FedScale's stateful ``is_active`` is a
known pitfall): each client has sorted, disjoint intervals [start, end) during which it
is online, given by

- the trace file (``devices.trace``), or
- the scenario's ``participation:`` process: participation round k covers the virtual
  interval [(k−1)·P, k·P) with P = ``devices.participation_period``, and client n is
  online there iff I_n^k = 1; or
- an alternating on/off renewal process (``devices.availability``): exponential online
  and offline periods of the given means, the first state drawn from the stationary
  probability mean_online / (mean_online + mean_offline), from (seed, "availability", c);
- otherwise every client is always online.

A client that goes offline before its task ends loses that work (the event loop never
runs it).

**Trace CSV** (one row per availability interval, header required)::

    client,start,end,seconds_per_example,bandwidth[,latency]
    0,0,3600,0.004,1250000,0.05
    0,5400,inf,0.004,1250000,0.05

``client`` is a partition id in [0, num_clients); ``start < end`` in virtual seconds
(``end`` may be ``inf``); the device columns are the same on every row of a client;
``latency`` defaults to 0. Every client needs at least one row. ``write_trace`` (and
``fedsim trace``) writes a synthetic trace in this format from the distributions above.
"""

from __future__ import annotations

import bisect
import csv
import math
from pathlib import Path

import numpy as np
from pydantic import Field

from fedsim import registry
from fedsim.registry import Params
from fedsim.training import seed_sequence
from fedsim.world.network import NetworkModel, NetworkParams, local_work

TRACE_COLUMNS = ("client", "start", "end", "seconds_per_example", "bandwidth")


class TraceError(ValueError):
    """A device trace that cannot be read: the message names the file, row and column."""


class Availability(Params):
    """Alternating online/offline periods, exponential with these means (virtual seconds)."""

    mean_online: float = Field(gt=0, description="mean length of an online period (s)")
    mean_offline: float = Field(gt=0, description="mean length of an offline period (s)")


class DeviceParams(Params):
    trace: str | None = Field(None, description="CSV device and availability trace (see fedsim.world.devices)")
    availability: Availability | None = Field(None, description="synthetic on/off availability (no trace)")
    participation_period: float = Field(
        60.0, gt=0, description="virtual seconds one participation round lasts, when `participation:` is given"
    )


class AsynchronousParams(Params):
    time_budget: float = Field(gt=0, description="virtual seconds the run lasts (it also stops after `rounds` updates)")
    concurrency: int = Field(10, ge=1, description="at most this many clients train at once (asynchronous strategies)")
    eval_interval: float | None = Field(
        None, gt=0, description="evaluate the model in force at every multiple of this many virtual seconds "
        "(in the row of the update that made it; null: every evaluation.eval_every server updates)"
    )


# ----------------------------------------------------------------------- availability


def renewal_intervals(availability: Availability, horizon: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Online intervals of an alternating exponential on/off process, up to past ``horizon``."""
    on, off = availability.mean_online, availability.mean_offline
    online = rng.random() < on / (on + off)
    t, out = 0.0, []
    while t < horizon:
        length = rng.exponential(on if online else off)
        if online:
            out.append((t, t + length))
        t += length
        online = not online
    return out


def synthetic_intervals(availability: Availability | None, horizon: float, seed: int,
                        num_clients: int) -> list[list[tuple[float, float]]]:
    """Every client's renewal-process intervals, from (seed, "availability", client); always
    online without ``availability``."""
    if availability is None:
        return [[(0.0, math.inf)] for _ in range(num_clients)]
    return [renewal_intervals(availability, horizon, np.random.default_rng(seed_sequence(seed, "availability", c)))
            for c in range(num_clients)]


def mask_intervals(masks: np.ndarray, period: float) -> list[list[tuple[float, float]]]:
    """Per client, the online intervals of per-round availability masks (rounds × clients):
    round k covers [(k−1)·period, k·period); consecutive online rounds merge."""
    out: list[list[tuple[float, float]]] = [[] for _ in range(masks.shape[1])]
    for c in range(masks.shape[1]):
        for k, up in enumerate(masks[:, c]):
            if not up:
                continue
            start, end = k * period, (k + 1) * period
            if out[c] and out[c][-1][1] == start:
                out[c][-1] = (out[c][-1][0], end)
            else:
                out[c].append((start, end))
    return out


class Devices:
    """Per-client speed (a ``NetworkModel``) and online intervals; all queries are pure."""

    def __init__(self, network: NetworkModel, intervals: list[list[tuple[float, float]]]):
        self.network = network
        self.intervals = [sorted(iv) for iv in intervals]
        self._starts = [[s for s, _ in iv] for iv in self.intervals]

    def _index(self, client: int, t: float) -> int:
        """Index of the last interval starting at or before t (−1 if none)."""
        return bisect.bisect_right(self._starts[client], t) - 1

    def available(self, client: int, t: float) -> bool:
        i = self._index(client, t)
        return i >= 0 and t < self.intervals[client][i][1]

    def online_until(self, client: int, t: float) -> float:
        """When a client online at t goes offline."""
        return self.intervals[client][self._index(client, t)][1]

    def next_online(self, client: int, t: float) -> float:
        """The first time ≥ t the client is online (inf if never again)."""
        if self.available(client, t):
            return t
        i = self._index(client, t) + 1
        return self.intervals[client][i][0] if i < len(self.intervals[client]) else math.inf

    def task_seconds(self, client: int, examples: int, model_bytes: int) -> float:
        """Download, local training on ``examples`` examples, upload (``star_round`` of one client)."""
        return self.network.star_round([client], [model_bytes], [model_bytes], [examples])

    def online_fraction(self, client: int, horizon: float) -> float:
        """Fraction of [0, horizon) the client is online."""
        online = sum(max(0.0, min(e, horizon) - s) for s, e in self.intervals[client] if s < horizon)
        return online / horizon


def task_work(setup) -> list[int]:
    """Training examples one task of each client processes (``client:`` epochs or steps)."""
    return [local_work(setup.scenario.client, size) for size in setup.partition_sizes]


# ----------------------------------------------------------------------- trace files


def read_trace(path: str | Path, num_clients: int) -> tuple[np.ndarray, list[list[tuple[float, float]]]]:
    """(per-client [seconds_per_example, bandwidth, latency], per-client online intervals)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TraceError(f"{path}: cannot read the device trace ({exc.strerror})") from None
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in TRACE_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise TraceError(f"{path}: missing columns {', '.join(missing)} (header: {','.join(TRACE_COLUMNS)}[,latency])")
    speed: dict[int, tuple[float, float, float]] = {}
    intervals: list[list[tuple[float, float]]] = [[] for _ in range(num_clients)]
    for line, row in enumerate(reader, start=2):
        def number(key: str, default: str | None = None) -> float:
            raw = row.get(key) or default
            try:
                return float(raw)
            except (TypeError, ValueError):
                raise TraceError(f"{path}:{line}: column '{key}': expected a number, found {raw!r}") from None

        client = number("client")
        if not client.is_integer() or not 0 <= client < num_clients:
            raise TraceError(f"{path}:{line}: column 'client': expected a partition id in [0, {num_clients}), found {row['client']!r}")
        c = int(client)
        start, end = number("start"), number("end")
        if not 0 <= start < end:
            raise TraceError(f"{path}:{line}: columns 'start', 'end': expected 0 <= start < end, found {start:g}, {end:g}")
        device = (number("seconds_per_example"), number("bandwidth"), number("latency", "0"))
        if not (device[0] > 0 and device[1] > 0 and device[2] >= 0 and math.isfinite(sum(device))):
            raise TraceError(f"{path}:{line}: expected seconds_per_example > 0, bandwidth > 0, latency >= 0, found {device}")
        if speed.setdefault(c, device) != device:
            raise TraceError(f"{path}:{line}: client {c}'s device columns differ from its earlier rows")
        intervals[c].append((start, end))
    absent = [c for c in range(num_clients) if c not in speed]
    if absent:
        raise TraceError(f"{path}: no rows for clients {absent[:10]}{' ...' if len(absent) > 10 else ''}")
    for c, iv in enumerate(intervals):
        iv.sort()
        for (_, e0), (s1, _) in zip(iv, iv[1:]):
            if s1 < e0:
                raise TraceError(f"{path}: client {c}'s intervals overlap at {s1:g}")
    return np.array([speed[c] for c in range(num_clients)]), intervals


def write_trace(path: str | Path, devices: Devices) -> Path:
    """Write ``devices`` as a trace CSV (``read_trace`` reads back the same devices)."""
    path = Path(path)
    net = devices.network
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*TRACE_COLUMNS, "latency"])
        for c, iv in enumerate(devices.intervals):
            for start, end in iv:
                writer.writerow([c, repr(float(start)), repr(float(end)), repr(float(net.seconds_per_example[c])),
                                 repr(float(net.bandwidth[c])), repr(float(net.node_latency[c]))])
    return path


def synthetic_trace(path: str | Path, num_clients: int, seed: int, horizon: float, network: NetworkParams,
                    availability: Availability | None) -> Path:
    """A synthetic trace: log-normal device speeds (``network``) and on/off availability."""
    net = NetworkModel(network, num_clients, seed)
    return write_trace(path, Devices(net, synthetic_intervals(availability, horizon, seed, num_clients)))


# ----------------------------------------------------------------------- validation


def _error(loc: tuple, msg: str, found) -> dict:
    return {"loc": loc, "type": "value_error", "msg": msg, "input": found}


def asynchronous_errors(scenario, data: dict) -> list[dict]:
    """What the event-driven loop cannot run, with the reason (scenario validation)."""
    try:
        event_driven = registry.get("strategy", scenario.strategy.name).extras.get("event_driven", False)
    except KeyError:
        return []  # reported by the component check
    section = scenario.asynchronous
    if not event_driven:
        if section is not None or scenario.devices is not None:
            msg = (f"strategy '{scenario.strategy.name}' runs in synchronous rounds; the event-driven strategies "
                   f"are {', '.join(event_driven_strategies())}")
            key = "asynchronous" if section is not None else "devices"
            return [_error((key,), msg, data.get(key))]
        return []
    if section is None:
        msg = f"strategy '{scenario.strategy.name}' runs on the virtual clock: give asynchronous.time_budget"
        return [_error(("asynchronous",), msg, None)]
    refused = {
        ("runtime", "name"): (scenario.runtime.name != "inprocess",
                              "the event-driven loop sends one client at a time at its virtual finish time; it runs "
                              "on the inprocess runtime only"),
        ("defense",): (scenario.defense is not None,
                       "defenses account privacy per synchronous round of a sampled cohort; no accountant for "
                       "asynchronous arrivals is implemented"),
        ("eavesdropper",): (scenario.eavesdropper is not None, "the eavesdropper attacks a round's replies"),
        ("audit",): (scenario.audit is not None, "the canary audit inserts canaries per synchronous round"),
        ("evaluation", "federated"): (scenario.evaluation.federated,
                                      "federated evaluation asks every client per round; evaluate the global model"),
        ("output", "checkpoint_every"): (scenario.output.checkpoint_every > 0,
                                         "checkpoints do not hold the event queue and in-flight tasks"),
    }
    errors = [_error(loc, msg, data.get(loc[0])) for loc, (bad, msg) in refused.items() if bad]
    faults = scenario.faults
    if faults is not None and (faults.straggler_probability or faults.straggler_delay or faults.deadline):
        msg = ("stragglers and deadlines come from the device model and the strategy on the virtual clock; "
               "only faults.crash_probability applies")
        errors.append(_error(("faults",), msg, data.get("faults")))
    if scenario.byzantine is not None:
        try:
            omniscient = registry.get("byzantine", scenario.byzantine.name).extras.get("omniscient")
        except KeyError:
            omniscient = False
        if omniscient:
            msg = "an omniscient attack needs the round's honest uploads; the server receives one update at a time"
            errors.append(_error(("byzantine", "name"), msg, scenario.byzantine.name))
    devices = scenario.devices
    if devices is not None and devices.trace is not None:
        if devices.availability is not None or scenario.participation is not None:
            msg = "the trace gives availability; drop devices.availability and participation"
            errors.append(_error(("devices", "trace"), msg, devices.trace))
        else:
            try:
                read_trace(devices.trace, scenario.num_clients)
            except TraceError as exc:
                errors.append(_error(("devices", "trace"), str(exc), devices.trace))
    elif devices is not None and devices.availability is not None and scenario.participation is not None:
        msg = "give one availability source: devices.availability or participation"
        errors.append(_error(("devices", "availability"), msg, data.get("devices")))
    return errors


def event_driven_strategies() -> list[str]:
    return [e.name for e in registry.entries()["strategy"] if e.extras.get("event_driven")]
