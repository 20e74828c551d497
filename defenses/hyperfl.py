"""HyperFL (Guo, Liang, Wang, Zhu, Shao, "A New Federated Learning Framework Against
Gradient Inversion Attacks", AAAI 2025): clients share a hypernetwork, never the model.

Per client i (the paper's Sec. 3 and the official code):

- a private embedding v_i ∈ R^64 (the code's ``nn.Embedding(1, 64)``, init N(0, 1));
- a hypernetwork h(·; φ): u = ReLU(W_0 v + b_0) ∈ R^128, and one linear head per tensor W
  of the target feature extractor, W = reshape(A_W u + c_W);
- the feature-extractor weights θ_i = h(v_i; φ), run with ``torch.func.functional_call``
  on a template module (so a generated key that does not name an extractor parameter is
  an error, unlike the official ResNet-LPM code's silently ignored keys, §4.5);
- a private classifier head g(·; ϕ_i) = Linear(128 → C).

Prediction ŷ = g(f(x; h(v_i; φ)); ϕ_i). Only φ travels; v_i and ϕ_i live in the client's
``Context.state`` and never leave it.

Local round (§4.2, the code's ``cnn/methods/hyperfl.py``), from the received φ:

    phase 1, ``head_epochs``:  SGD on ϕ_i only, θ_i = h(v_i; φ) fixed
                               (lr 0.1, momentum 0.5, wd 5e-4)
    phase 2, ``hyper_epochs``: SGD on [φ, v_i], ϕ_i fixed (lr 0.02, momentum 0.5, wd 5e-4);
                               the gradients of φ and of v_i are the vector-Jacobian products
                               of θ_i = h(v_i; φ) with ∂loss/∂θ_i (autograd through h);
                               each clipped to norm 50 separately (stability, not DP)
    upload φ_i
    server: φ ← Σ_{i∈S_t} (n_i / Σ n) φ_i        (example-weighted, as FedAvg)

The paper broadcasts φ to every client after aggregation; a fedsim (Flower) server can
only message the clients it samples, so each sampled client receives the current global φ
with its train instruction. That is the same local training: a client always starts its
round from the φ it receives, and its own earlier φ_i is never used again.

Evaluation is personalised (§4.2): each client holds out a seeded ``test_fraction`` of its
partition (fixed for the run, drawn from (seed, client)) that it never trains on, and
evaluates g(f(·; h(v_i; φ)); ϕ_i) on it with the just-aggregated φ; the scenario must set
``evaluation.federated: true`` and the run's headline is ``fed_acc`` (the example-weighted
mean over clients). ``fed_acc`` is *not* the accuracy the paper reports: the paper (the
official code's ``acc2``) evaluates each sampled client's model right after its local
training, before aggregation; fedsim reports that too, as ``local_acc`` (Σ correct / Σ
tested over the round's trained clients, on the same held-out splits). The two differ by
what aggregation does to a client's φ_i. There is no global predictor, so the central test evaluation is
skipped (``test_acc`` stays empty): the strategy says ``personalized = True`` and
``FederatedLoop.round`` honours it.

The global "model" of a HyperFL run is the hypernetwork: model ``hyperfl`` below, whose
state dict is φ. Model ``hyperfl_target`` is the target network itself (extractor + head),
for the FedAvg baseline on the same architecture and the byte comparison.
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
import torch.nn.functional as F
from flwr.app import MetricRecord, RecordDict
from pydantic import Field
from torch import nn
from torch.func import functional_call

from fedsim.attacks.inversion import InformedView, LocalTraining
from fedsim.apps.client import ClientEnv
from fedsim.records import to_record
from fedsim.registry import Params, register
from fedsim.training import batches, torch_generator
from fedsim.strategies.fedavg import FedAvg, FedAvgParams, sampling_kwargs
from fedsim.strategies.stateful import record_vector, save_state

V_KEY = "hyperfl.v"  # the client's embedding v_i (Context.state)
HEAD_KEY = "hyperfl.head"  # the client's classifier head ϕ_i, flat [weight, bias]
LOCAL_CORRECT, LOCAL_TESTED = "local_correct", "local_tested"  # acc2 counters of a train reply


# ------------------------------------------------------------------------- models


class TargetParams(Params):
    target: Literal["cnn", "mlp"] = Field("cnn", description="feature extractor the hypernetwork generates")
    channels: list[int] = Field([16, 32], min_length=2, max_length=2, description="cnn: conv5 output channels")
    padding: list[int] = Field(
        [2, 2], min_length=2, max_length=2, description="cnn: conv paddings (the paper's 28x28 CNN: [0, 1])"
    )
    hidden: list[int] = Field([], description="mlp: hidden widths before the feature layer")
    features: int = Field(128, ge=1, description="feature dimension (the classifier head's input)")


class HyperFLParams(TargetParams):
    embed_dim: int = Field(64, ge=1, description="client embedding v_i")
    hyper_hidden: int = Field(128, ge=1, description="hypernetwork hidden width (u)")


def feature_extractor(params: TargetParams, input_shape: tuple[int, ...]) -> nn.Module:
    """f(·; θ): the paper's (E)MNIST CNN, conv5→16, pool, conv5→32, pool, fc→128, leaky
    ReLU (§4.1), sized for the input (pools only while the maps are ≥ 2 wide); or an MLP."""
    layers: list[nn.Module] = []
    if params.target == "cnn":
        if len(input_shape) != 3:
            raise ValueError(f"hyperfl target 'cnn' needs image inputs (C, H, W), got {input_shape}")
        channels, height, width = input_shape
        for out, pad in zip(params.channels, params.padding):
            layers += [nn.Conv2d(channels, out, kernel_size=5, padding=pad), nn.LeakyReLU()]
            height, width = height + 2 * pad - 4, width + 2 * pad - 4
            if min(height, width) < 1:
                raise ValueError(f"hyperfl target 'cnn': input {input_shape} too small for padding {params.padding}")
            if min(height, width) >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            channels = out
        layers.append(nn.Flatten())
        width = channels * height * width
    else:
        layers.append(nn.Flatten())
        width = math.prod(input_shape)
        for hidden in params.hidden:
            layers += [nn.Linear(width, hidden), nn.LeakyReLU()]
            width = hidden
    layers += [nn.Linear(width, params.features), nn.LeakyReLU()]
    return nn.Sequential(*layers)


class HyperNetwork(nn.Module):
    """h(v; φ): ``body`` (64 → 128, ReLU) and one linear head per extractor tensor.

    The state dict is exactly φ. The extractor template is held outside the module tree
    (it is not part of φ); ``features`` runs it with generated weights only.
    """

    def __init__(self, extractor: nn.Module, embed_dim: int = 64, hidden: int = 128):
        super().__init__()
        self.embed_dim = embed_dim
        self.shapes = {name: tuple(p.shape) for name, p in extractor.named_parameters()}
        if any(True for _ in extractor.buffers()):
            raise ValueError("the hyperfl target must have no buffers (no BatchNorm)")
        self.body = nn.Linear(embed_dim, hidden)
        # ModuleDict keys may not hold dots: '0.weight' -> '0_weight' (one-to-one here)
        self.heads = nn.ModuleDict({_head_key(n): nn.Linear(hidden, math.prod(s)) for n, s in self.shapes.items()})
        self._template = (extractor,)  # a tuple: not a registered submodule
        with torch.no_grad():  # the template's own weights are never used
            for p in extractor.parameters():
                p.fill_(float("nan"))

    @property
    def extractor(self) -> nn.Module:
        return self._template[0]

    def generate(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """θ = h(v; φ): every extractor parameter, by its own name."""
        u = F.relu(self.body(v))
        return {name: self.heads[_head_key(name)](u).view(shape) for name, shape in self.shapes.items()}

    def features(self, x: torch.Tensor, theta: dict[str, torch.Tensor]) -> torch.Tensor:
        """f(x; θ) with the generated weights (strict: every key must name a parameter)."""
        return functional_call(self.extractor, theta, (x,), strict=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(
            "a HyperFL hypernetwork has no global predictor: evaluation is personalised "
            "(each client's v_i and classifier head); read fed_acc"
        )


def _head_key(name: str) -> str:
    return name.replace(".", "_")


@register("model", "hyperfl", params=HyperFLParams)
def hyperfl_model(params: HyperFLParams, input_shape: tuple[int, ...], num_classes: int) -> HyperNetwork:
    """HyperFL hypernetwork h(v; φ) generating a feature extractor (its state dict is φ)."""
    return HyperNetwork(feature_extractor(params, input_shape), params.embed_dim, params.hyper_hidden)


@register("model", "hyperfl_target", params=TargetParams)
def hyperfl_target(params: TargetParams, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """HyperFL's target network as a plain model (extractor + linear head), for baselines."""
    return nn.Sequential(feature_extractor(params, input_shape), nn.Linear(params.features, num_classes))


