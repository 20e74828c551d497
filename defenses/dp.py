"""DP-FedAvg: client-level differential privacy by clipping and the Gaussian mechanism
(McMahan, Ramage, Talwar, Zhang, ICLR 2018, arXiv 1710.06963, Alg. 1; Geyer, Klein, Nabi
2017), as a client mod plus a server wrapper in the style of Flower's
``DifferentialPrivacyClientSide{Fixed,Adaptive}Clipping`` with ``fixedclipping_mod`` /
``adaptiveclipping_mod``, but with fedsim's seeded noise and sampling.

Client mod (after the strategy's local training, on the client):

    Δ_k = θ_k − θ_t                                   (all model arrays, flattened)
    Δ̃_k = Δ_k · min(1, C / ‖Δ_k‖₂)                    (Alg. 1 "flat clipping")
    noise: client — Δ̃_k += N(0, (z_Δ C)²/m)          (distributed noise; the m noises sum to
                                                       the central noise, given secure aggregation)
    adaptive clipping — also reports the centred bit b_k − 1/2, b_k = 1[‖Δ_k‖₂ ≤ C]
                        (Andrew et al. 2021, Sec. 3 / Thm 1: |b_k − 1/2| = 1/2, so adding or
                        removing a client moves the noised sum by 1/2, not 1)

Server wrapper (around ``fedavg`` or ``fedprox``; the wrapped strategy's aggregation is replaced):

    cohort: sampling poisson — each client independently with probability q (Alg. 1,
            "C^t ← sample users with probability q"), q = the strategy's fraction_train;
            sampling fixed — the strategy's fixed-size cohort of m clients
    θ_{t+1} = θ_t + Σ_k Δ̃_k / W + N(0, σ² I)  with W = qN (Alg. 1's fixed-denominator
            estimator f̃_f; uniform weights, as example weights would change the sensitivity)
            or W = m, and σ = z_Δ·C/W (noise: server)
    adaptive (Andrew, Thakkar, McMahan, Ramaswamy, NeurIPS 2021, arXiv 1905.03871, Alg. 1):
            b̄ = (Σ_k (b_k − 1/2) + N(0, σ_b²)) / W + 1/2;  C ← C · exp(−η_C (b̄ − γ)),
            with z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) so that the round stays a Gaussian mechanism
            of multiplier z (their Thm 1: the bits' sum has sensitivity 1/2, so its noise
            multiplier is 2σ_b); σ_b defaults to m/20 (their recommendation). With the raw
            bit (sensitivity 1 under add/remove) the split would need σ_b in place of 2σ_b.

``noise_multiplier`` z is given, or calibrated from ``target_epsilon`` over the scenario's
rounds (``fedsim.privacy.calibrate_noise_multiplier``). ε at ``delta`` is recorded every
round for the sampling actually used (``fedsim.privacy``: Poisson, or fixed-size without
replacement with replace-one neighbours). Empty Poisson cohorts still add noise.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from flwr.app import Message, MessageType, RecordDict
from pydantic import Field, model_validator

from fedsim import privacy, registry
from fedsim.apps.client import ClientEnv
from fedsim.records import flatten, stack, unflatten
from fedsim.registry import Params, register
from fedsim.state import Checkpointable
from fedsim.training import seed_sequence, torch_generator

registry.add_kind("defense")

CLIP = "dp.clip"  # config keys the wrapper sets for the client mod
CLIENT_STD = "dp.client-noise-std"
CENTRED_BIT = "dp_unclipped_centred"  # b_k − 1/2, the client's adaptive-clipping report


class DPParams(Params):
    clipping_norm: float = Field(1.0, gt=0, description="L2 clip C of each update (initial C when adaptive)")
    noise_multiplier: float | None = Field(None, ge=0, description="z: noise std z·C on the sum")
    target_epsilon: float | None = Field(None, gt=0, description="calibrate z to this ε over the run's rounds")
    delta: float = Field(1e-5, gt=0, lt=1)
    sampling: Literal["poisson", "fixed"] = Field(
        "poisson", description="poisson: each client w.p. q = fraction_train (DP-FedAvg); fixed: the strategy's cohort"
    )
    noise: Literal["server", "client"] = Field("server", description="central noise, or each client adds its share")
    adaptive: bool = Field(False, description="quantile-tracking clip norm (Andrew et al. 2021)")
    target_quantile: float = Field(0.5, gt=0, lt=1, description="γ: fraction of updates left unclipped")
    clip_lr: float = Field(0.2, gt=0, description="η_C of the geometric clip update")
    clipped_count_stddev: float | None = Field(None, gt=0, description="σ_b (default: expected cohort / 20)")
    accountant: Literal["rdp", "pld"] = "rdp"

    @model_validator(mode="after")
    def _one_noise_setting(self):
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("give exactly one of noise_multiplier and target_epsilon")
        if self.noise == "client" and self.sampling == "poisson":
            raise ValueError("noise: client needs sampling: fixed (a Poisson cohort's size varies)")
        return self


def dp_mod(instruction: RecordDict, reply: RecordDict, env: ClientEnv) -> RecordDict:
    """Client mod: clip the update to the wrapper's C; add this client's noise share."""
    cfg = instruction["config"]
    sent = instruction["arrays"]
    x = flatten(sent)
    delta = flatten(reply["arrays"]) - x
    norm = float(delta.norm())
    clip = float(cfg[CLIP])
    delta = delta * min(1.0, clip / norm) if norm > 0 else delta
    std = float(cfg[CLIENT_STD])
    if std > 0:
        gen = env.generator(int(cfg["server-round"]), "dp-noise")
        delta = delta + std * torch.randn(delta.shape, generator=gen, dtype=delta.dtype)
    reply["arrays"] = unflatten(x + delta, sent)
    reply["metrics"]["dp_norm"] = norm
    reply["metrics"][CENTRED_BIT] = float(norm <= clip) - 0.5
    return reply


class DPFedAvg(Checkpointable):
    """Server wrapper: cohort, noisy uniform mean of clipped updates, accounting, adaptive C."""

    checkpoint_fields = ("clip",)

    def __init__(self, inner, params: DPParams, setup):
        self.inner, self.params = inner, params
        sc = setup.scenario
        self.seed, self.population, self.rounds = sc.seed, sc.num_clients, sc.rounds
        if not all(v.is_floating_point() for v in setup.model.state_dict().values()):
            raise ValueError("defense dp: the model must hold floating-point arrays only")
        fixed = max(int(self.population * inner.fraction_train), inner.min_train_nodes)
        self.expected = self.population * inner.fraction_train if params.sampling == "poisson" else fixed
        self.sample_size = self.expected  # the accountant's m (q = m / N)
        self.z = params.noise_multiplier
        if self.z is None:
            self.z = privacy.calibrate_noise_multiplier(
                params.target_epsilon, self.rounds, sampling=params.sampling, population=self.population,
                sample_size=self.sample_size, delta=params.delta, kind=params.accountant,
            )
        self.sigma_b = params.clipped_count_stddev or self.expected / 20
        self.z_update = self.z
        if params.adaptive and self.z > 0:
            if 2 * self.sigma_b <= self.z:
                raise ValueError(f"defense dp: clipped_count_stddev {self.sigma_b:g} must exceed z/2 = {self.z / 2:g}")
            self.z_update = (self.z**-2 - (2 * self.sigma_b) ** -2) ** -0.5
        self.clip = params.clipping_norm
        self.sent = None

    def __getattr__(self, name):  # evaluation and the rest: the wrapped strategy's
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def configure_train(self, server_round, arrays, config, grid):
        self.sent = arrays
        config[CLIP] = self.clip
        share = self.z_update * self.clip / math.sqrt(self.expected) if self.params.noise == "client" else 0.0
        config[CLIENT_STD] = share
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        if self.params.sampling == "fixed" or not messages:
            return messages
        rng = np.random.default_rng(seed_sequence(self.seed, server_round, "dp-poisson"))
        nodes = list(grid.get_node_ids())
        joined = rng.random(len(nodes)) < self.expected / self.population
        content, group = messages[0].content, messages[0].metadata.group_id
        return [Message(content, nid, MessageType.TRAIN, group_id=group) for nid, j in zip(nodes, joined) if j]

    def aggregate_train(self, server_round, replies):
        ok = [r for r in replies if not r.has_error()]
        x = flatten(self.sent)
        total = torch.zeros_like(x)
        if ok:
            total = (stack([r.content["arrays"] for r in ok]) - x).sum(0)
        std = self.z_update * self.clip / self.expected if self.params.noise == "server" else 0.0
        gen = torch_generator(self.seed, server_round, "dp-noise")
        noise = std * torch.randn(x.shape, generator=gen, dtype=x.dtype)
        new = unflatten(x + total / self.expected + noise, self.sent)
        metrics = {
            "epsilon": self.epsilon(server_round),
            "noise_std": self.z_update * self.clip / self.expected,  # on the mean, wherever it is added
            "clip_norm": self.clip,
            "noise_multiplier": self.z,
            "dp_cohort": len(ok),
        }
        if ok:
            ms = [r.content["metrics"] for r in ok]
            metrics["train_loss"] = float(np.mean([m["train_loss"] for m in ms]))
            metrics["clipped_fraction"] = 0.5 - float(np.mean([m[CENTRED_BIT] for m in ms]))
        if self.params.adaptive:
            self.clip = self.adapted_clip(server_round, [r.content["metrics"][CENTRED_BIT] for r in ok])
        return new, metrics

    def adapted_clip(self, server_round: int, centred: list[float]) -> float:
        """C ← C·exp(−η_C(b̄ − γ)), b̄ = (Σ(b_k − 1/2) + N(0, σ_b²))/W + 1/2 the noisy fraction
        of unclipped updates (Andrew et al. Alg. 1 with their centred bits, Thm 1)."""
        gen = torch_generator(self.seed, server_round, "dp-clip-count")
        noisy = sum(centred) + self.sigma_b * float(torch.randn((), generator=gen, dtype=torch.float64))
        fraction = noisy / self.expected + 0.5
        return self.clip * math.exp(-self.params.clip_lr * (fraction - self.params.target_quantile))

    def epsilon(self, rounds: int) -> float:
        p = self.params
        return privacy.dp_fedavg_epsilon(
            self.z, rounds, sampling=p.sampling, population=self.population,
            sample_size=self.sample_size, delta=p.delta, kind=p.accountant,
        )


@register("defense", "dp", params=DPParams, client_mod=dp_mod, strategies=("fedavg", "fedprox"), batched=True)
def dp(params: DPParams, strategy, setup) -> DPFedAvg:
    """DP-FedAvg: clipped updates, Gaussian noise, client-level (ε, δ) accounting."""
    return DPFedAvg(strategy, params, setup)
