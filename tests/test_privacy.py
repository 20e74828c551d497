"""fedsim.privacy against dp-accounting itself, Opacus, pinned reference values, and the GDP
conversion the canary audit uses."""

import math

import dp_accounting as dpa
import pytest
from dp_accounting import pld, rdp

from fedsim import privacy

Q, STEPS, DELTA = 4 / 625, 500, 1e-5


def _poisson_rdp(z, q=Q, steps=STEPS):
    acc = rdp.RdpAccountant()
    acc.compose(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z)), steps)
    return acc.get_epsilon(DELTA)


@pytest.mark.parametrize("z", [0.8, 1.0, 2.0])
def test_poisson_epsilon_is_dp_accountings(z):
    ours = privacy.dp_fedavg_epsilon(z, STEPS, sampling="poisson", population=625, sample_size=4, delta=DELTA)
    assert ours == pytest.approx(_poisson_rdp(z), rel=1e-12)


def test_pinned_reference_values():
    """privacy.md §1.3: z = 1, q = 4/625, 500 steps, δ = 1e-5."""
    kw = dict(sampling="poisson", population=625, sample_size=4, delta=DELTA)
    assert privacy.dp_fedavg_epsilon(1.0, STEPS, **kw) == pytest.approx(1.216, abs=1e-3)
    assert privacy.dp_fedavg_epsilon(1.0, STEPS, kind="pld", **kw) == pytest.approx(0.825, abs=2e-3)


@pytest.mark.parametrize("z", [0.8, 1.0, 2.0])
def test_rdp_agrees_with_opacus(z):
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(z, Q, STEPS)]
    ours = privacy.dp_fedavg_epsilon(z, STEPS, sampling="poisson", population=625, sample_size=4, delta=DELTA)
    assert ours == pytest.approx(acc.get_epsilon(DELTA), abs=1e-3)


def test_pld_is_tighter_than_rdp():
    kw = dict(sampling="poisson", population=625, sample_size=4, delta=DELTA)
    for z in (0.8, 1.0, 2.0):
        assert privacy.dp_fedavg_epsilon(z, 200, kind="pld", **kw) < privacy.dp_fedavg_epsilon(z, 200, **kw)


def test_fixed_size_sampling_uses_the_replace_one_bound_with_sensitivity_2c():
    """Fixed-size cohorts are not Poisson: the bound is sampling without replacement under
    replace-one neighbours, whose Gaussian event has multiplier z/2."""
    ours = privacy.dp_fedavg_epsilon(1.0, STEPS, sampling="fixed", population=625, sample_size=4, delta=DELTA)
    acc = rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    acc.compose(dpa.SampledWithoutReplacementDpEvent(625, 4, dpa.GaussianDpEvent(0.5)), STEPS)
    assert ours == pytest.approx(acc.get_epsilon(DELTA), rel=1e-12)
    assert ours > _poisson_rdp(1.0)


def test_unsampled_gaussian_rdp_is_alpha_over_2_z_squared():
    """No amplification: the RDP curve of T rounds is T·α/(2z²) at every order."""
    z, steps = 3.0, 10
    acc = rdp.RdpAccountant()
    acc.compose(dpa.GaussianDpEvent(z), steps)
    for order, value in zip(acc._orders, acc._rdp):
        assert value == pytest.approx(steps * order / (2 * z * z), rel=1e-9)
    expected = acc.get_epsilon(DELTA)
    assert privacy.dp_fedavg_epsilon(z, steps, sampling="none", population=10, sample_size=10, delta=DELTA) == expected


@pytest.mark.parametrize("sampling", ["poisson", "fixed"])
def test_calibrated_noise_multiplier_meets_the_target(sampling):
    kw = dict(sampling=sampling, population=100, sample_size=20, delta=DELTA)
    z = privacy.calibrate_noise_multiplier(4.0, 50, **kw)
    assert privacy.dp_fedavg_epsilon(z, 50, **kw) <= 4.0
    assert privacy.dp_fedavg_epsilon(z * 0.98, 50, **kw) > 4.0  # and it is (nearly) the smallest


def test_epsilon_grows_with_rounds_and_is_infinite_without_noise():
    kw = dict(sampling="poisson", population=100, sample_size=10, delta=DELTA)
    eps = [privacy.dp_fedavg_epsilon(1.0, t, **kw) for t in (0, 1, 10, 100)]
    assert eps[0] == 0 and eps == sorted(eps) and eps[1] < eps[-1]
    assert math.isinf(privacy.dp_fedavg_epsilon(0.0, 10, **kw))


@pytest.mark.parametrize("mu", [0.3, 1.0, 3.0])
def test_gdp_epsilon_inverts_gdp_delta(mu):
    eps = privacy.gdp_epsilon(mu, DELTA)
    assert privacy.gdp_delta(mu, eps) == pytest.approx(DELTA, rel=1e-4)
    assert privacy.gdp_epsilon(mu * 1.5, DELTA) > eps


def test_gdp_epsilon_of_a_gaussian_mechanism_matches_pld():
    """One Gaussian mechanism with multiplier z is exactly (1/z)-GDP: the PLD accountant agrees."""
    z = 2.0
    acc = pld.PLDAccountant()
    acc.compose(dpa.GaussianDpEvent(z))
    assert privacy.gdp_epsilon(1 / z, DELTA) == pytest.approx(acc.get_epsilon(DELTA), abs=5e-3)
