"""The ``deployment`` runtime: a scenario as a Flower run on a SuperLink with real SuperNodes.

``fedsim run FILE runtime.name=deployment runtime.superlink=HOST:PORT`` submits fedsim's
Flower app (``fedsim/flwr_app``: this module's ``app`` as the ServerApp, the generic
``fedsim.apps.client:app`` as the ClientApp) through the SuperLink's Control API, with the
resolved scenario and a run directory as run config. The SuperLink runs the ServerApp,
which takes the same path as every other runtime (``fedsim.apps.server.execute`` with the
grid Flower hands it): it waits for ``num_clients`` SuperNodes, learns which partition
each holds (``--node-config "partition-id=i num-partitions=N"``), sends each its scenario
and example indices, and drives the rounds, writing ``metrics.jsonl`` row by row.

The submitter waits for the run, follows the metrics when the run directory is visible
from here (same host or a shared volume: a relative ``output.dir`` resolves in the
SuperLink's working directory), and reads the results back. A run that fails on the
SuperLink, or a SuperLink that stops answering, ends with ``DeploymentError``; the rounds
recorded until then stay in the run directory.

Flower internals used here (the Control API client, FAB building, protobuf messages) stay
in this module; tests pin them against the installed flwr minor version.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
from pathlib import Path

import httpx
from flwr.app import Context
from flwr.cli.build import build_fab_from_disk
from flwr.cli.typing import SuperLinkConnection
from flwr.cli.utils import init_http_client_from_connection
from flwr.common.serde import fab_to_proto, user_config_to_proto
from flwr.proto.control_pb2 import (
    ListNodesRequest,
    ListRunsRequest,
    RegisterNodeRequest,
    StartRunRequest,
    StopRunRequest,
)
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.fab import Fab
from flwr.supercore.primitives.asymmetric import public_key_to_bytes
from rich.console import Console

from fedsim import atomic, manifest
from fedsim.scenario import DeploymentRuntime, Scenario, from_json

APP_DIR = Path(__file__).parent / "flwr_app"

# Flower's settings for every process fedsim starts or talks to: no telemetry, no update
# check, no `uv sync` of app dependencies (fedsim is installed on every host).
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


class DeploymentError(RuntimeError):
    """A deployment run that could not finish: failed on the SuperLink, or the link was lost."""


# --------------------------------------------------------------------------- the ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """fedsim's ServerApp on a SuperLink: the scenario and run directory come as run config."""
    from fedsim.apps.server import execute

    scenario = from_json(str(context.run_config["scenario"]))
    run_dir = Path(str(context.run_config["run-dir"]))
    execute(scenario, lambda server_app: server_app(grid, context), run_dir)


# --------------------------------------------------------------------------- Control API


def flower_home() -> Path:
    """Flower's state directory for fedsim's processes (``$FLWR_HOME`` when set)."""
    if home := os.environ.get("FLWR_HOME"):
        return Path(home)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fedsim" / "flwr"


