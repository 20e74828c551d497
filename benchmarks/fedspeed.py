"""FedSpeed against its baselines: rounds to a target accuracy and final accuracy.

The claim (Sun et al., ICLR 2023): FedSpeed reaches a target accuracy in fewer rounds
than FedAvg at large local intervals and ends at least as accurate as FedDyn and
SCAFFOLD. The paper's setting is CIFAR-10/100 with ResNet-18-GN, 100 clients at 10%
participation, 5 local epochs, 1000+ rounds; here, to run in minutes on two CPU cores:
scikit-learn digits, an MLP(64), 20 clients with 5 sampled per round (25%), batch 16,
lr 0.05, weight decay 1e-3, 40 rounds, Dirichlet α ∈ {0.6, 0.3, 0.1} (flwr-datasets,
per class over clients), 1 and 5 local epochs; the mean over ``--seeds``.

Methods and their settings (FL-Simulator's defaults where they exist): FedAvg; FedProx
μ = 0.01; SCAFFOLD (option II, η_g = 1); FedDyn α = 0.1; FedSAM ρ = 0.1; FedSpeed, paper
variant (ρ = 0.1 raw ascent, α = 0.9, lamb = 1/λ = 1: with the code's 0.1 the
participants-only mean of x̂ diverges at 25% participation) and code variant
(lamb = 0.1, normalised ascent, α = 1, clip 10, all-client dual averaging). No learning-rate decay (FL-Simulator
decays ×0.998 per round: 0.92 over 40 rounds).

Rows: method, setting, metric, value, FedAvg's value (baseline) and the ratio; then
the claim, checked per setting for both FedSpeed variants.

    python benchmarks/fedspeed.py [--rounds 40] [--seeds 0 1] [--target 0.85]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

import numpy as np
from rich.console import Console
from rich.table import Table

import fedsim

METHODS = {
    "fedavg": {"name": "fedavg"},
    "fedprox": {"name": "fedprox", "mu": 0.01},
    "scaffold": {"name": "scaffold"},
    "feddyn": {"name": "feddyn", "alpha": 0.1},
    "fedsam": {"name": "fedsam", "rho": 0.1},
    "fedspeed": {"name": "fedspeed", "variant": "paper", "rho": 0.1, "lamb": 1.0},
    "fedspeed-code": {"name": "fedspeed", "variant": "code", "rho": 0.1, "lamb": 0.1},
}


def scenario(method: str, alpha: float, epochs: int, seed: int, rounds: int, out: str) -> dict:
    return {
        "name": f"fedspeed-bench-{method}",
        "seed": seed,
        "rounds": rounds,
        "num_clients": 20,
        "dataset": {"name": "digits"},
        "partition": {"name": "dirichlet", "alpha": alpha, "min_partition_size": 5},
        "model": {"name": "mlp", "hidden": [64]},
        "strategy": {**METHODS[method], "fraction_train": 0.25},
        "client": {"epochs": epochs, "batch_size": 16, "lr": 0.05, "weight_decay": 1e-3},
        "output": {"dir": out, "progress": False, "plot": False, "save_model": False},
    }


def rounds_to(acc: np.ndarray, target: float) -> float:
    hit = np.nonzero(acc >= target)[0]
    return float(hit[0] + 1) if len(hit) else math.inf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--target", type=float, default=0.85)
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.6, 0.3, 0.1])
    ap.add_argument("--epochs", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = ap.parse_args()

    start = time.perf_counter()
    results: dict[tuple, dict] = {}
    with tempfile.TemporaryDirectory() as out:
        for epochs in args.epochs:
            for alpha in args.alphas:
                for method in args.methods:
                    curves = [
                        fedsim.run(scenario(method, alpha, epochs, seed, args.rounds, out)).metrics["test_acc"].to_numpy()
                        for seed in args.seeds
                    ]
                    # mean over seeds of each seed's rounds-to-target (inf if one never gets there)
                    results[(method, alpha, epochs)] = {
                        "rounds": float(np.mean([rounds_to(c, args.target) for c in curves])),
                        "final": float(np.mean([c[-1] for c in curves])),
                    }
    elapsed = time.perf_counter() - start

    table = Table(title=f"FedSpeed vs baselines on digits (target {args.target:.0%}, {args.rounds} rounds, "
                  f"seeds {args.seeds}, {elapsed:.0f} s)")
    for col in ("method", "setting", "metric", "value", "baseline (FedAvg)", "ratio"):
        table.add_column(col, justify="left" if col in ("method", "setting", "metric") else "right")
    fmt = {"rounds": lambda v: "never" if math.isinf(v) else f"{v:.1f}", "final": lambda v: f"{v:.4f}"}
    for epochs in args.epochs:
        for alpha in args.alphas:
            for method in args.methods:
                for metric, label in (("rounds", "rounds to target"), ("final", "final accuracy")):
                    value = results[(method, alpha, epochs)][metric]
                    base = results.get(("fedavg", alpha, epochs), {}).get(metric, math.nan)
                    ratio = value / base if base and math.isfinite(base) and math.isfinite(value) else math.nan
                    table.add_row(method, f"Dir({alpha}) E={epochs}", label, fmt[metric](value),
                                  fmt[metric](base), "-" if math.isnan(ratio) else f"{ratio:.2f}")
        table.add_section()
    console = Console(width=120)
    console.print(table)

    variants = [v for v in ("fedspeed", "fedspeed-code") if v in args.methods]
    if variants and {"fedavg", "feddyn", "scaffold"} <= set(args.methods):
        claim = Table(title="Claim: FedSpeed needs fewer rounds than FedAvg at E=5 and ends ≥ FedDyn and SCAFFOLD")
        for col in ("setting", "variant", "rounds", "FedAvg rounds", "fewer rounds", "final",
                    "best of FedDyn, SCAFFOLD", "at least as accurate"):
            claim.add_column(col)
        for epochs in args.epochs:
            for alpha in args.alphas:
                r = {m: results[(m, alpha, epochs)] for m in args.methods}
                rival = max(r["feddyn"]["final"], r["scaffold"]["final"])
                for v in variants:
                    claim.add_row(
                        f"Dir({alpha}) E={epochs}", v,
                        fmt["rounds"](r[v]["rounds"]), fmt["rounds"](r["fedavg"]["rounds"]),
                        "yes" if r[v]["rounds"] < r["fedavg"]["rounds"] else "no",
                        fmt["final"](r[v]["final"]), fmt["final"](rival),
                        "yes" if r[v]["final"] >= rival else "no",
                    )
        console.print(claim)

if __name__ == "__main__":
    main()
