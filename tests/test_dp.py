"""DP-FedAvg (defenses/dp.py) and the canary audit (fedsim/audit.py) on real runs."""

import json

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from scipy import stats

import fedsim
from fedsim.defenses.dp import CENTRED_BIT, CLIENT_STD, CLIP, dp_mod
from fedsim import privacy
from fedsim.records import flatten, to_record
from fedsim.apps.setup import prepare
from fedsim.scenario import ScenarioError, load


def _dp(tiny, **defense):
    tiny = {**tiny, "num_clients": 10, "partition": {"name": "iid"}, "strategy": {"name": "fedavg", "fraction_train": 0.5}}
    return {**tiny, "defense": {"name": "dp", "clipping_norm": 0.5, **defense}}


def _vector(model):
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach()


class _Env:
    def generator(self, server_round, purpose):
        return torch.Generator().manual_seed(7)


def _instruction(state, clip, std=0.0):
    config = ConfigRecord({CLIP: clip, CLIENT_STD: std, "server-round": 1})
    return RecordDict({"arrays": to_record(state), "config": config})


def test_client_mod_clips_the_update_in_l2_and_leaves_small_ones_alone():
    sent = {"w": torch.zeros(50), "b": torch.zeros(3)}
    for scale, clipped in ((10.0, True), (0.01, False)):
        trained = {"w": torch.full((50,), scale), "b": torch.full((3,), -scale)}
        reply = RecordDict({"arrays": to_record(trained), "metrics": MetricRecord({"train_loss": 0.0})})
        out = dp_mod(_instruction(sent, 1.0), reply, _Env())
        update = flatten(out["arrays"])
        norm = scale * np.sqrt(53)
        assert float(update.norm()) == pytest.approx(min(norm, 1.0), rel=1e-6)
        assert float(update.norm()) <= 1.0 * (1 + 1e-6)
        assert out["metrics"][CENTRED_BIT] == (-0.5 if clipped else 0.5)
        if clipped:  # L2 clipping scales; it keeps the direction
            assert torch.allclose(update / update.norm(), flatten(to_record(trained)) / norm, atol=1e-6)


def _chi2_interval(n, std, level=1e-4):
    lo, hi = stats.chi2.ppf([level / 2, 1 - level / 2], n)
    return std * np.sqrt(lo / n), std * np.sqrt(hi / n)


def test_server_noise_on_zero_updates_has_the_configured_std(tiny):
    """lr → 0: every update is (numerically) zero, so θ_1 − θ_0 is the added noise alone."""
    sc = _dp(tiny, noise_multiplier=2.0, sampling="fixed")
    sc["client"] = {**sc["client"], "lr": 1e-12}
    sc["rounds"] = 1
    before = prepare(load(sc)).model
    result = fedsim.run(sc)
    noise = _vector(result.model) - _vector(before)
    std = 2.0 * 0.5 / 5  # z·C / m on the mean of m = 5 clipped updates
    assert result.metrics["noise_std"].iloc[0] == pytest.approx(std)
    lo, hi = _chi2_interval(noise.numel(), std)
    assert lo < float(noise.pow(2).mean().sqrt()) < hi
    assert abs(float(noise.mean())) < 5 * std / np.sqrt(noise.numel())


def test_client_noise_shares_sum_to_the_same_std(tiny):
    sc = _dp(tiny, noise_multiplier=2.0, sampling="fixed", noise="client")
    sc["client"] = {**sc["client"], "lr": 1e-12}
    sc["rounds"] = 1
    before = prepare(load(sc)).model
    result = fedsim.run(sc)
    noise = _vector(result.model) - _vector(before)
    lo, hi = _chi2_interval(noise.numel(), 2.0 * 0.5 / 5)
    assert lo < float(noise.pow(2).mean().sqrt()) < hi


def test_poisson_cohorts_vary_average_qn_and_epsilon_is_accounted_each_round(tiny):
    sc = _dp(tiny, noise_multiplier=1.0)
    sc["rounds"] = 8
    df = fedsim.run(sc).metrics
    sizes = df["clients_sampled"].tolist()
    assert len(set(sizes)) > 1 and 2 <= np.mean(sizes) <= 8  # q·N = 5 on average
    expected = [privacy.dp_fedavg_epsilon(1.0, r, sampling="poisson", population=10, sample_size=5, delta=1e-5)
                for r in range(1, 9)]
    assert df["epsilon"].tolist() == pytest.approx(expected, rel=1e-9)
    assert fedsim.run(sc).metrics["clients_sampled"].tolist() == sizes  # cohorts are seeded


