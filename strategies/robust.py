"""Byzantine-robust aggregation baselines on Fed-NGA's update path.

Every strategy here shares Fed-NGA's protocol (``strategies/fednga.py``): each client
uploads its update at w^t (one minibatch gradient by default, or w^t − y after local SGD),
a rule R combines the uploads and the server steps w ← w − η_t · R(updates) with the same
step-size schedule. Only R differs, so a comparison with Fed-NGA is one of rules alone.

| name          | R                                                           | from |
|---------------|-------------------------------------------------------------|------|
| mean          | Σ α_m g_m (FedSGD's rule, McMahan et al. 2017; Fed-NGA's "FedAvg") | Flower ``FedAvg`` |
| median        | coordinate-wise median (Yin et al., ICML 2018)              | Flower ``FedMedian`` |
| trimmed_mean  | coordinate-wise β-trimmed mean (Yin et al. 2018)            | Flower ``FedTrimmedAvg`` |
| krum          | the upload with the least Krum score (Blanchard et al. 2017)| Flower ``Krum`` |
| multikrum     | example-weighted mean of the m least-score uploads          | Flower ``MultiKrum`` |
| geomed        | geometric median, smoothed Weiszfeld (RFA, Pillutla et al.) | here |
| cclip         | centered clipping (Karimireddy, He & Jaggi, ICML 2021)      | here |
"""

from __future__ import annotations

import torch
from flwr.serverapp import strategy as flwr_strategy
from pydantic import Field

from fedsim.registry import register
from fedsim.sampling import SeededSampling
from fedsim.strategies.fedavg import sampling_kwargs
from fedsim.strategies.fednga import ServerDescent, UpdatePathParams, VectorRule, upload_update, upload_update_batched


def _register(name: str, params=UpdatePathParams):
    return register("strategy", name, params=params, client=upload_update, batched=upload_update_batched, upload="update")


# ------------------------------------------------------------------- Flower's own rules


class Mean(ServerDescent, SeededSampling, flwr_strategy.FedAvg):
    """w ← w − η_t Σ α_m g_m."""


@_register("mean")
def mean(params: UpdatePathParams, setup) -> Mean:
    """Weighted mean of client updates: w ← w − η_t Σ α_m g_m (FedSGD's rule; Fed-NGA's FedAvg baseline)."""
    return Mean(path=params, **sampling_kwargs(params, setup))


class Median(ServerDescent, SeededSampling, flwr_strategy.FedMedian):
    """w ← w − η_t · coordinate-wise median of the updates."""


@_register("median")
def median(params: UpdatePathParams, setup) -> Median:
    """Coordinate-wise median of client updates (Yin et al. 2018), on Flower's FedMedian."""
    return Median(path=params, **sampling_kwargs(params, setup))


class TrimmedMeanParams(UpdatePathParams):
    beta: float = Field(0.2, ge=0, lt=0.5, description="fraction cut from each tail per coordinate")


class TrimmedMean(ServerDescent, SeededSampling, flwr_strategy.FedTrimmedAvg):
    """w ← w − η_t · coordinate-wise trimmed mean of the updates."""


@_register("trimmed_mean", TrimmedMeanParams)
def trimmed_mean(params: TrimmedMeanParams, setup) -> TrimmedMean:
    """Coordinate-wise trimmed mean of client updates (Yin et al. 2018), on Flower's FedTrimmedAvg."""
    return TrimmedMean(path=params, beta=params.beta, **sampling_kwargs(params, setup))


class KrumParams(UpdatePathParams):
    num_malicious_nodes: int = Field(0, ge=0, description="f: Krum scores sum the n − f − 2 nearest")


class Krum(ServerDescent, SeededSampling, flwr_strategy.Krum):
    """w ← w − η_t · the upload of least Krum score."""


@_register("krum", KrumParams)
def krum(params: KrumParams, setup) -> Krum:
    """Krum (Blanchard et al. 2017): the update nearest its n − f − 2 neighbours, on Flower's Krum."""
    return Krum(path=params, num_malicious_nodes=params.num_malicious_nodes, **sampling_kwargs(params, setup))


class MultiKrumParams(KrumParams):
    num_nodes_to_select: int = Field(2, ge=1, description="m: how many least-score updates are averaged")


class MultiKrum(ServerDescent, SeededSampling, flwr_strategy.MultiKrum):
    """w ← w − η_t · example-weighted mean of the m least-score uploads."""


