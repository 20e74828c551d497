"""The client's computation, re-run by the attacker (differentiably) or simulated with
recorded dropout masks.

* FedSGD: the upload is g = ∇θ CE(f_θ(x), y) on one batch.
* FedAvg: the upload is θ_K − θ_0 after K local SGD steps. The attacker unrolls the same
  K steps functionally (``torch.func.functional_call``) and differentiates through them
  ("FedAvg update replay": Geiping et al. 2020, Sec. 5; breaching's ``local_updates``
  user). Step t uses the t-th chunk of the N reconstructed examples, cycling through
  them epoch after epoch (the shuffled order of a real client is unknown to the server;
  with one batch per step, or full-batch steps, the replay is exact).

Dropout is made explicit by :class:`MaskedDropout`: a client ``sample``s and records its
Bernoulli masks, an attacker applies ``fixed`` (possibly continuous, optimised) masks, and
``identity`` is eval-mode dropout (Scheliga et al., AAAI 2023, "Dropout is NOT All You
Need to Prevent Gradient Leakage", Sec. 4; the mask is recorded where it is sampled, not
inferred from zero outputs).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fedsim.attacks.inversion.observation import LocalTraining, Observation


class MaskedDropout(nn.Module):
    """Inverted dropout with an explicit mask m: x ↦ x ⊙ m / (1 − p).

    ``mode``: ``identity`` (eval), ``sample`` (draw m ~ Bernoulli(1 − p) from ``generator``
    and append it to ``recorded``), ``fixed`` (use ``mask``, which may be continuous).
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.mode: Literal["identity", "sample", "fixed"] = "identity"
        self.mask: torch.Tensor | None = None
        self.generator: torch.Generator | None = None
        self.recorded: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "identity" or self.p == 0:
            return x
        if self.mode == "sample":
            mask = torch.bernoulli(torch.full_like(x, 1 - self.p), generator=self.generator)
            self.recorded.append(mask)
        else:
            mask = self.mask
        return x * mask / (1 - self.p)


def with_masked_dropout(model: nn.Module) -> tuple[nn.Module, list[MaskedDropout]]:
    """A copy of ``model`` whose ``nn.Dropout`` layers are :class:`MaskedDropout` (in order)."""
    net = copy.deepcopy(model)
    layers: list[MaskedDropout] = []

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.Dropout):
                layer = MaskedDropout(child.p)
                setattr(module, name, layer)
                layers.append(layer)
            else:
                swap(child)

    swap(net)
    return net, layers


def step_slices(num_examples: int, local: LocalTraining) -> list[slice]:
    """The examples each local step uses, as slices of the N reconstructed examples."""
    per_epoch = math.ceil(num_examples / local.batch_size)
    out = []
    for t in range(local.steps):
        chunk = t % per_epoch
        out.append(slice(chunk * local.batch_size, min(num_examples, (chunk + 1) * local.batch_size)))
    return out


def num_reconstructed(obs: Observation) -> int:
    """How many distinct examples lie behind an upload (the batch the attack reconstructs)."""
    if obs.kind == "gradient":
        return obs.num_examples
    return max(s.stop for s in step_slices(obs.num_examples, obs.local))


def compute_upload(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    kind: Literal["gradient", "update"],
    local: LocalTraining | None,
    before_step: Callable[[int], None] | None = None,
    create_graph: bool = False,
) -> dict[str, torch.Tensor]:
    """The upload a client with examples (x, y) sends for a model with ``params``.

    ``before_step(t)`` runs before local step t's forward pass (it sets step t's dropout
    masks). With ``create_graph`` the result is differentiable in x (and masks).
    """
    names = list(params)
    if kind == "gradient":
        if before_step is not None:
            before_step(0)
        loss = F.cross_entropy(functional_call(model, params, (x,)), y)
        grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph)
        return dict(zip(names, grads, strict=True))
    assert local is not None
    theta = dict(params)
    buf: list[torch.Tensor] | None = None
    for t, chunk in enumerate(step_slices(len(x), local)):
        if before_step is not None:
            before_step(t)
        loss = F.cross_entropy(functional_call(model, theta, (x[chunk],)), y[chunk])
        grads = torch.autograd.grad(loss, [theta[n] for n in names], create_graph=create_graph)
        if local.max_grad_norm is not None:  # clip_grad_norm_'s coefficient, differentiably
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            coef = torch.clamp(local.max_grad_norm / (norm + 1e-6), max=1.0)
            grads = [g * coef for g in grads]
        d = [g + local.weight_decay * theta[n] if local.weight_decay else g for n, g in zip(names, grads, strict=True)]
        if local.momentum:
            buf = d if buf is None else [local.momentum * b + g for b, g in zip(buf, d, strict=True)]
            d = buf
        theta = {n: theta[n] - local.lr * step for n, step in zip(names, d, strict=True)}
        if not create_graph:
            theta = {n: w.detach().requires_grad_() for n, w in theta.items()}
            buf = None if buf is None else [b.detach() for b in buf]
    return {n: theta[n] - params[n] for n in names}


def client_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    kind: Literal["gradient", "update"],
    local: LocalTraining | None,
    generator: torch.Generator,
) -> tuple[dict[str, torch.Tensor], list[list[torch.Tensor]]]:
    """Simulate a client's upload in train mode, recording its dropout masks.

    Returns the upload (detached) and the masks, ``masks[t][l]`` for local step t and
    dropout layer l. Equal to the FedSGD/FedAvg client handlers' upload (tested); used
    where the true masks are needed (the well-informed oracle, benchmarks).
    """
    net, layers = with_masked_dropout(model)
    for layer in layers:
        layer.mode, layer.generator = "sample", generator
    net.train()
    params = {n: p.detach().clone().requires_grad_() for n, p in net.named_parameters()}
    upload = compute_upload(net, params, x, y, kind, local)
    steps = 1 if kind == "gradient" else local.steps
    masks = [[layer.recorded[t] for layer in layers] for t in range(steps)]
    return {n: u.detach() for n, u in upload.items()}, masks
