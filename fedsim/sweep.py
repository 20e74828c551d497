"""Sweeps: a grid of scenario variants run into one directory, and a report over seeds.

A scenario may declare ``sweep:`` (dotted key → list of values); ``fedsim sweep FILE
key=v1,v2 ...`` adds axes from the command line. Every combination is one run in
``<sweep dir>/<config id>/<timestamp>/``. A run counts as complete when its run directory
holds ``summary.json`` (written at the end of a run), and a sweep started again skips the
complete ones. ``fedsim report DIR`` groups runs by their configuration without the seed
and prints mean ± std over seeds; it also writes ``report.csv`` and ``report_accuracy.png``.
"""

from __future__ import annotations

import itertools
import json
import re
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from fedsim import atomic, manifest
from fedsim.scenario import ScenarioError, apply_overrides, read_yaml, validate


def parse_axis(item: str) -> tuple[str, list[Any]]:
    """``key.path=v1,v2,...`` → (key, values), each value read as YAML."""
    if "=" not in item:
        raise ScenarioError(f"sweep axis {item!r}: expected key.path=v1,v2,...")
    key, raw = item.split("=", 1)
    return key, [yaml.safe_load(v) for v in raw.split(",")]


def config_id(assignment: dict[str, Any]) -> str:
    text = "__".join(f"{k}={v}" for k, v in assignment.items() if k != "seed") or "base"
    return re.sub(r"[^A-Za-z0-9_.=-]", "-", text)


def expand(path: str | Path, axes: list[str], out_dir: str | Path | None = None) -> tuple[Path, list[dict]]:
    """The sweep directory and the raw scenario mapping of every run (all validated first)."""
    data, lines = read_yaml(path)
    grid: dict[str, list[Any]] = dict(data.pop("sweep", None) or {})
    for item in axes:
        key, values = parse_axis(item)
        grid[key] = values
    if not grid:
        raise ScenarioError(f"{path}: no sweep axes (add a 'sweep:' mapping or key=v1,v2 arguments)")
    bad = [k for k, v in grid.items() if not isinstance(v, list) or not v]
    if bad:
        raise ScenarioError(f"{path}: key 'sweep.{bad[0]}': expected a non-empty list of values")
    sweep_dir = Path(out_dir) if out_dir else Path(data.get("output", {}).get("dir", "runs")) / f"{data.get('name')}-sweep"
    runs = []
    for values in itertools.product(*grid.values()):
        assignment = dict(zip(grid, values))
        run = apply_overrides(data, assignment)
        run.setdefault("output", {})
        run["output"].update({"dir": str(sweep_dir / config_id(assignment)), "progress": False})
        run["name"] = f"seed{run.get('seed', 0)}"
        validate(run, f"{path} [{config_id(assignment)}, seed {run.get('seed', 0)}]", lines)
        runs.append({"assignment": assignment, "scenario": run})
    return sweep_dir, runs


def is_complete(run: dict) -> bool:
    root = Path(run["scenario"]["output"]["dir"]) / run["scenario"]["name"]
    return any(root.glob("*/summary.json"))


def _run_one(run: dict) -> str:
    import fedsim

    return str(fedsim.run(run["scenario"]).run_dir)


def run_sweep(path: str | Path, axes: list[str], jobs: int = 1, out_dir: str | Path | None = None, log=print) -> Path:
    sweep_dir, runs = expand(path, axes, out_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    todo = [r for r in runs if not is_complete(r)]
    log(f"sweep {sweep_dir}: {len(runs)} runs, {len(runs) - len(todo)} already complete, {len(todo)} to run")
    if jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            for run_dir in pool.map(_run_one, todo):
                log(f"done: {run_dir}")
    else:
        for run in todo:
            log(f"done: {_run_one(run)}")
    return sweep_dir


def collect(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per (run, round) with the run's configuration and seed."""
    frames = []
    for summary in sorted(Path(sweep_dir).glob("*/*/*/summary.json")):
        run_dir = summary.parent
        df = pd.read_json(run_dir / "metrics.jsonl", lines=True)
        df["config"] = run_dir.parent.parent.name
        df["seed"] = yaml.safe_load((run_dir / "scenario.yaml").read_text())["seed"]
        frames.append(df)
    if not frames:
        raise ScenarioError(f"{sweep_dir}: no complete runs found")
    return pd.concat(frames, ignore_index=True)


def manifest_warnings(sweep_dir: str | Path) -> list[str]:
    """How the complete runs of a sweep differ in their manifests (versions, commit,
    platform, device; the scenario within one configuration; exit status)."""
    configs: dict[str, list[Path]] = {}
    for summary in sorted(Path(sweep_dir).glob("*/*/*/summary.json")):
        configs.setdefault(summary.parent.parent.parent.name, []).append(summary.parent)
    return manifest.differences([d for dirs in configs.values() for d in dirs], configs)


def _mean_std(values: pd.Series, fmt: str = "{:.4f}") -> str:
    values = values.dropna()
    if values.empty:
        return "-"
    return f"{fmt.format(values.mean())} ± {fmt.format(values.std(ddof=0))}"


def report(sweep_dir: str | Path, target: float) -> pd.DataFrame:
    """Per configuration: mean ± std over seeds; writes report.csv and report_accuracy.png."""
    df = collect(sweep_dir)
    per_run = []
    for (config, seed), g in df.groupby(["config", "seed"]):
        acc = g.dropna(subset=["test_acc"])
        reached = acc[acc["test_acc"] >= target]["round"]
        per_run.append({
            "config": config,
            "seed": seed,
            "final_acc": acc["test_acc"].iloc[-1] if len(acc) else np.nan,
            "best_acc": acc["test_acc"].max(),
            "rounds_to_target": reached.iloc[0] if len(reached) else np.nan,
            "bytes": g["bytes_down"].sum() + g["bytes_up"].sum(),
            "epsilon": g["epsilon"].dropna().iloc[-1] if "epsilon" in g and g["epsilon"].notna().any() else np.nan,
        })
    runs = pd.DataFrame(per_run)
    rows = []
    for config, g in runs.groupby("config"):
        rows.append({
            "config": config,
            "seeds": len(g),
            "final acc": _mean_std(g["final_acc"]),
            "best acc": _mean_std(g["best_acc"]),
            f"rounds to {target:g}": _mean_std(g["rounds_to_target"], "{:.1f}") + f" ({g['rounds_to_target'].notna().sum()}/{len(g)})",
            "MB sent": _mean_std(g["bytes"] / 1e6, "{:.2f}"),
            "epsilon": _mean_std(g["epsilon"], "{:.3f}"),
        })
    table = pd.DataFrame(rows)
    sweep_dir = Path(sweep_dir)
    atomic.write_with(sweep_dir / "report_runs.csv", lambda tmp: runs.to_csv(tmp, index=False))
    atomic.write_with(sweep_dir / "report.csv", lambda tmp: table.to_csv(tmp, index=False))
    atomic.write_with(sweep_dir / "report_accuracy.png", lambda tmp: _plot(df, tmp))
    atomic.write_text(sweep_dir / "report.json", json.dumps(rows, indent=1))
    return table


def _plot(df: pd.DataFrame, path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: never touches the caller's backend

    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    for config, g in df.dropna(subset=["test_acc"]).groupby("config"):
        stats = g.groupby("round")["test_acc"].agg(["mean", "std"]).fillna(0.0)
        ax.plot(stats.index, stats["mean"], label=config)
        ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.2)
    ax.set(xlabel="round", ylabel="test accuracy", title="accuracy per configuration (mean ± std over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