def test_target_epsilon_is_met_at_the_last_round(tiny):
    sc = _dp(tiny, target_epsilon=5.0)
    sc["rounds"] = 4
    result = fedsim.run(sc)
    assert result.metrics["epsilon"].iloc[-1] == pytest.approx(5.0, rel=1e-2)
    assert result.metrics["epsilon"].iloc[-1] <= 5.0
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["epsilon"] == result.metrics["epsilon"].iloc[-1]


def test_adaptive_clipping_grows_the_norm_when_every_update_is_clipped(tiny):
    sc = _dp(tiny, noise_multiplier=0.5, adaptive=True, clipping_norm=1e-4, clip_lr=0.2, clipped_count_stddev=2.0)
    sc["rounds"] = 4
    clips = fedsim.run(sc).metrics["clip_norm"].tolist()
    assert clips[0] == 1e-4
    # b̄ ≈ 0 (all clipped): C grows by about exp(0.2·0.5) per round
    ratios = np.array(clips[1:]) / np.array(clips[:-1])
    assert np.all(ratios > 1.0) and np.exp(0.1) * 0.7 < np.exp(np.log(ratios).mean()) < np.exp(0.1) * 1.3


def _bit_sensitivity():
    """Largest |value| a client sends for the clip count (add/remove-one: the sum moves by it),
    measured on dp_mod's replies for a clipped and an unclipped update."""
    sent = {"w": torch.zeros(4)}
    sent_values = []
    for scale in (10.0, 0.01):
        reply = RecordDict({"arrays": to_record({"w": torch.full((4,), scale)}), "metrics": MetricRecord({"train_loss": 0.0})})
        sent_values.append(dp_mod(_instruction(sent, 1.0), reply, _Env())["metrics"][CENTRED_BIT])
    return max(abs(v) for v in sent_values)


@pytest.mark.parametrize("target", [4.0, 8.0])
def test_adaptive_clipping_reports_the_epsilon_of_the_mechanism_it_runs(target):
    """Andrew et al. (2021) Thm 1 under Poisson sampling. Each round releases the noised sum
    of clipped updates (sensitivity C, noise z_Δ·C) and the noised sum of clip bits
    (sensitivity s_b as measured on dp_mod's replies, noise σ_b). ε of that mechanism, composed
    by dp-accounting as a Poisson-sampled pair of Gaussians, must equal the reported ε (the
    target). Before the fix clients sent raw bits (s_b = 1) and N=300, q=0.1, T=30 gave ε 5.60
    for target 4 and 9.75 for target 8."""
    from types import SimpleNamespace

    import dp_accounting as dpa
    from dp_accounting import rdp

    from fedsim.defenses.dp import DPFedAvg, DPParams

    setup = SimpleNamespace(scenario=SimpleNamespace(seed=0, num_clients=300, rounds=30),
                            model=torch.nn.Linear(2, 1))
    inner = SimpleNamespace(fraction_train=0.1, min_train_nodes=1)
    dp = DPFedAvg(inner, DPParams(target_epsilon=target, adaptive=True), setup)
    z_delta = dp.z_update  # noise std on the sum of updates, in units of C
    sigma_b, s_b = dp.sigma_b, _bit_sensitivity()
    assert s_b == 0.5
    round_event = dpa.PoissonSampledDpEvent(
        0.1, dpa.ComposedDpEvent([dpa.GaussianDpEvent(z_delta), dpa.GaussianDpEvent(sigma_b / s_b)]))
    acc = rdp.RdpAccountant()
    acc.compose(dpa.SelfComposedDpEvent(round_event, 30))
    true_eps = acc.get_epsilon(1e-5)
    assert dp.epsilon(30) == pytest.approx(true_eps, rel=1e-3)
    assert true_eps == pytest.approx(target, rel=1e-2)


def test_invalid_defense_settings_are_named(tiny):
    with pytest.raises(ScenarioError, match="defense.name"):
        load({**_dp(tiny, noise_multiplier=1.0), "strategy": {"name": "scaffold"}})
    with pytest.raises(ScenarioError, match="exactly one of noise_multiplier and target_epsilon"):
        load(_dp(tiny, noise_multiplier=1.0, target_epsilon=3.0))
    with pytest.raises(ScenarioError, match="needs sampling: fixed"):
        load(_dp(tiny, noise_multiplier=1.0, noise="client"))


# ----------------------------------------------------------------------- canary audit


def _audited(tiny, rounds=12, **defense):
    sc = {**tiny, "num_clients": 20, "rounds": rounds, "partition": {"name": "iid"},
          "strategy": {"name": "fedavg", "fraction_train": 0.5}, "audit": {"canaries": 8, "held_out": 200}}
    if defense:
        sc["defense"] = {"name": "dp", "clipping_norm": 0.5, **defense}
    return sc


