"""manifest.json in every run directory (written at the start, updated at the end) and
``fedsim report``'s warnings when the runs it compares differ in it."""

import json
import platform
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

import fedsim
from fedsim import manifest
from fedsim.apps.server import Diverged, execute
from fedsim.cli import app
from fedsim.scenario import load

ROOT = Path(__file__).resolve().parents[1]


def test_completed_run_records_versions_commit_hash_seed_and_times(tiny):
    tiny["rounds"] = 1
    res = fedsim.run(tiny)
    m = json.loads((res.run_dir / "manifest.json").read_text())
    assert m["status"] == "completed"
    assert (m["fedsim"], m["torch"], m["flwr"], m["numpy"]) == (
        fedsim.__version__, version("torch"), version("flwr"), version("numpy"))
    assert m["ray"] == version("ray")
    assert m["python"] == platform.python_version()
    assert m["device"] == "cpu"
    assert m["seed"] == 3
    assert m["scenario_hash"] == load(tiny).digest()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert m["git_commit"] == head and len(head) == 40
    assert m["started"] <= m["ended"]
    assert not list(res.run_dir.glob(".manifest-*"))  # the temporary file was renamed


def test_manifest_says_running_during_the_run_and_failed_after_an_exception(tiny):
    scenario = load(tiny)
    seen = {}

    def launch(server_app):
        (run_dir,) = Path(tiny["output"]["dir"], "tiny").iterdir()
        seen.update(manifest.read(run_dir), run_dir=run_dir)
        raise RuntimeError("the grid went away")

    with pytest.raises(RuntimeError):
        execute(scenario, launch)
    assert (seen["status"], seen["ended"]) == ("running", None)
    after = manifest.read(seen["run_dir"])
    assert after["status"] == "failed" and after["error"] == "RuntimeError: the grid went away"
    assert after["started"] == seen["started"] and after["ended"] is not None


def test_diverged_run_is_recorded_as_diverged(tiny):
    tiny["evaluation"] = {"max_loss": 1e-6}
    with pytest.raises(Diverged):
        fedsim.run(tiny)
    (run_dir,) = Path(tiny["output"]["dir"], "tiny").iterdir()
    m = manifest.read(run_dir)
    assert m["status"] == "diverged" and "diverged" in m["error"]


def _two_seeds(tiny, sweep_dir: Path) -> list[Path]:
    """The layout of a sweep: <sweep>/<config>/seed<k>/<timestamp>/."""
    dirs = []
    for seed in (0, 1):
        tiny.update(rounds=1, seed=seed, name=f"seed{seed}")
        tiny["output"] = {"dir": str(sweep_dir / "base"), "progress": False, "plot": False}
        dirs.append(fedsim.run(tiny).run_dir)
    return dirs


def test_report_warns_when_runs_differ_in_their_manifests(tiny, tmp_path):
    sweep_dir = tmp_path / "sweep"
    first, second = _two_seeds(tiny, sweep_dir)
    clean = CliRunner().invoke(app, ["report", str(sweep_dir)])
    assert clean.exit_code == 0, clean.output
    assert "warning" not in clean.output  # two seeds of one configuration on one machine

    m = manifest.read(second)
    manifest.write(second, {**m, "torch": "2.0.0", "config_hash": "0" * 16, "status": "diverged"})
    result = CliRunner().invoke(app, ["report", str(sweep_dir)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f'runs differ in torch: "2.0.0", "{version("torch")}"' in text
    assert "configuration base: its runs were made from different scenarios" in text
    assert f"{second}: status 'diverged'" in " ".join(result.output.replace("\n", "").split())
    (first / "manifest.json").unlink()
    text = "".join(CliRunner().invoke(app, ["report", str(sweep_dir)]).output.split("\n"))
    assert "no manifest.json" in text
