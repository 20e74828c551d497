"""Exogenous client participation: which clients are reachable in each round.

A participation process decides, per client n and round t, the availability I_n^t ∈ {0, 1}
(FedAU, Wang & Ji, ICLR 2024, Sec. 2 and App. of IBM/fedau ``util/util.py``):

- ``bernoulli``: I_n^t ~ Bern(p_n), independent over rounds;
- ``markov``: a two-state chain per client with P(off→on) = r and
  P(on→off) = r·(1/p_n − 1) (both rescaled so that P(on→off) = 1 if it exceeds 1), whose
  stationary probability is p_n; the state before round 1 is drawn from Bern(p_n);
- ``cyclic``: per client a period of ``period`` rounds, active for
  A_n = max(1, round(period·p_n)) consecutive rounds and inactive for max(1, period − A_n);
  each client starts inactive for a random number of rounds in [0, inactive) (its phase).

The per-client probabilities p_n (the cyclic process's active fraction) are given
explicitly, drawn from a distribution, or correlated with each client's label mix as in
FedAU's set-up (``data_participation_each_node``): v ~ Dir(α_p·1_C) once per run and
p_n = max(p_min, C·p̄·Σ_c q̂_{n,c} v_c) with q̂_n the client's realised label histogram.

Every draw comes from (scenario seed, round, client, purpose): a client's availability
does not depend on the number of clients, the runtime or the strategy.

``ParticipationLayer`` is the world layer between the strategy and the fleet: the strategy
only sees the nodes reachable this round (``get_node_ids``) and the replies of those it
reached; it cannot read p_n. Ground truth leaves this module in two places only: the
end-of-run record ``participation.json`` (for metrics and the weights plot) and
:func:`probabilities`, the explicit oracle channel that the known-probability baseline
(``strategies/known_prob.py``) uses.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from flwr.app import Message
from pydantic import Field, model_validator

from fedsim import atomic, registry
from fedsim.data.partition import label_histograms
from fedsim.registry import Params, register
from fedsim.training import seed_sequence
from fedsim.state import Checkpointable
from fedsim.world.base import GridWrapper

if TYPE_CHECKING:
    from fedsim.apps.setup import ServerSetup

registry.add_kind("participation")

Probability = Annotated[float, Field(gt=0, le=1)]


# ---------------------------------------------------------------- per-client probabilities


class Explicit(Params):
    """p_n given for every client, in partition order."""

    kind: Literal["explicit"]
    values: list[Probability]


class Constant(Params):
    """The same p for every client."""

    kind: Literal["constant"]
    value: Probability


class Uniform(Params):
    """p_n ~ U(low, high), independently per client."""

    kind: Literal["uniform"]
    low: Probability = 0.05
    high: Probability = 1.0

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


class Beta(Params):
    """p_n = max(min, Beta(a, b)), independently per client."""

    kind: Literal["beta"]
    a: float = Field(1.0, gt=0)
    b: float = Field(4.0, gt=0)
    min: Probability = 0.02


class LabelCorrelated(Params):
    """FedAU's set-up: p_n = max(min, C·mean·Σ_c q̂_{n,c} v_c), v ~ Dir(alpha·1_C) (capped at 1)."""

    kind: Literal["label_correlated"] = "label_correlated"
    alpha: float = Field(0.1, gt=0, description="α_p, concentration of the class weights v")
    mean: Probability = Field(0.1, description="p̄, the mean participation probability")
    min: Probability = Field(0.02, description="p_min, the floor of every p_n")


ProbabilitySpec = Annotated[Explicit | Constant | Uniform | Beta | LabelCorrelated, Field(discriminator="kind")]


class BernoulliParams(Params):
    probabilities: ProbabilitySpec = LabelCorrelated()


class MarkovParams(BernoulliParams):
    transition: float = Field(0.05, gt=0, le=1, description="r = P(off→on); P(on→off) = r·(1/p_n − 1)")


class CyclicParams(BernoulliParams):
    period: int = Field(100, ge=2, description="rounds per cycle; p_n is the active fraction")


