"""Communication topologies and mixing matrices for decentralized learning (networkx graphs).

A scenario's ``topology:`` section names a registered graph (kind ``topology``) and a
mixing rule. Nodes are partition ids 0..N-1. Graphs:

- ``ring``, ``torus`` (2-D, periodic), ``grid`` (2-D, open borders), ``exponential``
  (node i linked to i ± 2^k, the static exponential graph of Ying et al. 2021),
  ``complete``: fixed for the whole run;
- ``erdos_renyi`` (G(N, p), redrawn until connected) and ``random_regular`` (random
  k-regular, redrawn until connected): drawn once from the run's seed, or redrawn every
  round with ``time_varying: true`` (per-round random neighbour sets, as the DFedSAM
  experiments' "random" topology, kept symmetric so that W stays doubly stochastic).

Mixing rules (DFedSAM §5.1: W symmetric, doubly stochastic, supported on the graph):

- ``metropolis_hastings``: w_ij = 1 / (1 + max(d_i, d_j)) on edges, w_ii = 1 − Σ_j w_ij
  (Xiao & Boyd 2004; ``sacs-epfl/decentralizepy`` ``sharing/Sharing.py``);
- ``uniform``: w_ij = 1 / (d_i + 1) over the neighbours and the node itself; symmetric
  (hence doubly stochastic) only on regular graphs, and rejected on others.

Every matrix is checked (non-negative, symmetric, rows and columns summing to one, zero
off the graph) before use. The spectral gap 1 − max_{k≥2} |λ_k(W)| is what the
DFedSAM rates depend on (1 − λ); the decentralized loop records it every round.
"""

from __future__ import annotations

import math
from typing import Literal

import networkx as nx
import numpy as np
from pydantic import Field

from fedsim import registry
from fedsim.registry import Params, register
from fedsim.training import seed_sequence

registry.add_kind("topology")

Mixing = Literal["metropolis_hastings", "uniform"]

# Connected random graphs are drawn by rejection; a graph family that needs more draws than
# this at the scenario's size is almost surely disconnected (e.g. p below ln(N)/N).
_MAX_DRAWS = 1000


class TopologyParams(Params):
    mixing: Mixing = Field("metropolis_hastings", description="mixing-matrix rule")


class GridParams(TopologyParams):
    rows: int | None = Field(None, ge=1, description="grid rows (default: the most square factorisation of N)")


class RandomGraphParams(TopologyParams):
    time_varying: bool = Field(False, description="redraw the graph every round")


class ErdosRenyiParams(RandomGraphParams):
    p: float = Field(0.3, gt=0, le=1, description="edge probability")


class RandomRegularParams(RandomGraphParams):
    degree: int = Field(4, ge=1, description="neighbours per node")


@register("topology", "ring", params=TopologyParams)
def ring(params: TopologyParams, n: int, rng: np.random.Generator) -> nx.Graph:
    """Ring: node i talks to i − 1 and i + 1 (mod N)."""
    return nx.cycle_graph(n)


def _grid(params: GridParams, n: int, periodic: bool) -> nx.Graph:
    rows = params.rows or max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    if n % rows:
        raise ValueError(f"a {rows}-row grid cannot hold {n} nodes (rows must divide num_clients)")
    graph = nx.grid_2d_graph(rows, n // rows, periodic=periodic)
    return nx.convert_node_labels_to_integers(graph, ordering="sorted")


@register("topology", "torus", params=GridParams)
def torus(params: GridParams, n: int, rng: np.random.Generator) -> nx.Graph:
    """2-D torus: a rows × cols grid with wrap-around edges."""
    return _grid(params, n, periodic=True)


@register("topology", "grid", params=GridParams)
def grid(params: GridParams, n: int, rng: np.random.Generator) -> nx.Graph:
    """2-D grid with open borders (irregular: use metropolis_hastings mixing)."""
    return _grid(params, n, periodic=False)


@register("topology", "exponential", params=TopologyParams)
def exponential(params: TopologyParams, n: int, rng: np.random.Generator) -> nx.Graph:
    """Static exponential graph: node i linked to i ± 2^k for 2^k < N."""
    return nx.circulant_graph(n, [2**k for k in range(max(1, (n - 1).bit_length())) if 2**k < n])


@register("topology", "complete", params=TopologyParams)
def complete(params: TopologyParams, n: int, rng: np.random.Generator) -> nx.Graph:
    """Fully connected graph."""
    return nx.complete_graph(n)


def _connected(draw, what: str) -> nx.Graph:
    for _ in range(_MAX_DRAWS):
        graph = draw()
        if nx.is_connected(graph):
            return graph
    raise ValueError(f"no connected {what} in {_MAX_DRAWS} draws: raise its density")


def _nx_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31))


@register("topology", "erdos_renyi", params=ErdosRenyiParams)
def erdos_renyi(params: ErdosRenyiParams, n: int, rng: np.random.Generator) -> nx.Graph:
    """Erdős–Rényi G(N, p), redrawn until connected."""
    return _connected(lambda: nx.erdos_renyi_graph(n, params.p, seed=_nx_seed(rng)), f"G({n}, {params.p})")