def control_client(superlink: str, root_certificates: str | Path | None = None, insecure: bool = False):
    """A Flower Control API client for the SuperLink at ``HOST:PORT`` (TLS unless ``insecure``)."""
    for key, value in FLOWER_ENV.items():
        os.environ.setdefault(key, value)
    os.environ["FLWR_HOME"] = str(flower_home())
    conn = SuperLinkConnection(
        "fedsim",
        address=superlink,
        root_certificates=str(Path(root_certificates).resolve()) if root_certificates else None,
        insecure=insecure,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # Flower's CLI helper announces the connection
        return init_http_client_from_connection(conn)


def register_nodes(client, public_keys: list[Path]) -> list[str]:
    """Register SuperNode public keys (OpenSSH, NIST EC) with a SuperLink that authenticates
    nodes; a key it already knows counts as registered. One line per key says what happened."""
    from cryptography.hazmat.primitives import serialization

    done = []
    for path in public_keys:
        key = serialization.load_ssh_public_key(Path(path).read_bytes())
        try:
            res = client.RegisterNode(RegisterNodeRequest(public_key=public_key_to_bytes(key), name=Path(path).stem))
            done.append(f"{path}: node {res.node_id}")
        except httpx.HTTPStatusError as exc:
            if "already in use" not in exc.response.text:
                raise
            done.append(f"{path}: already registered")
    return done


def online_nodes(client) -> int:
    """How many SuperNodes the SuperLink counts as online."""
    return sum(n.status == "online" for n in client.ListNodes(ListNodesRequest()).nodes_info)


def run_status(client, run_id: int):
    """The run's ``status`` protobuf (fields ``status``, ``sub_status``, ``details``)."""
    return client.ListRuns(ListRunsRequest(run_id=run_id)).run_dict[run_id].status


def start_run(client, run_config: dict[str, str]) -> int:
    """Submit fedsim's Flower app with ``run_config``; returns the Flower run id."""
    fab_bytes = build_fab_from_disk(APP_DIR)
    fab = Fab(hashlib.sha256(fab_bytes).hexdigest(), fab_bytes, {})
    res = client.StartRun(StartRunRequest(fab=fab_to_proto(fab), override_config=user_config_to_proto(run_config)))
    if not res.HasField("run_id"):
        raise DeploymentError("the SuperLink did not start the run")
    return int(res.run_id)


# --------------------------------------------------------------------------- the submitter


def submit(scenario: Scenario, console: Console | None = None):
    """Run ``scenario`` on the SuperLink its runtime names; wait; return its ``RunResult``."""
    import pandas as pd

    from fedsim.apps.server import RunResult
    from fedsim.recorder import new_run_dir, read_metrics, summary_table

    rt = scenario.runtime
    assert isinstance(rt, DeploymentRuntime)
    console = console or Console(stderr=True)
    run_dir = new_run_dir(scenario.output.dir, scenario.name)  # reserves the name when the path is shared
    client = control_client(rt.superlink, rt.root_certificates, rt.insecure)
    try:
        blob = json.dumps(scenario.to_dict(), sort_keys=True)
        try:
            run_id = start_run(client, {"scenario": blob, "run-dir": str(run_dir)})
        except httpx.HTTPError as exc:
            run_dir.rmdir()
            raise DeploymentError(f"cannot submit the run to the SuperLink at {rt.superlink}: {exc}") from None
        if scenario.output.progress:
            console.print(f"Flower run {run_id} on {rt.superlink}; run directory {run_dir}")
        follower = _Follower(scenario, run_dir, console)
        try:
            status = _wait(client, run_id, rt, follower)
        except KeyboardInterrupt:
            with contextlib.suppress(httpx.HTTPError):
                client.StopRun(StopRunRequest(run_id=run_id))
            raise
        finally:
            follower.close()
    finally:
        client.close()
    if status.sub_status != "completed":
        if (manifest.read(run_dir) or {}).get("status") == "running":  # the ServerApp died before recording its end
            manifest.end(run_dir, "failed", f"Flower run {status.sub_status}: {status.details}")
        raise DeploymentError(f"run {run_id} {status.sub_status} on the SuperLink: {status.details}" + follower.kept())
    if not (run_dir / "metrics.jsonl").exists():
        if not any(run_dir.iterdir()):
            run_dir.rmdir()
        console.print(
            f"run {run_id} completed; its run directory {run_dir} is on the SuperLink's host "
            "(relative paths: in the SuperLink's working directory)"
        )
        return RunResult(scenario, pd.DataFrame(), None, run_dir)
    metrics = read_metrics(run_dir)
    if scenario.output.progress:
        console.print(summary_table(metrics, scenario.name))
        console.print(f"run directory: {run_dir}")
    return RunResult(scenario, metrics, _load_model(scenario, run_dir), run_dir)


def _wait(client, run_id: int, rt: DeploymentRuntime, follower: "_Follower"):
    """Poll the run's status until it finishes; a SuperLink that stops answering is an error."""
    while True:
        try:
            status = run_status(client, run_id)
        except httpx.HTTPError as exc:
            follower.update()
            raise DeploymentError(
                f"lost the SuperLink at {rt.superlink} while run {run_id} was running "
                f"({type(exc).__name__}: {exc})" + follower.kept()
            ) from None
        follower.update()
        if status.status == "finished":
            return status
        time.sleep(1.0)


class _Follower:
    """Shows the rounds the ServerApp records, when its run directory is visible from here."""

    def __init__(self, scenario: Scenario, run_dir: Path, console: Console):
        from fedsim.recorder import RoundProgress

        self.path = run_dir / "metrics.jsonl"
        self.run_dir = run_dir
        self.rows: list[dict] = []
        self._offset = 0
        self.progress = RoundProgress(scenario, console) if scenario.output.progress else None

    def update(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        lines = chunk.split(b"\n")
        self._offset += len(chunk) - len(lines[-1])  # keep a partly written last line for later
        for line in lines[:-1]:
            if line.strip():
                self.rows.append(json.loads(line))
                if self.progress is not None:
                    self.progress.log(self.rows)

    def kept(self) -> str:
        """Where the recorded rounds are, for an error message (and the CSV derived from them)."""
        if not self.path.exists():
            return f"; its run directory {self.run_dir} is not visible from here (it is on the SuperLink's host)"
        if not self.rows:
            return f"; no round was recorded in {self.run_dir}"
        from fedsim.recorder import read_metrics

        rows = read_metrics(self.run_dir)
        atomic.write_with(self.run_dir / "metrics.csv", lambda tmp: rows.to_csv(tmp, index=False))
        return f"; rounds 1-{self.rows[-1]['round']} are kept in {self.run_dir}"

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _load_model(scenario: Scenario, run_dir: Path):
    """The final global model the ServerApp saved, or None when the scenario saves none."""
    import torch

    from fedsim.data.datasets import load_dataset
    from fedsim.models import build_model

    path = run_dir / "model.pt"
    if not path.exists():
        return None
    ds = load_dataset(scenario.dataset.name, scenario.dataset.raw_params(), scenario.seed)
    model = build_model(scenario.model.name, scenario.model.raw_params(), ds.input_shape, ds.num_classes)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model
