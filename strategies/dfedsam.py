"""DFedSAM and DFedSAM-MGS (Shi et al., ICML 2023, arXiv 2302.04083): SAM local steps, then gossip.

Round t on node i (§5.1 of the strategies reference; the official code is not released):

    y ← x_i;  K times:  g = ∇F_i(y; ξ);  e = ρ g / ‖g‖₂;  y ← y − η_t ∇F_i(y + e; ξ)
    z_i⁽⁰⁾ = y;  Q times:  z_i⁽q+1⁾ = Σ_j W_ij z_j⁽q⁾;   x_i ← z_i⁽Q⁾

with η_t = lr · lr_decay^(t−1). DFedSAM is Q = 1; DFedSAM-MGS runs Q > 1 gossip steps
(multiple gossip steps, Q× the traffic) for better model consistency. The base optimiser
of the step y ← y − η∇F(y + e) is the scenario's ``client:`` SGD (momentum and weight
decay as configured; the DisPFL-lineage code uses momentum 0.9 and wd 5e-4), and the
batches are the client section's (epochs or steps). ``‖g‖₂`` is the norm over all
parameters together. Defaults follow the third-party reproduction (ρ = 0.01 in its
script, lr decay 0.998 per round, Q = 4 for MGS); the paper's own values are unverified.
The gossip machinery (orders, topology, byte counting) is D-PSGD's (``strategies/dpsgd.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from fedsim.apps.client import ClientEnv
from fedsim.registry import register
from fedsim.training import batches
from fedsim.strategies.dpsgd import Gossip, GossipParams, round_lr


class DFedSAMParams(GossipParams):
    rho: float = Field(0.01, ge=0, description="SAM perturbation radius ρ")
    lr_decay: float = Field(0.998, gt=0, le=1, description="local lr of round t: lr · lr_decay^(t−1)")


class DFedSAMMGSParams(DFedSAMParams):
    gossip_steps: int = Field(4, ge=1, description="gossip steps Q per round")


def sam_update(env: ClientEnv, server_round: int) -> float:
    """K SAM steps from the loaded model (Foret et al. 2021 with normalised ascent); mean loss at y."""
    cfg = env.scenario.client
    rho = env.scenario.strategy.params.rho
    model = env.model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=round_lr(env, server_round), momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    model.train()
    total, count = 0.0, 0
    gen = env.generator(server_round, "shuffle")
    for idx in batches(len(env.x), cfg.batch_size, cfg.epochs, cfg.steps, gen):
        x, y = env.x[idx], env.y[idx]
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum((g * g).sum() for g in grads))
        scale = rho / (norm + 1e-12)
        perturbation = [g * scale for g in grads]
        with torch.no_grad():
            for p, e in zip(params, perturbation, strict=True):
                p.add_(e)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()  # ∇F_i(y + e; ξ)
        with torch.no_grad():
            for p, e in zip(params, perturbation, strict=True):
                p.sub_(e)
        opt.step()
        total += loss.item()
        count += 1
    return total / count if count else float("nan")


class DFedSAM(Gossip):
    work_factor = 2.0  # two forward-backward passes per SAM step


@register("strategy", "dfedsam", params=DFedSAMParams, decentralized=True, local_update=sam_update)
def dfedsam(params: DFedSAMParams, setup) -> DFedSAM:
    """DFedSAM: K local SAM steps, then one gossip step (Shi et al. 2023)."""
    return DFedSAM(params, setup, gossip_steps=1)


@register("strategy", "dfedsam_mgs", params=DFedSAMMGSParams, decentralized=True, local_update=sam_update)
def dfedsam_mgs(params: DFedSAMMGSParams, setup) -> DFedSAM:
    """DFedSAM-MGS: K local SAM steps, then Q gossip steps (Shi et al. 2023)."""
    return DFedSAM(params, setup, gossip_steps=params.gossip_steps)
