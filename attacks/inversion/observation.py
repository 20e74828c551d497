"""What a gradient-inversion attacker is given, and what it returns.

Roles as in breaching (Geiping et al., ``breaching``: server payload / shared user data /
true user data): an :class:`Observation` carries the server payload (the model it sent) and
the shared user data (the upload, the number of data points behind it, the local
hyperparameters the server configured). It has **no field for the client's examples or
labels**: those are fetched only by the metrics code, after ``reconstruct`` returned.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn


@dataclass(frozen=True)
class LocalTraining:
    """The client's local SGD as configured by the server (public hyperparameters).

    ``steps`` minibatch steps of size ``batch_size`` over the client's ``num_examples``
    examples (an epoch is ceil(n / batch_size) steps, the last one smaller), plain SGD with
    ``momentum`` and ``weight_decay`` as ``torch.optim.SGD``. ``max_grad_norm``: the
    minibatch gradient is clipped to this norm before the step (``clip_grad_norm_``;
    weight decay is added after the clip, inside the optimiser), as HyperFL's phase 2.
    """

    lr: float
    steps: int
    batch_size: int
    momentum: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float | None = None


@dataclass(frozen=True)
class Observation:
    """One client's upload as the server received it, plus public protocol metadata.

    ``upload`` maps each parameter name of ``model`` to the uploaded tensor: for
    ``kind="gradient"`` (FedSGD) the gradient ∇θ CE(f_θ(x), y) of one batch, for
    ``kind="update"`` (FedAvg) θ_local − θ_sent after ``local.steps`` SGD steps.
    ``num_examples`` is the number of data points behind the upload (the batch for a
    gradient, the client's dataset for an update). ``model`` is the attacker's own copy
    of the architecture holding the weights the server sent. ``seed`` seeds the
    attacker's own random draws.
    """

    model: nn.Module
    upload: dict[str, torch.Tensor]
    kind: Literal["gradient", "update"]
    num_examples: int
    local: LocalTraining | None
    input_shape: tuple[int, ...]
    num_classes: int
    pixel_range: tuple[float, float]
    round: int
    client: int
    seed: int

    def __post_init__(self):
        names = {n for n, _ in self.model.named_parameters()}
        if set(self.upload) != names:
            raise ValueError(f"upload keys {sorted(self.upload)} do not match the model's parameters {sorted(names)}")
        if self.kind == "update" and self.local is None:
            raise ValueError("an update observation needs the local training hyperparameters")

    def fresh_model(self) -> nn.Module:
        """A private copy of the sent model (attacks may rewire modules of their copy)."""
        return copy.deepcopy(self.model)


@dataclass(frozen=True)
class InformedView:
    """How an *informed* server sees the upload of a strategy whose clients keep private
    state next to the shared model (HyperFL's v_i and ϕ_i: the informed attacker).

    The server is assumed to hold the target's private state as it was when the round's
    instruction left (leaked client state: the upper bound a fair evaluation of such a
    defense needs). A strategy registers one with ``informed=...``; the eavesdropper then
    fetches the target's state before forwarding the round and asks the view for:

    * ``check(scenario)``: raise ``ValueError`` where the upload cannot be replayed;
    * ``model(sent, state, scenario, client, num_classes)``: a module whose named
      parameters are the shared model's (``sent`` holds the sent weights) and whose
      forward pass is the client's prediction with its private state fixed, so that the
      upload is a FedAvg update of it;
    * ``local(scenario, num_examples)``: the local SGD that produced the update;
    * ``examples(scenario, partition_size, server_round, client)``: positions in the
      client's partition of the examples behind the update (ground truth, metrics only).
    """

    check: Callable[[Any], None]
    model: Callable[[nn.Module, Any, Any, int, int], nn.Module]
    local: Callable[[Any, int], LocalTraining]
    examples: Callable[[Any, int, int, int], list[int]]


@dataclass(frozen=True)
class Knowledge:
    """What the attacker knows before any round: the task's shape and its public data.

    The public data of a dataset is its held-out (test) split, which no client holds.
    """

    input_shape: tuple[int, ...]
    num_classes: int
    pixel_range: tuple[float, float]
    dataset: str
    dataset_params: dict[str, Any]
    seed: int


@dataclass
class Reconstruction:
    """An attack's answer: images (N, C, H, W) in the pixel range and labels (N,).

    ``matching_loss`` is the pure gradient-matching objective of the returned images.
    ``alternatives`` names other outputs the attack produced on the way (GIFD: the
    latent-only result and each stage's), ``info`` scalar diagnostics.
    """

    images: torch.Tensor
    labels: torch.Tensor
    matching_loss: float
    alternatives: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict[str, float] = field(default_factory=dict)


class InversionAttack(ABC):
    """An attack reconstructs from an :class:`Observation` alone."""

    @abstractmethod
    def reconstruct(self, observation: Observation) -> Reconstruction:
        """Reconstruct the client's examples from what the server received."""
