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


@pytest.mark.parametrize("z", [0.8, 2.0, 4.0])
def test_poisson_epsilon_without_amplification_is_the_gaussian_mechanisms_gdp(z):
    """q = 1 (every client every round): T rounds of the Gaussian mechanism with multiplier z
    are exactly (√T/z)-GDP (Dong, Roth, Su 2019, Cor. 3.3), whose ε(δ) is a closed form."""
    steps = 50
    ours = privacy.dp_fedavg_epsilon(z, steps, sampling="poisson", population=20, sample_size=20, delta=DELTA,
                                     kind="pld")
    assert ours == pytest.approx(privacy.gdp_epsilon(math.sqrt(steps) / z, DELTA), abs=5e-3)


def test_pinned_reference_values():
    """Poisson-sampled Gaussian: z = 1, q = 4/625, 500 steps, δ = 1e-5."""
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
    """Fixed-size cohorts are not Poisson: replacing one client moves the sum of clipped
    updates by up to 2C, so with the whole population in every cohort a round is the
    Gaussian mechanism with multiplier z/2 (hand-derived), and sampling 4 of 625 costs more
    than Poisson sampling at the same q (no add/remove amplification)."""
    whole = privacy.dp_fedavg_epsilon(4.0, 50, sampling="fixed", population=20, sample_size=20, delta=DELTA)
    assert whole == pytest.approx(
        privacy.dp_fedavg_epsilon(2.0, 50, sampling="none", population=20, sample_size=20, delta=DELTA), rel=1e-9)
    ours = privacy.dp_fedavg_epsilon(1.0, STEPS, sampling="fixed", population=625, sample_size=4, delta=DELTA)
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


# ------------------------------------------ ε of two Gaussians (the canary audit, Andrew et al. 2024)


@pytest.mark.parametrize("shift,std", [(0.5, 1.0), (2.0, 1.0), (0.3, 0.1)])
def test_gaussian_pair_epsilon_with_equal_variances_is_gdp(shift, std):
    """N(0, s²) vs N(m, s²) is exactly (m/s)-GDP (Dong, Roth, Su 2019, Thm 2.7)."""
    assert privacy.gaussian_pair_epsilon(DELTA, 0.0, std, shift, std) == pytest.approx(
        privacy.gdp_epsilon(shift / std, DELTA), abs=1e-4)


@pytest.mark.parametrize("m0,s0,m1,s1,eps", [(0, 1, 2, 0.5, 1.0), (0, 0.01, 0.05, 0.03, 2.0), (0, 1, 3, 2, 0.5),
                                             (1, 2, 0, 1, 0.0)])
def test_gaussian_pair_delta_matches_numerical_integration(m0, s0, m1, s1, eps):
    """δ(ε) = ∫ max(0, p − e^ε q), by adaptive quadrature."""
    from scipy import integrate, stats

    def integrand(x):
        return max(0.0, stats.norm.pdf(x, m0, s0) - math.exp(eps) * stats.norm.pdf(x, m1, s1))

    lo, hi = min(m0 - 12 * s0, m1 - 12 * s1), max(m0 + 12 * s0, m1 + 12 * s1)
    expected = integrate.quad(integrand, lo, hi, limit=500, points=[m0, m1], epsabs=1e-12)[0]
    assert privacy.gaussian_pair_delta(eps, m0, s0, m1, s1) == pytest.approx(expected, rel=1e-6, abs=1e-10)


def test_gaussian_pair_epsilon_is_symmetric_and_reaches_delta():
    eps = privacy.gaussian_pair_epsilon(DELTA, 0.0, 0.01, 0.04, 0.02)
    assert eps == pytest.approx(privacy.gaussian_pair_epsilon(DELTA, 0.04, 0.02, 0.0, 0.01))
    worst = max(privacy.gaussian_pair_delta(eps, 0.0, 0.01, 0.04, 0.02),
                privacy.gaussian_pair_delta(eps, 0.04, 0.02, 0.0, 0.01))
    assert worst == pytest.approx(DELTA, rel=1e-3)
