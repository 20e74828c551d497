"""What the drift-correcting strategies share: the local loop, model vectors, client state.

SCAFFOLD, FedDyn, FedSpeed and FedSAM all run local SGD with a modified gradient:

- a *direction* oracle sets ``p.grad`` for one minibatch (the plain gradient, or SAM's
  gradient at a perturbed point, ``fedsim.strategies.fedsam.sam_gradient``);
- a *correction* adds a term to those gradients before the step (SCAFFOLD's c − c_i,
  FedDyn's −∇_i + α(w − x), FedSpeed's prox-correction).

``local_descent`` is that loop as a pure function of a model and its minibatches, so that
each rule can be unit-tested on tensors (a quadratic "model" works as well as a CNN).

Server-side rules work on flat parameter vectors (``to_vector``/``to_arrays``), and
per-client state lives in the client's ``Context.state`` as one flat ``ArrayRecord``
(``load_state``/``save_state``). Replies report the bytes of that state and the norm it
had when the round began; ``StateReport`` turns them into round metrics: the total bytes
of client state held across the fleet, the server's own state bytes and the mean norm.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from torch import nn

from fedsim.apps.client import ClientEnv
from fedsim.training import batches

Batch = tuple[torch.Tensor, torch.Tensor]
Objective = Callable[[nn.Module, Batch], torch.Tensor]
Direction = Callable[[nn.Module, Batch], float]
Correction = Callable[[list[nn.Parameter]], None]

VECTOR_KEY = "vector"


# ------------------------------------------------------------------------ local loop


def cross_entropy(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The classification objective of fedsim's local training (mean cross-entropy)."""
    x, y = batch
    return F.cross_entropy(model(x), y)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def gradient(model: nn.Module, batch: Batch, objective: Objective = cross_entropy) -> float:
    """Set ``p.grad`` to the minibatch gradient ∇f(w; ξ); return the loss at w."""
    for p in trainable(model):
        p.grad = None
    loss = objective(model, batch)
    loss.backward()
    return loss.item()


def local_descent(
    model: nn.Module,
    minibatches: Iterable[Batch],
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    direction: Direction = gradient,
    correction: Correction | None = None,
    max_grad_norm: float | None = None,
) -> tuple[float, int]:
    """Local steps w ← w − lr·(direction(w; ξ) + correction(w) + weight_decay·w), in place.

    One step per minibatch, with ``torch.optim.SGD`` (so weight decay and momentum mean
    what they mean in ``fedsim.training.local_sgd``); ``max_grad_norm`` clips the corrected
    gradient before the step, as FL-Simulator does. Returns (mean loss, number of steps).
    """
    params = trainable(model)
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    model.train()
    total, steps = 0.0, 0
    for batch in minibatches:
        opt.zero_grad(set_to_none=True)
        total += direction(model, batch)
        if correction is not None:
            correction(params)
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        steps += 1
    return (total / steps if steps else float("nan")), steps


def add_to_grads(vector: torch.Tensor, scale: float = 1.0) -> Correction:
    """A correction adding ``scale·vector`` (a flat parameter vector) to the gradients."""

    def correct(params: list[nn.Parameter]) -> None:
        start = 0
        for p in params:
            p.grad.add_(vector[start : start + p.numel()].view_as(p), alpha=scale)
            start += p.numel()

    return correct


def prox_correction(anchor: torch.Tensor, coef: float, offset: torch.Tensor | None = None) -> Correction:
    """A correction adding coef·(w − anchor) + offset (flat vectors) to the gradients:
    FedDyn's α(w − x) − ∇_i and FedSpeed's (1/λ)(w − x) − ĝ_i are of this form."""

    def correct(params: list[nn.Parameter]) -> None:
        start = 0
        for p in params:
            part = slice(start, start + p.numel())
            p.grad.add_(p.detach() - anchor[part].view_as(p), alpha=coef)
            if offset is not None:
                p.grad.add_(offset[part].view_as(p))
            start = part.stop

    return correct


def client_minibatches(env: ClientEnv, server_round: int) -> Iterator[Batch]:
    """The client's minibatches for this round: the scenario's ``client:`` schedule with
    the same seeded shuffle as ``ClientEnv.train``."""
    cfg = env.scenario.client
    gen = env.generator(server_round, "shuffle")
    for idx in batches(len(env.x), cfg.batch_size, cfg.epochs, cfg.steps, gen):
        yield env.x[idx], env.y[idx]


def sgd_options(env: ClientEnv) -> dict:
    """Learning rate, weight decay and momentum of the scenario's ``client:`` section."""
    cfg = env.scenario.client
    return {"lr": cfg.lr, "weight_decay": cfg.weight_decay, "momentum": cfg.momentum}


