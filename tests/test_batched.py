"""Batched clients (``runtime.batched``): the stacked torch.func path equals the sequential
ClientApp, exactly in float64 on the local loop, within float noise on whole runs."""

import copy

import pandas as pd
import pytest
import torch
from flwr.app import RecordDict

import fedsim
from fedsim.apps.client import ClientEnv
from fedsim.batched import Cohort, Correction, refusal
from fedsim.models import build_model
from fedsim.records import to_record
from fedsim.scenario import ScenarioError, load
from fedsim.training import local_sgd, torch_generator

BATCHED = {"name": "inprocess", "batched": True}
METRICS = ["train_loss", "test_loss", "test_acc", "clients_replied", "bytes_up"]


def _envs(sizes, scenario, dtype=torch.float64):
    """One ClientEnv per size, sharing a float64 MLP (as the ClientApp shares its model)."""
    gen = torch.Generator().manual_seed(0)
    model = build_model("mlp", {"hidden": [5]}, (4,), 3).to(dtype)
    envs = []
    for pid, n in enumerate(sizes):
        x = torch.randn(n, 4, generator=gen, dtype=dtype)
        y = torch.randint(0, 3, (n,), generator=gen)
        envs.append(ClientEnv(scenario, pid, model, x, y, RecordDict(), model.state_dict(keep_vars=True), 3))
    return model, envs


def test_stacked_sgd_equals_torch_sgd_for_clients_of_unequal_size_in_float64():
    """Clients of 1, 7, 20 and 33 examples (batch 8: 1-5 steps, ragged last batches),
    momentum and weight decay: every client's parameters and mean loss equal
    ``local_sgd`` with ``torch.optim.SGD`` on its own to float64 precision."""
    scenario = load({"name": "t", "rounds": 1, "num_clients": 4, "seed": 5,
                     "client": {"epochs": 2, "batch_size": 8, "lr": 0.3, "momentum": 0.9, "weight_decay": 1e-3}})
    model, envs = _envs([1, 7, 20, 33], scenario)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    content = RecordDict({"arrays": to_record(start)})
    content["config"] = fedsim.apps.client.ConfigRecord({"server-round": 2})
    cohort = Cohort([content] * 4, envs)
    params, losses = cohort.local_sgd()
    assert cohort.steps.tolist() == [2, 2, 6, 10]  # ceil(n/8) per epoch, two epochs
    cfg = scenario.client
    for k, env in enumerate(envs):
        model.load_state_dict(start)
        loss, steps = local_sgd(model, env.x, env.y, epochs=2, steps=None, batch_size=8, lr=cfg.lr,
                                momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                gen=torch_generator(5, 2, k, "shuffle"))
        assert steps == cohort.steps[k]
        assert losses[k].item() == pytest.approx(loss, rel=1e-12)
        for name, p in model.named_parameters():
            torch.testing.assert_close(params[name][k], p.detach(), rtol=1e-12, atol=1e-13)


def test_every_stacked_tensor_follows_the_model_to_its_device():
    """The stacked path on the ``meta`` device, where an op that mixes a meta tensor with a
    CPU one raises (as CUDA with CPU does): start models, schedules, masks, losses,
    per-client corrections with CPU-made coefficients, clipping and momentum all stay on
    the clients' device; shapes match the CPU run."""
    scenario = load({"name": "t", "rounds": 1, "num_clients": 3, "seed": 1,
                     "client": {"epochs": 1, "batch_size": 4, "lr": 0.1, "momentum": 0.9}})
    model, envs = _envs([3, 6, 9], scenario, dtype=torch.float32)
    content = RecordDict({"arrays": to_record({k: v.detach() for k, v in model.state_dict().items()})})
    content["config"] = fedsim.apps.client.ConfigRecord({"server-round": 1})
    meta_model = copy.deepcopy(model).to("meta")
    meta_envs = [ClientEnv(scenario, e.partition_id, meta_model, e.x.to("meta"), e.y.to("meta"), RecordDict(),
                           meta_model.state_dict(keep_vars=True), 3) for e in envs]
    shapes = {}
    for name, cohort in (("cpu", Cohort([content] * 3, envs)), ("meta", Cohort([content] * 3, meta_envs))):
        x = cohort.vector(cohort.start)
        correction = Correction(coef=torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64), anchor=x, offset=0.01 * x)
        params, losses = cohort.local_sgd(correction=correction, max_grad_norm=1.0, extra_weight_decay=1e-3)
        grads, _ = cohort.gradient(cohort.schedule("minibatch", 4, 1, 1), 0)(cohort.start)
        outputs = [*params.values(), losses, *grads.values(), cohort.steps]
        assert {t.device.type for t in outputs} == {name}
        shapes[name] = [t.shape for t in outputs]
    assert shapes["meta"] == shapes["cpu"]


def test_refusal_names_buffers_and_dropout():
    assert refusal(torch.nn.Sequential(torch.nn.Linear(2, 2))) is None
    assert "buffers" in refusal(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)))
    assert "dropout" in refusal(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1)))


