"""Checkpoint and resume: a run killed with SIGKILL and resumed equals an uninterrupted one."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

import fedsim
from fedsim.checkpoint import record_to_tree, tree_to_record
from fedsim.cli import app
from fedsim.recorder import read_metrics
from fedsim.state import from_tree, to_tree
from fedsim.strategies.fedau import IntervalState

ROOT = Path(__file__).resolve().parents[1]
TIMING = ["seconds", "aggregate_seconds"]


def comparable(df):
    return df.drop(columns=[c for c in TIMING if c in df]).reset_index(drop=True)


def test_state_trees_round_trip_and_refuse_foreign_types():
    state = IntervalState(np.arange(3.0), np.arange(3), np.zeros(3, dtype=np.int64))
    tree = to_tree({"s": state, "n": 3, "xs": [np.ones(2, dtype=np.float32), None]})
    back = from_tree(tree)
    assert isinstance(back["s"], IntervalState) and back["s"].count.dtype == np.int64
    assert np.array_equal(back["s"].mean, state.mean) and back["n"] == 3 and back["xs"][1] is None
    with pytest.raises(ValueError, match="outside fedsim"):
        from_tree({"dataclass": "os:PathLike", "fields": {}})


def test_record_trees_round_trip():
    from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

    rec = RecordDict({"a": ArrayRecord({"w": Array(np.arange(6, dtype=np.float32).reshape(2, 3))}),
                      "m": MetricRecord({"x": 1.5, "n": 3}), "c": ConfigRecord({"s": "hi", "b": b"\x00"})})
    back = tree_to_record(record_to_tree(rec))
    assert np.array_equal(back["a"]["w"].numpy(), rec["a"]["w"].numpy())
    assert dict(back["m"]) == dict(rec["m"]) and dict(back["c"]) == dict(rec["c"])


def resumable(tiny, tmp_path, name):
    sc = dict(tiny, name=name, rounds=8, output={"dir": str(tmp_path / "runs"), "progress": False, "checkpoint_every": 2})
    sc["participation"] = {"name": "markov", "probabilities": {"kind": "constant", "value": 0.6}}
    sc["strategy"] = {"name": "fedau"}
    return sc


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(tiny, tmp_path):
    """Stateful strategy (FedAU) and world layer (Markov participation) included."""
    full = fedsim.run(resumable(tiny, tmp_path, "full"))
    part = fedsim.run(resumable(tiny, tmp_path, "part"), rounds=8)
    ckpt = torch.load(part.run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["round"] == 8
    # rewind: pretend the run died after round 5 (checkpoint of round 4 on disk)
    four = fedsim.run(resumable(tiny, tmp_path, "four"), rounds=4)
    rows = (full.run_dir / "metrics.jsonl").read_text().splitlines()[:5]
    (four.run_dir / "metrics.jsonl").write_text("\n".join(rows) + '\n{"round": 6, "trunc')
    sc = yaml.safe_load((four.run_dir / "scenario.yaml").read_text())
    sc["rounds"] = 8
    (four.run_dir / "scenario.yaml").write_text(yaml.safe_dump(sc))
    result = CliRunner().invoke(app, ["resume", str(four.run_dir)])
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(comparable(read_metrics(four.run_dir)), comparable(read_metrics(full.run_dir)))


@pytest.mark.slow
def test_sigkill_between_checkpoints_then_resume(tiny, tmp_path):
    sc = resumable(tiny, tmp_path, "killed")
    sc["rounds"] = 30
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(sc))
    proc = subprocess.Popen([sys.executable, "-m", "fedsim", "run", str(path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    runs = tmp_path / "runs" / "killed"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        files = list(runs.glob("*/metrics.jsonl"))
        if files and len(files[0].read_text().splitlines()) >= 5 and (files[0].parent / "checkpoint.pt").exists():
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (run_dir,) = runs.iterdir()
    done = len((run_dir / "metrics.jsonl").read_text().splitlines())
    assert 5 <= done < 30 and not (run_dir / "summary.json").exists()
    result = subprocess.run([sys.executable, "-m", "fedsim", "resume", str(run_dir)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    full = fedsim.run(sc, name="straight")
    pd.testing.assert_frame_equal(comparable(read_metrics(run_dir)), comparable(read_metrics(full.run_dir)))


def test_divergence_stops_the_run_with_a_clear_message_and_keeps_the_rows(tiny, tmp_path):
    tiny["client"] = {"epochs": 1, "batch_size": 16, "lr": 1e6}
    path = tmp_path / "boom.yaml"
    path.write_text(yaml.safe_dump(tiny))
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 1, result.output
    assert "diverged" in result.output and "Traceback" not in result.output
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert 1 <= len(rows) < 3 and (run_dir / "metrics.csv").exists()


@pytest.mark.parametrize("strategy", [{"name": "scaffold"}, {"name": "feddyn"}, {"name": "fedspeed", "variant": "code"}])
def test_resume_keeps_server_and_client_state_of_stateful_strategies(tiny, tmp_path, strategy):
    sc = dict(tiny, rounds=4, strategy=strategy, output={"dir": str(tmp_path / "runs"), "progress": False, "checkpoint_every": 2})
    full = fedsim.run(dict(sc, name="full"))
    two = fedsim.run(dict(sc, name="two"), rounds=2)
    spec = yaml.safe_load((two.run_dir / "scenario.yaml").read_text())
    spec["rounds"] = 4
    (two.run_dir / "scenario.yaml").write_text(yaml.safe_dump(spec))
    assert CliRunner().invoke(app, ["resume", str(two.run_dir)]).exit_code == 0
    pd.testing.assert_frame_equal(comparable(read_metrics(two.run_dir)), comparable(read_metrics(full.run_dir)))
