"""The CLI and the Python API produce a complete run directory."""

import json

import torch
from flwr.app import ArrayRecord
import yaml
from typer.testing import CliRunner

import fedsim
from fedsim.cli import app

runner = CliRunner()


def test_run_writes_metrics_plot_model_and_resolved_scenario(tiny, tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny))
    result = runner.invoke(app, ["run", str(path), "rounds=2", "evaluation.eval_every=2"])
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[0]["test_acc"] is None and 0.0 <= rows[1]["test_acc"] <= 1.0  # eval_every=2
    for key in ("train_loss", "clients_sampled", "clients_replied", "bytes_up", "bytes_down", "seconds"):
        assert key in rows[0]
    assert rows[0]["bytes_up"] == rows[0]["bytes_down"] > 0  # FedAvg: one model each way per client
    assert (run_dir / "metrics.csv").read_text().startswith("round,")
    assert (run_dir / "metrics.png").stat().st_size > 1000
    assert yaml.safe_load((run_dir / "scenario.yaml").read_text())["rounds"] == 2
    state = torch.load(run_dir / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_python_api_returns_dataframe_model_and_dir(tiny):
    res = fedsim.run(tiny, rounds=2)
    assert list(res.metrics["round"]) == [1, 2]
    assert res.run_dir.is_dir()
    x = torch.zeros(2, 1, 8, 8)
    assert res.model(x).shape == (2, 10)
    assert 0.0 <= res.final_accuracy <= 1.0


def test_bytes_count_the_model_once_per_sampled_client(tiny):
    res = fedsim.run(tiny, rounds=1)
    n_params = sum(p.numel() for p in res.model.state_dict().values())
    serialized = ArrayRecord(res.model.state_dict()).count_bytes()  # float32 data + array headers
    assert 4 * n_params < serialized < 4 * n_params + 200 * len(res.model.state_dict())
    assert res.metrics["bytes_down"].iloc[0] == res.metrics["bytes_up"].iloc[0] == 3 * serialized  # 3 clients


def test_list_and_partitions_commands(tiny, tmp_path):
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    for name in ("digits", "dirichlet", "mlp", "cnn", "resnet8", "fedavg", "fedprox"):
        assert name in result.output
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny))
    result = runner.invoke(app, ["partitions", str(path)])
    assert result.exit_code == 0, result.output
    assert "total" in result.output and "1437" in result.output
