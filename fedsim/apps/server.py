"""The ServerApp of a federated run: the strategy drives the world's grid round by round.

The ServerApp's ``main`` sets the fleet up, then drives the strategy through Flower's
Message-API calls (``configure_train`` → ``send_and_receive`` → ``aggregate_train``, and the
same for federated evaluation), evaluating the global model on the held-out test set every
``eval_every`` rounds and recording one row per round. ``execute`` builds that app and hands
it to a runtime's launcher; every runtime takes this path.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from torch import nn

from fedsim import checkpoint, manifest, registry
from fedsim.apps.asynchronous import EventLoop, EventStrategy
from fedsim.apps.decentralized import DecentralizedLoop, DecentralizedStrategy
from fedsim.apps.setup import ServerSetup, prepare
from fedsim.recorder import Diverged, Recorder
from fedsim.records import to_record, to_state_dict
from fedsim.scenario import DeploymentRuntime, Scenario
from fedsim.state import Checkpointable
from fedsim.training import evaluate
from fedsim.world.audit import final_audit
from fedsim.world.base import Fleet, GridWrapper
from fedsim.world.participation import plot_weights


@dataclass
class RunResult:
    scenario: Scenario
    metrics: pd.DataFrame
    model: nn.Module | None  # None when a deployment's run directory is on another host
    run_dir: Path

    @property
    def final_accuracy(self) -> float:
        return float(self.metrics["test_acc"].dropna().iloc[-1])


class FederatedLoop:
    """The server's round loop: a strategy driving the world's grid."""

    def __init__(self, setup: ServerSetup, strategy, grid: GridWrapper, fleet: Fleet, recorder: Recorder):
        self.setup = setup
        self.scenario = setup.scenario
        self.strategy = strategy
        self.grid = grid  # the world as the strategy sees it
        self.fleet = fleet  # the world's innermost layer (the clients themselves)
        self.recorder = recorder
        self.model = setup.model
        self.initial = copy.deepcopy(setup.model) if setup.scenario.audit is not None else None  # θ_0
        self.tester, self.x_test, self.y_test = setup.test_kit()

    def run(self, start_round: int = 1) -> ArrayRecord:
        arrays = to_record(self.model.state_dict())
        every = self.scenario.output.checkpoint_every
        for rnd in range(start_round, self.scenario.rounds + 1):
            arrays = self.round(rnd, arrays)
            if every and (rnd % every == 0 or rnd == self.scenario.rounds):
                self.checkpoint(rnd, arrays)
        self.model.load_state_dict(to_state_dict(arrays))
        # end-of-run records of the world and the strategy (ground truth, final estimates)
        strategy_artifacts = getattr(self.strategy, "artifacts", dict)
        for name, record in {**self.grid.artifacts(), **strategy_artifacts()}.items():
            self.recorder.write_json(name, record)
        if self.initial is not None:
            self.recorder.write_json("audit", final_audit(self.scenario, self.initial, self.model))
        return arrays

    def checkpoint(self, rnd: int, arrays: ArrayRecord) -> None:
        """Everything a resumed run needs to continue exactly (fedsim.checkpoint)."""
        strategy_state = self.strategy.state_dict() if isinstance(self.strategy, Checkpointable) else {}
        checkpoint.save(self.recorder.dir, {
            "round": rnd,
            "global": dict(to_state_dict(arrays)),
            "strategy": strategy_state,
            "world": self.grid.world_state(),
            "clients": {pid: checkpoint.record_to_tree(rec) for pid, rec in self.fleet.client_states().items()},
        })

    def restore(self, state: dict) -> int:
        """Put a checkpoint's state back in place; returns the round to continue from."""
        self.model.load_state_dict(state["global"])
        if isinstance(self.strategy, Checkpointable):
            self.strategy.load_state_dict(state["strategy"])
        self.grid.load_world_state(state["world"])
        self.fleet.restore_client_states({pid: checkpoint.tree_to_record(t) for pid, t in state["clients"].items()})
        return state["round"] + 1

    def _check_divergence(self, row: dict) -> None:
        bad = {k: row.get(k) for k in ("train_loss", "test_loss")}
        bad = {k: v for k, v in bad.items() if v is not None and not (math.isfinite(v) and v <= self.scenario.evaluation.max_loss)}
        if bad:
            what = ", ".join(f"{k} = {v}" for k, v in bad.items())
            raise Diverged(f"round {row['round']}: the run diverged ({what}; evaluation.max_loss = "
                           f"{self.scenario.evaluation.max_loss:g}); metrics up to this round are in {self.recorder.dir}")

    def round(self, rnd: int, arrays: ArrayRecord) -> ArrayRecord:
        start = time.perf_counter()
        sc = self.scenario
        self.grid.start_round(rnd)
        messages = list(self.strategy.configure_train(rnd, arrays, ConfigRecord(), self.grid))
        replies = self.grid.send_and_receive(messages)
        agg_start = time.perf_counter()
        new_arrays, train_metrics = self.strategy.aggregate_train(rnd, replies)
        agg_seconds = time.perf_counter() - agg_start
        if new_arrays is not None:
            arrays = new_arrays
        failed = [self.grid.partition_of(r) for r in replies if r.has_error()]
        row = {
            "round": rnd,
            "train_loss": _metric(train_metrics, "train_loss"),
            "test_loss": None,
            "test_acc": None,
            "clients_sampled": len(messages),
            "clients_replied": len(replies) - len(failed),
            "failed_clients": failed,
        }
        # whatever else the strategy reports (weight spreads, memory, ...)
        row.update({k: v for k, v in (train_metrics or {}).items() if k not in row and k not in ("num-examples", "partition-id")})
        if sc.evaluation.federated:
            eval_msgs = list(self.strategy.configure_evaluate(rnd, arrays, ConfigRecord(), self.grid))
            fed = self.strategy.aggregate_evaluate(rnd, self.grid.send_and_receive(eval_msgs))
            row["fed_loss"], row["fed_acc"] = _metric(fed, "eval_loss"), _metric(fed, "eval_acc")
        # personalised strategies (HyperFL) have no global predictor: fed_acc is their metric
        personalized = getattr(self.strategy, "personalized", False)
        if (rnd % sc.evaluation.eval_every == 0 or rnd == sc.rounds) and not personalized:
            self.tester.load_state_dict(to_state_dict(arrays))
            row["test_loss"], row["test_acc"] = evaluate(
                self.tester, self.x_test, self.y_test, sc.evaluation.batch_size
            )
        row.update(self.grid.take_metrics())
        row["aggregate_seconds"] = agg_seconds
        row["seconds"] = time.perf_counter() - start
        self.recorder.log(row)
        self._check_divergence(row)
        return arrays


