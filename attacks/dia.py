"""Dropout Inversion Attack (Scheliga, Mäder, Seeland, "Dropout is NOT All You Need to
Prevent Gradient Leakage", AAAI 2023, arXiv 2208.06163).

A client that computes its upload in train mode applies dropout masks the server does not
know, so IG (attacker in eval mode) matches the wrong function. DIA makes the mask of every
dropout layer a free continuous variable, one entry per activation of every example (and,
for a FedAvg update, of every local step), optimised jointly with the images:

    min_{x̂, m} 1 − cos(∇θL(f_θ(x̂; m), ŷ), g) + α_TV·TV(x̂) + Σ_l α_m·|(1 − mean(m_l)) − p_l|

where dropout layer l computes a ⊙ m_l / (1 − p_l). Masks start at m ~ Bernoulli(1 − p)
(drawn by one forward pass at the victim's batch shape), are clamped to [0, 1] after every
step and never re-binarised; only x̂'s gradient is signed. Defaults follow the authors'
configuration: 20 000 iterations, Adam lr 0.1, TV 1e-5 (anisotropic), mask weight 1e-4,
ReduceLROnPlateau (factor 0.1, patience 800), early stopping after 4 000 iterations without
improvement or at loss < 1e-5, one restart. Without dropout layers DIA is IG.

:func:`well_informed` is the paper's WIIG oracle: IG with the client's true masks (an upper
bound; the masks are not part of any observation).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from fedsim.attacks.ig import Extension, invert_pixels
from fedsim.attacks.inversion import InversionAttack, Knowledge, Observation, Reconstruction
from fedsim.attacks.inversion.labels import infer_labels
from fedsim.attacks.inversion.params import PixelAttackParams
from fedsim.attacks.inversion.replay import step_slices, with_masked_dropout, num_reconstructed
from fedsim.registry import register


class DIAParams(PixelAttackParams):
    iterations: int = Field(20_000, ge=1)
    tv: float = Field(1e-5, ge=0)
    schedule: Literal["multistep", "plateau", "none"] = "plateau"
    early_stop_patience: int | None = Field(4_000, ge=1)
    stop_loss: float = Field(1e-5, ge=0)
    mask_reg: float = Field(1e-4, ge=0, description="weight of |(1 − mean(m_l)) − p_l|")


def _step_sizes(obs: Observation, n: int) -> list[int]:
    if obs.kind == "gradient":
        return [n]
    return [s.stop - s.start for s in step_slices(obs.num_examples, obs.local)]


class DropoutInversion(InversionAttack):
    def __init__(self, params: DIAParams):
        self.params = params

    def reconstruct(self, observation: Observation) -> Reconstruction:
        obs, params = observation, self.params
        n = num_reconstructed(obs)
        labels = infer_labels(obs, n, params.labels)
        net, layers = with_masked_dropout(obs.fresh_model())
        net.eval()
        sizes = _step_sizes(obs, n)

        def extend(gen: torch.Generator) -> Extension:
            # one forward pass per local step at its batch shape draws m ~ Bernoulli(1 − p)
            for layer in layers:
                layer.mode, layer.generator, layer.recorded = "sample", gen, []
            with torch.no_grad():
                for size in sizes:
                    net(torch.zeros(size, *obs.input_shape))
            masks = [[layer.recorded[t].clone().requires_grad_() for layer in layers] for t in range(len(sizes))]
            for layer in layers:
                layer.mode, layer.recorded = "fixed", []

            def before_step(t: int) -> None:
                for layer, mask in zip(layers, masks[t], strict=True):
                    layer.mask = mask

            def loss() -> torch.Tensor:
                return params.mask_reg * sum(
                    ((1 - m.mean()) - layer.p).abs() for step in masks for layer, m in zip(layers, step, strict=True)
                )

            def project() -> None:
                for step in masks:
                    for m in step:
                        m.clamp_(0, 1)

            flat = [m for step in masks for m in step]
            return Extension(flat, before_step, loss if layers else None, project)

        return invert_pixels(obs, net, labels, params, extend)


def well_informed(
    observation: Observation, masks: list[list[torch.Tensor]], params: PixelAttackParams
) -> Reconstruction:
    """WIIG (oracle): IG with the client's true masks ``masks[t][l]`` applied, not optimised."""
    labels = infer_labels(observation, num_reconstructed(observation), params.labels)
    net, layers = with_masked_dropout(observation.fresh_model())
    net.eval()
    for layer in layers:
        layer.mode = "fixed"

    def before_step(t: int) -> None:
        for layer, mask in zip(layers, masks[t], strict=True):
            layer.mask = mask

    return invert_pixels(observation, net, labels, params, lambda gen: Extension(before_step=before_step))


@register("inversion", "dia", params=DIAParams)
def dia(params: DIAParams, knowledge: Knowledge) -> DropoutInversion:
    """Dropout Inversion Attack: IG plus a free mask per dropout layer (Scheliga et al. 2023)."""
    return DropoutInversion(params)
