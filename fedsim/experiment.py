"""Run a scenario on its runtime: ``inprocess`` and ``ray`` launch the ServerApp built by
:func:`fedsim.apps.server.execute` here; ``deployment`` submits it to a SuperLink."""

from __future__ import annotations

from pathlib import Path

from fedsim.apps import client
from fedsim.apps.server import RunResult, execute
from fedsim.runtimes.deployment import submit
from fedsim.runtimes.batched import run_batched
from fedsim.runtimes.inprocess import run_inprocess
from fedsim.runtimes.ray import run_ray
from fedsim.scenario import DeploymentRuntime, Scenario, load

RUNTIMES = {"inprocess": run_inprocess, "ray": run_ray}


def run_scenario(scenario: Scenario, resume_dir: Path | None = None) -> RunResult:
    """Run one validated scenario on its runtime (or continue ``resume_dir`` from its last
    checkpoint); returns metrics, final model, run dir."""
    if isinstance(scenario.runtime, DeploymentRuntime):
        if resume_dir is not None:
            raise ValueError("resuming a deployment run is not supported; resume it on inprocess or ray")
        return submit(scenario)
    runtime = run_batched if getattr(scenario.runtime, "batched", False) else RUNTIMES[scenario.runtime.name]
    return execute(scenario, lambda server_app: runtime(server_app, client.app, scenario),
                   run_dir=resume_dir, resume=resume_dir is not None)


def resume_run(run_dir: str | Path) -> RunResult:
    """Continue a run from its last checkpoint (``fedsim resume RUN_DIR``)."""
    run_dir = Path(run_dir)
    return run_scenario(load(run_dir / "scenario.yaml"), resume_dir=run_dir)
