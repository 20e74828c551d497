"""Gradient-inversion attacks: the threat model, label inference, IG/DIA/GIFD, metrics."""

import dataclasses
import inspect
import json

import numpy as np
import pytest
import torch
import yaml
from flwr.app import ConfigRecord, RecordDict
from typer.testing import CliRunner

import fedsim
from fedsim.scenario import ScenarioError
from fedsim.attacks.dia import DIAParams, DropoutInversion, well_informed
from fedsim.attacks.eavesdropper import GroundTruth
from fedsim.attacks.gifd import GIFD, GIFDParams, project_l1_ball, project_sphere
from fedsim.attacks.ig import InvertingGradients
from fedsim.attacks.inversion import InversionAttack, Knowledge, LocalTraining, Observation, Reconstruction
from fedsim.attacks.inversion.labels import infer_labels
from fedsim.attacks.inversion.metrics import label_accuracy, match, score
from fedsim.attacks.inversion.objective import gradient_match
from fedsim.attacks.inversion.params import EavesdropperParams, PixelAttackParams
from fedsim.attacks.inversion.prior import DecoderPrior, PriorCollapsed, PriorConfig, check_diversity, diversity, load_or_train
from fedsim.attacks.inversion.replay import client_step, compute_upload
from fedsim.cli import app
from fedsim.apps.client import ClientEnv, fedavg_train
from fedsim.data.datasets import load_dataset
from fedsim.apps.setup import prepare
from fedsim.models import build_model
from fedsim.records import to_record, to_state_dict
from fedsim.registry import register
from fedsim.strategies.fedsgd import fedsgd_train