# --------------------------------------------------------------- client: state, data


def head_size(features: int, num_classes: int) -> int:
    return features * num_classes + num_classes


def classify(z: torch.Tensor, head: torch.Tensor, num_classes: int) -> torch.Tensor:
    """g(z; ϕ) with ϕ the flat [weight (C×F), bias (C)]."""
    features = z.shape[1]
    return F.linear(z, head[: num_classes * features].view(num_classes, features), head[num_classes * features :])


def initial_state(seed: int, partition_id: int, embed_dim: int, features: int, num_classes: int):
    """v_i ~ N(0, I) (``nn.Embedding``'s init) and ϕ_i ~ U(±1/√F) (``nn.Linear``'s), drawn
    from (seed, client): a client's first round does not depend on when it is sampled."""
    gen = torch_generator(seed, "hyperfl.init", partition_id)
    v = torch.randn(embed_dim, generator=gen)
    bound = 1.0 / math.sqrt(features)
    head = (torch.rand(head_size(features, num_classes), generator=gen) * 2 - 1) * bound
    return v, head


def stored_state(state: RecordDict, scenario, partition_id: int, embed_dim: int, num_classes: int):
    """(v_i, ϕ_i) from a client's Context.state, or their seeded initial values."""
    if V_KEY not in state:
        features = scenario.model.params.features
        return initial_state(scenario.seed, partition_id, embed_dim, features, num_classes)
    return record_vector(state[V_KEY]), record_vector(state[HEAD_KEY])


