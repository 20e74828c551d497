"""The event-driven server loop: asynchronous (and synchronous) FL on the virtual clock.

A discrete-event simulation (``asynchronous:`` section). The loop owns the virtual clock,
the server model x and its version t (the number of server model updates so far); the
strategy (an ``EventStrategy``) decides how many clients to start, and what each arrival
or deadline does to x. Events sit in a heap keyed ``(time, order, sequence)``:

1. *starts*: after the events of a time instant, while the strategy wants more clients
   (``wanted``), idle clients online at that instant are picked uniformly at random
   (seeded by (seed, "dispatch", n)); each receives a snapshot of x and its version τ.
   Its task ends ``Devices.task_seconds`` later, or is *lost* when the device goes
   offline first (then it never runs: the work is lost). When nobody idle is online, the
   loop wakes at the next time one comes online.
2. *ends* (order 0) are processed before *deadlines* (order 1) at the same instant, and
   every start at that instant comes after both, so a client starting at T receives the
   updates that arrived at T (FLSim's ``TRAINING_FINISHED < WAITING_FOR_START``).
   At its end a task's train instruction (x_τ, server-round = the task's number) goes
   through the world's grid to the real fedsim ClientApp, which runs the strategy's
   client handler and defence mods; the reply goes to the strategy with its staleness
   σ = t − τ (server versions since the download, measured at arrival).
3. The run stops after ``rounds`` server updates, at ``time_budget`` virtual seconds, or
   when no event can happen any more.

Every server update writes a row: ``virtual_time``, the staleness of the updates it used,
counts of arrivals, lost and cancelled tasks, busy clients and bytes. A row is written
when the next update replaces its model, so that with ``eval_interval`` the model in
force at every multiple of it is the one evaluated (in its own row); without, every
``eval_every`` updates. The last model is always evaluated. ``async.json`` holds the staleness histogram, per-client contributions and
utilisation; ``events.json`` the event log (time, kind, client, version); ``accuracy_time.png`` the
test accuracy against virtual time.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from fedsim.recorder import Diverged, plot_accuracy_time
from fedsim.records import metric, to_record, to_state_dict
from fedsim.training import evaluate, seed_sequence
from fedsim.world.devices import (
    DeviceParams,
    Devices,
    mask_intervals,
    read_trace,
    synthetic_intervals,
    task_work,
)
from fedsim.world.network import NetworkModel, NetworkParams
from fedsim.world.participation import make_process

END, DEADLINE, WAKE = 0, 1, 2  # event order at equal times: ends, then deadlines, then starts


@dataclass
class Task:
    """One client's local training: started at ``start`` from model version ``version``."""

    index: int  # 1, 2, ...: the task's number (its "server-round" for seeded client RNG)
    client: int
    version: int
    sent: ArrayRecord
    start: float
    end: float
    lost: bool  # the device goes offline at ``end``, before finishing


@dataclass
class Arrival:
    """A finished task's reply as the server sees it."""

    task: Task
    reply: RecordDict
    staleness: int  # σ = t − τ


@dataclass
class Step:
    """What the strategy did at an event: a new server model (or none), whether the tasks
    still in flight are cancelled (their work discarded), the updates it used and metrics."""

    model: ArrayRecord | None = None
    cancel: bool = False
    used: list[Arrival] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


class EventStrategy(ABC):
    """A server strategy on the virtual clock (registered with ``event_driven=True``)."""

    def config(self) -> dict:
        """Extra config entries of every train instruction (e.g. FedAsync's proximal μ)."""
        return {}

    @abstractmethod
    def wanted(self, now: float, busy: int) -> int:
        """How many more clients to start now, with ``busy`` in flight."""

    def started(self, task: Task) -> None:
        """A task was started (synchronous strategies count their cohort)."""

    @abstractmethod
    def arrive(self, x: ArrayRecord, arrival: Arrival, now: float) -> Step:
        """A reply arrived at ``now``; x is the current server model."""

    def failed(self, task: Task, now: float) -> Step:
        """A task was lost (device offline) or its client raised."""
        return Step()

    def deadline(self) -> float | None:
        """The next virtual time the strategy wants to be woken at (None: none)."""
        return None

    def on_deadline(self, x: ArrayRecord, now: float) -> Step:
        return Step()


def build_devices(setup) -> Devices:
    """The devices of a scenario (``devices:``, ``network:`` and ``participation:`` sections)."""
    sc = setup.scenario
    n = sc.num_clients
    network = NetworkModel(sc.network or NetworkParams(), n, sc.seed)
    params = sc.devices or DeviceParams()
    horizon = sc.asynchronous.time_budget
    if params.trace is not None:
        speed, intervals = read_trace(params.trace, n)
        network.seconds_per_example = speed[:, 0]
        network.bandwidth = speed[:, 1]
        network.node_latency = speed[:, 2]
        return Devices(network, intervals)
    if sc.participation is not None:
        process = make_process(setup)
        rounds = math.floor(horizon / params.participation_period) + 1  # past the horizon
        masks = np.stack([process.available(k) for k in range(1, rounds + 1)])
        return Devices(network, mask_intervals(masks, params.participation_period))
    return Devices(network, synthetic_intervals(params.availability, horizon, sc.seed, n))


