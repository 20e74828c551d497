"""Gradient matching, the total-variation prior and the optimisation loop of IG-style attacks.

Geiping et al., "Inverting Gradients — How easy is it to break privacy in federated
learning?", NeurIPS 2020, Eq. 4: argmin_x 1 − ⟨∇θL(x, y), ∇θL(x*, y)⟩ /
(‖∇θL(x, y)‖·‖∇θL(x*, y)‖) + α·TV(x), with one global cosine over all parameter
tensors, minimised by Adam on the signed gradient with a box constraint and step decay
at 3/8, 5/8, 7/8 of the budget; restarts keep the iterate with the lowest matching loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

Objective = Literal["cosine", "l2"]
Schedule = Literal["multistep", "plateau", "ramp", "none"]


def gradient_match(candidate: dict[str, torch.Tensor], observed: dict[str, torch.Tensor], objective: Objective) -> torch.Tensor:
    """cosine: 1 − Σ_l⟨g̃_l, g_l⟩ / (√Σ_l‖g̃_l‖² · √Σ_l‖g_l‖²) (one global cosine);
    l2: ½·Σ_l‖g̃_l − g_l‖²."""
    keys = list(observed)
    if objective == "l2":
        return 0.5 * sum(((candidate[k] - observed[k]) ** 2).sum() for k in keys)
    dot = sum((candidate[k] * observed[k]).sum() for k in keys)
    cand_sq = sum((candidate[k] ** 2).sum() for k in keys)
    obs_sq = sum((observed[k] ** 2).sum() for k in keys)
    return 1 - dot / (cand_sq.sqrt() * obs_sq.sqrt() + 1e-12)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of images (N, C, H, W): mean|∂_h x| + mean|∂_w x|."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def gifd_ramp(t: float, rampdown: float = 0.75, rampup: float = 0.05) -> float:
    """GIFD's learning-rate factor at progress t ∈ [0, 1): cosine ramp-down over the last
    75 %, linear ramp-up over the first 5 % (Fang et al., ICCV 2023, code)."""
    r = min(1.0, (1 - t) / rampdown)
    r = 0.5 - 0.5 * math.cos(math.pi * r)
    return r * min(1.0, t / rampup)


@dataclass(frozen=True)
class LoopConfig:
    """One optimisation run: ``iterations`` Adam steps at ``lr``."""

    iterations: int
    lr: float
    schedule: Schedule = "multistep"
    plateau_patience: int = 800
    early_stop_patience: int | None = None
    stop_loss: float = 0.0


@dataclass
class LoopResult:
    best: list[torch.Tensor]  # detached copies of the variables at the best iterate
    total: float  # objective with regularisers at that iterate
    matching: float  # pure matching loss at that iterate
    iterations: int  # iterations run (set when the loop ends)


def _scheduler(opt: torch.optim.Optimizer, cfg: LoopConfig):
    if cfg.schedule == "multistep":
        marks = [round(cfg.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=marks, gamma=0.1)
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.1, patience=cfg.plateau_patience)
    if cfg.schedule == "ramp":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda it: gifd_ramp(it / cfg.iterations))
    return None


def optimise(
    variables: list[torch.Tensor],
    signed: list[torch.Tensor],
    loss_fn: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    project: Callable[[], None],
    cfg: LoopConfig,
) -> LoopResult:
    """Minimise ``loss_fn() -> (total, matching)`` over leaf tensors ``variables`` with Adam.

    Gradients of the tensors in ``signed`` are replaced by their sign (IG); ``project``
    runs after every step (box clamp, mask clamp, l1/sphere projections). Keeps the
    iterate with the lowest total loss; stops early after ``early_stop_patience``
    iterations without improvement or once the total loss is below ``stop_loss``.
    """
    opt = torch.optim.Adam(variables, lr=cfg.lr, betas=(0.9, 0.999))
    sched = _scheduler(opt, cfg)
    signed_ids = {id(v) for v in signed}
    best = LoopResult([v.detach().clone() for v in variables], math.inf, math.inf, 0)
    since_best = 0
    for it in range(cfg.iterations):
        opt.zero_grad(set_to_none=True)
        total, matching = loss_fn()
        value = total.item()
        if value < best.total:  # the loss belongs to the current (pre-step) iterate
            best = LoopResult([v.detach().clone() for v in variables], value, matching.item(), 0)
            since_best = 0
        else:
            since_best += 1
        if value < cfg.stop_loss or (cfg.early_stop_patience is not None and since_best >= cfg.early_stop_patience):
            break
        total.backward()
        for v in variables:
            if id(v) in signed_ids and v.grad is not None:
                v.grad.sign_()
        opt.step()
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(value)
        elif sched is not None:
            sched.step()
        with torch.no_grad():
            project()
    best.iterations = it + 1
    return best
