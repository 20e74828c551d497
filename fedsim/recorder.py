"""Recorder: a run directory with the resolved scenario, per-round metrics, plot and model.

``runs/<scenario>/<timestamp>/``: ``scenario.yaml``, ``metrics.jsonl`` (one row per round,
flushed as it is written, so a crash loses nothing recorded), ``metrics.csv`` (derived
from the JSONL), ``metrics.png`` and ``model.pt`` (a plain state dict that loads with
``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pandas as pd
import torch
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedsim.scenario import Scenario


def new_run_dir(root: str | Path, name: str) -> Path:
    base = Path(root) / name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = base / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a run directory under {base}")


class Recorder:
    """Writes one run's directory: a new one under ``output.dir``, or ``run_dir`` when given
    (a deployment's submitter names it; it may exist, empty)."""

    def __init__(self, scenario: Scenario, run_dir: str | Path | None = None, console: Console | None = None):
        self.scenario = scenario
        if run_dir is None:
            self.dir = new_run_dir(scenario.output.dir, scenario.name)
        else:
            self.dir = Path(run_dir)
            self.dir.mkdir(parents=True, exist_ok=True)
            if (self.dir / "metrics.jsonl").exists():
                raise FileExistsError(f"{self.dir} already holds a run")
        (self.dir / "scenario.yaml").write_text(yaml.safe_dump(scenario.to_dict(), sort_keys=False))
        self.rows: list[dict] = []
        self._jsonl = open(self.dir / "metrics.jsonl", "a", buffering=1)
        self.console = console or Console(stderr=True)
        self._progress = RoundProgress(scenario, self.console) if scenario.output.progress else None

    def log(self, row: dict) -> None:
        self.rows.append(row)
        self._jsonl.write(json.dumps(row) + "\n")
        if self._progress is not None:
            self._progress.log(self.rows)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self._jsonl.close()

    def finish(self, model: torch.nn.Module | None) -> pd.DataFrame:
        """Write the CSV, the plot and the model; print a summary; return the metrics."""
        self.close()
        df = read_metrics(self.dir)
        df.to_csv(self.dir / "metrics.csv", index=False)
        if self.scenario.output.plot and len(df):
            plot_metrics(df, self.dir / "metrics.png", self.scenario.name)
        if self.scenario.output.save_model and model is not None:
            torch.save(model.state_dict(), self.dir / "model.pt")
        if self.scenario.output.progress:
            self.console.print(summary_table(df, self.scenario.name))
            self.console.print(f"run directory: {self.dir}")
        return df


class RoundProgress:
    """A rich progress bar over the rounds, showing the latest test accuracy."""

    def __init__(self, scenario: Scenario, console: Console):
        self._bar = Progress(
            TextColumn(f"[bold]{scenario.name}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._task = self._bar.add_task("rounds", total=scenario.rounds, status="")
        self._bar.start()

    def log(self, rows: list[dict]) -> None:
        acc = _last(rows, "test_acc")
        status = f"acc {acc:.4f}" if acc is not None else ""
        self._bar.update(self._task, completed=rows[-1]["round"], status=status)

    def stop(self) -> None:
        self._bar.stop()


def _last(rows: list[dict], key: str):
    for row in reversed(rows):
        value = row.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            return value
    return None


def read_metrics(run_dir: str | Path) -> pd.DataFrame:
    path = Path(run_dir) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pd.DataFrame(rows)


def plot_metrics(df: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    if "test_acc" in df:
        d = df.dropna(subset=["test_acc"])
        ax_acc.plot(d["round"], d["test_acc"], marker=".", label="test (global model)")
    if "fed_acc" in df:
        d = df.dropna(subset=["fed_acc"])
        ax_acc.plot(d["round"], d["fed_acc"], marker=".", label="federated (clients' data)")
    ax_acc.set(xlabel="round", ylabel="accuracy", title=f"{title}: accuracy")
    ax_acc.legend()
    for key, label in (("train_loss", "train (clients)"), ("test_loss", "test")):
        if key in df:
            d = df.dropna(subset=[key])
            ax_loss.plot(d["round"], d[key], marker=".", label=label)
    ax_loss.set(xlabel="round", ylabel="loss", title=f"{title}: loss")
    ax_loss.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary_table(df: pd.DataFrame, name: str) -> Table:
    table = Table(title=f"{name}: summary")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("rounds", str(len(df)))
    if "test_acc" in df and df["test_acc"].notna().any():
        acc = df["test_acc"].dropna()
        table.add_row("final test accuracy", f"{acc.iloc[-1]:.4f}")
        table.add_row("best test accuracy", f"{acc.max():.4f}")
        table.add_row("final test loss", f"{df['test_loss'].dropna().iloc[-1]:.4f}")
    table.add_row("bytes down / up", f"{df['bytes_down'].sum():,} / {df['bytes_up'].sum():,}")
    table.add_row("wall time (s)", f"{df['seconds'].sum():.2f}")
    return table