class EventLoop:
    """Runs an ``EventStrategy`` against the world's grid on the virtual clock."""

    # world layers the loop replaces: its own clock; participation becomes availability
    replaces = ("clock", "participation")

    def __init__(self, setup, strategy: EventStrategy, grid, fleet, recorder):
        self.setup = setup
        self.scenario = sc = setup.scenario
        self.params = sc.asynchronous
        self.strategy = strategy
        self.grid = grid
        self.fleet = fleet
        self.recorder = recorder
        self.devices = build_devices(setup)
        self.work = task_work(setup)
        self.model = setup.model
        self.x_test = torch.from_numpy(setup.dataset.x_test)
        self.y_test = torch.from_numpy(setup.dataset.y_test)
        self.now = 0.0
        self.version = 0
        self.heap: list[tuple] = []
        self.seq = itertools.count()
        self.tasks = itertools.count(1)
        self.dispatches = itertools.count()
        self.busy: dict[int, Task] = {}
        self.wakes: set[float] = set()
        self.timer: float | None = None
        self.events: list[tuple] = []  # (time, kind, client, version)
        self.staleness: Counter = Counter()
        self.contributions = np.zeros(sc.num_clients, dtype=np.int64)
        self.busy_seconds = np.zeros(sc.num_clients)
        self.useful_seconds = np.zeros(sc.num_clients)
        self.counts = Counter()  # arrivals, lost, failed, cancelled since the start
        self.carry: dict = {}  # metrics of abandoned rounds, for the next update's row
        self.pending: dict | None = None  # the last server update's row, logged at the next one
        self.next_eval = 0.0
        self.wall = time.perf_counter()

    # ------------------------------------------------------------------ the loop

    def run(self) -> ArrayRecord:
        x = to_record(self.model.state_dict())
        self.model_bytes = x.count_bytes()
        self._evaluate_row({"round": 0, "virtual_time": 0.0}, x, force=True)
        self._dispatch(x)
        budget = self.params.time_budget
        while self.heap and self.version < self.scenario.rounds:
            if self.heap[0][0] > budget:
                break
            self.now = self.heap[0][0]
            while self.heap and self.heap[0][0] == self.now and self.version < self.scenario.rounds:
                _, order, _, payload = heapq.heappop(self.heap)
                x = self._handle(order, payload, x)
            self._dispatch(x)
        self._flush(x, final=True)
        self.model.load_state_dict(to_state_dict(x))
        self.recorder.write_json("async", self.summary())
        self.recorder.write_json("events", [list(e) for e in self.events])
        for name, record in self.grid.artifacts().items():
            self.recorder.write_json(name, record)
        evaluated = [r for r in self.recorder.rows if r["test_acc"] is not None]
        if self.scenario.output.plot and evaluated:
            plot_accuracy_time([(None, [r["virtual_time"] for r in evaluated], [r["test_acc"] for r in evaluated], None)],
                               self.recorder.dir / "accuracy_time.png", f"{self.scenario.name}: accuracy vs virtual time")
        return x

    def _handle(self, order: int, payload, x: ArrayRecord) -> ArrayRecord:
        if order == WAKE:
            self.wakes.discard(self.now)
            return x
        if order == DEADLINE:
            if payload != self.strategy.deadline():
                return x  # a deadline the strategy has moved on from
            self.timer = None
            self.events.append((self.now, "deadline", -1, self.version))
            return self._apply(self.strategy.on_deadline(x, self.now), x)
        task: Task = payload
        if self.busy.get(task.client) is not task:
            return x  # cancelled
        del self.busy[task.client]
        self.busy_seconds[task.client] += self.now - task.start
        if task.lost:
            self.counts["lost"] += 1
            self.events.append((self.now, "lost", task.client, self.version))
            return self._apply(self.strategy.failed(task, self.now), x)
        reply = self._train(task)
        if reply.has_error():
            self.counts["failed"] += 1
            self.events.append((self.now, "failed", task.client, self.version))
            return self._apply(self.strategy.failed(task, self.now), x)
        self.counts["arrivals"] += 1
        self.events.append((self.now, "arrive", task.client, self.version))
        arrival = Arrival(task, reply.content, self.version - task.version)
        return self._apply(self.strategy.arrive(x, arrival, self.now), x)

    def _train(self, task: Task) -> Message:
        """The task's train instruction through the world's grid to the client."""
        self.grid.start_round(task.index)
        config = ConfigRecord({"server-round": task.index, **self.strategy.config()})
        content = RecordDict({"arrays": task.sent, "config": config})
        msg = Message(content, self.fleet.node[task.client], MessageType.TRAIN)
        (reply,) = self.grid.send_and_receive([msg])
        return reply

    def _apply(self, step: Step, x: ArrayRecord) -> ArrayRecord:
        for arrival in step.used:
            task = arrival.task
            self.staleness[arrival.staleness] += 1
            self.contributions[task.client] += 1
            self.useful_seconds[task.client] += task.end - task.start
        if step.cancel:
            for task in self.busy.values():
                self.counts["cancelled"] += 1
                self.busy_seconds[task.client] += self.now - task.start
                self.events.append((self.now, "cancel", task.client, self.version))
            self.busy.clear()
        if step.model is None:
            if step.used or step.metrics:  # an abandoned round: recorded with the next update's row
                self.carry.update(step.metrics)
            return x
        self._flush(x)
        self.version += 1
        row = {
            "round": self.version,
            "virtual_time": self.now,
            "train_loss": _mean([metric(a.reply, "train_loss") for a in step.used]),
            "staleness": [a.staleness for a in step.used],
            "staleness_mean": _mean([a.staleness for a in step.used]),
            "updates_used": len(step.used),
            "clients_busy": len(self.busy),
            **{k: self.counts[k] for k in ("arrivals", "lost", "failed", "cancelled")},
            **self.carry,
            **step.metrics,
        }
        self.carry = {}
        self.pending = row
        self.events.append((self.now, "update", -1, self.version))
        return step.model

    def _flush(self, x: ArrayRecord, final: bool = False) -> None:
        """Log the pending row (x is the model it describes, in force until now), evaluating
        it when due: a multiple of ``eval_interval`` fell in [its time, now]."""
        if self.pending is None:
            return
        row, self.pending = self.pending, None
        self._evaluate_row(row, x, force=final or self.version >= self.scenario.rounds)

    def _evaluate_row(self, row: dict, x: ArrayRecord, force: bool) -> None:
        ev = self.scenario.evaluation
        interval = self.params.eval_interval
        due = self.now >= self.next_eval if interval else row["round"] % ev.eval_every == 0
        row["test_loss"] = row["test_acc"] = None
        if due or force:
            self.model.load_state_dict(to_state_dict(x))
            row["test_loss"], row["test_acc"] = evaluate(self.model, self.x_test, self.y_test, ev.batch_size)
            if interval:
                self.next_eval = (math.floor(self.now / interval) + 1) * interval
        row.update(self.grid.take_metrics())
        row["utilisation"] = float(self.busy_seconds.sum() / (self.scenario.num_clients * self.now)) if self.now else 0.0
        now = time.perf_counter()
        row["seconds"], self.wall = now - self.wall, now
        self.recorder.log(row)
        if row["test_loss"] is not None and not (math.isfinite(row["test_loss"]) and row["test_loss"] <= ev.max_loss):
            raise Diverged(f"server update {row['round']}: the run diverged (test_loss = {row['test_loss']}); "
                           f"metrics up to it are in {self.recorder.dir}")

    # ------------------------------------------------------------------ starting clients

    def _dispatch(self, x: ArrayRecord) -> None:
        """Start the clients the strategy wants among the idle, online ones; wake later if short."""
        want = self.strategy.wanted(self.now, len(self.busy))
        if want > 0:
            idle = [c for c in range(self.scenario.num_clients) if c not in self.busy]
            online = [c for c in idle if self.devices.available(c, self.now)]
            rng = np.random.default_rng(seed_sequence(self.scenario.seed, "dispatch", next(self.dispatches)))
            chosen = rng.permutation(online)[:want] if online else []
            for c in chosen:
                self._start(int(c), x)
            if want > len(chosen):
                wake = min((self.devices.next_online(c, self.now) for c in idle if c not in self.busy), default=math.inf)
                if math.isfinite(wake) and wake > self.now and wake not in self.wakes:
                    self.wakes.add(wake)
                    heapq.heappush(self.heap, (wake, WAKE, next(self.seq), None))
        deadline = self.strategy.deadline()
        if deadline is not None and deadline != self.timer:
            self.timer = deadline
            heapq.heappush(self.heap, (deadline, DEADLINE, next(self.seq), deadline))

    def _start(self, client: int, x: ArrayRecord) -> None:
        finish = self.now + self.devices.task_seconds(client, self.work[client], self.model_bytes)
        offline = self.devices.online_until(client, self.now)
        task = Task(next(self.tasks), client, self.version, x, self.now, min(finish, offline), lost=offline < finish)
        self.busy[client] = task
        self.strategy.started(task)
        self.events.append((self.now, "start", client, self.version))
        heapq.heappush(self.heap, (task.end, END, next(self.seq), task))

    # ------------------------------------------------------------------ records

    def summary(self) -> dict:
        """End-of-run record: staleness histogram, contributions, utilisation (``async.json``)."""
        horizon = self.now or 1.0
        hist = {int(k): int(v) for k, v in sorted(self.staleness.items())}
        used = sum(hist.values())
        return {
            "virtual_time": self.now,
            "server_updates": self.version,
            "staleness_histogram": hist,
            "staleness_mean": sum(k * v for k, v in hist.items()) / used if used else None,
            "contributions": self.contributions.tolist(),
            "utilisation": (self.busy_seconds / horizon).tolist(),
            "useful_utilisation": (self.useful_seconds / horizon).tolist(),
            "online_fraction": [self.devices.online_fraction(c, horizon) for c in range(self.scenario.num_clients)],
            **{k: self.counts[k] for k in ("arrivals", "lost", "failed", "cancelled")},
        }


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None
