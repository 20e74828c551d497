"""Privacy accounting for fedsim's defenses, in one place, on Google's dp-accounting.

Which bound applies depends on how the run samples its clients:

- ``poisson``: every client joins a round independently with probability q (DP-FedAvg as
  McMahan et al. 2018 run it; fedsim's ``dp`` defense samples this way when asked).
  ``PoissonSampledDpEvent`` under add/remove-one neighbours: the tight, usual bound.
- ``fixed``: a fixed-size cohort of m out of N clients, uniformly without replacement
  (Flower's and fedsim's samplers). This is not Poisson sampling; the bound that applies
  is ``SampledWithoutReplacementDpEvent`` under replace-one neighbours, where one client's
  clipped update can move the sum by 2C, so the Gaussian event's multiplier is z/2
  (dp-accounting's ``GaussianDpEvent(z)`` assumes sensitivity 1 whatever the relation).
- ``none``: no amplification by sampling (every round counts in full; add/remove-one).

``rdp`` (Rényi DP, Mironov 2017) is the default accountant; ``pld`` (privacy loss
distributions) is tighter and slower. Both come from dp-accounting; Opacus is used in
the tests as a cross-check only.

SGM and DIFF2 have accountants of their own here (``sgm_*``, ``diff2_*``), following
their papers' routes; ``gdp_epsilon`` turns the canary audit's Gaussian separation into
an (ε, δ) lower bound.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import dp_accounting as dpa
from dp_accounting import pld, rdp
from scipy import optimize, special, stats

# dp-accounting logs a warning for every fractional Rényi order whose series does not
# converge (it then leaves that order out, which keeps the bound valid)
logging.getLogger("absl").setLevel(logging.ERROR)

Sampling = Literal["poisson", "fixed", "none"]
AccountantKind = Literal["rdp", "pld"]

ADD_REMOVE = dpa.NeighboringRelation.ADD_OR_REMOVE_ONE
REPLACE_ONE = dpa.NeighboringRelation.REPLACE_ONE

SAMPLING_BOUND = {
    "poisson": "Poisson-sampled Gaussian, add/remove-one neighbours",
    "fixed": "fixed-size sampling without replacement, replace-one neighbours (sensitivity 2C)",
    "none": "Gaussian without amplification by sampling, add/remove-one neighbours",
}


def gaussian_round(
    noise_multiplier: float, sampling: Sampling, population: int, sample_size: int
) -> tuple[dpa.DpEvent, dpa.NeighboringRelation]:
    """One round of the sampled Gaussian mechanism with noise std ``noise_multiplier``·C on
    the sum of updates clipped to C, as the run samples its clients (module docstring)."""
    if sampling == "poisson":
        return dpa.PoissonSampledDpEvent(sample_size / population, dpa.GaussianDpEvent(noise_multiplier)), ADD_REMOVE
    if sampling == "fixed":
        event = dpa.GaussianDpEvent(noise_multiplier / 2)  # relative to the replace-one sensitivity 2C
        return dpa.SampledWithoutReplacementDpEvent(population, sample_size, event), REPLACE_ONE
    return dpa.GaussianDpEvent(noise_multiplier), ADD_REMOVE


def _accountant(kind: AccountantKind, relation: dpa.NeighboringRelation):
    if kind == "pld":
        return pld.PLDAccountant(neighboring_relation=relation)
    return rdp.RdpAccountant(neighboring_relation=relation)


def epsilon(
    event: dpa.DpEvent, relation: dpa.NeighboringRelation, delta: float, kind: AccountantKind = "rdp"
) -> float:
    """ε at ``delta`` of a (composed) DpEvent."""
    acc = _accountant(kind, relation)
    acc.compose(event)
    return float(acc.get_epsilon(delta))


def dp_fedavg_epsilon(
    noise_multiplier: float,
    rounds: int,
    *,
    sampling: Sampling,
    population: int,
    sample_size: int,
    delta: float,
    kind: AccountantKind = "rdp",
) -> float:
    """ε after ``rounds`` rounds of DP-FedAvg (McMahan et al. 2018, Alg. 1)."""
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    event, relation = gaussian_round(noise_multiplier, sampling, population, sample_size)
    return epsilon(dpa.SelfComposedDpEvent(event, rounds), relation, delta, kind)


def calibrate_noise_multiplier(
    target_epsilon: float,
    rounds: int,
    *,
    sampling: Sampling,
    population: int,
    sample_size: int,
    delta: float,
    kind: AccountantKind = "rdp",
) -> float:
    """The smallest noise multiplier whose ε after ``rounds`` rounds is at most the target
    (``dp_accounting.calibrate_dp_mechanism``)."""

    def make_event(z: float) -> dpa.DpEvent:
        return dpa.SelfComposedDpEvent(gaussian_round(z, sampling, population, sample_size)[0], rounds)

    relation = gaussian_round(1.0, sampling, population, sample_size)[1]
    return float(
        dpa.calibrate_dp_mechanism(
            lambda: _accountant(kind, relation),
            make_event,
            target_epsilon,
            delta,
            bracket_interval=dpa.LowerEndpointAndGuess(1e-3, 1.0),
            tol=1e-4,
        )
    )


# --------------------------------------------------------------------------- SGM


def sgm_secret_sketch_epsilon(
    sigma_g: float, clip: float, sketch_dim: int, sampling_rate: float, rounds: int, delta: float
) -> float:
    """The SGM paper's bound for an observer who never sees the sketch R_t
    (Li, Chen, Banerjee 2025, Lemma 2.2 and Thm 2.2 / 3.1, App. C.2):

    1. per round, the RDP of the marginal N(0, (‖γ‖²/b + σ²)I_b) is at most
       α²τ⁴/((α−1)bσ_g⁴); with δ₀ = δ/(2qT) the best order is α* = 1 + √(1 + bσ_g⁴ln(1/δ₀)/τ⁴)
       and ε₀ = α*²τ⁴/((α*−1)bσ_g⁴) + ln(1/δ₀)/(α*−1);
    2. amplification by subsampling: ε₁ = ln(1 + q(e^ε₀ − 1)), δ₁ = qδ₀;
    3. strong composition over T rounds with δ' = δ/2:
       ε = √(2T ln(1/δ'))·ε₁ + Tε₁(e^ε₁ − 1).
    """
    if rounds == 0:
        return 0.0
    if sigma_g == 0:
        return math.inf
    q, t, tau4 = sampling_rate, rounds, clip**4
    delta0 = delta / (2 * q * t)
    log_inv = math.log(1 / delta0)
    ratio = sketch_dim * sigma_g**4 / tau4
    alpha = 1 + math.sqrt(1 + ratio * log_inv)
    eps0 = alpha**2 / ((alpha - 1) * ratio) + log_inv / (alpha - 1)
    try:
        eps1 = math.log1p(q * math.expm1(eps0))
        return math.sqrt(2 * t * math.log(2 / delta)) * eps1 + t * eps1 * math.expm1(eps1)
    except OverflowError:  # e^ε beyond float range (tiny bσ_g⁴/τ⁴): no useful bound
        return math.inf


def sketch_norm_factor(sketch_dim: int, clients_per_round: int, rounds: int, delta: float) -> float:
    """ρ with ‖Rĝ‖ ≤ τρ for all clients and rounds with probability ≥ 1 − δ
    (SGM Lemma B.1 = Song et al. 2023 Lemma D.24): ρ = √(1 + log^1.5(2mT/δ)/√b)."""
    return math.sqrt(1 + math.log(2 * clients_per_round * rounds / delta) ** 1.5 / math.sqrt(sketch_dim))


def sgm_public_sketch_epsilon(
    sigma_g: float,
    clip: float,
    sketch_dim: int,
    rounds: int,
    *,
    sampling: Sampling,
    population: int,
    sample_size: int,
    delta: float,
    kind: AccountantKind = "rdp",
) -> float:
    """A conservative bound for an observer who knows R_t (anyone who sees the de-sketched
    model updates): conditioned on R_t the round is a Gaussian mechanism on R_t·Σ Δ̂ with
    noise std √m·σ_g (m clients each add N(0, σ_g²)) and sensitivity τρ (SGM Thm 2.1,
    ``sketch_norm_factor``), so z = √m·σ_g/(τρ). Half of δ pays for the norm bound
    failing, half goes to the accountant."""
    if rounds == 0:
        return 0.0
    rho = sketch_norm_factor(sketch_dim, sample_size, rounds, delta / 2)
    z = math.sqrt(sample_size) * sigma_g / (clip * rho)
    return dp_fedavg_epsilon(
        z, rounds, sampling=sampling, population=population, sample_size=sample_size, delta=delta / 2, kind=kind
    )


def sgm_calibrate_sigma(
    target_epsilon: float, clip: float, sketch_dim: int, sampling_rate: float, rounds: int, delta: float
) -> float:
    """The smallest σ_g (to a relative 1e-6) whose secret-sketch ε after ``rounds`` rounds
    is at most ``target_epsilon`` (``sgm_secret_sketch_epsilon`` decreases in σ_g, as
    bσ_g⁴/τ⁴ grows): bisection on log σ_g, returning the upper end of the last bracket."""
    if target_epsilon <= 0:
        raise ValueError("target_epsilon must be positive")

    def eps(sigma: float) -> float:
        return sgm_secret_sketch_epsilon(sigma, clip, sketch_dim, sampling_rate, rounds, delta)

    lo, hi = 1e-6, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e8:
            raise ValueError(f"no σ_g ≤ 1e8 reaches ε = {target_epsilon} (sketch_dim {sketch_dim})")
    while hi / lo > 1 + 1e-6:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if eps(mid) <= target_epsilon else (mid, hi)
    return hi


# --------------------------------------------------------------------------- DIFF2


def diff2_sigmas(
    target_epsilon: float, delta: float, rounds: int, restart: int, n_min: int, clients: int, u: float = 1.25
) -> tuple[float, float]:
    """DIFF2's noise calibration (Murata & Suzuki 2023, the privacy analysis of DIFF2): with the fixed
    Rényi order α = 1 + ⌈2 ln(1/δ)/ε⌉,
    σ₁ = √((4u if T > 1 else 4)·α·R/(T·n²P²ε)) for anchors and
    σ₂ = √(4u/(u−1)·α·R/(n²P²ε)) for differences (n = n_min, P clients)."""
    alpha = 1 + math.ceil(2 * math.log(1 / delta) / target_epsilon)
    scale = alpha * rounds / (n_min**2 * clients**2 * target_epsilon)
    sigma1 = math.sqrt((4 * u if restart > 1 else 4) * scale / restart)
    sigma2 = math.sqrt(4 * u / (u - 1) * scale)
    return sigma1, sigma2


def diff2_rounds(rounds: int, restart: int) -> tuple[int, int]:
    """(anchor rounds, difference rounds) among the first ``rounds`` rounds: r % T == 0 anchors."""
    anchors = math.ceil(rounds / restart)
    return anchors, rounds - anchors


def diff2_epsilon(
    sigma1: float, sigma2: float, rounds: int, restart: int, n_min: int, clients: int, delta: float,
    kind: AccountantKind = "rdp",
) -> float:
    """ε of DIFF2 after ``rounds`` rounds, sample-level, replace-one neighbours: the averaged
    clipped statistic has sensitivity 2C/(nP) and noise Cσ, so each round is a Gaussian event
    with multiplier z = σnP/2 (σ₁ for anchors, σ₂ for differences); full batches, so no
    amplification. Infinite when a used σ is 0."""
    anchors, diffs = diff2_rounds(rounds, restart)
    if rounds == 0:
        return 0.0
    if sigma1 == 0 or (diffs and sigma2 == 0):
        return math.inf
    events = [dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(sigma1 * n_min * clients / 2), anchors)]
    if diffs:
        events.append(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(sigma2 * n_min * clients / 2), diffs))
    return epsilon(dpa.ComposedDpEvent(events), REPLACE_ONE, delta, kind)


# --------------------------------------------------------------------------- DIFF2 calibration


def diff2_calibrated_sigmas(
    target_epsilon: float, delta: float, rounds: int, restart: int, n_min: int, clients: int, u: float = 1.25,
    kind: AccountantKind = "rdp", rtol: float = 1e-4,
) -> tuple[float, float]:
    """The paper's (σ₁, σ₂) (``diff2_sigmas``) times the smallest common factor s for which
    ``diff2_epsilon(sσ₁, sσ₂, ...)`` ≤ the target: the paper's fixed-order recipe is
    conservative, so s < 1 and the run spends its whole budget.
    Bisection on log s to relative precision ``rtol``; the returned pair meets the target."""
    sigma1, sigma2 = diff2_sigmas(target_epsilon, delta, rounds, restart, n_min, clients, u)

    def fits(s: float) -> bool:
        return diff2_epsilon(s * sigma1, s * sigma2, rounds, restart, n_min, clients, delta, kind) <= target_epsilon

    lo, hi = 1.0, 1.0
    while not fits(hi):
        hi *= 2
    while fits(lo):
        lo /= 2
        if lo < 1e-12:
            return lo * sigma1, lo * sigma2
    while hi / lo > 1 + rtol:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi * sigma1, hi * sigma2


# --------------------------------------------------------------------------- audits


def gdp_delta(mu: float, eps: float) -> float:
    """δ(ε) of μ-Gaussian DP (Dong, Roth, Su 2019, Cor. 2.13):
    Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2)."""
    second = math.exp(eps + stats.norm.logcdf(-eps / mu - mu / 2))  # e^ε Φ(·) without overflow
    return float(stats.norm.cdf(-eps / mu + mu / 2) - second)


def gdp_epsilon(mu: float, delta: float) -> float:
    """The ε at which μ-GDP reaches ``delta`` (0 when μ-GDP is already (0, δ)-DP)."""
    if mu <= 0 or gdp_delta(mu, 0.0) <= delta:
        return 0.0
    hi = 1.0
    while gdp_delta(mu, hi) > delta:
        hi *= 2
        if hi > 1e4:
            return math.inf
    return float(optimize.brentq(lambda e: gdp_delta(mu, e) - delta, 0.0, hi, xtol=1e-6))


def _exp_times(eps: float, mass: float) -> float:
    """e^ε·mass without overflow (inf when it exceeds a float)."""
    if mass <= 0:
        return 0.0
    log = eps + math.log(mass)
    return math.inf if log > 709 else math.exp(log)


def gaussian_pair_delta(eps: float, mean0: float, std0: float, mean1: float, std1: float) -> float:
    """Hockey-stick divergence sup_S P(S) − e^ε Q(S) of P = N(mean0, std0²) and
    Q = N(mean1, std1²), in closed form: S = {x: log p(x) − log q(x) > ε} is where a
    quadratic a·x² + b·x + c is positive (an interval, its complement, a half-line or
    empty), and δ = P(S) − e^ε Q(S)."""
    a = 1 / (2 * std1**2) - 1 / (2 * std0**2)
    b = mean0 / std0**2 - mean1 / std1**2
    c = mean1**2 / (2 * std1**2) - mean0**2 / (2 * std0**2) + math.log(std1 / std0) - eps
    p, q = (mean0, std0), (mean1, std1)

    def mass(dist, lo, hi):  # N(mean, std²)((lo, hi)), from the nearer tail to avoid cancellation
        mean, std = dist
        lo, hi = (lo - mean) / std, (hi - mean) / std
        return max(0.0, float(special.ndtr(hi) - special.ndtr(lo)) if hi <= 0 else float(special.ndtr(-lo) - special.ndtr(-hi)))

    if abs(a) < 1e-12 * max(abs(b), 1e-300):  # equal variances: a half-line
        if b == 0:
            return max(0.0, 1.0 - math.exp(eps)) if c > 0 else 0.0
        x0 = -c / b
        lo, hi = (x0, math.inf) if b > 0 else (-math.inf, x0)
        return max(0.0, mass(p, lo, hi) - _exp_times(eps, mass(q, lo, hi)))
    disc = b * b - 4 * a * c
    if disc <= 0:  # the quadratic keeps the sign of a
        return max(0.0, 1.0 - math.exp(eps)) if a > 0 else 0.0
    r1, r2 = sorted(((-b - math.sqrt(disc)) / (2 * a), (-b + math.sqrt(disc)) / (2 * a)))
    if a < 0:  # positive between the roots
        return max(0.0, mass(p, r1, r2) - _exp_times(eps, mass(q, r1, r2)))
    outside = lambda d: mass(d, -math.inf, r1) + mass(d, r2, math.inf)  # noqa: E731
    return max(0.0, outside(p) - _exp_times(eps, outside(q)))


def gaussian_pair_epsilon(delta: float, mean0: float, std0: float, mean1: float, std1: float) -> float:
    """The smallest ε ≥ 0 at which N(mean0, std0²) and N(mean1, std1²) are (ε, δ)-indistinguishable
    in both directions (the ε of Andrew et al., ICLR 2024, Alg. 1, for the null N(0, 1/d) and the
    canary cosines' N(μ̂, σ̂²)); inf past ε = 1e4."""

    def excess(e: float) -> float:
        return max(gaussian_pair_delta(e, mean0, std0, mean1, std1),
                   gaussian_pair_delta(e, mean1, std1, mean0, std0)) - delta

    if excess(0.0) <= 0:
        return 0.0
    hi = 1.0
    while excess(hi) > 0:
        hi *= 2
        if hi > 1e4:
            return math.inf
    return float(optimize.brentq(excess, 0.0, hi, xtol=1e-6))

