"""Seeded client sampling for Flower's Message-API strategies.

Flower samples a cohort with ``random.sample`` over ``grid.get_node_ids()`` (random
64-bit node ids, flwr issue #3328). fedsim's grid lists node ids in partition order, and
this mixin seeds Python's ``random`` from (scenario seed, round, purpose) for the span of
``configure_train``/``configure_evaluate`` only, restoring the previous state after: the
cohort is then a function of (seed, round) alone, the same on every runtime, and any
Flower strategy can be reused unchanged.
"""

from __future__ import annotations

import random
from contextlib import contextmanager

from fedsim.training import derive_seed


@contextmanager
def seeded_random(seed: int, server_round: int, purpose: str):
    saved = random.getstate()
    random.seed(derive_seed(seed, server_round, purpose))
    try:
        yield
    finally:
        random.setstate(saved)


class SeededSampling:
    """Mix in before a Flower strategy class: ``class FedAvg(SeededSampling, flwr.FedAvg)``."""

    def __init__(self, *args, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed = seed

    def configure_train(self, server_round, arrays, config, grid):
        with seeded_random(self.seed, server_round, "train"):
            return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(self, server_round, arrays, config, grid):
        with seeded_random(self.seed, server_round, "evaluate"):
            return super().configure_evaluate(server_round, arrays, config, grid)