def client_state(env: ClientEnv, net: HyperNetwork) -> tuple[torch.Tensor, torch.Tensor]:
    """(v_i, ϕ_i) from the client's Context.state, or their seeded initial values."""
    return stored_state(env.state, env.scenario, env.partition_id, net.embed_dim, env.num_classes)


def local_split(n: int, test_fraction: float, seed: int, partition_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) indices of a client's partition: a seeded held-out personal test set,
    fixed for the run (at least one example on each side when n ≥ 2)."""
    perm = torch.randperm(n, generator=torch_generator(seed, "hyperfl.split", partition_id))
    n_test = min(max(1, round(test_fraction * n)), n - 1) if n >= 2 else 0
    return perm[n_test:], perm[:n_test]


def _hyper_net(env: ClientEnv) -> HyperNetwork:
    if not isinstance(env.model, HyperNetwork):
        raise ValueError("strategy 'hyperfl' needs model 'hyperfl' (the hypernetwork is the shared model)")
    return env.model


# ------------------------------------------------------------------ local training


def train_head(net, v, head, x, y, minibatches, *, num_classes, lr, momentum, weight_decay) -> float:
    """Phase 1: SGD on ϕ only; θ = h(v; φ) is computed once and held fixed. Returns the mean loss."""
    with torch.no_grad():
        theta = net.generate(v)
    head.requires_grad_(True)
    opt = torch.optim.SGD([head], lr=lr, momentum=momentum, weight_decay=weight_decay)
    losses = []
    for idx in minibatches:
        with torch.no_grad():
            z = net.features(x[idx], theta)
        loss = F.cross_entropy(classify(z, head, num_classes), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    head.requires_grad_(False)
    return sum(losses) / len(losses) if losses else float("nan")


def train_hyper(net, v, head, x, y, minibatches, *, num_classes, lr, momentum, weight_decay, max_grad_norm) -> float:
    """Phase 2: SGD on [φ, v], ϕ fixed; ∇φ and ∇v (vector-Jacobian products of θ = h(v; φ)
    with ∂loss/∂θ) each clipped to norm ``max_grad_norm``. Returns the mean loss."""
    phi = list(net.parameters())
    v.requires_grad_(True)
    opt = torch.optim.SGD([*phi, v], lr=lr, momentum=momentum, weight_decay=weight_decay)
    losses = []
    for idx in minibatches:
        logits = classify(net.features(x[idx], net.generate(v)), head, num_classes)
        loss = F.cross_entropy(logits, y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(phi, max_grad_norm)
        torch.nn.utils.clip_grad_norm_([v], max_grad_norm)
        opt.step()
        losses.append(loss.item())
    v.requires_grad_(False)
    return sum(losses) / len(losses) if losses else float("nan")


def personalised_logits(net: HyperNetwork, v, head, x, num_classes: int) -> torch.Tensor:
    """ŷ = g(f(x; h(v; φ)); ϕ)."""
    return classify(net.features(x, net.generate(v)), head, num_classes)


def minibatches(p: "HyperFLStrategyParams", n: int, gen: torch.Generator) -> tuple[list, list]:
    """The two phases' minibatches (indices into the local train split), from one stream:
    phase 1's ``head_epochs`` first, then phase 2's ``hyper_epochs`` (or ``hyper_steps``)."""
    head = list(batches(n, p.batch_size, p.head_epochs, None, gen))
    return head, list(batches(n, p.batch_size, p.hyper_epochs, p.hyper_steps, gen))


def hyperfl_train(content: RecordDict, env: ClientEnv) -> RecordDict:
    """One HyperFL client round (§4.2): phase 1 on ϕ_i, phase 2 on [φ, v_i]; upload φ only."""
    p: HyperFLStrategyParams = env.scenario.strategy.params
    net = _hyper_net(env)
    env.load(content["arrays"])
    server_round = int(content["config"]["server-round"])
    v, head = client_state(env, net)
    train_idx, _ = local_split(len(env.x), p.test_fraction, env.scenario.seed, env.partition_id)
    x, y = env.x[train_idx], env.y[train_idx]
    net.train()
    common = {"num_classes": env.num_classes, "momentum": p.momentum, "weight_decay": p.weight_decay}
    head_batches, hyper_batches = minibatches(p, len(x), env.generator(server_round, "shuffle"))
    head_loss = train_head(net, v, head, x, y, head_batches, lr=p.lr_head, **common)
    loss = train_hyper(net, v, head, x, y, hyper_batches, lr=p.lr_hyper, max_grad_norm=p.max_grad_norm, **common)
    state_bytes = save_state(env, V_KEY, v.detach()) + save_state(env, HEAD_KEY, head.detach())
    correct, tested = local_test(net, v, head, env, p)
    metrics = {"train_loss": loss, "head_loss": head_loss, "state_bytes": float(state_bytes), "num-examples": len(x),
               LOCAL_CORRECT: correct, LOCAL_TESTED: tested}
    return RecordDict({"arrays": to_record(net.state_dict()), "metrics": MetricRecord(metrics)})


def local_test(net: HyperNetwork, v, head, env: ClientEnv, p: "HyperFLStrategyParams") -> tuple[float, float]:
    """(correct, tested) of the client's personal model right after its local training, before the
    server aggregates φ: the paper's reported accuracy (the official code's ``acc2``)."""
    _, test_idx = local_split(len(env.x), p.test_fraction, env.scenario.seed, env.partition_id)
    net.eval()
    with torch.no_grad():
        logits = personalised_logits(net, v, head, env.x[test_idx], env.num_classes)
    return float((logits.argmax(1) == env.y[test_idx]).sum()), float(len(test_idx))


def hyperfl_evaluate(content: RecordDict, env: ClientEnv) -> RecordDict:
    """Personalised evaluation: the received φ with the client's own v_i, ϕ_i on its held-out split."""
    p: HyperFLStrategyParams = env.scenario.strategy.params
    net = _hyper_net(env)
    env.load(content["arrays"])
    v, head = client_state(env, net)  # a client never trained evaluates its initial v_i, ϕ_i
    _, test_idx = local_split(len(env.x), p.test_fraction, env.scenario.seed, env.partition_id)
    net.eval()
    with torch.no_grad():
        logits = personalised_logits(net, v, head, env.x[test_idx], env.num_classes)
        target = env.y[test_idx]
        loss = F.cross_entropy(logits, target).item() if len(target) else 0.0
        acc = (logits.argmax(1) == target).float().mean().item() if len(target) else 0.0
    return RecordDict({"metrics": MetricRecord({"eval_loss": loss, "eval_acc": acc, "num-examples": len(test_idx)})})