# ------------------------------------------------------------------------- vectors


def model_vector(model: nn.Module) -> torch.Tensor:
    """The trainable parameters as one flat vector (a copy)."""
    return torch.nn.utils.parameters_to_vector(trainable(model)).detach().clone()


def to_vector(arrays: ArrayRecord) -> torch.Tensor:
    """A model ArrayRecord as one flat float32 vector, in the record's key order."""
    return torch.cat([torch.from_numpy(np.asarray(a.numpy(), dtype=np.float32)).reshape(-1) for a in arrays.values()])


def to_arrays(vector: torch.Tensor, like: ArrayRecord) -> ArrayRecord:
    """Inverse of ``to_vector``: a flat vector reshaped into ``like``'s keys and shapes."""
    out, offset = {}, 0
    for key, arr in like.items():
        shape = tuple(arr.shape)
        n = int(np.prod(shape))
        out[key] = Array(vector[offset : offset + n].reshape(shape).numpy().copy())
        offset += n
    return ArrayRecord(out)


def vector_record(vector: torch.Tensor) -> ArrayRecord:
    """A flat vector as a one-array record (controls, duals: what travels or is kept)."""
    return ArrayRecord({VECTOR_KEY: Array(vector.detach().cpu().numpy().copy())})


def record_vector(record: ArrayRecord, device: torch.device | None = None) -> torch.Tensor:
    """Inverse of ``vector_record``, on ``device`` (a client's ``env.device``) if given."""
    return torch.from_numpy(record[VECTOR_KEY].numpy().copy()).to(device)


def check_parameters_only(model: nn.Module, strategy: str) -> None:
    """The server rules treat the model record as the parameter vector: no buffers."""
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:
        raise ValueError(
            f"strategy {strategy!r} needs a model whose state is its parameters; "
            f"this one has buffers {buffers[:3]} (use GroupNorm instead of BatchNorm)"
        )


# -------------------------------------------------------------------- client state


def load_state(env: ClientEnv, key: str, size: int) -> torch.Tensor:
    """The client's persistent vector ``key`` from ``Context.state`` (zeros the first time)."""
    if key in env.state:
        return record_vector(env.state[key], env.device)
    return torch.zeros(size, device=env.device)


def save_state(env: ClientEnv, key: str, vector: torch.Tensor) -> int:
    """Keep ``vector`` in the client's ``Context.state``; returns the bytes it occupies."""
    env.state[key] = vector_record(vector)
    return env.state[key].count_bytes()


def state_metrics(state_bytes: int, state_at_start: torch.Tensor) -> dict[str, float]:
    """What a reply says about the client's persistent state (see ``StateReport``)."""
    return {"state_bytes": float(state_bytes), "state_norm": float(state_at_start.norm())}


@dataclass
class StateReport:
    """Round metrics about persistent state, from the clients' replies.

    ``client_state_bytes``: bytes of per-client state held across the fleet (each
    client's last reported size, summed: a client keeps its state between the rounds it
    is sampled in). ``client_state_norm``: the mean norm of the repliers' state as the
    round began (0 in a client's first round; grows once it has trained).
    ``server_state_bytes``: the strategy's own state. ``train_loss``: example-weighted
    mean, as Flower's FedAvg reports it.
    """

    held: dict[str, float] = field(default_factory=dict)  # node id (as text, for checkpoints) -> bytes

    def metrics(self, replies: list[Message], server_state_bytes: int) -> MetricRecord:
        records = [r.content["metrics"] for r in replies]
        for reply, rec in zip(replies, records, strict=True):
            self.held[str(reply.metadata.src_node_id)] = float(rec["state_bytes"])
        examples = [float(rec["num-examples"]) for rec in records]
        return MetricRecord(
            {
                "train_loss": sum(n * float(rec["train_loss"]) for n, rec in zip(examples, records)) / sum(examples),
                "num-examples": int(sum(examples)),
                "client_state_bytes": float(sum(self.held.values())),
                "client_state_norm": float(np.mean([float(rec["state_norm"]) for rec in records])),
                "server_state_bytes": float(server_state_bytes),
            }
        )


def reply(env: ClientEnv, train_loss: float, extra: dict[str, ArrayRecord] | None = None, **metrics: float) -> RecordDict:
    """``env.reply`` plus further array records (SCAFFOLD's control update)."""
    content = env.reply(train_loss, **metrics)
    for key, record in (extra or {}).items():
        content[key] = record
    return content


def successful(replies: Iterable[Message]) -> list[Message]:
    return [r for r in replies if not r.has_error()]