DIGITS = load_dataset("digits", {}, 0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small second-order graphs run fastest (and steadiest on a shared machine) single-threaded."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)

SHAPE = DIGITS.input_shape


def model(name="mlp", seed=0, **params):
    torch.manual_seed(seed)
    return build_model(name, params, SHAPE, 10)


def distinct(count, offset=0):
    """Indices of ``count`` training digits with distinct labels."""
    idx, seen = [], set()
    for i in range(offset, len(DIGITS.y_train)):
        if DIGITS.y_train[i] not in seen:
            seen.add(DIGITS.y_train[i])
            idx.append(i)
        if len(idx) == count:
            break
    return torch.from_numpy(DIGITS.x_train[idx]), torch.from_numpy(DIGITS.y_train[idx])


def observe(net, x, y, kind="gradient", local=None, gen_seed=1, seed=7):
    upload, masks = client_step(net, x, y, kind, local, torch.Generator().manual_seed(gen_seed))
    n = len(x)
    return Observation(net, upload, kind, n, local, SHAPE, 10, (0.0, 1.0), 1, 0, seed), masks


# ----------------------------------------------------------------------------- threat model


def test_observation_has_no_field_for_client_data():
    fields = {f.name for f in dataclasses.fields(Observation)}
    assert fields == {
        "model", "upload", "kind", "num_examples", "local", "input_shape",
        "num_classes", "pixel_range", "round", "client", "seed",
    }
    assert {f.name for f in dataclasses.fields(Knowledge)} == {
        "input_shape", "num_classes", "pixel_range", "dataset", "dataset_params", "seed",
    }
    with pytest.raises(TypeError):
        Observation(model(), {}, "gradient", 1, None, SHAPE, 10, (0, 1), 1, 0, 0, x=torch.zeros(1))
    assert list(inspect.signature(InversionAttack.reconstruct).parameters) == ["self", "observation"]


SPY: dict = {}


class Spy(InversionAttack):
    """Records exactly what the eavesdropper hands it; answers with blank images."""

    def reconstruct(self, *args, **kwargs):
        SPY.setdefault("calls", []).append((args, kwargs))
        (obs,) = args
        n = obs.num_examples if obs.kind == "gradient" else 2
        return Reconstruction(torch.zeros(n, *obs.input_shape), torch.zeros(n, dtype=torch.int64), 0.5)


@register("inversion", "spy_for_tests", params=EavesdropperParams)
def spy(params, *args, **kwargs):
    """Test attack that records its inputs."""
    SPY["factory"] = (params, args, kwargs)
    return Spy()


@pytest.mark.parametrize("strategy, client", [("fedsgd", {"batch_size": 3, "lr": 0.1}), ("fedavg", {"steps": 2, "batch_size": 1, "lr": 0.1})])
def test_eavesdropper_hands_the_attack_only_what_the_server_received(tiny, strategy, client):
    SPY.clear()
    tiny.update(rounds=2, strategy={"name": strategy}, client=client, model={"name": "mlp", "hidden": [16]})
    tiny["eavesdropper"] = {"name": "spy_for_tests", "rounds": [2], "targets": [1, 3]}
    res = fedsim.run(tiny)
    _, args, kwargs = SPY["factory"]
    assert kwargs == {} and len(args) == 1 and isinstance(args[0], Knowledge)
    calls = SPY["calls"]
    assert len(calls) == 2
    setup = prepare(res.scenario)
    truth = GroundTruth(res.scenario, setup.dataset.x_train, setup.dataset.y_train, setup.partitions)
    zero_share = []  # the spy answers label 0 for every image: label accuracy = share of true 0s
    for (args, kwargs), client_id in zip(calls, [1, 3]):
        assert kwargs == {} and len(args) == 1
        (obs,) = args
        assert type(obs) is Observation and (obs.round, obs.client) == (2, client_id)
        # the upload is the client's real one: recomputing it from the ground truth agrees
        x, y = truth.examples(2, client_id, obs.kind)
        zero_share.append(min(int((y == 0).sum()), len(y) if obs.kind == "gradient" else 2) / len(y))
        params = {n: p.detach().requires_grad_() for n, p in obs.model.named_parameters()}
        expected = compute_upload(obs.model, params, x, y, obs.kind, obs.local)
        for name, value in obs.upload.items():
            torch.testing.assert_close(value, expected[name], atol=1e-6, rtol=1e-5)
        # and nothing in the observation carries the examples
        for field in dataclasses.fields(obs):
            value = getattr(obs, field.name)
            if isinstance(value, torch.Tensor):
                assert value.shape != x.shape
    row = res.metrics.iloc[1]
    assert row["attack_label_acc"] == pytest.approx(np.mean(zero_share))  # multiset ∩ / |true|, by hand
    assert np.isfinite(row["attack_psnr"])
    assert np.isnan(res.metrics.iloc[0].get("attack_psnr", np.nan))  # round 1 not attacked
    assert len((res.run_dir / "attack.jsonl").read_text().splitlines()) == 2
    assert (res.run_dir / "attack_spy_for_tests_round2.png").stat().st_size > 500


def test_client_step_simulation_equals_the_real_client_handlers(tiny):
    sc = fedsim.load_scenario(tiny, {"client.steps": 3, "client.batch_size": 2, "client.momentum": 0.5})
    net = model(hidden=[16])
    x, y = distinct(6)
    sent = RecordDict({"arrays": to_record(net.state_dict()), "config": ConfigRecord({"server-round": 1})})
    for handler, kind in ((fedsgd_train, "gradient"), (fedavg_train, "update")):
        env = ClientEnv(sc, 0, model(seed=9, hidden=[16]), x, y, RecordDict(), {}, 10)
        env.targets = env.model.state_dict(keep_vars=True)
        reply = to_state_dict(handler(sent, env)["arrays"])
        gen = env.generator(1, "shuffle")
        if kind == "gradient":
            order = torch.randperm(6, generator=gen)[:2]
        else:
            order = torch.randperm(6, generator=gen)  # 3 steps of 2 = one epoch
        local = LocalTraining(0.1, 3, 2, 0.5, 0.0)
        upload, _ = client_step(net, x[order], y[order], kind, local, torch.Generator())
        for name, value in upload.items():
            got = reply[name] if kind == "gradient" else reply[name] - net.state_dict()[name]
            torch.testing.assert_close(got, value, atol=1e-6, rtol=1e-5)


def test_fedsgd_round_equals_fedavg_with_one_local_step(tiny):
    tiny.update(rounds=2, client={"steps": 1, "batch_size": 8, "lr": 0.1})
    a = fedsim.run(tiny, strategy__name="fedsgd")
    b = fedsim.run(tiny, strategy__name="fedavg")
    np.testing.assert_allclose(a.metrics["test_loss"], b.metrics["test_loss"], rtol=1e-5)
    np.testing.assert_allclose(a.metrics["train_loss"], b.metrics["train_loss"], rtol=1e-6)


# --------------------------------------------------------------------------- label inference


@pytest.mark.parametrize("arch", [{"name": "mlp", "hidden": [32]}, {"name": "cnn"}])
def test_label_inference_recovers_a_batch_of_distinct_labels(arch):
    net = model(**arch)
    x, y = distinct(6)
    obs, _ = observe(net, x, y)
    for rule in ("auto", "bias-corrected", "yin"):
        assert infer_labels(obs, 6, rule).tolist() == sorted(y.tolist())
    single, _ = observe(net, x[:1], y[:1])
    assert infer_labels(single, 1, "idlg").tolist() == y[:1].tolist()
    update, _ = observe(net, x, y, "update", LocalTraining(0.1, 2, 6))
    assert infer_labels(update, 6).tolist() == sorted(y.tolist())


def test_bias_corrected_rule_counts_repeated_labels():
    net = model(hidden=[32])
    x, y = distinct(3)
    x, y = torch.cat([x, x[:1]]), torch.cat([y, y[:1]])  # one label twice
    obs, _ = observe(net, x, y)
    assert infer_labels(obs, 4, "bias-corrected").tolist() == sorted(y.tolist())


# ----------------------------------------------------------------------------------- attacks

FAST = dict(iterations=150, tv=1e-5, schedule="multistep", early_stop_patience=None, stop_loss=0.0)


def test_ig_recovers_one_digit_from_a_tiny_mlp():
    """Batch 1, no defense, MLP(32), 150 iterations: PSNR above 30 dB (threshold of this test)."""
    x, y = distinct(1, offset=10)
    obs, _ = observe(model(hidden=[32]), x, y)
    rec = InvertingGradients(PixelAttackParams(**FAST)).reconstruct(obs)
    s = score(rec.images, rec.labels, x, y, (0.0, 1.0))
    assert s["label_acc"] == 1.0
    assert s["psnr"] > 30.0, s


def test_ig_replays_a_fedavg_update():
    """3 local steps on a batch of 2 (the order of examples within a step does not matter)."""
    x, y = distinct(2, offset=20)
    obs, _ = observe(model(hidden=[32]), x, y, "update", LocalTraining(0.1, 3, 2))  # 3 full-batch steps
    rec = InvertingGradients(PixelAttackParams(**FAST)).reconstruct(obs)
    assert score(rec.images, rec.labels, x, y, (0.0, 1.0))["psnr"] > 25.0


def test_dia_is_ig_without_dropout_and_is_deterministic():
    x, y = distinct(1, offset=5)
    obs, _ = observe(model(hidden=[32]), x, y)
    params = dict(FAST, iterations=40)
    ig = InvertingGradients(PixelAttackParams(**params)).reconstruct(obs)
    dia = DropoutInversion(DIAParams(**params)).reconstruct(obs)
    again = DropoutInversion(DIAParams(**params)).reconstruct(obs)
    assert torch.equal(ig.images, dia.images) and torch.equal(dia.images, again.images)


def test_dia_beats_ig_under_dropout_and_the_oracle_matches_exactly():
    x, y = distinct(1, offset=30)
    obs, masks = observe(model(hidden=[64, 64], dropout=0.25), x, y)
    ig = InvertingGradients(PixelAttackParams(**FAST)).reconstruct(obs)
    dia = DropoutInversion(DIAParams(**FAST)).reconstruct(obs)
    oracle = well_informed(obs, masks, PixelAttackParams(**FAST))
    psnr = {k: score(r.images, r.labels, x, y, (0.0, 1.0))["psnr"] for k, r in (("ig", ig), ("dia", dia), ("wiig", oracle))}
    assert psnr["dia"] > psnr["ig"] + 8, psnr
    assert oracle.matching_loss < 1e-4 and psnr["wiig"] >= psnr["dia"] - 1, psnr


# ---------------------------------------------------------------------------------- GIFD


def test_l1_ball_projection():
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(5, 3, 4, generator=gen) * 2
    radius = torch.tensor([0.5, 1.0, 3.0, 100.0, 10.0])
    p = project_l1_ball(v, radius)
    norms = p.reshape(5, -1).abs().sum(1)
    assert torch.all(norms <= radius + 1e-5)
    torch.testing.assert_close(p[3], v[3])  # inside the ball: unchanged
    torch.testing.assert_close(project_l1_ball(p, radius), p)  # idempotent
    for i in (0, 1, 2, 4):  # reference: soft-thresholding at θ found by bisection, Σ max(|v|−θ, 0) = r
        a = v[i].flatten().abs()
        lo, hi = 0.0, float(a.max())
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if (a - mid).clamp(min=0).sum() > radius[i] else (lo, mid)
        ref = v[i].sign() * (v[i].abs() - lo).clamp(min=0)
        torch.testing.assert_close(p[i], ref, atol=1e-5, rtol=1e-4)
    z = torch.randn(4, 8, generator=gen)
    torch.testing.assert_close(project_sphere(z * 3, z.norm(dim=1)).norm(dim=1), z.norm(dim=1))


def tiny_prior():
    torch.manual_seed(0)
    return DecoderPrior(latent=8, width=16, image_shape=SHAPE).eval().requires_grad_(False)


def test_decoder_stages_compose_and_gifd_returns_the_image_it_scored():
    G = tiny_prior()
    z = torch.randn(2, 8)
    for stage in range(1, len(G.blocks)):
        torch.testing.assert_close(G(G.feature(z, stage), start=stage), G(z))
    x, y = distinct(1, offset=3)
    net = model("cnn", channels=[4, 8])
    obs, _ = observe(net, x, y)
    params = GIFDParams(steps=10, restarts=2, radii=[0.1, 0.05])
    rec = GIFD(params, G, {}).reconstruct(obs)
    assert rec.matching_loss == min(rec.info[f"stage{k}_loss"] for k in range(3))
    assert torch.equal(rec.images, rec.alternatives[f"stage{int(rec.info['stage'])}"])
    weights = {n: p.detach().requires_grad_() for n, p in net.named_parameters()}
    recomputed = gradient_match(compute_upload(net.eval(), weights, rec.images, rec.labels, "gradient", None), obs.upload, "cosine")
    assert abs(float(recomputed) - rec.matching_loss) < 1e-5  # the returned image is the scored one


def test_prior_diversity_gate_and_cache(tmp_path, monkeypatch):
    real = torch.from_numpy(DIGITS.x_test)
    collapsed = tiny_prior()
    with torch.no_grad():
        collapsed.blocks[-1][0].weight.zero_()  # every sample the same image
    stats = diversity(collapsed, real)
    assert stats["ratio"] < 1e-3 and stats["duplicates"] == 1.0
    with pytest.raises(PriorCollapsed):
        check_diversity(stats, 0.5, 0.1)
    # a briefly trained prior (150 steps: blurry, so a lenient gate here) is cached and reloaded
    cfg = PriorConfig(latent=8, width=16, steps=150, batch_size=32)
    source = {"dataset": "digits", "split": "test"}
    with pytest.raises(PriorCollapsed):  # refused priors are not cached
        load_or_train(real, source, cfg, tmp_path, min_ratio=0.99)
    assert not list(tmp_path.iterdir())
    decoder, report = load_or_train(real, source, cfg, tmp_path, min_ratio=0.1, max_duplicates=0.5)
    assert report["diversity"]["ratio"] >= 0.1 and list(tmp_path.iterdir()) == [tmp_path / report["file"].split("/")[-1]]
    monkeypatch.setattr("fedsim.attacks.inversion.prior.train_prior", lambda *a: pytest.fail("not served from the cache"))
    cached, _ = load_or_train(real, source, cfg, tmp_path, min_ratio=0.1, max_duplicates=0.5)
    z = torch.randn(3, 8)
    torch.testing.assert_close(cached(z), decoder(z))


# ---------------------------------------------------------------------------------- metrics


def test_metrics_match_by_hungarian_assignment_and_count_labels():
    x, y = distinct(4)
    perm = torch.tensor([2, 0, 3, 1])
    assert match(x[perm].numpy(), x.numpy()).tolist() == [1, 3, 0, 2]
    noisy = x[perm] + 0.01
    s = score(noisy, y[perm], x, y, (0.0, 1.0))
    mse = ((noisy[[1, 3, 0, 2]].clamp(0, 1) - x) ** 2).flatten(1).mean(1)
    assert s["psnr"] == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), rel=1e-5)
    assert s["ssim"] > 0.99 and s["label_acc"] == 1.0
    assert label_accuracy(torch.tensor([1, 1, 2]), torch.tensor([1, 2, 2])) == pytest.approx(2 / 3)