def probabilities(setup: ServerSetup) -> np.ndarray:
    """The true p_n of every client (ones without a ``participation:`` section).

    This is the oracle channel: only the world layer, the end-of-run record and the
    known-probability baseline call it; FedAU and the other strategies never do.
    """
    sc = setup.scenario
    n = sc.num_clients
    if sc.participation is None:
        return np.ones(n)
    spec = sc.participation.params.probabilities
    rng = np.random.default_rng(seed_sequence(sc.seed, "participation-probabilities"))
    if isinstance(spec, Explicit):
        if len(spec.values) != n:
            raise ValueError(
                f"participation.probabilities.values: expected {n} probabilities "
                f"(one per client, num_clients={n}), found {len(spec.values)}"
            )
        return np.asarray(spec.values, dtype=np.float64)
    if isinstance(spec, Constant):
        return np.full(n, spec.value)
    if isinstance(spec, Uniform):
        return rng.uniform(spec.low, spec.high, size=n)
    if isinstance(spec, Beta):
        return np.maximum(spec.min, rng.beta(spec.a, spec.b, size=n))
    hist = label_histograms(setup.partitions, setup.dataset.y_train, setup.dataset.num_classes)
    return label_correlated(hist, spec.alpha, spec.mean, spec.min, rng)


def label_correlated(
    histograms: np.ndarray, alpha: float, mean: float, p_min: float, rng: np.random.Generator
) -> np.ndarray:
    """p_n = max(p_min, C·p̄·Σ_c q̂_{n,c} v_c) with v ~ Dir(α_p·1_C) (IBM/fedau
    ``data_participation_each_node``); capped at 1, which the official code leaves to
    ``np.random.binomial`` (it fails there; with C·p̄ ≤ 1 the cap never binds)."""
    num_classes = histograms.shape[1]
    q = histograms / histograms.sum(axis=1, keepdims=True)
    v = rng.dirichlet(alpha * np.ones(num_classes))
    return np.clip(num_classes * mean * (q @ v), p_min, 1.0)


# ---------------------------------------------------------------------------- processes


def client_uniforms(seed: int, server_round: int, num_clients: int, purpose: str) -> np.ndarray:
    """One U[0, 1) number per client: client n's is the n-th draw of the stream seeded by
    (seed, purpose, round), so it depends on (seed, round, client) alone, not on N."""
    return np.random.default_rng(seed_sequence(seed, purpose, server_round)).random(num_clients)


class Process(Checkpointable, ABC):
    """A participation process over N clients: ``available(t)`` is I^t ∈ {0,1}^N.

    Rounds must be asked for in increasing order (the Markov chain carries state).
    """

    def __init__(self, p: np.ndarray, seed: int):
        self.p = np.asarray(p, dtype=np.float64)
        self.seed = seed

    @property
    def num_clients(self) -> int:
        return len(self.p)

    @abstractmethod
    def available(self, server_round: int) -> np.ndarray: ...


class Bernoulli(Process):
    """I_n^t ~ Bern(p_n), independent over rounds and clients."""

    def available(self, server_round: int) -> np.ndarray:
        return client_uniforms(self.seed, server_round, self.num_clients, "participation") < self.p


class Markov(Process):
    """Two-state chain: off→on with r, on→off with r·(1/p_n − 1), rescaled to at most 1."""

    checkpoint_fields = ("round", "state")

    def __init__(self, p: np.ndarray, seed: int, transition: float):
        super().__init__(p, seed)
        to_off = transition * (1.0 / self.p - 1.0)
        scale = np.maximum(1.0, to_off)  # if P(on→off) > 1: divide both by it
        self.to_on = transition / scale
        self.to_off = to_off / scale
        self.round = 0
        self.state = client_uniforms(seed, 0, self.num_clients, "participation") < self.p  # ~ stationary

    def available(self, server_round: int) -> np.ndarray:
        if server_round <= self.round:
            raise ValueError(f"Markov participation is at round {self.round}; cannot go back to {server_round}")
        while self.round < server_round:
            self.round += 1
            u = client_uniforms(self.seed, self.round, self.num_clients, "participation")
            self.state = np.where(self.state, u >= self.to_off, u < self.to_on)
        return self.state.copy()


class Cyclic(Process):
    """Active A_n rounds, inactive B_n rounds, repeating; starts inactive for φ_n ∈ [0, B_n) rounds.

    Closed form of IBM/fedau ``WorkerSampler.cyclic_update``: round t ≥ 1 is active iff
    (t − φ_n − 1) mod (A_n + B_n) < A_n.
    """

    def __init__(self, p: np.ndarray, seed: int, period: int):
        super().__init__(p, seed)
        self.active_rounds = np.maximum(1, np.round(period * self.p)).astype(np.int64)
        self.inactive_rounds = np.maximum(1, period - self.active_rounds)
        u = client_uniforms(seed, 0, self.num_clients, "participation-phase")
        self.phase = np.floor(u * self.inactive_rounds).astype(np.int64)

    def available(self, server_round: int) -> np.ndarray:
        cycle = self.active_rounds + self.inactive_rounds
        return (server_round - self.phase - 1) % cycle < self.active_rounds


