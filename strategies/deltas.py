"""Server-side aggregation of client updates Δ_n = y_n − x with a global learning rate η.

The FedAU family (FedAU, its FedAvg baselines, the known-probability oracle, MIFA,
FedVarp) shares one round structure (IBM/fedau ``main.py``): every reachable client runs
plain local SGD from the global model x and returns its model y_n (the FedAvg client,
``fedsim.apps.client.fedavg_train``); the server computes Δ_n = y_n − x itself, against the
model it sent, forms an aggregated direction from the updates of the participants S_t
and steps x ← x + η·direction. The participants are identified by partition id, through
the grid, never by Flower node id; N is the size of the client population, which the
server knows.

Models are handled as one flat float vector of d entries (every array of the model, in
ArrayRecord order), so per-client memories are plain (N, d) matrices. Every strategy
keeps its server state in ``self.state`` (a dataclass of numpy arrays or None) and
reports its size in bytes, measured as the sum of the held arrays' ``nbytes``, as
``server_state_bytes`` each round.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp import strategy as flwr_strategy
from pydantic import Field

from fedsim.records import ClientIndex, checked_replies, train_metrics
from fedsim.registry import Params
from fedsim.sampling import SeededSampling
from fedsim.state import Checkpointable


class UpdateParams(Params):
    global_lr: float = Field(1.0, gt=0, description="η: x ← x + η·(aggregated update)")
    fraction_evaluate: float = Field(1.0, ge=0, le=1, description="fraction of reachable clients for federated eval")


class Layout:
    """Keys, shapes and dtypes of a model's arrays: ArrayRecord ↔ flat float vector."""

    def __init__(self, arrays: ArrayRecord):
        self.keys = list(arrays.keys())
        nd = arrays.to_numpy_ndarrays()
        bad = [k for k, a in zip(self.keys, nd, strict=True) if not np.issubdtype(a.dtype, np.floating)]
        if bad:
            raise ValueError(f"update-based strategies need floating-point model arrays; not floating: {bad}")
        self.shapes = [a.shape for a in nd]
        self.dtypes = [a.dtype for a in nd]
        self.size = int(sum(a.size for a in nd))

    def flatten(self, arrays: ArrayRecord) -> np.ndarray:
        return np.concatenate([a.ravel().astype(np.float64) for a in arrays.to_numpy_ndarrays()])

    def unflatten(self, vector: np.ndarray) -> ArrayRecord:
        out, start = {}, 0
        for key, shape, dtype in zip(self.keys, self.shapes, self.dtypes, strict=True):
            n = int(np.prod(shape))
            out[key] = Array(np.ascontiguousarray(vector[start : start + n].reshape(shape), dtype=dtype))
            start += n
        return ArrayRecord(out)


def state_nbytes(state) -> int:
    """Bytes held by the numpy arrays of a strategy's state dataclass (0 for None)."""
    if state is None:
        return 0
    return int(sum(v.nbytes for v in vars(state).values() if isinstance(v, np.ndarray)))


class UpdateAggregation(Checkpointable, SeededSampling, flwr_strategy.FedAvg):
    """Base: send x to every reachable client, aggregate their updates, x ← x + η·direction.

    Subclasses implement :meth:`direction` (and keep their state in ``self.state``).
    """

    checkpoint_fields = ("state", "last_round")

    def __init__(self, num_clients: int, global_lr: float, seed: int, fraction_evaluate: float = 1.0):
        super().__init__(
            seed=seed,
            fraction_train=1.0,  # every reachable client: participation is the world's decision
            min_train_nodes=0,
            min_available_nodes=0,  # a round may find nobody reachable
            fraction_evaluate=fraction_evaluate,
            min_evaluate_nodes=0,
        )
        self.num_clients = num_clients
        self.global_lr = global_lr
        self.state = None
        self._clients = ClientIndex()  # partition id of each reply, on any Flower grid
        self._layout: Layout | None = None
        self._x: np.ndarray | None = None
        self.last_round = 0  # the last round aggregated

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self._clients.see(grid)
        self._layout = Layout(arrays)
        self._x = self._layout.flatten(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    @abstractmethod
    def direction(self, participants: np.ndarray, deltas: np.ndarray) -> tuple[np.ndarray, dict]:
        """Aggregated update from the participants' partition ids and their Δ_n (rows).

        Called every round, also when nobody participated (then with 0 rows). Returns the
        direction (d,) and extra metrics for the round's row.
        """

    def aggregate_train(self, server_round: int, replies) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.last_round = server_round
        valid, views = checked_replies(self, replies)
        assert self._layout is not None and self._x is not None
        participants = np.array([self._clients(m) for m in valid], dtype=np.int64)
        deltas = np.zeros((len(valid), self._layout.size))
        for row, m in zip(deltas, valid, strict=True):
            row[:] = self._layout.flatten(m.content[self.arrayrecord_key]) - self._x
        step, extra = self.direction(participants, deltas)
        metrics = MetricRecord()
        if valid:
            metrics = train_metrics(self, views)
        for key, value in extra.items():
            metrics[key] = value
        metrics["server_state_bytes"] = state_nbytes(self.state)
        return self._layout.unflatten(self._x + self.global_lr * step), metrics

