"""Local training and evaluation loops shared by clients, the server and the benchmarks."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def derive_seed(seed: int, *keys: int | str) -> int:
    """The one place random streams come from: a 63-bit seed for (scenario seed, round,
    client, purpose, ...), a keyed hash, so distinct keys give independent streams."""
    blob = repr((int(seed), *keys)).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little") >> 1


def seed_sequence(seed: int, *keys: int | str) -> np.random.SeedSequence:
    """A NumPy ``SeedSequence`` for (seed, keys): ``np.random.default_rng(seed_sequence(...))``."""
    return np.random.SeedSequence(derive_seed(seed, *keys))


def torch_generator(seed: int, *keys: int | str) -> torch.Generator:
    """A ``torch.Generator`` for (seed, keys) (shuffles, dropout masks, noise)."""
    gen = torch.Generator()
    gen.manual_seed(derive_seed(seed, *keys))
    return gen


def batches(n: int, batch_size: int, epochs: int, steps: int | None, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Shuffled minibatch indices: ``epochs`` passes, or exactly ``steps`` batches if given."""
    per_epoch = math.ceil(n / batch_size)
    total = steps if steps is not None else epochs * per_epoch
    done = 0
    while done < total:
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            if done == total:
                return
            yield perm[start : start + batch_size]
            done += 1


def is_regression(y: torch.Tensor) -> bool:
    """Floating-point targets mean regression (MSE); integer targets are class labels."""
    return y.is_floating_point()


def task_loss(output: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The training objective for targets ``y``: cross-entropy of the logits for class
    labels; for regression targets (float, shape (n,)) the squared error of the model's
    output (shape (n, 1)), ``reduction`` as in ``torch.nn.functional``."""
    if is_regression(y):
        return F.mse_loss(output.reshape(y.shape), y, reduction=reduction)
    return F.cross_entropy(output, y, reduction=reduction)


def local_sgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    steps: int | None,
    batch_size: int,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    gen: torch.Generator,
    grad_hook: Callable[[], None] | None = None,
) -> tuple[float, int]:
    """Minibatch SGD on (x, y) in place; returns (mean training loss, number of steps).

    ``grad_hook`` runs after each backward pass and before the step, so that a strategy
    can add its own term to the gradients (FedProx's mu·(w − w_global)).
    """
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    model.train()
    total, count = 0.0, 0
    for idx in batches(len(x), batch_size, epochs, steps, gen):
        opt.zero_grad(set_to_none=True)
        loss = task_loss(model(x[idx]), y[idx])
        loss.backward()
        if grad_hook is not None:
            grad_hook()
        opt.step()
        total += loss.item()
        count += 1
    return (total / count if count else float("nan")), count


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on (x, y), in eval mode; for
    regression targets (mean squared error, NaN): accuracy has no meaning there."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss_sum += task_loss(logits, target, reduction="sum").item()
        if not is_regression(target):
            correct += (logits.argmax(1) == target).sum().item()
    return loss_sum / len(x), (math.nan if is_regression(y) else correct / len(x))
