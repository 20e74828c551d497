"""FedAsync (Xie, Koyejo, Gupta 2019, "Asynchronous Federated Optimization", arXiv 1903.03934).

Every arrival updates the server model at once (Alg. 1, "Updater" thread):

    σ   = t − τ                                   staleness: server versions since the download
    α_t = α · s(σ)                                 the mixing weight, discounted by staleness
    x_t = (1 − α_t) · x_{t−1} + α_t · y            y: the client's trained model

mixing with the *current* model x_{t−1} (as the author's code ``xcgoner/async_fl`` and
APPFL do), not with the x_τ the client started from. The staleness functions s(σ) of
the paper's Sec. 5 (the author's ``--alpha-type``):

    constant     s(σ) = 1
    polynomial   s(σ) = (σ + 1)^(−a)
    hinge        s(σ) = 1 if σ ≤ b, else 1 / (a(σ − b) + 1)

Client ("Worker" thread): H local SGD steps on the regularised objective
f_i(x) + (ρ/2)·‖x − x_τ‖² from x_τ, the FedProx client with μ = ρ
(``fedsim.strategies.fedprox.fedprox_train``; the author's decoupled pull
x ← (1 − γρ)x + γρ·x_τ is the same gradient step).
"""

from __future__ import annotations

from typing import Annotated, Literal

from flwr.app import ArrayRecord
from pydantic import Field

from fedsim.apps.asynchronous import Arrival, EventStrategy, Step
from fedsim.registry import Params, register
from fedsim.strategies.deltas import Layout
from fedsim.strategies.fedprox import fedprox_train


class ConstantStaleness(Params):
    kind: Literal["constant"] = "constant"


class PolynomialStaleness(Params):
    kind: Literal["polynomial"] = "polynomial"
    a: float = Field(0.5, ge=0, description="s(σ) = (σ + 1)^(−a)")


class HingeStaleness(Params):
    kind: Literal["hinge"] = "hinge"
    a: float = Field(10.0, gt=0, description="slope after the hinge")
    b: float = Field(4.0, ge=0, description="staleness tolerated without discount")


Staleness = Annotated[ConstantStaleness | PolynomialStaleness | HingeStaleness, Field(discriminator="kind")]


def staleness_weight(spec: ConstantStaleness | PolynomialStaleness | HingeStaleness, sigma: int) -> float:
    """s(σ) of FedAsync Sec. 5 (constant, polynomial, hinge)."""
    if spec.kind == "polynomial":
        return (sigma + 1) ** (-spec.a)
    if spec.kind == "hinge":
        return 1.0 if sigma <= spec.b else 1.0 / (spec.a * (sigma - spec.b) + 1.0)
    return 1.0


class FedAsyncParams(Params):
    alpha: float = Field(0.6, gt=0, le=1, description="mixing weight α")
    staleness: Staleness = Field(default_factory=PolynomialStaleness, description="staleness function s(σ)")
    rho: float = Field(0.005, ge=0, description="ρ of the clients' proximal term (ρ/2)‖x − x_τ‖²")


class FedAsync(EventStrategy):
    def __init__(self, params: FedAsyncParams, concurrency: int):
        self.params = params
        self.concurrency = concurrency

    def config(self) -> dict:
        return {"proximal-mu": self.params.rho}

    def wanted(self, now: float, busy: int) -> int:
        return self.concurrency - busy

    def arrive(self, x: ArrayRecord, arrival: Arrival, now: float) -> Step:
        alpha_t = self.params.alpha * staleness_weight(self.params.staleness, arrival.staleness)
        layout = Layout(x)
        y = layout.flatten(arrival.reply["arrays"])
        mixed = (1 - alpha_t) * layout.flatten(x) + alpha_t * y
        return Step(model=layout.unflatten(mixed), used=[arrival], metrics={"alpha_t": alpha_t})


@register("strategy", "fedasync", params=FedAsyncParams, client=fedprox_train, event_driven=True)
def fedasync(params: FedAsyncParams, setup) -> FedAsync:
    """FedAsync: mix every arrival into the model with α·s(staleness) (Xie et al. 2019)."""
    return FedAsync(params, setup.scenario.asynchronous.concurrency)