def test_fedsim_attack_runs_one_client_step(tiny, tmp_path):
    tiny.update(strategy={"name": "fedsgd"}, client={"batch_size": 1, "lr": 0.1}, model={"name": "mlp", "hidden": [32]})
    tiny["eavesdropper"] = {"name": "ig", "targets": [2], "iterations": 120, "tv": 1e-5}
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump(tiny))
    result = CliRunner().invoke(app, ["attack", str(path)])
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    (line,) = (run_dir / "attack.jsonl").read_text().splitlines()
    rec = json.loads(line)
    assert rec["client"] == 2 and rec["psnr"] > 30 and rec["lpips"].startswith("unavailable")
    assert (run_dir / "attack_ig_round1.png").exists()
    bad = CliRunner().invoke(app, ["attack", str(path), "eavesdropper.iterationz=3"])
    assert bad.exit_code == 2 and "'eavesdropper.iterationz'" in bad.output


def test_eavesdropper_refuses_uploads_it_cannot_replay_and_unknown_targets(tiny, tmp_path):
    from fedsim.attacks.eavesdropper import Attacker, upload_kind

    tiny["eavesdropper"] = {"name": "ig", "targets": [3]}
    assert upload_kind(fedsim.load_scenario(tiny, {"strategy.name": "fedsgd"})) == "gradient"
    assert upload_kind(fedsim.load_scenario(tiny)) == "update"
    with pytest.raises(ValueError, match="own client objective"):
        upload_kind(fedsim.load_scenario(tiny, {"strategy.name": "fedprox"}))
    with pytest.raises(ScenarioError, match=r"'eavesdropper.targets': \[4\] out of range"):  # at validation
        fedsim.load_scenario(tiny, {"eavesdropper.targets": [4]})
    setup = prepare(fedsim.load_scenario(tiny))
    scenario = setup.scenario.model_copy(deep=True)  # built in Python, past validation
    scenario.eavesdropper._params = scenario.eavesdropper.params.model_copy(update={"targets": [4]})
    with pytest.raises(ValueError, match=r"targets \[4\]"):
        Attacker(scenario, setup.dataset, setup.partitions, setup.model, tmp_path)
