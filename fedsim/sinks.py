"""Optional metric sinks beside the run directory's JSONL/CSV: TensorBoard and MLflow.

Both receive every numeric value of every round row (step = round); MLflow also gets the
resolved scenario as flattened parameters. Enabled from the scenario's ``output`` section.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol


class Sink(Protocol):
    def log(self, row: dict) -> None: ...

    def close(self) -> None: ...


def _scalars(row: dict) -> dict[str, float]:
    out = {}
    for key, value in row.items():
        if key == "round" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


def _flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = str(value)
    return out


class TensorBoardSink:
    """Scalars under ``<run_dir>/tensorboard`` (``tensorboard --logdir runs``)."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, row: dict) -> None:
        for key, value in _scalars(row).items():
            self.writer.add_scalar(key, value, global_step=row["round"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MlflowSink:
    """One MLflow run per fedsim run, in a local tracking store (an SQLite file by default)."""

    def __init__(self, scenario_dict: dict, run_dir: Path, tracking_uri: str, experiment: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(exp_id, run_name=run_dir.name, tags={"fedsim.run_dir": str(run_dir)}).info.run_id
        for key, value in _flatten(scenario_dict).items():
            self.client.log_param(self.run_id, key, value[:500])

    def log(self, row: dict) -> None:
        for key, value in _scalars(row).items():
            self.client.log_metric(self.run_id, key, value, step=row["round"])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def make_sinks(scenario, run_dir: Path) -> list[Sink]:
    out = scenario.output
    sinks: list[Sink] = []
    if out.tensorboard:
        sinks.append(TensorBoardSink(run_dir))
    if out.mlflow:
        uri = out.mlflow_tracking_uri or f"sqlite:///{(Path(out.dir) / 'mlflow.db').resolve()}"
        sinks.append(MlflowSink(scenario.to_dict(), run_dir, uri, scenario.name))
    return sinks
