"""FedDyn (Acar et al., "Federated Learning Based on Dynamic Regularization", ICLR 2021,
arXiv 2111.04263), Algorithm 1.

State: each client's linear dual ∇_i (the gradient of its local objective at its last
model, in the client's ``Context.state``) and the server's h, all zero at the start;
coefficient α.

Client i ∈ P_t (Alg. 1, client step):

    y_i = argmin_w  f_i(w) − ⟨∇_i, w⟩ + (α/2)‖w − x‖²
          approximated by K SGD steps on the gradient ∇f_i(w; ξ) − ∇_i + α(w − x)
    ∇_i ← ∇_i − α (y_i − x)

Server (Alg. 1, server step):

    h ← h − α · (1/N) Σ_{i∈P_t} (y_i − x)
    x ← (1/|P_t|) Σ_{i∈P_t} y_i − (1/α) h

Traffic: x down, y_i up (d each way). The scale of h follows the paper's pseudo-code
(1/N over all clients); repositories differ here (participants vs all clients; see the
FedDyn and PFLlib threads). FL-Simulator (``server/FedDyn.py``) keeps h_i = Σ past
(y_i − x) of every client on the server (O(N·d)), sends x and h_i − x and sets
x ← mean(y_i) + mean_ALL(h_i): algebraically this rule (h = −α·mean_ALL h_i, ∇_i = −α h_i).
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
    check_parameters_only,
    client_minibatches,
    load_state,
    local_descent,
    model_vector,
    prox_correction,
    save_state,
    sgd_options,
    state_metrics,
    successful,
    to_arrays,
    to_vector,
    vector_record,
)

STATE_KEY = "feddyn.dual"


def client_dual_update(dual: torch.Tensor, y: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    """∇_i ← ∇_i − α(y_i − x) (first-order condition of the local problem)."""
    return dual - alpha * (y - x)


def server_update(
    x: torch.Tensor, h: torch.Tensor, ys: list[torch.Tensor], alpha: float, num_clients: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """h ← h − α(1/N)Σ_P(y_i − x);  x ← mean_P(y_i) − h/α. Returns (x, h)."""
    stacked = torch.stack(ys)
    h_new = h - alpha * (stacked - x).sum(0) / num_clients
    return stacked.mean(0) - h_new / alpha, h_new


def feddyn_train(content: RecordDict, env: ClientEnv) -> RecordDict:
    """FedDyn client: K SGD steps on f_i − ⟨∇_i, w⟩ + (α/2)‖w − x‖², then the dual update."""
    model = env.load(content["arrays"])
    server_round = int(content["config"]["server-round"])
    alpha = float(content["config"]["alpha"])
    x = model_vector(model)
    dual = load_state(env, STATE_KEY, x.numel())
    loss, _ = local_descent(
        model,
        client_minibatches(env, server_round),
        correction=prox_correction(x, alpha, offset=-dual),
        **sgd_options(env),
    )
    size = save_state(env, STATE_KEY, client_dual_update(dual, model_vector(model), x, alpha))
    return env.reply(loss, **state_metrics(size, dual))


def feddyn_batched(cohort: Cohort) -> list[RecordDict]:
    """``feddyn_train`` for a cohort: gradients + α(w − x) − ∇_i, then each client's dual update."""
    alpha = torch.tensor([float(c["config"]["alpha"]) for c in cohort.contents], dtype=torch.float64)
    x = cohort.vector(cohort.start)
    dual = torch.stack([load_state(env, STATE_KEY, x.shape[1]) for env in cohort.envs])
    params, losses = cohort.local_sgd(correction=Correction(coef=alpha, anchor=x, offset=-dual))
    y = cohort.vector(params)
    out = []
    for k, env in enumerate(cohort.envs):
        size = save_state(env, STATE_KEY, client_dual_update(dual[k], y[k], x[k], float(alpha[k])))
        cohort.load(k, params)
        out.append(env.reply(float(losses[k]), **state_metrics(size, dual[k])))
    return out


class FedDyn(Checkpointable, FedAvg):
    """Seeded sampling from FedAvg; FedDyn's server state h and update."""

    checkpoint_fields = ("h", "report")  # server state saved in checkpoints

    def __init__(self, *args, alpha: float, num_clients: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha = alpha
        self.num_clients = num_clients
        self.h: torch.Tensor | None = None
        self.sent: ArrayRecord | None = None
        self.report = StateReport()

    def configure_train(self, server_round, arrays, config, grid):
        if self.h is None:
            self.h = torch.zeros_like(to_vector(arrays))
        self.sent = arrays
        config["alpha"] = self.alpha
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        replies = successful(replies)
        if not replies:
            return None, None
        ys = [to_vector(r.content["arrays"]) for r in replies]
        x_new, self.h = server_update(to_vector(self.sent), self.h, ys, self.alpha, self.num_clients)
        return to_arrays(x_new, self.sent), self.report.metrics(replies, vector_record(self.h).count_bytes())


class FedDynParams(FedAvgParams):
    alpha: float = Field(0.01, gt=0, description="dynamic regularisation coefficient α")


@register("strategy", "feddyn", params=FedDynParams, client=feddyn_train, batched=feddyn_batched)
def feddyn(params: FedDynParams, setup) -> FedDyn:
    """FedDyn: per-client linear dual and server state h (Acar et al. 2021)."""
    check_parameters_only(setup.model, "feddyn")
    return FedDyn(alpha=params.alpha, num_clients=setup.scenario.num_clients, **sampling_kwargs(params, setup))