# ------------------------------------------------- the informed attacker's view


class InformedModel(HyperNetwork):
    """Client i's prediction as a model of φ alone: x ↦ g(f(x; h(v_i; φ)); ϕ_i), with
    v_i and ϕ_i fixed buffers (the informed attacker).

    Its named parameters are exactly φ (the ``hyperfl`` state-dict keys). With phase 1
    skipped and one phase-2 step on one minibatch, the client's upload is one SGD step of
    this model, φ' − φ = −lr·(clip(∇φ CE(g(f(x; h(v_i; φ)); ϕ_i), y)) + wd·φ): a FedAvg
    update that the attacks replay unchanged. (Phase 2 also moves v_i; in one step that
    does not touch φ's update.)
    """

    def __init__(self, net: HyperNetwork, v: torch.Tensor, head: torch.Tensor, num_classes: int):
        super().__init__(copy.deepcopy(net.extractor), net.embed_dim, net.body.out_features)
        self.load_state_dict(net.state_dict())
        self.register_buffer("v", v.detach().clone())
        self.register_buffer("head", head.detach().clone())
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return personalised_logits(self, self.v, self.head, x, self.num_classes)


def _one_step(scenario) -> HyperFLStrategyParams:
    p: HyperFLStrategyParams = scenario.strategy.params
    if p.head_epochs != 0 or p.hyper_steps != 1:
        raise ValueError(
            "eavesdropper on hyperfl: the informed attack replays one phase-2 step with ϕ_i as it was "
            "sent; set strategy.head_epochs: 0 and strategy.hyper_steps: 1"
        )
    return p


