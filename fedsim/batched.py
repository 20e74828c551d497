"""Batched clients: a chunk of a round's cohort trains as one stacked computation.

The K clients' trainable parameters are stacked along a leading client axis and the
minibatch gradient of every client comes from one ``torch.func.vmap`` of
``torch.func.grad_and_value`` over ``functional_call`` of the shared model. Each client
keeps its own data, its own shuffles (the very index streams ``fedsim.training.batches``
draws for it on the sequential path, from the same seeded generators) and its own
per-client terms; the optimizer is ``torch.optim.SGD``'s rule written as a pure function
on the stacked tensors (``_sgd_step``).

Unequal clients: every minibatch is padded to the chunk's largest batch with rows of
weight 0 (the loss is Σ w·ℓ / Σ w, which is the mean over the real rows), and a client
whose schedule has ended keeps its parameters (``torch.where`` on an ``active`` mask).

A strategy makes its client step batchable by registering a ``batched=`` extra: a
function ``(Cohort) -> list[RecordDict]`` that returns, client by client, the records its
sequential handler returns. Only the local loop is shared; every strategy keeps its own
pre- and post-processing (controls, duals, replies) in its module. The batched in-process
grid (``fedsim.runtimes.batched``) decides which messages go through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from flwr.app import RecordDict
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from fedsim.records import to_state_dict
from fedsim.training import batches, task_loss

Params = dict[str, torch.Tensor]  # parameter name -> stacked (K, *shape) tensor
Gradient = Callable[[Params], tuple[Params, torch.Tensor]]  # stacked grads and (K,) losses at params
Direction = Callable[[Gradient, Params], tuple[Params, torch.Tensor]]

# torch.nn.utils.clip_grad_norm_ divides by (total norm + 1e-6)
_CLIP_EPS = 1e-6


def refusal(model: nn.Module) -> str | None:
    """Why ``model`` cannot train batched (None if it can): per-client buffers and random
    layers have no stacked equivalent of the sequential path."""
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:
        return f"the model has buffers {buffers[:3]} (BatchNorm statistics); use GroupNorm"
    if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        return "the model has dropout: its masks come from each client's seeded global RNG, which vmap cannot replay"
    if any(not p.requires_grad for p in model.parameters()):
        return "the model has frozen parameters"
    return None


@dataclass
class Schedule:
    """The minibatches of a chunk, gathered once: ``x``, ``y`` (K, T, B, ...) each client's
    examples step by step, ``weight`` (K, T, B) 1 for real rows and 0 for padding,
    ``steps`` (K,) each client's own number of steps."""

    x: torch.Tensor
    y: torch.Tensor
    weight: torch.Tensor
    steps: torch.Tensor

    @property
    def length(self) -> int:
        return self.x.shape[1]


@dataclass
class Correction:
    """A per-client term added to every local gradient: coef·(w − anchor) + offset, with
    (K,) coefficients (moved to the gradients' device and dtype) and (K, d) flat
    anchors/offsets on the cohort's device (FedProx's μ(w − x), SCAFFOLD's
    c − c_i, FedDyn's α(w − x) − ∇_i, FedSpeed's prox-correction)."""

    coef: torch.Tensor | None = None
    anchor: torch.Tensor | None = None
    offset: torch.Tensor | None = None