@_register("multikrum", MultiKrumParams)
def multikrum(params: MultiKrumParams, setup) -> MultiKrum:
    """Multi-Krum (Blanchard et al. 2017): mean of the m best Krum-scored updates, on Flower's MultiKrum."""
    return MultiKrum(
        path=params,
        num_malicious_nodes=params.num_malicious_nodes,
        num_nodes_to_select=params.num_nodes_to_select,
        **sampling_kwargs(params, setup),
    )


# ---------------------------------------------------------------- geometric median (RFA)


def geometric_median(
    updates: torch.Tensor, alpha: torch.Tensor, nu: float, ftol: float, max_iter: int
) -> tuple[torch.Tensor, int]:
    """argmin_z Σ_i α_i ‖v_i − z‖ by smoothed Weiszfeld (RFA, Pillutla, Kakade & Harchaoui, arXiv 1912.13445).

    Starts from the weighted mean; each step z ← Σ β_i v_i / Σ β_i with
    β_i = α_i / max(ν, ‖v_i − z‖); stops when the objective changes by less than
    ftol · objective (as the RFA code does) or after ``max_iter`` steps. Returns (z, steps).
    """
    alpha = alpha.to(updates.dtype)
    z = alpha @ updates
    objective = float(alpha @ torch.linalg.vector_norm(updates - z, dim=1))
    for step in range(1, max_iter + 1):
        beta = alpha / torch.linalg.vector_norm(updates - z, dim=1).clamp_min(nu)
        z = (beta / beta.sum()) @ updates
        previous, objective = objective, float(alpha @ torch.linalg.vector_norm(updates - z, dim=1))
        if abs(previous - objective) <= ftol * objective:
            return z, step
    return z, max_iter


class GeoMedParams(UpdatePathParams):
    nu: float = Field(1e-5, gt=0, description="smoothing ν of the Weiszfeld weights (RFA code: 1e-5)")
    ftol: float = Field(1e-5, gt=0, description="relative objective tolerance (Fed-NGA runs GM to 1e-5)")
    max_iter: int = Field(100, ge=1)


class GeometricMedian(VectorRule):
    def __init__(self, *args, gm: GeoMedParams, **kwargs):
        super().__init__(*args, **kwargs)
        self.gm = gm

    def combine(self, updates, weights):
        z, steps = geometric_median(updates, weights, self.gm.nu, self.gm.ftol, self.gm.max_iter)
        return z, {"weiszfeld_steps": steps}


class GeoMed(ServerDescent, SeededSampling, GeometricMedian):
    """w ← w − η_t · the α-weighted geometric median of the updates."""


@_register("geomed", GeoMedParams)
def geomed(params: GeoMedParams, setup) -> GeoMed:
    """Geometric median of client updates by smoothed Weiszfeld (RFA, Pillutla et al. 2019)."""
    return GeoMed(path=params, gm=params, **sampling_kwargs(params, setup))


# ------------------------------------------------------------------ centered clipping


def centered_clip(updates: torch.Tensor, center: torch.Tensor, tau: float, iterations: int) -> torch.Tensor:
    """v ← v + (1/n) Σ_i (x_i − v) · min(1, τ/‖x_i − v‖), ``iterations`` times from ``center``.

    Karimireddy, He & Jaggi, ICML 2021 (unweighted mean, as in the paper and the authors' code).
    """
    v = center
    for _ in range(iterations):
        diff = updates - v
        norms = torch.linalg.vector_norm(diff, dim=1, keepdim=True)
        v = v + (diff * torch.where(norms > tau, tau / norms, 1.0)).mean(0)
    return v


class CClipParams(UpdatePathParams):
    tau: float = Field(10.0, gt=0, description="clipping radius τ (epfml/byzantine-robust-optimizer sweeps 0.1-1000)")
    iterations: int = Field(1, ge=1, description="clipping iterations L (the authors' code: 1)")


class CenteredClipping(VectorRule):
    """Server state: the previous round's aggregate, the next round's centre (0 at first)."""

    def __init__(self, *args, cclip: CClipParams, **kwargs):
        super().__init__(*args, **kwargs)
        self.cclip = cclip
        self.center: torch.Tensor | None = None

    def combine(self, updates, weights):
        center = self.center if self.center is not None else torch.zeros_like(updates[0])
        self.center = centered_clip(updates, center, self.cclip.tau, self.cclip.iterations)
        return self.center, {}


class CClip(ServerDescent, SeededSampling, CenteredClipping):
    """w ← w − η_t · centered-clipping aggregate of the updates."""


@_register("cclip", CClipParams)
def cclip(params: CClipParams, setup) -> CClip:
    """Centered clipping of client updates around the last aggregate (Karimireddy et al. 2021)."""
    return CClip(path=params, cclip=params, **sampling_kwargs(params, setup))
