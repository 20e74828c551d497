"""Local training and evaluation loops shared by clients, the server and the benchmarks."""

from __future__ import annotations

import hashlib
import math
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

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


def resolve_device(spec: str) -> torch.device:
    """``runtime.device`` as a torch device: ``auto`` is CUDA when present, else CPU;
    ValueError when the named device does not exist in this process."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ValueError(f"device {spec!r}: torch.cuda is not available here (torch {torch.__version__}, "
                             f"{build}); use cpu, or auto to take a GPU only when there is one")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {spec!r}: torch.backends.mps is not available here; use cpu or auto")
    return device


def _generators(device: torch.device) -> list[torch.Generator]:
    """Torch's global generators that ``device``'s work draws from: CPU's, and the GPU's."""
    generators = [torch.default_generator]
    if device.type == "cuda":
        torch.cuda.init()  # fills torch.cuda.default_generators (a no-op once initialised)
        generators.append(torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()])
    return generators


def seed_torch_rng(seed: int, device: torch.device = torch.device("cpu")) -> None:
    """Seed torch's global RNG (CPU, and ``device``'s when it is a GPU or MPS) with ``seed``,
    and leave it so: what dropout masks and random layers draw from.

    Same streams as ``torch.manual_seed(seed)``, which on a CPU-only build also queues a
    seed, with a Python stack trace, for each absent GPU backend (~0.3 ms a call); here
    only the generators in use are seeded (~1 µs). A client seeds before it trains; the
    host's own stream is kept by whoever runs clients in its process
    (``fedsim.runtimes.inprocess``, ``seeded_torch_rng``).
    """
    for g in _generators(device):
        g.manual_seed(seed)
    if device.type == "mps":
        torch.mps.manual_seed(seed)


@contextmanager
def seeded_torch_rng(seed: int, device: torch.device = torch.device("cpu")) -> Iterator[None]:
    """``seed_torch_rng(seed, device)`` for the block; the global RNG is restored afterwards."""
    generators = _generators(device)
    saved = [g.get_state() for g in generators]
    mps_saved = torch.mps.get_rng_state() if device.type == "mps" else None
    seed_torch_rng(seed, device)
    try:
        yield
    finally:
        for g, state in zip(generators, saved):
            g.set_state(state)
        if mps_saved is not None:
            torch.mps.set_rng_state(mps_saved)


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
    opt = sgd(model, lr=lr, momentum=momentum, weight_decay=weight_decay)
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


_optimizers: weakref.WeakKeyDictionary[nn.Module, torch.optim.SGD] = weakref.WeakKeyDictionary()


def sgd(model: nn.Module, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> torch.optim.SGD:
    """A fresh-state ``torch.optim.SGD`` over ``model``'s parameters: one optimizer per model
    is kept and reset (state cleared, hyperparameters set) instead of built per client."""
    params = list(model.parameters())
    opt = _optimizers.get(model)
    group = None if opt is None else opt.param_groups[0]
    if group is None or len(group["params"]) != len(params) or any(a is not b for a, b in zip(group["params"], params)):
        opt = _optimizers[model] = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        return opt
    opt.state.clear()  # no momentum buffers: the first step starts them, as in a new optimizer
    group.update(lr=lr, momentum=momentum, weight_decay=weight_decay)
    return opt


def warm_up() -> None:
    """Import what torch loads lazily on the first optimizer step (``torch._dynamo``,
    seconds), so that round 1 is not charged for it."""
    weight = nn.Parameter(torch.zeros(1))
    weight.grad = torch.zeros(1)
    torch.optim.SGD([weight], lr=0.0).step()


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