class Cohort:
    """K clients of one round (their instructions and ``ClientEnv``s) with stacked start models."""

    def __init__(self, contents: list[RecordDict], envs: list):
        self.contents, self.envs = contents, envs
        self.model: nn.Module = envs[0].model
        self.device: torch.device = envs[0].device  # the model's and the examples' (runtime.device)
        self.names = [name for name, _ in self.model.named_parameters()]
        self.shapes = [p.shape for p in self.model.parameters()]
        decoded: dict[int, dict[str, torch.Tensor]] = {}
        for content in contents:  # the clients of a round usually share one record
            decoded.setdefault(id(content["arrays"]), to_state_dict(content["arrays"]))
        starts = [decoded[id(c["arrays"])] for c in contents]
        self.start: Params = {n: torch.stack([s[n] for s in starts]).to(self.device) for n in self.names}
        self.rounds = [int(c["config"]["server-round"]) for c in contents]
        self._vgrad = vmap(grad_and_value(self._loss))

    def __len__(self) -> int:
        return len(self.envs)

    # ------------------------------------------------------------------ data and gradients

    def schedule(self, purpose: str, batch_size: int, epochs: int, steps: int | None) -> Schedule:
        """Each client's ``batches`` stream from its generator (round, client, ``purpose``)."""
        streams = [
            list(batches(len(env.x), batch_size, epochs, steps, env.generator(rnd, purpose)))
            for env, rnd in zip(self.envs, self.rounds, strict=True)
        ]
        t_max = max((len(s) for s in streams), default=0)
        width = max((len(idx) for s in streams for idx in s), default=0)
        rows = torch.zeros((len(self), t_max, width), dtype=torch.long)
        weight = torch.zeros((len(self), t_max, width))
        for k, stream in enumerate(streams):
            for t, idx in enumerate(stream):
                rows[k, t, : len(idx)] = idx
                weight[k, t, : len(idx)] = 1.0
        # gather only the rows the steps use (padding repeats row 0), client by client, on the device
        rows = rows.to(self.device)
        x = torch.stack([_rows(env.x, r) for env, r in zip(self.envs, rows, strict=True)])
        y = torch.stack([_rows(env.y, r) for env, r in zip(self.envs, rows, strict=True)])
        weight = weight.to(self.device, x.dtype if x.is_floating_point() else weight.dtype)
        return Schedule(x, y, weight, torch.tensor([len(s) for s in streams], device=self.device))

    def _loss(self, params: Params, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        per_example = task_loss(functional_call(self.model, params, (x,)), y, reduction="none")
        return (per_example * w).sum() / w.sum().clamp_min(1.0)

    def gradient(self, sched: Schedule, t: int) -> Gradient:
        """∇ of every client's step-``t`` minibatch loss, as a function of stacked params."""
        x, y, w = sched.x[:, t], sched.y[:, t], sched.weight[:, t]
        return lambda params: self._vgrad(params, x, y, w)

    # --------------------------------------------------------------------- local descent

    def descend(
        self,
        sched: Schedule,
        *,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        direction: Direction | None = None,
        correction: Correction | None = None,
        max_grad_norm: float | None = None,
    ) -> tuple[Params, torch.Tensor]:
        """``fedsim.strategies.stateful.local_descent`` (and ``fedsim.training.local_sgd``)
        for all K clients: per step w ← SGD(w, direction + correction, clipped); returns
        the trained stacked params and each client's mean loss (NaN without steps);
        ``self.steps`` holds each client's number of steps."""
        self.model.train()
        self.steps = sched.steps
        params = {n: p.clone() for n, p in self.start.items()}
        momentum_buffer: Params | None = None
        total = torch.zeros(len(self), dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for t in range(sched.length):
                active = sched.steps > t
                grads, loss = (direction or _plain)(self.gradient(sched, t), params)
                if correction is not None:
                    grads = self._correct(grads, params, correction)
                if max_grad_norm is not None:
                    grads = _clip(grads, max_grad_norm)
                new, momentum_buffer = _sgd_step(params, grads, momentum_buffer, lr, momentum, weight_decay)
                params = {n: torch.where(_expand(active, p), new[n], p) for n, p in params.items()}
                total += torch.where(active, loss.double(), 0.0)
        return params, total / sched.steps

    def local_sgd(self, extra_weight_decay: float = 0.0, **terms) -> tuple[Params, torch.Tensor]:
        """The scenario's ``client:`` local SGD (``ClientEnv.train``) from the start models;
        ``terms`` are :meth:`descend`'s direction, correction and clipping; ``extra_weight_decay``
        joins the scenario's weight decay (applied after clipping)."""
        cfg = self.envs[0].scenario.client
        sched = self.schedule("shuffle", cfg.batch_size, cfg.epochs, cfg.steps)
        return self.descend(sched, lr=cfg.lr, momentum=cfg.momentum,
                            weight_decay=cfg.weight_decay + extra_weight_decay, **terms)

    def _correct(self, grads: Params, params: Params, c: Correction) -> Params:
        out = {}
        for name, anchor, offset in zip(self.names, self.split(c.anchor), self.split(c.offset), strict=True):
            g = grads[name]
            if c.coef is not None:
                g = g + _expand(c.coef, g).to(g) * (params[name] - anchor)  # (K,) on g's device, in g's dtype
            if offset is not None:
                g = g + offset
            out[name] = g
        return out

    # ------------------------------------------------------------------- flat vectors

    def vector(self, params: Params) -> torch.Tensor:
        """(K, d): each client's trainable parameters as one flat vector (``model_vector``)."""
        return torch.cat([params[n].reshape(len(self), -1) for n in self.names], dim=1)

    def split(self, vectors: torch.Tensor | None) -> list[torch.Tensor | None]:
        """(K, d) flat vectors as stacked tensors in the parameters' shapes."""
        if vectors is None:
            return [None] * len(self.names)
        sizes = [s.numel() for s in self.shapes]
        return [v.reshape(len(self), *s) for v, s in zip(vectors.split(sizes, dim=1), self.shapes, strict=True)]

    def unstack(self, vectors: torch.Tensor) -> Params:
        return dict(zip(self.names, self.split(vectors), strict=True))

    def load(self, k: int, params: Params) -> nn.Module:
        """Put client k's parameters into the shared model (as ``ClientEnv.load`` would)."""
        env = self.envs[k]
        with torch.no_grad():
            for name in self.names:
                env.targets[name].copy_(params[name][k])
        return self.model

    def replies(self, params: Params, losses: torch.Tensor) -> list[RecordDict]:
        """``ClientEnv.reply`` of every client: its trained model and its mean loss."""
        out = []
        for k, env in enumerate(self.envs):
            self.load(k, params)
            out.append(env.reply(float(losses[k])))
        return out


def _rows(data: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``data[rows]`` for (T, B) rows; zeros for a client without examples."""
    if len(data) == 0:
        return data.new_zeros((*rows.shape, *data.shape[1:]))
    return data[rows.reshape(-1)].reshape(*rows.shape, *data.shape[1:])


def _expand(per_client: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return per_client.reshape(-1, *([1] * (like.dim() - 1)))


def _plain(gradient: Gradient, params: Params) -> tuple[Params, torch.Tensor]:
    return gradient(params)


def _clip(grads: Params, max_norm: float) -> Params:
    """``torch.nn.utils.clip_grad_norm_`` per client: g · min(1, C / (‖g‖ + 1e-6))."""
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads.values()], dim=1).norm(dim=1)
    scale = (max_norm / (norms + _CLIP_EPS)).clamp(max=1.0)
    return {n: g * _expand(scale, g) for n, g in grads.items()}


def _sgd_step(
    params: Params, grads: Params, buffer: Params | None, lr: float, momentum: float, weight_decay: float
) -> tuple[Params, Params | None]:
    """``torch.optim.SGD`` (``_single_tensor_sgd``, dampening 0, no Nesterov) on stacked
    tensors: d = g + wd·w; buf = d at the first step, else μ·buf + d; w ← w − lr·buf."""
    d = {n: torch.add(g, params[n], alpha=weight_decay) if weight_decay else g for n, g in grads.items()}
    if momentum:
        buffer = d if buffer is None else {n: torch.add(buffer[n] * momentum, d[n]) for n in d}
        d = buffer
    return {n: torch.add(p, d[n], alpha=-lr) for n, p in params.items()}, buffer


def fedavg_batched(cohort: Cohort) -> list[RecordDict]:
    """``fedsim.apps.client.fedavg_train`` for a cohort: local SGD from the global model."""
    params, losses = cohort.local_sgd()
    return cohort.replies(params, losses)

