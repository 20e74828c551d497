"""Fed-SGM: the Sketched Gaussian Mechanism for federated learning (Li, Chen, Banerjee,
"Sketched Gaussian Mechanism for Private Federated Learning", NeurIPS 2025, arXiv 2509.08195).

The mechanism (§2, Alg. 2): SG(γ; R, ξ) = Rγ + ξ with a Gaussian sketch R ∈ ℝ^{b×d}, entries
i.i.d. N(0, 1/b) (std 1/√b, so that E[RᵀR] = I_d, Remark 3.1; the paper's "N(0, 1/√b)" is a
typo), and ξ ~ N(0, σ_g² I_b). fedsim's realisation of Alg. 2, round t:

    server: sample N of the C clients uniformly without replacement (FedAvg's seeded cohort),
            send θ_t and (τ, b, σ_g, t)
    client c (client update):
        R_t ← from a secret all clients share, derive_seed(seed, "sgm-sketch-secret", t),
              computed on the client only; the same R_t for every client of round t, fresh each round
        K local SGD steps from θ_t → θ_{c,K};        Δ_c = θ_t − θ_{c,K}      (the paper's sign)
        Δ̂_c = clip_L2(Δ_c / η_local, τ)
        Δ̃_c = η_local · (R_t Δ̂_c + z_c),   z_c ~ N(0, σ_g² I_b)             (b numbers up)
    server (aggregation): Δ̄ = (1/N) Σ_c Δ̃_c                                      (uniform mean)
    de-sketch:  u_t = R_tᵀ Δ̄ (d numbers), computed by ONE of the round's clients (the lowest
                partition id that replied) in a ``query.sgm_desketch`` exchange: the server
                never holds R_t
    GLOBAL_OPT: gd (Alg. 3) θ ← θ − η_g u_t; amsgrad (Alg. 4) m ← β₁m + (1−β₁)u,
                v ← max(v, β₂v + (1−β₂)u²), θ ← θ − η_g m/(√v + ε); adam: Adam with bias
                correction (the paper's experiments use "Adam"; App. Table 2: AMSGrad ≈ Adam)

R_t is generated in blocks of ``BLOCK_ROWS`` rows, each from its own generator seeded by
(secret, block index), so R_t is a function of (secret, b, d) alone and at most
``BLOCK_ROWS``·d floats exist at a time (sketch and de-sketch cost O(bd) time, O(d) memory
beyond the block).

Threat model. The paper's ε (``epsilon_secret_sketch``, Lemma 2.2 and
Thm 3.1: RDP of the sketch marginalised over R_t, amplified by sampling, strong composition)
only holds against an observer of the sketches who never learns R_t: here the upload
channel. In the paper the clients de-sketch and apply u_t themselves; in fedsim the server
holds the model (it evaluates and checkpoints it), so it receives u_t = R_tᵀΔ̄ and is a
*model observer*, as is anyone who sees a released model. Conditioned on R_t a round is a
Gaussian mechanism on R_t Σ Δ̂ with noise std √N·σ_g and sensitivity τ·ρ (Thm 2.1, ρ the
JL norm factor of Lemma B.1): ``epsilon_public_sketch``, the conservative bound that covers
the server. ``epsilon`` is that public-sketch value. Both use fixed-size sampling of N out
of C clients (q = N/C); with a ``participation:`` layer the cohort is drawn from the
available clients only and neither bound's amplification argument holds as stated.
In this simulator the secret derives from the scenario seed, which the server also knows:
secrecy is a protocol property here (nothing the server receives carries it; tested), not a
cryptographic one.

Differences from the released code (``lucmonl/mlopt`` ``main.py::federated_train``,
the official code), which this module does not follow: it sketches with an SRHT (Walsh–Hadamard
with random signs and row sampling) where the paper and fedsim use a dense Gaussian R; it
clips Δ/η_local elementwise to [−τ, τ] (L∞, sensitivity τ√d) where the paper and fedsim clip
the L2 norm; it de-sketches on the server; it has no accountant.

Canary audits: when the client's ``env`` carries a ``canary`` (a flat tensor over the
trainable parameters), the client skips local training and acts as if it had trained to
θ_t + canary, as every canary does in fedsim (``fedsim.world.audit``): Δ = θ_t − θ_{c,K} = −canary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from pydantic import Field, model_validator

from fedsim import privacy
from fedsim.apps import client
from fedsim.apps.client import ClientEnv
from fedsim.records import ClientIndex
from fedsim.registry import register
from fedsim.state import Checkpointable
from fedsim.training import derive_seed, torch_generator
from fedsim.strategies.fedavg import FedAvg, FedAvgParams, sampling_kwargs
from fedsim.strategies.stateful import (
    check_parameters_only,
    model_vector,
    record_vector,
    successful,
    to_arrays,
    to_vector,
    trainable,
    vector_record,
)

SECRET_PURPOSE = "sgm-sketch-secret"
NOISE_PURPOSE = "sgm-noise"
BLOCK_ROWS = 32  # rows of R_t generated at a time (each block from its own seeded generator)
SKETCH_KEY = "sketch"
UPDATE_KEY = "update"
DESKETCH = f"{MessageType.QUERY}.sgm_desketch"


# --------------------------------------------------------------------- the sketch


def sketch_secret(scenario_seed: int, server_round: int) -> int:
    """The round's sketch seed, shared by the clients. CLIENT SIDE ONLY: nothing the server
    runs calls this, and the value never travels in a message."""
    return derive_seed(scenario_seed, SECRET_PURPOSE, server_round)


def sketch_blocks(secret: int, sketch_dim: int, dim: int):
    """R_t (b × d, entries N(0, 1/b)) as (first row, block) pairs of at most ``BLOCK_ROWS`` rows."""
    scale = 1 / math.sqrt(sketch_dim)
    for k, start in enumerate(range(0, sketch_dim, BLOCK_ROWS)):
        rows = min(BLOCK_ROWS, sketch_dim - start)
        yield start, torch.randn(rows, dim, generator=torch_generator(secret, "block", k)) * scale


def sketch(x: torch.Tensor, secret: int, sketch_dim: int) -> torch.Tensor:
    """R_t x (b numbers), block by block."""
    out = torch.empty(sketch_dim, dtype=x.dtype)
    for start, block in sketch_blocks(secret, sketch_dim, x.numel()):
        out[start : start + len(block)] = block.to(x.dtype) @ x
    return out


def desketch(y: torch.Tensor, secret: int, dim: int) -> torch.Tensor:
    """R_tᵀ y (d numbers), block by block (the paper's de-sketch, not a pseudo-inverse)."""
    out = torch.zeros(dim, dtype=y.dtype)
    for start, block in sketch_blocks(secret, y.numel(), dim):
        out += block.to(y.dtype).T @ y[start : start + len(block)]
    return out


def sketch_matrix(secret: int, sketch_dim: int, dim: int) -> torch.Tensor:
    """R_t in full (tests and small models only)."""
    return torch.cat([block for _, block in sketch_blocks(secret, sketch_dim, dim)])


# ------------------------------------------------------------------- client side


def clip_l2(v: torch.Tensor, clip: float) -> tuple[torch.Tensor, float]:
    """v·min(1, τ/‖v‖₂) and ‖v‖₂ (Alg. 2 clip: L2, not the released code's L∞)."""
    norm = float(torch.linalg.vector_norm(v))
    return (v * (clip / norm) if norm > clip else v), norm


def privatize(
    update: torch.Tensor, secret: int, sketch_dim: int, clip: float, sigma_g: float, noise: torch.Generator
) -> tuple[torch.Tensor, float]:
    """R_t clip_L2(update, τ) + z, z ~ N(0, σ_g² I_b) (Alg. 2 client update, before the η_local
    factor); returns it and the update's norm before clipping."""
    clipped, norm = clip_l2(update, clip)
    z = torch.randn(sketch_dim, generator=noise, dtype=update.dtype) * sigma_g
    return sketch(clipped, secret, sketch_dim) + z, norm


def sgm_train(content: RecordDict, env: ClientEnv) -> RecordDict:
    """Fed-SGM client (Alg. 2, client update): local SGD, clip Δ/η_local, sketch, add noise.

    Replies with the b-number sketch only (no model), ``train_loss``, ``num-examples``,
    the update norm before clipping and whether it was clipped."""
    cfg = content["config"]
    rnd = int(cfg["server-round"])
    model = env.load(content["arrays"])
    theta = model_vector(model)
    lr = env.scenario.client.lr
    canary = getattr(env, "canary", None)
    if canary is None:
        loss, _ = env.train(rnd)
        delta = theta - model_vector(model)  # Δ = θ_t − θ_{c,K}
    else:  # canary audit: the update is the canary, no training
        loss, delta = 0.0, -canary.detach().reshape(-1).to(theta.dtype)  # θ_{c,K} = θ_t + canary
    clip = float(cfg["clip"])
    noisy, norm = privatize(
        delta / lr,
        sketch_secret(env.scenario.seed, rnd),
        int(cfg["sketch-dim"]),
        clip,
        float(cfg["sigma-g"]),
        env.generator(rnd, NOISE_PURPOSE),
    )
    metrics = {
        "train_loss": loss,
        "num-examples": len(env.x),
        "update_norm": norm,
        "clipped": float(norm > clip),
        "canary": float(canary is not None),
    }
    return RecordDict({SKETCH_KEY: vector_record(lr * noisy), "metrics": MetricRecord(metrics)})


@client.app.query("sgm_desketch")
def sgm_desketch(msg: Message, context: Context) -> Message:
    """u_t = R_tᵀ Δ̄ (the argument of Alg. 2's GLOBAL_OPT), by a client that knows R_t's secret."""
    env = client._env(context)
    rnd = int(msg.content["config"]["server-round"])
    mean = record_vector(msg.content[SKETCH_KEY])
    dim = sum(p.numel() for p in trainable(env.model))
    u = desketch(mean, sketch_secret(env.scenario.seed, rnd), dim)
    return Message(RecordDict({UPDATE_KEY: vector_record(u)}), reply_to=msg)


# ------------------------------------------------------------------- server side


@dataclass(frozen=True)
class OptState:
    """GLOBAL_OPT's server state: first and second moments (None until the first step)."""

    m: torch.Tensor | None = None
    v: torch.Tensor | None = None
    steps: int = 0


def global_step(
    x: torch.Tensor,
    u: torch.Tensor,
    state: OptState,
    *,
    rule: str,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, OptState]:
    """One GLOBAL_OPT step on the flat model x with the de-sketched update u.

    gd (Alg. 3): x − η u. amsgrad (Alg. 4, no bias correction, as written):
    m = β₁m + (1−β₁)u; v̂ = β₂v + (1−β₂)u²; v = max(v̂, v); x − η m/(√v + ε).
    adam: m, v as above without the max, x − η m̂/(√v̂ + ε), m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ)."""
    steps = state.steps + 1
    if rule == "gd":
        return x - lr * u, OptState(steps=steps)
    m = torch.zeros_like(u) if state.m is None else state.m
    v = torch.zeros_like(u) if state.v is None else state.v
    m = beta1 * m + (1 - beta1) * u
    v_new = beta2 * v + (1 - beta2) * u * u
    if rule == "amsgrad":
        v = torch.maximum(v_new, v)
        return x - lr * m / (v.sqrt() + eps), OptState(m, v, steps)
    if rule == "adam":
        m_hat, v_hat = m / (1 - beta1**steps), v_new / (1 - beta2**steps)
        return x - lr * m_hat / (v_hat.sqrt() + eps), OptState(m, v_new, steps)
    raise ValueError(f"unknown GLOBAL_OPT {rule!r}")


@dataclass(frozen=True)
class Accounting:
    """What the per-round ε needs: clip τ, sketch dim b, population C, cohort N, δ."""

    clip: float
    sketch_dim: int
    population: int
    sample_size: int
    delta: float

    def epsilons(self, sigma_g: float, rounds: int) -> dict[str, float]:
        secret = privacy.sgm_secret_sketch_epsilon(
            sigma_g, self.clip, self.sketch_dim, self.sample_size / self.population, rounds, self.delta
        )
        public = privacy.sgm_public_sketch_epsilon(
            sigma_g, self.clip, self.sketch_dim, rounds, sampling="fixed",
            population=self.population, sample_size=self.sample_size, delta=self.delta,
        )
        return {"epsilon_secret_sketch": secret, "epsilon_public_sketch": public, "epsilon": public}


class SGM(Checkpointable, FedAvg):
    """FedAvg's seeded cohort; uniform mean of sketches; de-sketch by a client; GLOBAL_OPT."""

    checkpoint_fields = ("opt",)

    def __init__(self, *args, sigma_g: float, accounting: Accounting, opt: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.sigma_g = sigma_g
        self.accounting = accounting
        self.opt_params = opt  # rule, lr, beta1, beta2, eps
        self.opt = OptState()
        self.grid = None  # the world's grid, kept from configure_train for the de-sketch query
        self.clients = ClientIndex()  # partition id of each reply, on any Flower grid
        self.sent = None

    def configure_train(self, server_round, arrays, config, grid):
        self.grid, self.sent = grid, arrays
        self.clients.see(grid)
        config["clip"] = self.accounting.clip
        config["sketch-dim"] = self.accounting.sketch_dim
        config["sigma-g"] = self.sigma_g
        return super().configure_train(server_round, arrays, config, grid)

    def desketch(self, server_round: int, mean: torch.Tensor, replies: list[Message]) -> tuple[torch.Tensor, int]:
        """Ask the round's repliers, lowest partition id first, for R_tᵀ Δ̄ (the first answer)."""
        content = RecordDict(
            {SKETCH_KEY: vector_record(mean), "config": ConfigRecord({"server-round": server_round})}
        )
        for reply in sorted(replies, key=self.clients):
            query = Message(content, reply.metadata.src_node_id, DESKETCH)
            answers = [a for a in self.grid.send_and_receive([query]) if not a.has_error()]
            if answers:
                return record_vector(answers[0].content[UPDATE_KEY]), self.clients(reply)
        raise RuntimeError(f"round {server_round}: no client of the round answered the de-sketch query")

    def aggregate_train(self, server_round, replies):
        replies = successful(replies)
        if not replies:
            return None, None
        mean = torch.stack([record_vector(r.content[SKETCH_KEY]) for r in replies]).mean(0)  # Δ̄
        u, helper = self.desketch(server_round, mean, replies)
        x, self.opt = global_step(to_vector(self.sent), u, self.opt, **self.opt_params)
        return to_arrays(x, self.sent), self.metrics(server_round, replies, helper)

    def metrics(self, server_round: int, replies: list[Message], helper: int) -> MetricRecord:
        records = [r.content["metrics"] for r in replies]
        trained = [rec for rec in records if not float(rec["canary"])]
        examples = sum(float(rec["num-examples"]) for rec in trained)
        loss = sum(float(rec["num-examples"]) * float(rec["train_loss"]) for rec in trained) / examples if trained else 0.0
        return MetricRecord(
            {
                "train_loss": loss,
                "num-examples": int(sum(float(rec["num-examples"]) for rec in records)),
                "clip_fraction": sum(float(rec["clipped"]) for rec in records) / len(records),
                "update_norm": sum(float(rec["update_norm"]) for rec in records) / len(records),
                "noise_std": self.sigma_g,
                "desketch_client": helper,
                **self.accounting.epsilons(self.sigma_g, server_round),
            }
        )


class SGMParams(FedAvgParams):
    clip: float = Field(1.0, gt=0, description="L2 clip τ on Δ/η_local")
    sketch_dim: int = Field(1024, ge=1, description="sketch dimension b (rows of R_t)")
    sigma_g: float | None = Field(
        None, ge=0, description="per-client noise std σ_g on the sketch (Δ̂ units); 0.5 unless target_epsilon is given"
    )
    target_epsilon: float | None = Field(
        None, gt=0, description="calibrate σ_g so that the secret-sketch ε after all rounds is this (bisection)"
    )
    delta: float = Field(1e-5, gt=0, lt=1, description="δ of both accountants")
    server_opt: Literal["gd", "adam", "amsgrad"] = Field("adam", description="GLOBAL_OPT (Alg. 3 / Alg. 4)")
    server_lr: float = Field(0.01, gt=0, description="η_global")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0, description="ε of Adam/AMSGrad's denominator")

    @model_validator(mode="before")
    @classmethod
    def _one_noise_source(cls, data):
        """σ_g or target_epsilon, not both; σ_g = 0.5 when neither (a resolved scenario
        names the one in use and null for the other, and validates again)."""
        if isinstance(data, dict):
            if data.get("target_epsilon") is not None and data.get("sigma_g") is not None:
                raise ValueError("give sigma_g or target_epsilon, not both")
            if data.get("target_epsilon") is None and data.get("sigma_g") is None:
                data = {**data, "sigma_g": 0.5}
        return data


def cohort_size(params: FedAvgParams, num_clients: int) -> int:
    """N, as Flower's FedAvg samples it: max(⌊C·fraction_train⌋, min_train_nodes)."""
    return max(int(num_clients * params.fraction_train), min(params.min_train_nodes, num_clients))


@register("strategy", "sgm", params=SGMParams, client=sgm_train, upload="update", canary="handler", cpu_only=True)
def sgm(params: SGMParams, setup) -> SGM:
    """Fed-SGM: clipped, Gaussian-sketched, noised client updates (Li, Chen, Banerjee 2025)."""
    check_parameters_only(setup.model, "sgm")
    n = setup.scenario.num_clients
    accounting = Accounting(params.clip, params.sketch_dim, n, cohort_size(params, n), params.delta)
    sigma_g = params.sigma_g
    if params.target_epsilon is not None:
        sigma_g = privacy.sgm_calibrate_sigma(
            params.target_epsilon, params.clip, params.sketch_dim, accounting.sample_size / n,
            setup.scenario.rounds, params.delta,
        )
    opt = {"rule": params.server_opt, "lr": params.server_lr, "beta1": params.beta1, "beta2": params.beta2,
           "eps": params.eps}
    return SGM(sigma_g=sigma_g, accounting=accounting, opt=opt, **sampling_kwargs(params, setup))
