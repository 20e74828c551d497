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

from fedsim import atomic
from fedsim.scenario import Scenario
from fedsim.sinks import make_sinks


class Diverged(RuntimeError):
    """The run stopped because a loss became NaN or exploded; what was recorded is kept."""


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
    """Writes one run's directory: a new one under ``output.dir``; ``run_dir`` when given (a
    deployment's submitter names it; it may exist, empty); or, with ``resume_round``, an
    existing run reopened at that round, keeping the rows up to it (a killed run may have
    written rows past its last checkpoint)."""

    def __init__(self, scenario: Scenario, run_dir: str | Path | None = None, console: Console | None = None,
                 resume_round: int = 0):
        self.scenario = scenario
        self.rows: list[dict] = []
        if run_dir is None:
            self.dir = new_run_dir(scenario.output.dir, scenario.name)
        elif resume_round:
            self.dir = Path(run_dir)
            self.rows = [r for r in _read_rows(self.dir / "metrics.jsonl") if r["round"] <= resume_round]
            atomic.write_text(self.dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.rows))
        else:
            self.dir = Path(run_dir)
            self.dir.mkdir(parents=True, exist_ok=True)
            if (self.dir / "metrics.jsonl").exists():
                raise FileExistsError(f"{self.dir} already holds a run")
        if not resume_round:
            atomic.write_text(self.dir / "scenario.yaml", yaml.safe_dump(scenario.to_dict(), sort_keys=False))
        self._jsonl = open(self.dir / "metrics.jsonl", "a", buffering=1)
        self.sinks = make_sinks(scenario, self.dir)
        self.console = console or Console(stderr=True)
        self._progress = RoundProgress(scenario, self.console, resume_round) if scenario.output.progress else None

    def log(self, row: dict) -> None:
        self.rows.append(row)
        self._jsonl.write(json.dumps(row) + "\n")
        for sink in self.sinks:
            sink.log(row)
        if self._progress is not None:
            self._progress.log(self.rows)

    def write_json(self, name: str, record) -> Path:
        """An end-of-run record (``<name>.json``) in the run directory."""
        return atomic.write_text(self.dir / f"{name}.json", json.dumps(record))

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if not self._jsonl.closed:
            self._jsonl.close()
            for sink in self.sinks:
                sink.close()

    def finish(self, model: torch.nn.Module | None) -> pd.DataFrame:
        """Write the CSV, the plot and the model; print a summary; return the metrics."""
        self.close()
        df = read_metrics(self.dir)
        atomic.write_with(self.dir / "metrics.csv", lambda tmp: df.to_csv(tmp, index=False))
        if self.scenario.output.plot and len(df):
            atomic.write_with(self.dir / "metrics.png", lambda tmp: plot_metrics(df, tmp, self.scenario.name))
        if self.scenario.output.save_model and model is not None:
            atomic.write_with(self.dir / "model.pt", lambda tmp: torch.save(model.state_dict(), tmp))
        summary = summarize(df)
        if (self.dir / "audit.json").exists():  # fedsim.world.audit's estimate, next to the formal ε
            summary["audit"] = json.loads((self.dir / "audit.json").read_text())
        atomic.write_text(self.dir / "summary.json", json.dumps(summary, indent=1))
        if self.scenario.output.progress:
            self.console.print(summary_table(df, self.scenario.name))
            self.console.print(f"run directory: {self.dir}")
        return df


