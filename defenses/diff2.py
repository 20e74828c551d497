"""DIFF2 (Murata & Suzuki, "DIFF2: Differential Private Optimization via Gradient
Differences for Nonconvex Distributed Learning", ICML 2023, PMLR 202:25523-25548,
arXiv 2302.03884) and its baseline DP-GD, as fedsim strategies ``diff2`` and ``dpgd``.

Setting: P clients, client p holds n_p examples, n = min_p n_p; sample-level DP
(neighbouring datasets differ in one example), a **trusted server** that adds the noise;
full-batch client statistics with per-sample L2 clipping; every client takes part in
every round. With restart interval T, anchor clip C1, difference clip ratio C2, step η
(Murata & Suzuki 2023, DIFF2-GD):

    x_prev = x = x_0
    round r = 0..R-1 (fedsim's server round r + 1):
      r % T == 0 (anchor):  client p sends g_p = mean_{z∈D_p} clip(∇ℓ(x; z), C1)
                            v = mean_p g_p + N(0, (C1 σ1)² I)
      otherwise:            C_r = C2·‖x − x_prev‖
                            client p sends h_p = mean_{z∈D_p} clip(∇ℓ(x; z) − ∇ℓ(x_prev; z), C_r)
                            v = v + mean_p h_p + N(0, (C_r σ2)² I)
      x_prev = x;  x = x − η v

Per-sample gradients come from ``torch.func`` (functional_call + grad + vmap), in eval
mode (FC_10 has no dropout; a model with dropout would get the deterministic gradient);
weight decay λ (``client.weight_decay``) is added to each per-sample gradient before
clipping (∇ℓ + λx). T = 1 is DP-GD: every round is an anchor (``dpgd`` is this module
with T fixed to 1, σ1 from the T = 1 formula).

Noise, drawn by the server from (seed, round, "diff2-noise"), and its accounting
(``fedsim.privacy``): ``noise: paper`` uses the paper's σ1, σ2 (``diff2_sigmas``, u = 1.25);
``noise: calibrated`` scales both by one factor so that the RDP accountant
(``diff2_epsilon``) reaches the target ε exactly (``diff2_calibrated_sigmas``);
``epsilon: inf`` (or null) adds no noise: the non-private estimator. Each round records
``epsilon`` (ε spent after r rounds), ``noise_std``, ``clip_radius`` (C1 or C_r) and
``anchor`` (1/0); ``train_loss`` is the full-batch loss at x (example-weighted over the
clients; a monitoring number outside the privacy guarantee).

Choices of this implementation:
- x_prev travels with x: in difference rounds the server sends both (record ``prev``),
  so clients keep no state (robust to restarts and churn; 2d down in those rounds).
- The server divides the sum of the replies by P, not by the number of replies: a client
  that failed counts as a zero statistic, so the sensitivity 2C/(nP) the accountant
  assumes holds in every round (the estimate is then biased toward 0, never less private).
- The model must have no buffers (its state is its parameter vector).

Not implemented: DIFF2-BVR-L-SGD (the bias-variance-reduced local-SGD routine of the
paper; its pseudo-code is not checked against released code). Hyperparameter tuning is not
privacy-accounted, as in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from flwr.app import MetricRecord, RecordDict
from pydantic import Field
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from fedsim.apps.client import ClientEnv
from fedsim.privacy import diff2_calibrated_sigmas, diff2_epsilon, diff2_sigmas
from fedsim.registry import Params, register
from fedsim.state import Checkpointable
from fedsim.training import task_loss, torch_generator
from fedsim.strategies.fedavg import FedAvg
from fedsim.strategies.stateful import check_parameters_only, model_vector, successful, to_arrays, to_vector

PREV_KEY = "prev"  # the record holding x_prev in difference rounds
NOISE_PURPOSE = "diff2-noise"

# --------------------------------------------------------------------- client side


def per_sample_gradients(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, at: torch.Tensor, weight_decay: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∇ℓ(at; z_i) + λ·at for every example, as rows of an (n, d) matrix; the losses ℓ(at; z_i)).

    ``at`` is a flat vector of the model's trainable parameters (``model_vector`` order);
    the model's own weights are not used.
    """
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for p in model.parameters() if p.requires_grad]
    params = dict(zip(names, torch.split(at, [math.prod(s) for s in shapes]), strict=True))
    params = {name: t.view(shape) for (name, t), shape in zip(params.items(), shapes, strict=True)}

    def loss_one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return task_loss(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    was_training = model.training
    model.eval()
    try:
        grads, losses = vmap(grad_and_value(loss_one), in_dims=(None, 0, 0))(params, x, y)
    finally:
        model.train(was_training)
    rows = torch.cat([grads[name].reshape(len(x), -1) for name in names], dim=1)
    if weight_decay:
        rows = rows + weight_decay * at
    return rows, losses


def clip_rows(rows: torch.Tensor, radius: float) -> torch.Tensor:
    """Each row scaled by min(1, radius/‖row‖₂) (per-sample L2 clipping; radius 0 gives 0)."""
    norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    return rows * (radius / norms.clamp_min(1e-12)).clamp(max=1.0)


def client_statistic(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    at: torch.Tensor,
    prev: torch.Tensor | None,
    clip: float,
    weight_decay: float = 0.0,
    sizes: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A client's message and its mean loss at ``at``: anchor (``prev`` None)
    g_p = mean_z clip(∇ℓ(x; z), C1); difference h_p = mean_z clip(∇ℓ(x; z) − ∇ℓ(x_prev; z), C_r).

    With ``sizes``, (x, y) are several clients' examples one after the other and the
    result holds one row (one loss) per client: one vmap for all of them (``simulate``).
    """
    rows, losses = per_sample_gradients(model, x, y, at, weight_decay)
    if prev is not None:
        rows = rows - per_sample_gradients(model, x, y, prev, weight_decay)[0]
    clipped = clip_rows(rows, clip)
    if sizes is None:
        return clipped.mean(0), losses.mean()
    means = [(c.mean(0), l.mean()) for c, l in zip(clipped.split(list(sizes)), losses.split(list(sizes)), strict=True)]
    return torch.stack([m for m, _ in means]), torch.stack([l for _, l in means])


def diff2_train(content: RecordDict, env: ClientEnv) -> RecordDict:
    """DIFF2/DP-GD client: the clipped full-batch statistic at the received x (and x_prev)."""
    cfg = content["config"]
    model = env.load(content["arrays"])
    anchor = bool(cfg["diff2-anchor"])
    if not anchor and PREV_KEY not in content:
        raise ValueError("a DIFF2 difference round needs x_prev in record 'prev'")
    prev = None if anchor else to_vector(content[PREV_KEY])
    stat, loss = client_statistic(
        model, env.x, env.y, model_vector(model), prev, float(cfg["diff2-clip"]), env.scenario.client.weight_decay
    )
    metrics = MetricRecord({"train_loss": float(loss), "num-examples": len(env.x)})
    return RecordDict({"arrays": to_arrays(stat, content["arrays"]), "metrics": metrics})


# --------------------------------------------------------------------- server side


@dataclass(frozen=True)
class Diff2Rule:
    """The server's side of DIFF2 on flat vectors: which round is an anchor, the clip
    radius, the noisy recursive estimator v and the step (module docstring)."""

    restart: int  # T
    clip: float  # C1
    diff_clip: float  # C2
    lr: float  # η
    sigma1: float
    sigma2: float
    seed: int

    def plan(self, server_round: int, x: torch.Tensor, x_prev: torch.Tensor) -> tuple[bool, float]:
        """(anchor?, clip radius) of fedsim round ``server_round`` (the paper's r = round − 1)."""
        if (server_round - 1) % self.restart == 0:
            return True, self.clip
        return False, self.diff_clip * float(torch.linalg.vector_norm(x - x_prev))

    def noise_std(self, anchor: bool, radius: float) -> float:
        return radius * (self.sigma1 if anchor else self.sigma2)

    def step(
        self, server_round: int, x: torch.Tensor, v: torch.Tensor | None, mean_stat: torch.Tensor, anchor: bool, radius: float
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """v ← (anchor: 0, else v) + mean statistic + N(0, std² I); x ← x − η v. Returns (x, v, std)."""
        std = self.noise_std(anchor, radius)
        noise = torch.randn(mean_stat.shape, generator=torch_generator(self.seed, server_round, NOISE_PURPOSE)) * std
        v = mean_stat + noise if anchor or v is None else v + mean_stat + noise
        return x - self.lr * v, v, std


class Diff2(Checkpointable, FedAvg):
    """All clients every round (FedAvg's seeded sampling at fraction 1); DIFF2's server step."""

    checkpoint_fields = ("v", "x_prev")

    def __init__(self, *args, rule: Diff2Rule, num_clients: int, n_min: int, delta: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.rule = rule
        self.num_clients = num_clients
        self.n_min = n_min
        self.delta = delta
        self.v: torch.Tensor | None = None
        self.x_prev: torch.Tensor | None = None
        self.sent = None  # this round's x (ArrayRecord) and plan, set in configure_train
        self.plan: tuple[bool, float] = (True, rule.clip)

    def configure_train(self, server_round, arrays, config, grid):
        x = to_vector(arrays)
        if self.x_prev is None:
            self.x_prev = x.clone()
        self.sent = arrays
        self.plan = self.rule.plan(server_round, x, self.x_prev)
        config["diff2-anchor"], config["diff2-clip"] = self.plan
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if not self.plan[0]:
            prev = to_arrays(self.x_prev, arrays)
            for msg in messages:
                msg.content[PREV_KEY] = prev
        return messages

    def aggregate_train(self, server_round, replies):
        replies = successful(replies)
        x = to_vector(self.sent)
        total = torch.zeros_like(x)
        for reply in replies:
            total += to_vector(reply.content["arrays"])
        anchor, radius = self.plan
        x_new, self.v, std = self.rule.step(server_round, x, self.v, total / self.num_clients, anchor, radius)
        self.x_prev = x
        counts = [float(r.content["metrics"]["num-examples"]) for r in replies]
        losses = [float(r.content["metrics"]["train_loss"]) for r in replies]
        metrics = {
            "train_loss": sum(n * l for n, l in zip(counts, losses)) / sum(counts) if counts else math.nan,
            "num-examples": int(sum(counts)),
            "epsilon": self.epsilon(server_round),
            "noise_std": std,
            "clip_radius": radius,
            "anchor": int(anchor),
        }
        return to_arrays(x_new, self.sent), MetricRecord(metrics)

    def epsilon(self, rounds: int) -> float:
        """ε spent after ``rounds`` rounds (``fedsim.privacy.diff2_epsilon``)."""
        r = self.rule
        return diff2_epsilon(r.sigma1, r.sigma2, rounds, r.restart, self.n_min, self.num_clients, self.delta)


# ----------------------------------------------------------------- params, factory


class DPGDParams(Params):
    epsilon: float | None = Field(3.0, gt=0, description="target ε over the run; inf or null: no noise")
    delta: float = Field(1e-5, gt=0, lt=1)
    noise: Literal["paper", "calibrated"] = Field(
        "paper", description="paper: the paper's σ formulas (u); calibrated: σ's scaled to reach ε exactly"
    )
    u: float = Field(1.25, gt=1, description="the paper's split of the RDP budget between anchors and differences")
    clip: float = Field(1.0, gt=0, description="anchor clip radius C1")
    lr: float = Field(0.1, gt=0, description="server step η")
    fraction_evaluate: float = Field(1.0, ge=0, le=1, description="fraction for federated evaluation")


class Diff2Params(DPGDParams):
    restart: int = Field(20, ge=1, description="restart interval T (1: DP-GD)")
    diff_clip: float = Field(1.0, gt=0, description="difference clip ratio C2: C_r = C2·‖x − x_prev‖")


def noise_sigmas(params: DPGDParams, rounds: int, restart: int, n_min: int, clients: int) -> tuple[float, float]:
    """(σ1, σ2) for the params' ε, δ and noise mode; (0, 0) without a finite ε."""
    if params.epsilon is None or math.isinf(params.epsilon):
        return 0.0, 0.0
    fn = diff2_sigmas if params.noise == "paper" else diff2_calibrated_sigmas
    return fn(params.epsilon, params.delta, rounds, restart, n_min, clients, u=params.u)


def make_rule(params: DPGDParams, rounds: int, partition_sizes: Sequence[int], seed: int) -> Diff2Rule:
    """The server rule of a run of ``rounds`` rounds over clients of these sizes."""
    restart = getattr(params, "restart", 1)
    sigma1, sigma2 = noise_sigmas(params, rounds, restart, min(partition_sizes), len(partition_sizes))
    return Diff2Rule(
        restart=restart, clip=params.clip, diff_clip=getattr(params, "diff_clip", 1.0), lr=params.lr,
        sigma1=sigma1, sigma2=sigma2, seed=seed,
    )


def build(params: DPGDParams, setup) -> Diff2:
    """The ``diff2`` / ``dpgd`` strategy of a run (``dpgd`` params have no T: T = 1)."""
    check_parameters_only(setup.model, "diff2")
    sc = setup.scenario
    n = sc.num_clients
    return Diff2(
        rule=make_rule(params, sc.rounds, setup.partition_sizes, sc.seed),
        num_clients=n,
        n_min=min(setup.partition_sizes),
        delta=params.delta,
        seed=sc.seed,
        fraction_train=1.0,
        min_train_nodes=n,
        fraction_evaluate=params.fraction_evaluate,
        min_evaluate_nodes=1 if params.fraction_evaluate else 0,
        min_available_nodes=n,
    )


register(
    "strategy", "diff2", params=Diff2Params, client=diff2_train, cpu_only=True,
    description="DIFF2: DP full-batch GD with noisy clipped gradient differences (Murata & Suzuki 2023)",
)(build)
register(
    "strategy", "dpgd", params=DPGDParams, client=diff2_train, cpu_only=True,
    description="DP-GD: DIFF2 with an anchor every round (T = 1), the paper's baseline",
)(build)


# ---------------------------------------------------------- without Flower (sweeps)


def simulate(
    model: nn.Module,
    parts: Sequence[tuple[torch.Tensor, torch.Tensor]],
    rule: Diff2Rule,
    rounds: int,
    weight_decay: float = 0.0,
) -> tuple[torch.Tensor, list[float]]:
    """The same rounds as a fedsim run of ``diff2``/``dpgd`` (same client statistic, same
    server rule and noise stream), in one process without messages: for hyperparameter
    sweeps and benchmarks. Returns (final parameter vector, train loss at x per round)."""
    x = model_vector(model)
    x_prev, v, losses = x.clone(), None, []
    sizes = [len(xp) for xp, _ in parts]
    x_all, y_all = torch.cat([xp for xp, _ in parts]), torch.cat([yp for _, yp in parts])
    weights = torch.tensor(sizes, dtype=torch.float64) / sum(sizes)
    for rnd in range(1, rounds + 1):
        anchor, radius = rule.plan(rnd, x, x_prev)
        stats, client_losses = client_statistic(
            model, x_all, y_all, x, None if anchor else x_prev, radius, weight_decay, sizes
        )
        losses.append(float(weights @ client_losses.double()))
        x_new, v, _ = rule.step(rnd, x, v, stats.sum(0) / len(parts), anchor, radius)
        x_prev, x = x, x_new
    return x, losses