def _metric(record, key: str) -> float | None:
    if record is None or key not in record:
        return None
    return float(record[key])


def build_world(setup: ServerSetup, fleet: Fleet, run_dir: Path, exclude: tuple[str, ...] = ()) -> GridWrapper:
    """Stack the registered world layers on the fleet; the strategy talks to the top one.

    Layers are ``world_layer`` components, stacked in their declared ``order`` (lowest
    innermost, next to the fleet). Each factory ``(setup, grid, run_dir)`` wraps ``grid``
    when its scenario section is present and returns it unchanged otherwise. Built in,
    strategy side first: participation (60) → faults (50) → byzantine (40) → eavesdropper
    (30) → canary audit (20) → virtual clock (10, it times what actually crossed the wire).
    Layers named in ``exclude`` are left out (the event-driven loop keeps its own clock and
    turns participation into availability).
    """
    grid: GridWrapper = fleet
    for entry in sorted(registry.entries()["world_layer"], key=lambda e: e.extras["order"]):
        if entry.name not in exclude:
            grid = entry.factory(setup, grid, run_dir)
    return grid


def make_fleet(grid: Grid, scenario: Scenario) -> Fleet:
    """The innermost world layer over a runtime's grid; real networks get timeouts."""
    rt = scenario.runtime
    if isinstance(rt, DeploymentRuntime):
        return Fleet(grid, scenario.num_clients, timeout=rt.round_timeout, poll_interval=rt.poll_interval)
    return Fleet(grid, scenario.num_clients)


def make_server_app(setup: ServerSetup, recorder: Recorder, resume: dict | None = None) -> ServerApp:
    """A ServerApp closed over this run's setup and recorder; ``resume`` is a checkpoint to
    continue from."""
    entry = registry.get("strategy", setup.scenario.strategy.name)
    strategy = entry.factory(setup.scenario.strategy.params, setup)
    if setup.scenario.defense is not None:  # a server-side wrapper around the strategy
        defense = setup.scenario.defense
        strategy = registry.get("defense", defense.name).factory(defense.params, strategy, setup)
    scenario_json = json.dumps(setup.scenario.to_dict(), sort_keys=True)
    rt = setup.scenario.runtime
    connect_s = rt.connect_timeout if isinstance(rt, DeploymentRuntime) else 300.0
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        fleet = make_fleet(grid, setup.scenario)
        fleet.connect(scenario_json, setup.partitions, wait_s=connect_s)
        if isinstance(strategy, DecentralizedStrategy):  # the ServerApp plays the network
            if resume:
                raise ValueError("resuming decentralized runs is not supported (no checkpoint of node models)")
            DecentralizedLoop(setup, strategy, fleet, recorder).run()
        elif isinstance(strategy, EventStrategy):  # a discrete-event simulation on the virtual clock
            grid = build_world(setup, fleet, recorder.dir, exclude=EventLoop.replaces)
            EventLoop(setup, strategy, grid, fleet, recorder).run()
        else:
            loop = FederatedLoop(setup, strategy, build_world(setup, fleet, recorder.dir), fleet, recorder)
            loop.run(loop.restore(resume) if resume else 1)

    return app


def execute(scenario: Scenario, launch: Callable[[ServerApp], None], run_dir: Path | None = None,
            resume: bool = False) -> RunResult:
    """Build the run's ServerApp, hand it to ``launch`` (which runs it on a grid), record.

    Every runtime takes this path: ``inprocess`` and ``ray`` launch the app from here; on
    a deployment, fedsim's Flower ServerApp (``fedsim.deploy``) calls this inside the
    SuperLink's ServerApp process with the grid Flower gives it. With ``resume``, the run
    in ``run_dir`` continues from its last checkpoint. A run that diverges raises
    ``Diverged`` after its files are written.
    """
    logging.getLogger("flwr").setLevel(logging.WARNING)
    setup = prepare(scenario)
    state = checkpoint.load(run_dir) if resume else None
    recorder = Recorder(scenario, run_dir, resume_round=state["round"] if state else 0)
    manifest.start(recorder.dir, scenario)
    try:
        launch(make_server_app(setup, recorder, state))
    except Diverged as exc:
        recorder.finish(None)
        manifest.end(recorder.dir, "diverged", str(exc))
        raise
    except BaseException as exc:
        manifest.end(recorder.dir, "failed", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        recorder.close()
    metrics = recorder.finish(setup.model)
    manifest.end(recorder.dir, "completed")
    if scenario.output.plot and scenario.participation is not None:
        plot_weights(recorder.dir)  # estimated weights vs 1/p_n, when a strategy wrote them
    return RunResult(scenario, metrics, setup.model, recorder.dir)