class RoundProgress:
    """A rich progress bar over the rounds, showing the latest test accuracy."""

    def __init__(self, scenario: Scenario, console: Console, start_round: int = 0):
        self._bar = Progress(
            TextColumn(f"[bold]{scenario.name}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._task = self._bar.add_task("rounds", total=scenario.rounds, completed=start_round, status="")
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


def _read_rows(path: Path) -> list[dict]:
    """The complete rows of a JSONL file (a run killed mid-write leaves a partial last line)."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def read_metrics(run_dir: str | Path) -> pd.DataFrame:
    return pd.DataFrame(_read_rows(Path(run_dir) / "metrics.jsonl"))


def plot_metrics(df: pd.DataFrame, path: Path, title: str):
    from matplotlib.figure import Figure  # no pyplot: never touches the caller's backend

    fig = Figure(figsize=(10, 4))
    ax_acc, ax_loss = fig.subplots(1, 2)
    for ax, curves in ((ax_acc, (("test_acc", "test (global model)"), ("fed_acc", "federated (clients' data)"))),
                       (ax_loss, (("train_loss", "train (clients)"), ("test_loss", "test"), ("fed_loss", "federated")))):
        for key, label in curves:  # only curves with points: no empty legend entries
            d = df.dropna(subset=[key]) if key in df else df.iloc[:0]
            if len(d):
                ax.plot(d["round"], d[key], marker=".", label=label)
        if ax.lines:
            ax.legend()
    ax_acc.set(xlabel="round", ylabel="accuracy", title=f"{title}: accuracy")
    ax_loss.set(xlabel="round", ylabel="loss", title=f"{title}: loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    return fig


# gradient-inversion results (fedsim.attacks.eavesdropper), averaged over the attacked rounds
ATTACK_MEANS = {"attack_psnr": "attack PSNR (dB)", "attack_ssim": "attack SSIM", "attack_label_acc": "attack label accuracy",
                "attack_latent_psnr": "attack latent PSNR (dB)", "attack_latent_ssim": "attack latent SSIM"}


def _column(df: pd.DataFrame, key: str) -> pd.Series:
    return df[key].dropna() if key in df else pd.Series(dtype=float)


def plot_accuracy_time(lines: list[tuple[str | None, list[float], list[float], str | None]], path: Path,
                       title: str, target: float | None = None) -> None:
    """Test accuracy against virtual time: ``lines`` of (label or None, times, accuracies, colour)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for label, times, accs, color in lines:
        ax.plot(times, accs, color=color, alpha=0.8, lw=1, label=label)
    if target is not None:
        ax.axhline(target, color="grey", ls="--", lw=0.8)
    ax.set(xlabel="virtual time (s)", ylabel="test accuracy", title=title)
    if any(label for label, *_ in lines):
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def summarize(df: pd.DataFrame) -> dict:
    """The run's headline numbers (its presence marks a complete run). Personalised runs
    (HyperFL) have no global test accuracy: their federated accuracy (``fed_acc``) is kept."""
    acc, fed = _column(df, "test_acc"), _column(df, "fed_acc")
    return {
        "rounds": len(df),
        "final_test_acc": float(acc.iloc[-1]) if len(acc) else None,
        "best_test_acc": float(acc.max()) if len(acc) else None,
        **({"final_fed_acc": float(fed.iloc[-1]), "best_fed_acc": float(fed.max())} if len(fed) else {}),
        **{f"mean_{k}": float(_column(df, k).mean()) for k in ATTACK_MEANS if len(_column(df, k))},
        "bytes_down": int(df["bytes_down"].sum()) if "bytes_down" in df else 0,
        "bytes_up": int(df["bytes_up"].sum()) if "bytes_up" in df else 0,
        "seconds": float(df["seconds"].sum()) if "seconds" in df else 0.0,
        # privacy spent (fedsim.privacy): the last value of every epsilon column
        **{k: float(df[k].dropna().iloc[-1]) for k in df.columns if k.startswith("epsilon") and df[k].notna().any()},
    }


def summary_table(df: pd.DataFrame, name: str) -> Table:
    table = Table(title=f"{name}: summary")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("rounds", str(len(df)))
    if "test_acc" in df and df["test_acc"].notna().any():
        acc = df["test_acc"].dropna()
        table.add_row("final test accuracy", f"{acc.iloc[-1]:.4f}")
        table.add_row("best test accuracy", f"{acc.max():.4f}")
    fed = _column(df, "fed_acc")
    if len(fed):  # federated evaluation; the only accuracy of personalised runs (HyperFL)
        table.add_row("final federated accuracy", f"{fed.iloc[-1]:.4f}")
        table.add_row("best federated accuracy", f"{fed.max():.4f}")
    for key, label in ATTACK_MEANS.items():
        if len(_column(df, key)):
            table.add_row(f"{label}, mean of attacked rounds", f"{_column(df, key).mean():.3f}")
    if "test_loss" in df and df["test_loss"].notna().any():  # regression runs have a loss only
        table.add_row("final test loss", f"{df['test_loss'].dropna().iloc[-1]:.4f}")
    table.add_row("bytes down / up", f"{df['bytes_down'].sum():,} / {df['bytes_up'].sum():,}")
    for key in [k for k in df.columns if k.startswith("epsilon") and df[k].notna().any()]:
        table.add_row(key.replace("_", " "), f"{df[key].dropna().iloc[-1]:.4g}")
    table.add_row("wall time (s)", f"{df['seconds'].sum():.2f}")
    return table
