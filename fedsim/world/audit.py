"""Empirical privacy audit with one-shot canary clients (Andrew, Kairouz, Oh, Oprea, McMahan,
Suriyakumar, "One-shot Empirical Privacy Estimation for Federated Learning", ICLR 2024,
arXiv 2302.03098, Alg. 1).

- ``audit.canaries`` clients (a set fixed by the seed) are canaries: whenever one is
  sampled, its upload is the model it received plus C·u_j, with u_j a fixed random unit
  direction of the trainable parameters (client j's own), instead of local training. The
  update then goes through the client's defense like any other (clipping, noise, sketch).
- After the last round, the released model's change θ_T − θ_0 is compared with every
  inserted u_j and with ``held_out`` directions never inserted: cosines c_in and c_out.
- ``epsilon_audit`` is the paper's estimator (Alg. 1, lines "fit" and "ε"): the cosine of
  a random unit direction with a fixed vector in d dimensions is, for large d, N(0, 1/d);
  the inserted cosines are fitted as N(μ̂, σ̂²) (mean and standard deviation of c_in), and
  ε_audit is the ε at δ between N(0, 1/d) and N(μ̂, σ̂²), unequal variances
  (``fedsim.privacy.gaussian_pair_epsilon``, both directions).
- ``epsilon_audit_ci95`` says how noisy that is: a percentile bootstrap over the canaries
  (``BOOTSTRAP`` resamples of c_in, seeded); with 20 canaries σ̂ alone has a relative
  standard error of about 1/√(2·19) ≈ 16%, and ε moves a lot with it.
- ``epsilon_audit_equal_variance`` is a second, different estimator kept for comparison
  (fedsim's earlier one): μ = (mean c_in − mean c_out)/std c_out read as μ-Gaussian DP,
  ε = ε(μ, δ) (``fedsim.privacy.gdp_epsilon``). It ignores the spread of c_in and is far
  smaller whenever the canaries' cosines vary more than the null's (every noised run).

ε_audit estimates, from one run, the privacy loss an adversary who sees the final model
can demonstrate against one client's contribution; a correct formal ε should not be below
it beyond the estimate's noise, and without a defense it is large.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from torch import nn

from fedsim.privacy import gaussian_pair_epsilon, gdp_epsilon
from fedsim.registry import register
from fedsim.state import Checkpointable
from fedsim.training import derive_seed, seed_sequence
from fedsim.world.base import GridWrapper

CANARY_KEY = "fedsim.canary"  # config record on a canary client's train instruction


def canary_clients(seed: int, num_clients: int, canaries: int) -> dict[int, int]:
    """partition id → canary index j, a seeded choice of ``canaries`` clients."""
    rng = np.random.default_rng(seed_sequence(seed, "audit-canaries"))
    chosen = sorted(rng.choice(num_clients, size=canaries, replace=False).tolist())
    return {pid: j for j, pid in enumerate(chosen)}


def direction(seed: int, index: int, dim: int) -> torch.Tensor:
    """Unit vector u_j of ``dim`` trainable parameters; j < canaries are inserted, the rest held out."""
    gen = torch.Generator().manual_seed(derive_seed(seed, "audit-direction", index))
    u = torch.randn(dim, generator=gen, dtype=torch.float64)
    return (u / u.norm()).float()


def canary_norm(scenario) -> float:
    """``audit.norm``, else the defense's clipping norm, else 1."""
    if scenario.audit.norm is not None:
        return scenario.audit.norm
    if scenario.defense is not None:
        return float(scenario.defense.raw_params().get("clipping_norm", 1.0))
    return 1.0


def parameter_vector(model: nn.Module) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector([p for p in model.parameters() if p.requires_grad]).detach()


def apply_canary(model: nn.Module, canary: torch.Tensor) -> None:
    """The canary client's 'training': trainable parameters ← received + C·u_j."""
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(torch.nn.utils.parameters_to_vector(params) + canary.to(params[0].device), params)


