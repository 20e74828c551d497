"""TensorBoard and MLflow sinks, against the real libraries."""

import pytest

import fedsim


def test_tensorboard_sink_writes_every_round(tiny):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = fedsim.run(tiny, output__tensorboard=True)
    acc = EventAccumulator(str(res.run_dir / "tensorboard"))
    acc.Reload()
    events = acc.Scalars("test_acc")
    assert [e.step for e in events] == [1, 2, 3]
    assert [round(e.value, 6) for e in events] == [round(v, 6) for v in res.metrics["test_acc"]]


def test_mlflow_sink_logs_params_and_metrics_to_a_local_store(tiny, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = fedsim.run(tiny, output__mlflow=True, output__mlflow_tracking_uri=uri)
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.data.params["strategy.name"] == "fedavg" and run.data.params["num_clients"] == "4"
    history = client.get_metric_history(run.info.run_id, "test_acc")
    assert [m.step for m in history] == [1, 2, 3]
    assert [m.value for m in history] == pytest.approx(list(res.metrics["test_acc"]))
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
