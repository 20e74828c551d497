"""Byzantine clients: the attacks (pure functions on tensors) and the world layer that plays them.

Threat model (Fed-NGA, Zuo et al., NeurIPS 2025, Sec. 2 and App. B): a fixed set B of
compromised clients, chosen once per seed, either by count or by data weight
(C̄α = Σ_{m∈B} α_m, α_m = S_m / Σ_j S_j, as the paper counts it). A compromised client
uploads an arbitrary vector in place of its honest update; an *omniscient* attacker
(sign-flip, LIE, FoE) first sees every honest upload of the round. A *data-poisoning*
client (label flip) follows the protocol honestly on corrupted data.

Attacks act on the vector the strategy aggregates, the client's *update*:

- a strategy registered with ``upload="update"`` (Fed-NGA and the robust rules of
  ``strategies/robust.py``: one stochastic gradient, or w^t − y after local SGD) or
  ``upload="gradient"`` (FedSGD) receives the update itself, and the attack replaces it;
- any other strategy receives a model y; the attack acts on Δ = y − x, x the model the
  server sent that round, and the compromised client uploads x + Δ'.

The uploads of one round enter an attack as rows of a matrix (the arrays of a reply
flattened in record order); each update attack returns one row per compromised client
that replied. The number of examples a compromised client reports is left unchanged, so
its aggregation weight is its real α_m.
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import NormalDist
from typing import Literal

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from pydantic import Field

from fedsim import registry
from fedsim.apps.client import POISON_KEY
from fedsim.records import flatten, only_arrays, stack, unflatten
from fedsim.registry import Params, register
from fedsim.training import seed_sequence, torch_generator
from fedsim.world.base import GridWrapper

registry.add_kind("byzantine")


class ByzantineParams(Params):
    """Who is compromised: ``fraction`` of the clients, counted by number or by data weight."""

    fraction: float = Field(0.2, ge=0, lt=1, description="Byzantine share of clients (count) or of data (weight)")
    count_by: Literal["count", "weight"] = Field("weight", description="weight: C̄α = Σ_B α_m as in Fed-NGA")


# ----------------------------------------------------------------------- the compromised set


def compromised_clients(seed: int, sizes: list[int], fraction: float, count_by: str) -> list[int]:
    """Partition ids of the compromised clients: fixed per seed, the same on every runtime.

    The clients are put in a random order drawn from ``seed_sequence(seed, "byzantine")``;
    B is the shortest prefix of that order whose share (1/N per client for ``count``,
    α_m for ``weight``) is closest to ``fraction``. With unequal shards the realised
    weight differs from the target; the layer reports it as ``byzantine_weight``.
    """
    n = len(sizes)
    order = np.random.default_rng(seed_sequence(seed, "byzantine")).permutation(n)
    share = np.full(n, 1.0 / n) if count_by == "count" else np.asarray(sizes, float) / sum(sizes)
    reached = np.concatenate([[0.0], np.cumsum(share[order])])
    k = int(np.argmin(np.round(np.abs(reached - fraction), 12)))  # ties: the smaller set
    return sorted(int(i) for i in order[:k])


# ----------------------------------------------------------------------------- the attacks
#
# An update attack is ``attack(params, honest, own, gen) -> forged``: ``honest`` (h × d) the
# honest uploads of the round, ``own`` (b × d) the honest updates of the b compromised
# clients that replied, ``forged`` (b × d) what they upload instead.


class GaussianParams(ByzantineParams):
    std: float = Field(9.0, gt=0, description="standard deviation of every coordinate")


@register("byzantine", "gaussian", params=GaussianParams, target="update", omniscient=False)
def gaussian(params: GaussianParams, honest: torch.Tensor, own: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Gaussian: every coordinate ~ N(0, std²) (Fed-NGA App. B: std 9)."""
    return torch.randn(own.shape, generator=gen, dtype=own.dtype) * params.std


class ConstantParams(ByzantineParams):
    value: float = Field(1.0, description="the value of every coordinate")