@register("topology", "random_regular", params=RandomRegularParams)
def random_regular(params: RandomRegularParams, n: int, rng: np.random.Generator) -> nx.Graph:
    """Random k-regular graph, redrawn until connected."""
    if params.degree >= n or (params.degree * n) % 2:
        raise ValueError(f"no {params.degree}-regular graph on {n} nodes (need degree < N and degree·N even)")
    return _connected(
        lambda: nx.random_regular_graph(params.degree, n, seed=_nx_seed(rng)), f"{params.degree}-regular graph"
    )


# ------------------------------------------------------------------------------ mixing


def metropolis_hastings(graph: nx.Graph) -> np.ndarray:
    """w_ij = 1/(1 + max(d_i, d_j)) on edges, w_ii = 1 − Σ_{j≠i} w_ij."""
    n = graph.number_of_nodes()
    w = np.zeros((n, n))
    for i, j in graph.edges:
        w[i, j] = w[j, i] = 1.0 / (1 + max(graph.degree[i], graph.degree[j]))
    w[np.diag_indices(n)] = 1.0 - w.sum(axis=1)
    return w


def uniform(graph: nx.Graph) -> np.ndarray:
    """w_ij = 1/(d_i + 1) for j ∈ N(i) ∪ {i}."""
    degrees = {d for _, d in graph.degree}
    if len(degrees) > 1:
        raise ValueError(
            f"uniform mixing is doubly stochastic only on regular graphs (degrees here: {sorted(degrees)}); "
            "use mixing: metropolis_hastings"
        )
    w = nx.to_numpy_array(graph, nodelist=range(graph.number_of_nodes())) + np.eye(graph.number_of_nodes())
    return w / w.sum(axis=1, keepdims=True)


MIXING_RULES = {"metropolis_hastings": metropolis_hastings, "uniform": uniform}


def check_mixing(w: np.ndarray, graph: nx.Graph, atol: float = 1e-12) -> None:
    """Raise unless W is non-negative, symmetric, doubly stochastic and supported on the graph."""
    n = graph.number_of_nodes()
    support = nx.to_numpy_array(graph, nodelist=range(n)) + np.eye(n)
    problems = []
    if w.shape != (n, n):
        problems.append(f"shape {w.shape}, expected ({n}, {n})")
    elif (w < -atol).any():
        problems.append("negative weights")
    elif not np.allclose(w, w.T, atol=atol):
        problems.append("not symmetric")
    elif not (np.allclose(w.sum(axis=0), 1, atol=atol) and np.allclose(w.sum(axis=1), 1, atol=atol)):
        problems.append("rows or columns do not sum to 1")
    elif (np.abs(w[support == 0]) > atol).any():
        problems.append("weights between nodes that are not neighbours")
    if problems:
        raise ValueError(f"invalid mixing matrix: {'; '.join(problems)}")


def spectral_gap(w: np.ndarray) -> float:
    """1 − |λ_2(W)|, with |λ_2| the second largest eigenvalue magnitude of a symmetric W."""
    if len(w) < 2:
        return 1.0
    magnitudes = np.sort(np.abs(np.linalg.eigvalsh(w)))[::-1]
    return float(1.0 - magnitudes[1])


# ---------------------------------------------------------------------------- schedule


class Topology:
    """The graph and mixing matrix of each round, restricted to the nodes that are up.

    A static graph is drawn once from (seed, "topology"); a time-varying one from
    (seed, round, "topology"). Nodes that are down are cut out: W is built on the graph
    induced by the nodes that are up (Metropolis–Hastings on an induced subgraph is
    again symmetric and doubly stochastic), and a node that is down keeps its model
    (its row and column of the full N × N matrix are those of the identity).
    """

    def __init__(self, name: str, params: TopologyParams, n: int, seed: int):
        self.name = name
        self.params = params
        self.n = n
        self.seed = seed
        self.factory = registry.get("topology", name).factory
        self.time_varying = bool(getattr(params, "time_varying", False))
        self._static = None if self.time_varying else self._draw(0)

    def _draw(self, rnd: int) -> nx.Graph:
        keys = ("topology",) if rnd == 0 else (rnd, "topology")
        return self.factory(self.params, self.n, np.random.default_rng(seed_sequence(self.seed, *keys)))

    def graph(self, rnd: int) -> nx.Graph:
        return self._static if self._static is not None else self._draw(rnd)

    def mixing(self, rnd: int, up: list[int] | None = None) -> tuple[np.ndarray, nx.Graph, float]:
        """(W over all N nodes, the round's graph among nodes that are up, its spectral gap)."""
        graph = self.graph(rnd)
        up = sorted(graph.nodes) if up is None else sorted(up)
        sub = nx.convert_node_labels_to_integers(graph.subgraph(up), ordering="sorted")
        w_sub = MIXING_RULES[self.params.mixing](sub)
        check_mixing(w_sub, sub)
        w = np.eye(self.n)
        w[np.ix_(up, up)] = w_sub
        return w, nx.relabel_nodes(sub, dict(enumerate(up))), spectral_gap(w_sub)


def build_topology(component, n: int, seed: int) -> Topology:
    """The scenario's ``topology:`` section as a ``Topology`` (ring, Metropolis–Hastings if absent)."""
    if component is None:
        return Topology("ring", TopologyParams(), n, seed)
    return Topology(component.name, component.params, n, seed)
