"""SCAFFOLD (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML 2020, arXiv 1910.06378), Algorithm 1 with option II.

State: the server's control c and each client's control c_i (in the client's
``Context.state``), all zero at the start.

Client i ∈ S (Alg. 1 lines 7-13):

    y ← x
    K times:  y ← y − η_l (g_i(y) − c_i + c)              # line 10
    c_i⁺ = c_i − c + (x − y) / (K η_l)                    # line 12, option II
    send (Δy_i, Δc_i) = (y − x, c_i⁺ − c_i); c_i ← c_i⁺    # line 13

Server (lines 16-17):

    x ← x + η_g · (1/|S|) Σ_{i∈S} Δy_i
    c ← c + (1/N) Σ_{i∈S} Δc_i

What travels, as in the paper: x and c down (2d), the model y (= x + Δy_i, the same
size as Δy_i) and Δc_i up (2d). The means over S are unweighted, as in the paper.
Differences to FL-Simulator (``server/SCAFFOLD.py``, ``client/scaffold.py``): it keeps
every c_i on the server (O(N·d)), sends c − c_i down and receives only y, and derives
c_i⁺ on the server with K = epochs·n_i/batch; here c_i stays on its client.

With momentum or weight decay in the ``client:`` section, (x − y)/(K η_l) is the mean
update direction rather than the mean gradient; the paper uses plain SGD.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, RecordDict
from pydantic import Field

from fedsim.apps.client import ClientEnv
from fedsim.batched import Cohort, Correction
from fedsim.registry import register
from fedsim.state import Checkpointable
from fedsim.strategies.fedavg import FedAvg, FedAvgParams, sampling_kwargs
from fedsim.strategies.stateful import (
    StateReport,
    add_to_grads,
    check_parameters_only,
    client_minibatches,
    load_state,
    local_descent,
    model_vector,
    record_vector,
    reply,
    save_state,
    sgd_options,
    state_metrics,
    successful,
    to_arrays,
    to_vector,
    vector_record,
)

STATE_KEY = "scaffold.c_i"
CONTROL_KEY = "control"  # c, server → client
CONTROL_DELTA_KEY = "control-delta"  # Δc_i, client → server


def client_control_update(
    c_i: torch.Tensor, c: torch.Tensor, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float
) -> torch.Tensor:
    """Option II (Alg. 1 line 12): c_i⁺ = c_i − c + (x − y)/(K η_l)."""
    return c_i - c + (x - y) / (steps * lr)


def server_update(
    x: torch.Tensor,
    c: torch.Tensor,
    delta_y: list[torch.Tensor],
    delta_c: list[torch.Tensor],
    num_clients: int,
    global_lr: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Alg. 1 lines 16-17: x + η_g·mean_S Δy_i and c + (1/N)·Σ_S Δc_i."""
    x_new = x + global_lr * torch.stack(delta_y).mean(0)
    c_new = c + torch.stack(delta_c).sum(0) / num_clients
    return x_new, c_new


def scaffold_train(content: RecordDict, env: ClientEnv) -> RecordDict:
    """SCAFFOLD client (Alg. 1 lines 7-13, option II); c_i persists in ``Context.state``."""
    model = env.load(content["arrays"])
    server_round = int(content["config"]["server-round"])
    x = model_vector(model)
    c = record_vector(content[CONTROL_KEY], env.device)
    c_i = load_state(env, STATE_KEY, x.numel())
    options = sgd_options(env)
    loss, steps = local_descent(
        model, client_minibatches(env, server_round), correction=add_to_grads(c - c_i), **options
    )
    c_i_new = client_control_update(c_i, c, x, model_vector(model), steps, options["lr"])
    size = save_state(env, STATE_KEY, c_i_new)
    return reply(env, loss, {CONTROL_DELTA_KEY: vector_record(c_i_new - c_i)}, **state_metrics(size, c_i))


def scaffold_batched(cohort: Cohort) -> list[RecordDict]:
    """``scaffold_train`` for a cohort: each client descends with its own c − c_i."""
    x = cohort.vector(cohort.start)
    c = torch.stack([record_vector(content[CONTROL_KEY], cohort.device) for content in cohort.contents])
    c_i = torch.stack([load_state(env, STATE_KEY, x.shape[1]) for env in cohort.envs])
    params, losses = cohort.local_sgd(correction=Correction(offset=c - c_i))
    steps, y = cohort.steps, cohort.vector(params)
    lr = cohort.envs[0].scenario.client.lr
    out = []
    for k, env in enumerate(cohort.envs):
        c_i_new = client_control_update(c_i[k], c[k], x[k], y[k], int(steps[k]), lr)
        size = save_state(env, STATE_KEY, c_i_new)
        cohort.load(k, params)
        extra = {CONTROL_DELTA_KEY: vector_record(c_i_new - c_i[k])}
        out.append(reply(env, float(losses[k]), extra, **state_metrics(size, c_i[k])))
    return out


class Scaffold(Checkpointable, FedAvg):
    """Seeded sampling from FedAvg; SCAFFOLD's messages and server update."""

    checkpoint_fields = ("control", "report")  # server state saved in checkpoints

    def __init__(self, *args, num_clients: int, global_lr: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_clients = num_clients
        self.global_lr = global_lr
        self.control: torch.Tensor | None = None  # c
        self.sent: ArrayRecord | None = None  # x of the current round
        self.report = StateReport()

    def configure_train(self, server_round, arrays, config, grid):
        if self.control is None:
            self.control = torch.zeros_like(to_vector(arrays))
        self.sent = arrays
        messages = list(super().configure_train(server_round, arrays, config, grid))
        control = vector_record(self.control)
        for msg in messages:
            msg.content[CONTROL_KEY] = control
        return messages

    def aggregate_train(self, server_round, replies):
        replies = successful(replies)
        if not replies:
            return None, None
        x = to_vector(self.sent)
        delta_y = [to_vector(r.content["arrays"]) - x for r in replies]
        delta_c = [record_vector(r.content[CONTROL_DELTA_KEY]) for r in replies]
        x_new, self.control = server_update(x, self.control, delta_y, delta_c, self.num_clients, self.global_lr)
        server_bytes = vector_record(self.control).count_bytes()
        return to_arrays(x_new, self.sent), self.report.metrics(replies, server_bytes)


class ScaffoldParams(FedAvgParams):
    global_lr: float = Field(1.0, gt=0, description="server step size η_g")


@register("strategy", "scaffold", params=ScaffoldParams, client=scaffold_train, batched=scaffold_batched)
def scaffold(params: ScaffoldParams, setup) -> Scaffold:
    """SCAFFOLD (option II): client and server control variates (Karimireddy et al. 2020)."""
    check_parameters_only(setup.model, "scaffold")
    return Scaffold(num_clients=setup.scenario.num_clients, global_lr=params.global_lr, **sampling_kwargs(params, setup))