def client_canary(content: RecordDict, seed: int, dim: int) -> torch.Tensor | None:
    """C·u_j if this train instruction makes the client a canary, else None."""
    if CANARY_KEY not in content:
        return None
    cfg = content[CANARY_KEY]
    return float(cfg["norm"]) * direction(seed, int(cfg["index"]), dim)


class CanaryLayer(Checkpointable, GridWrapper):
    """World layer: marks the train instructions of canary clients (what they then upload
    is decided on the client, before its defense runs)."""

    checkpoint_fields = ("inserted",)

    def __init__(self, inner, scenario):
        super().__init__(inner)
        self.index = canary_clients(scenario.seed, scenario.num_clients, scenario.audit.canaries)
        self.norm = canary_norm(scenario)
        self.inserted = 0

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
        messages = list(messages)
        for msg in messages:
            pid = self.partition_of(msg)
            if msg.metadata.message_type == MessageType.TRAIN and pid in self.index:
                record = ConfigRecord({"index": self.index[pid], "norm": self.norm})
                msg.content = RecordDict({**msg.content, CANARY_KEY: record})
                self.inserted += 1
        return self.inner.send_and_receive(messages, timeout=timeout)

    def take_metrics(self) -> dict:
        return {**self.inner.take_metrics(), "canaries_inserted": self.inserted}


BOOTSTRAP = 1000  # resamples of the canary cosines behind epsilon_audit_ci95


def estimate(delta_theta: torch.Tensor, seed: int, canaries: int, held_out: int, delta: float) -> dict:
    """Cosines of θ_T − θ_0 with the inserted and held-out directions; ε_audit (Andrew et al.
    2024, Alg. 1), its bootstrap interval and the equal-variance estimate (module docstring)."""
    d = delta_theta.numel()
    unit = delta_theta.double() / max(float(delta_theta.norm()), 1e-30)
    cos = np.array([float(unit @ direction(seed, j, d).double()) for j in range(canaries + held_out)])
    c_in, c_out = cos[:canaries], cos[canaries:]
    mu = float((c_in.mean() - c_out.mean()) / c_out.std(ddof=1))
    result = {
        "observer": "final model",
        "canaries": canaries,
        "held_out": held_out,
        "dim": d,
        "cos_in_mean": float(c_in.mean()),
        "cos_in_std": float(c_in.std(ddof=1)) if canaries > 1 else None,
        "cos_out_mean": float(c_out.mean()),
        "cos_out_std": float(c_out.std(ddof=1)),
        "delta": delta,
        "epsilon_audit": None,
        "epsilon_audit_ci95": None,
        "mu": mu,
        "epsilon_audit_equal_variance": gdp_epsilon(mu, delta),
    }
    if canaries < 2:  # σ̂ of one cosine is undefined
        return result
    null_std = 1 / np.sqrt(d)
    result["epsilon_audit"] = gaussian_pair_epsilon(delta, 0.0, null_std, c_in.mean(), c_in.std(ddof=1))
    rng = np.random.default_rng(seed_sequence(seed, "audit-bootstrap"))
    samples = c_in[rng.integers(0, canaries, (BOOTSTRAP, canaries))]
    boot = [gaussian_pair_epsilon(delta, 0.0, null_std, s.mean(), s.std(ddof=1))
            for s in samples if s.std(ddof=1) > 0]
    result["epsilon_audit_ci95"] = [float(v) for v in np.percentile(boot, [2.5, 97.5], method="inverted_cdf")]
    return result


def final_audit(scenario, initial: nn.Module, final: nn.Module) -> dict:
    """The audit of a finished run: θ_T − θ_0 against the canary directions."""
    a = scenario.audit
    result = estimate(parameter_vector(final) - parameter_vector(initial), scenario.seed, a.canaries, a.held_out, a.delta)
    return {**result, "norm": canary_norm(scenario)}


@register("world_layer", "canary_audit", order=20,
          description="canary clients of the `audit:` section (Andrew et al. ICLR 2024)")
def audit_layer(setup, grid: GridWrapper, run_dir: Path) -> GridWrapper:
    return grid if setup.scenario.audit is None else CanaryLayer(grid, setup.scenario)
