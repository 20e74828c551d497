"""Parameters of the ``eavesdropper:`` scenario section.

The section names an attack (a component of kind ``inversion``) and holds both the threat
model's keys (which rounds and which clients the honest-but-curious server attacks) and
the attack's own parameters.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedsim.registry import Params


class EavesdropperParams(Params):
    rounds: list[int] = Field([1], min_length=1, description="rounds whose uploads are attacked")
    targets: list[int] = Field([0], min_length=1, description="partition ids of the attacked clients")
    save_grid: bool = Field(True, description="write a PNG of originals vs reconstructions per round")
    labels: Literal["auto", "idlg", "yin", "bias-corrected", "probe"] = Field(
        "auto", description="label inference rule (auto: iDLG for one example, else bias-corrected; "
        "probe where the upload has no class-output layer)"
    )


class PixelAttackParams(EavesdropperParams):
    """Optimisation in pixel space (IG and DIA)."""

    iterations: int = Field(24_000, ge=1)
    lr: float = Field(0.1, gt=0)
    restarts: int = Field(1, ge=1)
    objective: Literal["cosine", "l2"] = "cosine"
    tv: float = Field(1e-4, ge=0, description="total-variation weight")
    signed: bool = Field(True, description="Adam on the sign of the image gradient")
    init: Literal["randn", "rand"] = "randn"
    schedule: Literal["multistep", "plateau", "none"] = "multistep"
    plateau_patience: int = Field(800, ge=1)
    early_stop_patience: int | None = Field(None, ge=1)
    stop_loss: float = Field(0.0, ge=0, description="stop once the objective is below this")
