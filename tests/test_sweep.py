"""Sweeps: a grid of runs in one directory, a report over seeds, completed runs skipped."""

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from fedsim.cli import app

runner = CliRunner()


@pytest.mark.slow  # two spawned worker processes each import torch and Flower
def test_sweep_two_strategies_two_seeds_report_and_skip(tiny, tmp_path):
    tiny["rounds"] = 2
    tiny["sweep"] = {"strategy.name": ["fedavg", "fedprox"], "seed": [0, 1]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny))
    out = tmp_path / "sweep"
    result = runner.invoke(app, ["sweep", str(path), "--dir", str(out), "--jobs", "2"])
    assert result.exit_code == 0, result.output
    assert "4 runs, 0 already complete, 4 to run" in result.output
    runs = sorted(out.glob("*/*/*/summary.json"))
    assert len(runs) == 4
    assert {p.parts[-4] for p in runs} == {"strategy.name=fedavg", "strategy.name=fedprox"}

    result = runner.invoke(app, ["report", str(out), "--target", "0.3"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "report.csv")
    assert list(table["config"]) == ["strategy.name=fedavg", "strategy.name=fedprox"]
    assert list(table["seeds"]) == [2, 2]
    per_run = pd.read_csv(out / "report_runs.csv")
    final = per_run[per_run["config"] == "strategy.name=fedavg"]["final_acc"]
    mean = float(table.loc[0, "final acc"].split(" ± ")[0])
    assert abs(mean - final.mean()) < 1e-4
    assert (out / "report_accuracy.png").stat().st_size > 1000

    again = runner.invoke(app, ["sweep", str(path), "--dir", str(out)])
    assert again.exit_code == 0 and "4 runs, 4 already complete, 0 to run" in again.output
    assert len(list(out.glob("*/*/*/summary.json"))) == 4


def test_command_line_axes_and_bad_axes(tiny, tmp_path):
    tiny["rounds"] = 1
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny))
    out = tmp_path / "sw"
    result = runner.invoke(app, ["sweep", str(path), "client.lr=0.05,0.1", "--dir", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["client.lr=0.05", "client.lr=0.1"]
    bad = runner.invoke(app, ["sweep", str(path), "client.lr=-1,0.1", "--dir", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "'client.lr'" in bad.output
    none = runner.invoke(app, ["sweep", str(path)])
    assert none.exit_code == 2 and "no sweep axes" in none.output
