"""Shared machinery of the gradient-inversion attacks (IG, DIA, GIFD).

The threat model (breaching's split, see ``attacks/eavesdropper.py``) hands an attack an
:class:`Observation`: the model the server sent and the client's upload, with the public
metadata of the protocol, never the client's examples. The attack returns a
:class:`Reconstruction`; only the metrics code (``metrics.py``) compares it with the truth.

Modules: ``observation`` (the attacker's inputs and output), ``replay`` (the client's
computation, re-run differentiably: FedSGD gradients and unrolled FedAvg updates, with
recordable dropout masks), ``objective`` (gradient matching, total variation, the
optimisation loop with signed Adam, box projection and restarts), ``labels`` (label
inference from the last layer), ``prior`` (GIFD's offline decoder prior) and ``metrics``
(PSNR, SSIM, Hungarian matching, label accuracy, image grids).
"""

from fedsim import registry

registry.add_kind("inversion")

from fedsim.attacks.inversion.observation import (  # noqa: E402
    InformedView,
    InversionAttack,
    Knowledge,
    LocalTraining,
    Observation,
    Reconstruction,
)

__all__ = ["InformedView", "InversionAttack", "Knowledge", "LocalTraining", "Observation", "Reconstruction"]
