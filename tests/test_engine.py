"""The engine: devices (runtime.device), seeding without torch.manual_seed, the reused optimizer."""

import pandas as pd
import pytest
import torch

import fedsim
from fedsim.scenario import ScenarioError, load
from fedsim.training import local_sgd, resolve_device, seeded_torch_rng, torch_generator

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA here"))]
METRICS = ["train_loss", "test_loss", "test_acc", "bytes_down", "bytes_up"]


def test_auto_takes_cuda_only_when_present():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
@pytest.mark.parametrize("runtime", [{"name": "inprocess", "device": "cuda"}, {"name": "ray", "device": "cuda:1"}])
def test_validation_refuses_cuda_without_cuda(tiny, runtime):
    with pytest.raises(ScenarioError, match=r"runtime\.device.*torch\.cuda is not available"):
        load(tiny | {"runtime": runtime})


def test_ray_gpu_device_needs_gpu_actors(tiny, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ScenarioError, match="num_gpus > 0"):
        load(tiny | {"runtime": {"name": "ray", "device": "cuda"}})
    sc = load(tiny | {"runtime": {"name": "ray", "device": "cuda", "client_resources": {"num_gpus": 0.25}}})
    assert sc.runtime.client_resources.num_gpus == 0.25


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("strategy", ["fedavg", "scaffold"])
def test_clients_and_server_run_on_the_device(tiny, device, strategy):
    """Client models and examples live on runtime.device; a GPU run gives the CPU run's
    metrics within float noise (CPU vs GPU kernels round differently)."""
    from fedsim.apps import client

    tiny |= {"strategy": {"name": strategy}, "model": {"name": "cnn"}, "evaluation": {"federated": True}}
    run = fedsim.run(tiny, runtime={"name": "inprocess", "device": device})
    shared = next(s for s in [client._shared(b) for b in {k[0] for k in client._partitions}])
    assert shared.x.device.type == device and next(shared.model.parameters()).device.type == device
    assert all(x.device.type == device for x, _ in client._partitions.values())
    base = fedsim.run(tiny)  # the default device: cpu
    if device == "cpu":
        pd.testing.assert_frame_equal(run.metrics[METRICS + ["fed_acc"]], base.metrics[METRICS + ["fed_acc"]])
    else:
        pd.testing.assert_frame_equal(run.metrics[METRICS], base.metrics[METRICS], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_decentralized_nodes_run_on_the_device(tiny, device):
    tiny |= {"strategy": {"name": "dpsgd"}, "topology": {"name": "ring"}, "rounds": 2}
    run = fedsim.run(tiny, runtime={"name": "inprocess", "device": device})
    assert run.metrics["test_acc"].notna().all()


def test_seeded_torch_rng_gives_torch_manual_seeds_streams_and_restores():
    torch.manual_seed(123)
    expected_after = torch.rand(4)
    torch.manual_seed(123)
    with seeded_torch_rng(7):
        inside = torch.rand(5)
    after = torch.rand(4)
    torch.manual_seed(7)
    assert torch.equal(inside, torch.rand(5))
    assert torch.equal(after, expected_after)  # the global stream goes on as if untouched


def test_reused_optimizer_equals_a_fresh_one_each_call():
    """local_sgd keeps one SGD per model and clears it: the same steps as a new optimizer."""
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    model = torch.nn.Linear(5, 3)
    ref = torch.nn.Linear(5, 3)
    ref.load_state_dict(model.state_dict())
    for call, (lr, momentum, wd) in enumerate([(0.1, 0.9, 1e-3), (0.05, 0.0, 0.0), (0.2, 0.5, 0.0)]):
        local_sgd(model, x, y, epochs=1, steps=None, batch_size=8, lr=lr, momentum=momentum, weight_decay=wd,
                  gen=torch_generator(0, call))
        opt = torch.optim.SGD(ref.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
        for idx in torch.randperm(40, generator=torch_generator(0, call)).split(8):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ref(x[idx]), y[idx]).backward()
            opt.step()
        for a, b in zip(model.parameters(), ref.parameters()):
            assert torch.equal(a, b)


def test_cpu_only_strategies_refuse_a_gpu(tiny, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ScenarioError, match=r"runtime\.device.*'sgm' trains on CPU only"):
        load(tiny | {"strategy": {"name": "sgm"}, "runtime": {"name": "inprocess", "device": "cuda"}})
    assert load(tiny | {"runtime": {"name": "inprocess", "device": "cuda"}}).runtime.device == "cuda"


@pytest.mark.slow
def test_100k_synthetic_clients_run_in_little_memory():
    """10^5 clients (synthetic, IID split), 10 per round: the run completes, only the cohort
    is ever set up, and the process stays under 2 GiB (a fresh process, for its peak RSS)."""
    import json
    import subprocess
    import sys

    code = r"""
import json, resource, tempfile, fedsim
from fedsim.apps import client
with tempfile.TemporaryDirectory() as out:
    res = fedsim.run({"name": "big", "rounds": 2, "num_clients": 100000,
        "dataset": {"name": "synthetic", "num_users": 2000, "iid": True}, "partition": {"name": "iid"},
        "strategy": {"name": "fedavg", "fraction_train": 1e-4, "fraction_evaluate": 0.0},
        "client": {"steps": 2, "batch_size": 8},
        "output": {"dir": out, "progress": False, "plot": False, "save_model": False}})
print(json.dumps({"sampled": res.metrics["clients_sampled"].tolist(), "nodes": len(client._partitions),
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["sampled"] == [10, 10]
    assert got["nodes"] <= 20  # partitions gathered for the two cohorts only
    assert got["rss_mib"] < 2048