@register("byzantine", "all_ones", params=ConstantParams, target="update", omniscient=False)
def all_ones(params: ConstantParams, honest: torch.Tensor, own: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Same-value: a constant vector, all ones by default (Fed-NGA App. B)."""
    return torch.full_like(own, params.value)


class SignFlipParams(ByzantineParams):
    scale: float = Field(3.0, gt=0, description="the upload is −scale · Σ honest updates")


@register("byzantine", "sign_flip", params=SignFlipParams, target="update", omniscient=True)
def sign_flip(params: SignFlipParams, honest: torch.Tensor, own: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Sign-flip (omniscient): −scale · Σ_{honest} g_m, scale 3 (Fed-NGA App. B)."""
    return (-params.scale * honest.sum(0)).expand_as(own).clone()


class LIEParams(ByzantineParams):
    z: float | None = Field(
        0.7, description="μ + z·σ; 0.7 in Fed-NGA App. B; null: Baruch et al.'s z_max from n and b"
    )


def lie_z_max(n: int, b: int) -> float:
    """Baruch et al. (NeurIPS 2019, Sec. 4): s = ⌊n/2 + 1⌋ − b supporters needed, z = Φ⁻¹((n − s)/n)."""
    s = math.floor(n / 2 + 1) - b
    return NormalDist().inv_cdf((n - s) / n)


@register("byzantine", "lie", params=LIEParams, target="update", omniscient=True)
def lie(params: LIEParams, honest: torch.Tensor, own: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A Little Is Enough / ALIE (omniscient): μ + z·σ, coordinate-wise mean and std of honest uploads."""
    z = params.z if params.z is not None else lie_z_max(len(honest) + len(own), len(own))
    mu, sigma = honest.mean(0), honest.std(0, correction=0)
    return (mu + z * sigma).expand_as(own).clone()


class FoEParams(ByzantineParams):
    epsilon: float = Field(0.1, gt=0, description="the upload is −ε · mean of honest updates")


@register("byzantine", "foe", params=FoEParams, target="update", omniscient=True)
def foe(params: FoEParams, honest: torch.Tensor, own: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Fall of Empires / IPM (Xie et al., UAI 2020; omniscient): −ε · mean_{honest} g.

    Fed-NGA App. B writes it (q/(M−B)) Σ_{honest} g with q = −0.1 against Median, Krum
    and GM (ε = 0.1) and q = −3(M−B) against FedAvg, CClip and Fed-NGA (ε = 3(M−B)).
    """
    return (-params.epsilon * honest.mean(0)).expand_as(own).clone()


@register("byzantine", "label_flip", params=ByzantineParams, target="data", omniscient=False)
def label_flip(params: ByzantineParams, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Label flip (data poisoning): the client trains honestly on labels y → C − 1 − y."""
    return num_classes - 1 - y


# ------------------------------------------------------------------------------ the layer


class ByzantineClients(GridWrapper):
    """World layer: the compromised clients' train replies are forged (or their data poisoned).

    Only ``train`` exchanges are touched. Update attacks run here, inside
    ``send_and_receive``, so their cost never enters the strategy's aggregation time.
    Omniscient attacks see the honest uploads of the round; when every client that
    replied is compromised they use the compromised clients' own honest updates instead.
    Randomness comes from (seed, train exchange, "byzantine").
    """

    def __init__(self, inner, setup):
        super().__init__(inner)
        sc = setup.scenario
        self.seed = sc.seed
        self.attack = registry.get("byzantine", sc.byzantine.name)
        self.params = sc.byzantine.params
        self.compromised = frozenset(
            compromised_clients(sc.seed, setup.partition_sizes, self.params.fraction, self.params.count_by)
        )
        sizes = np.asarray(setup.partition_sizes, float)
        self.weight = float(sizes[sorted(self.compromised)].sum() / sizes.sum())  # realised C̄α
        self.uploads_update = registry.get("strategy", sc.strategy.name).extras.get("upload") in ("update", "gradient")
        self.exchanges = 0
        self.sent: dict[int, Message] = {}  # this exchange's instructions, by partition
        self.attacked: list[int] = []

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if not any(m.metadata.message_type == MessageType.TRAIN for m in messages):
            return self.inner.send_and_receive(messages, timeout=timeout)
        self.exchanges += 1
        self.sent = {self.partition_of(m): m for m in messages}
        if self.attack.extras["target"] == "data":
            for pid in self.compromised & self.sent.keys():
                self.sent[pid].content = RecordDict({**self.sent[pid].content, POISON_KEY: ConfigRecord()})
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        ok = [r for r in replies if not r.has_error()]
        forged = [r for r in ok if self.partition_of(r) in self.compromised]
        self.attacked += [self.partition_of(r) for r in forged]
        if forged and self.attack.extras["target"] == "update":
            self._forge(forged, [r for r in ok if self.partition_of(r) not in self.compromised])
        return replies

    def _sent(self, reply: Message) -> ArrayRecord:
        """The model the server sent to the client of ``reply`` (same record key as the reply's)."""
        return self.sent[self.partition_of(reply)].content[only_arrays(reply.content)[0]]

    def _updates(self, replies: list[Message]) -> torch.Tensor:
        """The replies' updates as rows: the uploads themselves, or y − x for model uploads."""
        uploads = stack([only_arrays(r.content)[1] for r in replies])
        return uploads if self.uploads_update else uploads - stack([self._sent(r) for r in replies])

    def _forge(self, forged: list[Message], honest: list[Message]) -> None:
        own = self._updates(forged)
        reference = self._updates(honest) if honest else own
        gen = torch_generator(self.seed, self.exchanges, "byzantine")
        for reply, update in zip(forged, self.attack.factory(self.params, reference, own, gen), strict=True):
            key, record = only_arrays(reply.content)
            upload = update if self.uploads_update else flatten(self._sent(reply)) + update
            reply.content[key] = unflatten(upload, record)

    def take_metrics(self) -> dict:
        """Compromised clients whose reply this round was attacked, and the realised C̄α."""
        out = {**self.inner.take_metrics(), "byzantine_clients": sorted(self.attacked), "byzantine_weight": self.weight}
        self.attacked = []
        return out


@register("world_layer", "byzantine", order=40,
          description="compromised clients' replies are forged (the `byzantine:` section)")
def byzantine_layer(setup, grid: GridWrapper, run_dir: Path) -> GridWrapper:
    return grid if setup.scenario.byzantine is None else ByzantineClients(grid, setup)
