"""The eavesdropper: an honest-but-curious server that inverts the uploads of target clients.

Threat model (breaching's split, Geiping et al.): the layer sits in the world between the
strategy and the fleet and sees exactly what the server has. On the scenario's
``eavesdropper.rounds`` and for its ``targets`` (partition ids), it pairs each target's
reply with the instruction the server sent it and builds an
:class:`~fedsim.attacks.inversion.Observation`: the sent model, the upload (a FedSGD gradient, or
a FedAvg update θ_local − θ_sent with the local hyperparameters of the scenario's
``client:`` section) and the number of examples behind it. The attack gets nothing else.

Only after the attack has returned does the metrics code fetch the ground truth: the
simulator recomputes the client's batch from the dataset, the partition and the client's
seeded shuffle (:class:`GroundTruth`), the same stream the client drew from. Replies pass
through unchanged. Per round the layer reports PSNR, SSIM and label accuracy (mean over
the attacked targets and per target) into the round's row, appends every result to
``attack.jsonl`` and writes a PNG of originals vs reconstructions into the run directory.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from flwr.app import Message, MessageType, RecordDict
from torch import nn

from fedsim import registry
from fedsim.attacks.inversion import InformedView, Knowledge, LocalTraining, Observation
from fedsim.attacks.inversion.metrics import LPIPS_STATUS, save_grid, score
from fedsim.apps.client import fedavg_train
from fedsim.records import to_state_dict
from fedsim.registry import register
from fedsim.scenario import Scenario
from fedsim.training import batches, derive_seed, torch_generator
from fedsim.world.base import Fleet, GridWrapper

PIXEL_RANGE = (0.0, 1.0)  # fedsim's image datasets hold pixels in [0, 1]


def upload_kind(scenario: Scenario) -> str:
    """``gradient`` for strategies whose clients upload a gradient (FedSGD), ``update`` for
    the plain FedAvg client (local SGD) and for strategies with an informed view (their
    upload is a FedAvg update of the view's model); other client objectives cannot be replayed."""
    entry = registry.get("strategy", scenario.strategy.name)
    if entry.extras.get("upload") == "gradient":
        return "gradient"
    if entry.extras.get("client", fedavg_train) is fedavg_train or informed_view(scenario) is not None:
        return "update"
    raise ValueError(
        f"eavesdropper: strategy {scenario.strategy.name!r} has its own client objective; "
        "attacks replay FedSGD gradients (fedsgd) and FedAvg updates (fedavg)"
    )


def informed_view(scenario: Scenario) -> InformedView | None:
    """The strategy's :class:`InformedView` (registered as ``informed=``), if it has one."""
    return registry.get("strategy", scenario.strategy.name).extras.get("informed")


def local_training(scenario: Scenario, num_examples: int) -> LocalTraining:
    """The local SGD a FedAvg client with ``num_examples`` examples runs (server-side knowledge)."""
    c = scenario.client
    steps = c.steps if c.steps is not None else c.epochs * math.ceil(num_examples / c.batch_size)
    return LocalTraining(c.lr, steps, c.batch_size, c.momentum, c.weight_decay)


class GroundTruth:
    """The examples behind a client's upload, recomputed by the simulator. Metrics only."""

    def __init__(self, scenario: Scenario, x_train: np.ndarray, y_train: np.ndarray, partitions: list[np.ndarray]):
        self.scenario = scenario
        self.x_train, self.y_train, self.partitions = x_train, y_train, partitions
        self.view = informed_view(scenario)

    def examples(self, server_round: int, client: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        c, part = self.scenario.client, self.partitions[client]
        gen = torch_generator(self.scenario.seed, server_round, client, "shuffle")  # the client's stream
        if self.view is not None:  # the strategy's own local data and batching
            order = self.view.examples(self.scenario, len(part), server_round, client)
        elif kind == "gradient":
            order = next(batches(len(part), c.batch_size, 1, None, gen)).tolist()
        else:
            order = list(dict.fromkeys(i for b in batches(len(part), c.batch_size, c.epochs, c.steps, gen) for i in b.tolist()))
        idx = part[order]
        return torch.from_numpy(self.x_train[idx]), torch.from_numpy(self.y_train[idx])


class Attacker:
    """The honest-but-curious server's attack on single uploads, and the metrics of it."""

    def __init__(self, scenario: Scenario, dataset, partitions: list[np.ndarray], model: nn.Module, run_dir: Path):
        section = scenario.eavesdropper
        self.scenario, self.params, self.name = scenario, section.params, section.name
        if len(dataset.input_shape) != 3:
            raise ValueError(f"eavesdropper: attacks reconstruct images (C, H, W), dataset gives {dataset.input_shape}")
        if dataset.x_test.min() < PIXEL_RANGE[0] or dataset.x_test.max() > PIXEL_RANGE[1]:
            raise ValueError("eavesdropper: the dataset's pixels are not in [0, 1]")
        bad = [t for t in self.params.targets if not 0 <= t < scenario.num_clients]
        if bad:
            raise ValueError(f"eavesdropper.targets {bad}: partition ids are 0..{scenario.num_clients - 1}")
        self.kind = upload_kind(scenario)
        self.view = informed_view(scenario)
        if self.view is not None:
            self.view.check(scenario)
        self.knowledge = Knowledge(
            tuple(dataset.input_shape), dataset.num_classes, PIXEL_RANGE,
            scenario.dataset.name, scenario.dataset.raw_params(), scenario.seed,
        )
        self.attack = registry.get("inversion", self.name).factory(self.params, self.knowledge)
        self.template = copy.deepcopy(model)  # the architecture; weights come from each message
        self.truth = GroundTruth(scenario, dataset.x_train, dataset.y_train, partitions)
        self.run_dir = Path(run_dir)
        self.results: list[dict] = []

    def observe(
        self, server_round: int, client: int, sent: RecordDict, reply: RecordDict, state: RecordDict | None = None
    ) -> Observation:
        """What the server holds about one upload, as an Observation (no client data).

        ``state``: the client's private state when the round began (informed views only)."""
        weights = to_state_dict(sent["arrays"])
        model = copy.deepcopy(self.template)
        model.load_state_dict(weights)
        if self.view is not None:
            model = self.view.model(model, state if state is not None else RecordDict(), self.scenario, client,
                                    self.knowledge.num_classes)
        received = to_state_dict(reply["arrays"])
        names = [n for n, _ in model.named_parameters()]
        n_k = int(reply["metrics"]["num-examples"])
        if self.kind == "gradient":
            upload = {n: received[n] for n in names}
            num, local = min(self.scenario.client.batch_size, n_k), None
        else:
            upload = {n: received[n] - weights[n] for n in names}
            local = self.view.local(self.scenario, n_k) if self.view else local_training(self.scenario, n_k)
            num = n_k
        return Observation(
            model=model, upload=upload, kind=self.kind, num_examples=num, local=local,
            input_shape=self.knowledge.input_shape, num_classes=self.knowledge.num_classes,
            pixel_range=PIXEL_RANGE, round=server_round, client=client,
            seed=derive_seed(self.scenario.seed, server_round, client, "inversion"),
        )

    def run(
        self, server_round: int, client: int, sent: RecordDict, reply: RecordDict, state: RecordDict | None = None
    ) -> dict:
        """Attack one upload; then (only then) score it against the ground truth."""
        obs = self.observe(server_round, client, sent, reply, state)
        start = time.perf_counter()
        rec = self.attack.reconstruct(obs)
        seconds = time.perf_counter() - start
        x, y = self.truth.examples(server_round, client, self.kind)
        s = score(rec.images, rec.labels, x, y, PIXEL_RANGE)
        result = {
            "round": server_round, "client": client, "attack": self.name, "upload": self.kind,
            "examples": len(x), "psnr": s["psnr"], "psnr_max": s["psnr_max"], "ssim": s["ssim"],
            "label_acc": s["label_acc"], "matching_loss": rec.matching_loss, "seconds": seconds,
            "lpips": LPIPS_STATUS, **{f"info_{k}": v for k, v in rec.info.items()},
        }
        rows = [(f"c{client} true", x), (f"c{client} {self.name}", rec.images[s["order"]])]
        if "latent" in rec.alternatives:
            latent = score(rec.alternatives["latent"], rec.labels, x, y, PIXEL_RANGE)
            result.update(latent_psnr=latent["psnr"], latent_ssim=latent["ssim"])
            rows.append((f"c{client} latent", rec.alternatives["latent"][latent["order"]]))
        result["grid_rows"] = rows
        self.results.append(result)
        with open(self.run_dir / "attack.jsonl", "a") as f:
            f.write(json.dumps({k: v for k, v in result.items() if k != "grid_rows"}) + "\n")
        return result

    def save_grid(self, server_round: int, results: list[dict]) -> Path | None:
        if not self.params.save_grid or not results:
            return None
        path = self.run_dir / f"attack_{self.name}_round{server_round}.png"
        rows = [row for r in results for row in r["grid_rows"]]
        title = f"{self.name}, round {server_round}: " + ", ".join(
            f"c{r['client']} {r['psnr']:.1f} dB" for r in results
        )
        save_grid(path, rows, PIXEL_RANGE, title)
        return path


def round_metrics(results: list[dict]) -> dict:
    """The round's row entries: means over the attacked targets, then per target."""
    if not results:
        return {}
    out = {
        "attack_psnr": float(np.mean([r["psnr"] for r in results])),
        "attack_ssim": float(np.mean([r["ssim"] for r in results])),
        "attack_label_acc": float(np.mean([r["label_acc"] for r in results])),
        "attack_seconds": float(sum(r["seconds"] for r in results)),
    }
    if "latent_psnr" in results[0]:
        out["attack_latent_psnr"] = float(np.mean([r["latent_psnr"] for r in results]))
        out["attack_latent_ssim"] = float(np.mean([r["latent_ssim"] for r in results]))
    for r in results:
        for key in ("psnr", "ssim", "label_acc", "latent_psnr"):
            if key in r:
                out[f"attack_c{r['client']}_{key}"] = r[key]
    return out


class Eavesdropper(GridWrapper):
    """World layer: forwards every message unchanged and attacks the targets' train replies."""

    def __init__(self, inner, attacker: Attacker):
        super().__init__(inner)
        self.attacker = attacker
        self.pending: dict = {}

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        params = self.attacker.params
        sent = {self.partition_of(m): m for m in messages if m.metadata.message_type == MessageType.TRAIN}
        states = self.leaked_states(sent, params)  # before the round changes them
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        results, rnd = [], None
        for reply in replies:
            if reply.has_error() or reply.metadata.message_type != MessageType.TRAIN:
                continue
            client = self.partition_of(reply)
            instruction = sent.get(client)
            if instruction is None:
                continue
            rnd = int(instruction.content["config"]["server-round"])
            if rnd in params.rounds and client in params.targets:
                results.append(self.attacker.run(rnd, client, instruction.content, reply.content, states.get(client)))
        if results:
            self.attacker.save_grid(rnd, results)
            self.pending = round_metrics(results)
        return replies

    def leaked_states(self, sent: dict[int, Message], params) -> dict[int, RecordDict]:
        """The informed attacker's knowledge: the private state of this round's attacked
        targets, fetched from their nodes out of band (the simulation's stand-in for leaked
        client state; not metered as traffic). Empty for strategies without an informed view."""
        if self.attacker.view is None:
            return {}
        wanted = [
            pid for pid, m in sent.items()
            if pid in params.targets and int(m.content["config"]["server-round"]) in params.rounds
        ]
        if not wanted:
            return {}
        fleet = self.inner
        while not isinstance(fleet, Fleet):
            fleet = fleet.inner
        return fleet.client_states(wanted)

    def take_metrics(self) -> dict:
        out = {**self.inner.take_metrics(), **self.pending}
        self.pending = {}
        return out


@register("world_layer", "eavesdropper", order=30,
          description="honest-but-curious server inverting target clients' uploads (`eavesdropper:`)")
def build(setup, grid: GridWrapper, run_dir: Path) -> GridWrapper:
    """Wrap ``grid`` with the scenario's eavesdropper, if it has one."""
    if setup.scenario.eavesdropper is None:
        return grid
    attacker = Attacker(setup.scenario, setup.dataset, setup.partitions, setup.model, run_dir)
    return Eavesdropper(grid, attacker)