def _compare(scenario, rtol=1e-5):
    a = fedsim.run(scenario)
    b = fedsim.run(scenario, runtime=BATCHED)
    cols = [c for c in METRICS + ["fed_acc", "client_state_norm", "server_state_bytes"] if c in a.metrics]
    pd.testing.assert_frame_equal(a.metrics[cols], b.metrics[cols], rtol=rtol, atol=1e-7)
    return a, b


CASES = {
    "fedavg": {"strategy": {"name": "fedavg", "fraction_train": 0.75}},
    "fedprox": {"strategy": {"name": "fedprox", "mu": 0.5}},
    "fedau": {"strategy": {"name": "fedau"}, "participation": {"name": "bernoulli"}},
    "fedavg_updates": {"strategy": {"name": "fedavg_updates", "normalize": "all", "global_lr": 2.0},
                       "participation": {"name": "bernoulli"}},
    "known_prob": {"strategy": {"name": "known_prob"}, "participation": {"name": "bernoulli"}},
    "mifa": {"strategy": {"name": "mifa"}, "participation": {"name": "bernoulli"}},
    "fedvarp": {"strategy": {"name": "fedvarp"}, "participation": {"name": "bernoulli"}},
    "fednga": {"strategy": {"name": "fednga"}},
    "fednga-local": {"strategy": {"name": "fednga", "client_update": "local_sgd"}},
    "krum": {"strategy": {"name": "krum"}},
    "scaffold": {"strategy": {"name": "scaffold"}},
    "feddyn": {"strategy": {"name": "feddyn", "alpha": 0.1}},
    "fedspeed": {"strategy": {"name": "fedspeed"}},
    "fedspeed-code": {"strategy": {"name": "fedspeed", "variant": "code", "max_grad_norm": 0.5}},
    "fedsam": {"strategy": {"name": "fedsam", "rho": 0.05}},
    "dp": {"strategy": {"name": "fedavg", "fraction_train": 0.5},
           "defense": {"name": "dp", "noise_multiplier": 0.3, "clipping_norm": 0.5, "sampling": "fixed",
                       "noise": "client"}},
}


@pytest.mark.parametrize("case", CASES)
def test_batched_equals_sequential_per_round_metrics(tiny, case):
    """Every batchable strategy: the same per-round metrics as the sequential ClientApp
    (unequal Dirichlet partitions, momentum, federated evaluation) within float noise."""
    tiny.update(copy.deepcopy(CASES[case]))
    tiny["client"]["momentum"] = 0.5
    tiny["evaluation"] = {"federated": True}
    a, _ = _compare(tiny)
    assert a.metrics["clients_replied"].sum() > 0


def test_batched_cnn_and_chunks_of_one_client(tiny):
    """The LeNet CNN (conv and max-pool under vmap), in chunks of 1 and of 256 clients."""
    tiny["model"] = {"name": "cnn", "channels": [4, 8]}
    tiny["rounds"] = 2
    a, b = _compare(tiny, rtol=1e-4)
    c = fedsim.run(tiny, runtime={**BATCHED, "batch_clients": 1})
    pd.testing.assert_frame_equal(b.metrics[METRICS], c.metrics[METRICS], rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA here")
@pytest.mark.parametrize("case", ["fedprox", "scaffold", "fedspeed"])
def test_batched_equals_sequential_on_cuda(tiny, case):
    """On a GPU (``runtime.device: cuda``) the stacked path gives the sequential metrics."""
    tiny.update(copy.deepcopy(CASES[case]))
    tiny["runtime"] = {"name": "inprocess", "device": "cuda"}
    a = fedsim.run(tiny)
    b = fedsim.run(tiny, runtime={**BATCHED, "device": "cuda"})
    pd.testing.assert_frame_equal(a.metrics[METRICS], b.metrics[METRICS], rtol=1e-4, atol=1e-6)


def test_injected_crashes_and_stragglers_take_the_sequential_path(tiny):
    tiny["faults"] = {"crash_probability": 0.4}
    tiny["rounds"] = 4
    a, b = _compare(tiny)
    assert a.metrics["failed_clients"].tolist() == b.metrics["failed_clients"].tolist()
    assert a.metrics["clients_replied"].sum() < a.metrics["clients_sampled"].sum()  # some crashed


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"strategy": {"name": "dfedsam"}, "topology": {"name": "ring"}}, "strategy 'dfedsam' has no batched"),
        ({"model": {"name": "mlp", "dropout": 0.2}}, "dropout"),
        ({"audit": {"canaries": 1, "held_out": 2}}, "canary audit"),
    ],
)
def test_unbatchable_scenarios_are_refused_at_validation(tiny, override, reason):
    tiny.update(override)
    tiny["runtime"] = BATCHED
    with pytest.raises(ScenarioError, match="runtime.batched") as err:
        load(tiny)
    assert reason in str(err.value)
