"""FedSAM (Qu et al., "Generalized Federated Learning via Sharpness Aware Minimization",
ICML 2022, arXiv 2206.02618): local SAM steps, FedAvg aggregation.

Client, per minibatch ξ (SAM, Foret et al. ICLR 2021, Eq. 2):

    g  = ∇f_i(w; ξ)
    e  = ρ · g / ‖g‖                 # the ascent step, of norm ρ
    w ← w − η · ∇f_i(w + e; ξ)        # the gradient at the perturbed point, applied at w

Server: Flower's FedAvg (example-weighted mean of the returned models). This is what
FL-Simulator's ``client/fedsam.py`` does with its ``ESAM`` optimizer (normalised ascent,
``‖g‖ + 1e-7`` in the denominator, same minibatch for both gradients).

``sam_perturbation`` and ``sam_gradient`` are also FedSpeed's perturbed gradient
(``fedsim.strategies.fedspeed``), which adds the unnormalised ascent of its paper and the
merge of both gradients (the quasi-gradient, weight α).
"""

from __future__ import annotations

import torch
from flwr.app import RecordDict
from pydantic import Field
from torch import nn
from torch.func import vmap

from fedsim.apps.client import ClientEnv
from fedsim.batched import Cohort
from fedsim.batched import Direction as StackedDirection
from fedsim.registry import register
from fedsim.strategies.fedavg import FedAvg, FedAvgParams, sampling_kwargs
from fedsim.strategies.stateful import (
    Batch,
    Direction,
    Objective,
    client_minibatches,
    cross_entropy,
    gradient,
    local_descent,
    sgd_options,
    trainable,
)

# Guards the normalisation when a gradient vanishes (FL-Simulator's ESAM uses 1e-7; a
# smaller guard keeps ‖e‖ = ρ to float precision for any non-negligible gradient).
_NORM_EPS = 1e-12


def sam_perturbation(grads: list[torch.Tensor], rho: float, normalize: bool = True) -> list[torch.Tensor]:
    """The ascent step e: ρ·g/‖g‖ (SAM, norm ρ) or, with ``normalize=False``, ρ·g."""
    if not normalize:
        return [rho * g for g in grads]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = rho / (norm + _NORM_EPS)
    return [g * scale for g in grads]


def sam_gradient(
    model: nn.Module,
    batch: Batch,
    *,
    rho: float,
    alpha: float = 1.0,
    normalize: bool = True,
    objective: Objective = cross_entropy,
) -> float:
    """Set ``p.grad`` to (1−α)·∇f(w; ξ) + α·∇f(w + e; ξ) with e = ``sam_perturbation``.

    α = 1 is SAM's gradient; α < 1 is FedSpeed's quasi-gradient (Alg. 1). Both gradients
    use the same minibatch; w is restored exactly afterwards. Returns the loss at w.
    """
    params = trainable(model)
    loss = gradient(model, batch, objective)
    g1 = [p.grad.detach().clone() for p in params]
    w = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, e in zip(params, sam_perturbation(g1, rho, normalize), strict=True):
            p.add_(e)
    gradient(model, batch, objective)
    with torch.no_grad():
        for p, w0, g in zip(params, w, g1, strict=True):
            p.copy_(w0)
            # lerp: start + α(end − start), exact at α ∈ {0, 1} and when both agree
            p.grad.copy_(torch.lerp(g, p.grad, alpha))
    return loss


def stacked_sam_direction(rho: float, alpha: float = 1.0, normalize: bool = True) -> StackedDirection:
    """``sam_gradient`` for stacked clients (``fedsim.batched``): g1 at w, each client's
    e = ``sam_perturbation``(g1), g2 at w + e on the same minibatch, lerp(g1, g2, α)."""
    perturb = vmap(lambda grads: sam_perturbation(grads, rho, normalize))

    def direction(gradient, params):
        g1, loss = gradient(params)
        names = list(g1)
        e = perturb([g1[n] for n in names])
        g2, _ = gradient({n: params[n] + e_n for n, e_n in zip(names, e, strict=True)})
        return {n: torch.lerp(g1[n], g2[n], alpha) for n in names}, loss

    return direction


def sam_direction(rho: float, alpha: float = 1.0, normalize: bool = True) -> Direction:
    def direction(model, batch: Batch) -> float:
        return sam_gradient(model, batch, rho=rho, alpha=alpha, normalize=normalize)

    return direction


class FedSAMParams(FedAvgParams):
    rho: float = Field(0.1, ge=0, description="SAM radius ρ (norm of the ascent step)")


def fedsam_train(content: RecordDict, env: ClientEnv) -> RecordDict:
    """Local SAM steps from the global model (Qu et al. 2022, Alg. 1 with SAM as local optimiser)."""
    model = env.load(content["arrays"])
    rho = float(content["config"]["rho"])
    server_round = int(content["config"]["server-round"])
    loss, _ = local_descent(
        model, client_minibatches(env, server_round), direction=sam_direction(rho), **sgd_options(env)
    )
    return env.reply(loss)


def fedsam_batched(cohort: Cohort) -> list[RecordDict]:
    """``fedsam_train`` for a cohort: local SAM steps, each client on its own minibatches."""
    rho = float(cohort.contents[0]["config"]["rho"])  # the strategy's one ρ, sent to all
    params, losses = cohort.local_sgd(direction=stacked_sam_direction(rho))
    return cohort.replies(params, losses)


class FedSAM(FedAvg):
    """FedAvg on the server; tells the clients the SAM radius."""

    def __init__(self, *args, rho: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.rho = rho

    def configure_train(self, server_round, arrays, config, grid):
        config["rho"] = self.rho
        return super().configure_train(server_round, arrays, config, grid)


@register("strategy", "fedsam", params=FedSAMParams, client=fedsam_train, batched=fedsam_batched)
def fedsam(params: FedSAMParams, setup) -> FedSAM:
    """FedSAM: local sharpness-aware minimisation, FedAvg aggregation (Qu et al. 2022)."""
    return FedSAM(rho=params.rho, **sampling_kwargs(params, setup))
