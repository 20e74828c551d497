"""Inverting Gradients (Geiping, Bauermeister, Dröge, Moeller, NeurIPS 2020, arXiv 2003.14053).

The baseline gradient-inversion attack, in pixel space:

    x̂* = argmin_{x̂ ∈ [lo, hi]^n} 1 − cos(∇θL(f_θ(x̂), ŷ), g) + α_TV·TV(x̂)          (Eq. 4)

with ŷ inferred from the last layer (iDLG / bias-corrected), x̂ ~ N(0, I) at init, Adam
(lr 0.1) on sign(∇x̂), box projection after every step, the learning rate divided by 10
at 3/8, 5/8 and 7/8 of the budget, and R restarts of which the one with the lowest
matching loss is returned (Sec. 4; breaching's ``invertinggradients`` preset: 24 000
iterations, 1 restart). For a FedAvg update the K local steps are replayed
(``replay.compute_upload``) and the update, not a gradient, is matched (Sec. 5).

The attacker runs the model in eval mode: dropout is the identity (the client's masks are
unknown). ``dia.py`` adds the masks as variables through :class:`Extension`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from fedsim.attacks.inversion import InversionAttack, Knowledge, Observation, Reconstruction
from fedsim.attacks.inversion.labels import infer_labels
from fedsim.attacks.inversion.objective import LoopConfig, gradient_match, optimise, total_variation
from fedsim.attacks.inversion.params import PixelAttackParams
from fedsim.attacks.inversion.replay import compute_upload, num_reconstructed
from fedsim.registry import register
from fedsim.training import torch_generator


@dataclass
class Extension:
    """Extra variables optimised with the images (unsigned), with their loss, projection and
    the hook that installs step t's values before the forward pass of local step t."""

    variables: list[torch.Tensor] = field(default_factory=list)
    before_step: Callable[[int], None] | None = None
    loss: Callable[[], torch.Tensor] | None = None
    project: Callable[[], None] | None = None


def invert_pixels(
    obs: Observation,
    net: nn.Module,
    labels: torch.Tensor,
    params: PixelAttackParams,
    extend: Callable[[torch.Generator], Extension] | None = None,
) -> Reconstruction:
    """The IG loop on ``net`` (the attacker's model, eval mode) with optional extra variables."""
    gen = torch_generator(obs.seed, "inversion")
    weights = {n: p.detach().requires_grad_() for n, p in net.named_parameters()}
    observed = {n: obs.upload[n].detach() for n in weights}
    lo, hi = obs.pixel_range
    shape = (len(labels), *obs.input_shape)
    cfg = LoopConfig(
        iterations=params.iterations,
        lr=params.lr,
        schedule=params.schedule,
        plateau_patience=params.plateau_patience,
        early_stop_patience=params.early_stop_patience,
        stop_loss=params.stop_loss,
    )
    best = None
    for _ in range(params.restarts):
        if params.init == "randn":
            x = torch.randn(shape, generator=gen)
        else:
            x = lo + (hi - lo) * torch.rand(shape, generator=gen)
        x.requires_grad_()
        ext = extend(gen) if extend is not None else Extension()

        def loss_fn(x=x, ext=ext):
            upload = compute_upload(net, weights, x, labels, obs.kind, obs.local, ext.before_step, create_graph=True)
            matching = gradient_match(upload, observed, params.objective)
            total = matching + params.tv * total_variation(x) if params.tv else matching
            if ext.loss is not None:
                total = total + ext.loss()
            return total, matching

        def project(x=x, ext=ext):
            x.clamp_(lo, hi)
            if ext.project is not None:
                ext.project()

        result = optimise([x, *ext.variables], [x] if params.signed else [], loss_fn, project, cfg)
        if best is None or result.matching < best.matching:
            best = result
    images = best.best[0].clamp(lo, hi)
    return Reconstruction(images, labels, best.matching, info={"iterations": float(best.iterations)})


class InvertingGradients(InversionAttack):
    def __init__(self, params: PixelAttackParams):
        self.params = params

    def reconstruct(self, observation: Observation) -> Reconstruction:
        labels = infer_labels(observation, num_reconstructed(observation), self.params.labels)
        net = observation.fresh_model().eval()
        return invert_pixels(observation, net, labels, self.params)


@register("inversion", "ig", params=PixelAttackParams)
def ig(params: PixelAttackParams, knowledge: Knowledge) -> InvertingGradients:
    """Inverting Gradients: cosine gradient matching + TV, signed Adam, box (Geiping et al. 2020)."""
    return InvertingGradients(params)