def _informed_model(sent: nn.Module, state: RecordDict, scenario, client: int, num_classes: int) -> InformedModel:
    if not isinstance(sent, HyperNetwork):
        raise ValueError("eavesdropper on hyperfl: the sent model is not the hypernetwork")
    v, head = stored_state(state, scenario, client, sent.embed_dim, num_classes)
    return InformedModel(sent, v, head, num_classes)


def _informed_local(scenario, num_examples: int) -> LocalTraining:
    p = _one_step(scenario)
    return LocalTraining(p.lr_hyper, 1, p.batch_size, p.momentum, p.weight_decay, p.max_grad_norm)


def _trained_examples(scenario, partition_size: int, server_round: int, client: int) -> list[int]:
    """Positions in the partition of the examples of phase 2 (the client's own stream)."""
    p: HyperFLStrategyParams = scenario.strategy.params
    train_idx, _ = local_split(partition_size, p.test_fraction, scenario.seed, client)
    gen = torch_generator(scenario.seed, server_round, client, "shuffle")
    _, hyper = minibatches(p, len(train_idx), gen)
    return [int(train_idx[i]) for i in dict.fromkeys(i for b in hyper for i in b.tolist())]


INFORMED_VIEW = InformedView(check=_one_step, model=_informed_model, local=_informed_local, examples=_trained_examples)


# -------------------------------------------------------------------------- server


class HyperFL(FedAvg):
    """Seeded sampling and FedAvg's example-weighted mean, of φ (the hypernetwork) only.

    ``personalized``: there is no global predictor; the loop skips the central test
    evaluation and the run reports the clients' personalised ``fed_acc``.
    """

    personalized = True

    def aggregate_train(self, server_round, replies):
        """FedAvg's mean of φ; ``local_acc`` = Σ correct / Σ tested over the clients' replies
        (their models after local training, before this aggregation; example-weighted like
        ``fed_acc``), in place of the per-client counters' meaningless weighted means."""
        arrays, metrics = super().aggregate_train(server_round, replies)
        if metrics is None:
            return arrays, metrics
        counts = [r.content["metrics"] for r in replies if not r.has_error()]
        counts = [(m[LOCAL_CORRECT], m[LOCAL_TESTED]) for m in counts if LOCAL_TESTED in m]
        for key in (LOCAL_CORRECT, LOCAL_TESTED):
            metrics.pop(key, None)
        tested = sum(t for _, t in counts)
        if tested:
            metrics["local_acc"] = sum(c for c, _ in counts) / tested
        return arrays, metrics


class HyperFLStrategyParams(FedAvgParams):
    head_epochs: int = Field(1, ge=0, description="phase 1: epochs on the classifier head ϕ_i (0: skipped)")
    hyper_epochs: int = Field(5, ge=0, description="phase 2: epochs on the hypernetwork φ and embedding v_i")
    lr_head: float = Field(0.1, gt=0)
    lr_hyper: float = Field(0.02, gt=0, description="lr of φ and v_i")
    momentum: float = Field(0.5, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    max_grad_norm: float = Field(50.0, gt=0, description="clip ∇φ and ∇v_i separately (stability, not DP)")
    hyper_steps: int | None = Field(
        None, ge=1, description="phase 2: exactly this many minibatch steps (overrides hyper_epochs)"
    )
    batch_size: int = Field(50, ge=1)
    test_fraction: float = Field(0.2, gt=0, lt=1, description="held-out personal test share of each partition")


@register(
    "strategy", "hyperfl", params=HyperFLStrategyParams, client=hyperfl_train, evaluate=hyperfl_evaluate,
    canary="bypass", informed=INFORMED_VIEW, cpu_only=True,
)
def hyperfl(params: HyperFLStrategyParams, setup) -> HyperFL:
    """HyperFL: share a hypernetwork, keep embeddings and heads private (Guo et al., AAAI 2025)."""
    if not isinstance(setup.model, HyperNetwork):
        raise ValueError("strategy 'hyperfl' needs model 'hyperfl' (the hypernetwork is the shared model)")
    if not setup.scenario.evaluation.federated or params.fraction_evaluate == 0:
        raise ValueError(
            "strategy 'hyperfl' is evaluated on the clients (personalised): set evaluation.federated: true "
            "and fraction_evaluate > 0"
        )
    return HyperFL(**sampling_kwargs(params, setup))