def test_canary_clients_upload_exactly_their_direction(tiny):
    """A canary's upload is received + C·u_j: with a single canary client sampled every round
    and no other change, the model moves by C·u_j per round."""
    from fedsim.world.audit import canary_clients, direction

    sc = _audited(tiny, rounds=2)
    sc["num_clients"], sc["audit"] = 2, {"canaries": 1, "held_out": 2, "norm": 0.3}
    sc["strategy"] = {"name": "fedavg", "fraction_train": 1.0}
    sc["client"] = {**sc["client"], "lr": 1e-12}
    sc["partition"] = {"name": "iid"}
    before = prepare(load(sc)).model
    result = fedsim.run(sc)
    moved = _vector(result.model) - _vector(before)
    (canary,) = canary_clients(3, 2, 1)
    sizes = [len(p) for p in prepare(load(sc)).partitions]
    weight = sizes[canary] / sum(sizes)  # FedAvg's example weight of the canary client
    expected = 2 * weight * 0.3 * direction(3, 0, moved.numel())
    assert torch.allclose(moved, expected, atol=1e-5)


def test_audit_separates_an_undefended_run_from_a_dp_run_and_does_not_contradict_its_epsilon(tiny):
    plain = fedsim.run(_audited(tiny))
    audit = json.loads((plain.run_dir / "audit.json").read_text())
    private = fedsim.run(_audited(tiny, target_epsilon=4.0))
    summary = json.loads((private.run_dir / "summary.json").read_text())
    dp_audit = summary["audit"]
    assert audit["epsilon_audit"] > 10  # canaries stand far out of N(0, 1/d)
    # the DP run's whole interval lies below the undefended run's: the noise is there
    assert dp_audit["epsilon_audit_ci95"][1] < audit["epsilon_audit_ci95"][0]
    # a sound formal ε is not contradicted: the interval's lower end is below it
    assert dp_audit["epsilon_audit_ci95"][0] <= summary["epsilon"] <= 4.0


def _gaussian_mechanism_delta(seed, canaries, dim, amplitudes=None):
    """θ_T − θ_0 of a Gaussian mechanism: Σ_j a_j·u_j + N(0, I), canary j inserted with a_j
    (1 by default: every canary is 1-GDP against the observer's projection on u_j)."""
    from fedsim.world.audit import direction

    gen = torch.Generator().manual_seed(seed)
    amplitudes = [1.0] * canaries if amplitudes is None else amplitudes
    signal = sum(a * direction(seed, j, dim) for j, a in enumerate(amplitudes))
    return signal + torch.randn(dim, generator=gen)


def test_audit_recovers_the_epsilon_of_a_gaussian_mechanism_with_many_canaries():
    """Each inserted u_j is seen through N(1, 1) against N(0, 1): 1-GDP, ε(δ=1e-5) = 4.38
    (Dong, Roth, Su 2019, Cor. 2.13). With 200 canaries the estimate lands near it; with
    20 its bootstrap interval is several times wider (the noise the README reports)."""
    from fedsim.world.audit import estimate

    truth = privacy.gdp_epsilon(1.0, 1e-5)
    assert truth == pytest.approx(4.377, abs=1e-3)
    many = estimate(_gaussian_mechanism_delta(1, 200, 20000), 1, 200, 50, 1e-5)
    few = estimate(_gaussian_mechanism_delta(1, 20, 20000), 1, 20, 50, 1e-5)
    assert 0.8 * truth < many["epsilon_audit"] < 1.4 * truth
    assert many["epsilon_audit_ci95"][0] < truth * 1.1
    width = lambda r: r["epsilon_audit_ci95"][1] - r["epsilon_audit_ci95"][0]  # noqa: E731
    assert width(few) > 3 * width(many)


def test_audit_counts_the_spread_of_the_canary_cosines():
    """Canaries inserted a varying number of times (amplitudes 0..2) spread their cosines
    wider than the null N(0, 1/d). Alg. 1 fits that spread; the equal-variance estimate,
    which reads only the mean shift, is then much smaller."""
    from fedsim.world.audit import estimate

    amplitudes = [0.0, 2.0] * 10
    result = estimate(_gaussian_mechanism_delta(2, 20, 20000, amplitudes), 2, 20, 50, 1e-5)
    assert result["cos_in_std"] > 1.5 / np.sqrt(20000)
    assert result["epsilon_audit"] > 2 * result["epsilon_audit_equal_variance"]


def test_audit_refuses_strategies_without_canary_clients(tiny):
    sc = {**tiny, "dataset": {"name": "diabetes"}, "model": {"name": "fc10"}, "partition": {"name": "iid"},
          "strategy": {"name": "dpgd", "epsilon": 3.0}, "audit": {"canaries": 1}}
    with pytest.raises(ScenarioError, match="strategy 'dpgd' has no canary clients"):
        load(sc)