@register("participation", "bernoulli", params=BernoulliParams)
def bernoulli(params: BernoulliParams, setup: ServerSetup) -> Process:
    """Bernoulli: client n is reachable in each round with probability p_n."""
    return Bernoulli(probabilities(setup), setup.scenario.seed)


@register("participation", "markov", params=MarkovParams)
def markov(params: MarkovParams, setup: ServerSetup) -> Process:
    """Markov: two-state on/off chain per client, stationary probability p_n."""
    return Markov(probabilities(setup), setup.scenario.seed, params.transition)


@register("participation", "cyclic", params=CyclicParams)
def cyclic(params: CyclicParams, setup: ServerSetup) -> Process:
    """Cyclic: per client, active for a fraction p_n of every period, random phase."""
    return Cyclic(probabilities(setup), setup.scenario.seed, params.period)


def make_process(setup: ServerSetup) -> Process:
    comp = setup.scenario.participation
    assert comp is not None
    return registry.get("participation", comp.name).factory(comp.params, setup)


# ------------------------------------------------------------------------ world layer


class ParticipationLayer(Checkpointable, GridWrapper):
    """Only the clients available this round are reachable; the rest never answer.

    ``get_node_ids`` lists the reachable nodes; messages to the others are dropped (no
    reply, no bytes), as a real server's would time out. Reports ``clients_available``
    per round and, at the end of the run, the ground truth (``participation.json``).
    """

    checkpoint_fields = ("counts", "rounds")

    def state_dict(self) -> dict:
        return {**super().state_dict(), "process": self.process.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.process.load_state_dict(state["process"])

    def __init__(self, inner: GridWrapper, process: Process):
        super().__init__(inner)
        self.process = process
        self.mask = np.zeros(process.num_clients, dtype=bool)
        self.counts = np.zeros(process.num_clients, dtype=np.int64)
        self.rounds = 0

    def start_round(self, server_round: int) -> None:
        self.mask = self.process.available(server_round)
        self.counts += self.mask
        self.rounds = server_round
        self.inner.start_round(server_round)

    def reachable(self, node_id: int) -> bool:
        return bool(self.mask[self.inner.partition_of_node(node_id)])

    def get_node_ids(self) -> list[int]:
        return [nid for nid in self.inner.get_node_ids() if self.reachable(nid)]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        reached = [m for m in messages if self.reachable(m.metadata.dst_node_id)]
        return self.inner.send_and_receive(reached, timeout=timeout)

    def take_metrics(self) -> dict:
        return {"clients_available": int(self.mask.sum()), **self.inner.take_metrics()}

    def artifacts(self) -> dict:
        record = {
            "probabilities": self.process.p.tolist(),
            "available_rounds": self.counts.tolist(),
            "rounds": self.rounds,
        }
        return {**self.inner.artifacts(), "participation": record}


# ------------------------------------------------------------------------------- plot


def plot_weights(run_dir: str | Path) -> Path | None:
    """``fedau_weights.png``: a strategy's final estimated weights ω_n against 1/p_n.

    Needs ``participation.json`` (ground truth, from the layer) and ``fedau_weights.json``
    (from the FedAU strategy) in ``run_dir``; returns None when either is missing.
    """
    run_dir = Path(run_dir)
    truth, est = run_dir / "participation.json", run_dir / "fedau_weights.json"
    if not (truth.exists() and est.exists()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = np.asarray(json.loads(truth.read_text())["probabilities"])
    record = json.loads(est.read_text())
    omega, intervals = np.asarray(record["omega"]), np.asarray(record["intervals"])
    seen = intervals > 0  # clients with no completed interval keep the initial weight 1
    inv = 1.0 / p
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(inv[seen], omega[seen], s=14, label="estimated ω_n")
    if (~seen).any():
        ax.scatter(inv[~seen], omega[~seen], s=14, marker="x", label="no interval completed")
    lims = [min(inv.min(), omega.min()) * 0.8, max(inv.max(), omega.max()) * 1.25]
    ax.plot(lims, lims, "k--", lw=1, label="ω = 1/p")
    ax.set(xscale="log", yscale="log", xlim=lims, ylim=lims, xlabel="1 / p_n (true)", ylabel="ω_n (FedAU)")
    ax.set_title(f"FedAU weights after {record['rounds']} rounds")
    ax.legend()
    fig.tight_layout()
    path = atomic.write_with(run_dir / "fedau_weights.png", lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path


@register("world_layer", "participation", order=60,
          description="which clients are reachable each round (the `participation:` section)")
def participation_layer(setup, grid: GridWrapper, run_dir: Path) -> GridWrapper:
    return grid if setup.scenario.participation is None else ParticipationLayer(grid, make_process(setup))
