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

Writes ``benchmarks/results/fedspeed.json`` (``fedspeed_fashion_mnist.json``): per setting
(piece ``dir<alpha>-e<epochs>``) each method's final accuracy and rounds to the target per
seed, and the claims (both variants against FedAvg, FedProx, SCAFFOLD and FedDyn; fewer
rounds than FedAvg) with their paired verdicts.

    python benchmarks/fedspeed.py [--seeds 0 1 2] [--only dir0.3-e5 ...] [--dataset fashion_mnist]
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

import fedsim
import reporting

METHODS = {
    "fedavg": {"name": "fedavg"},
    "fedprox": {"name": "fedprox", "mu": 0.01},
    "scaffold": {"name": "scaffold"},
    "feddyn": {"name": "feddyn", "alpha": 0.1},
    "fedsam": {"name": "fedsam", "rho": 0.1},
    "fedspeed": {"name": "fedspeed", "variant": "paper", "rho": 0.1, "lamb": 1.0},
    "fedspeed-code": {"name": "fedspeed", "variant": "code", "rho": 0.1, "lamb": 0.1},
}


def scenario(method: str, alpha: float, epochs: int, seed: int, rounds: int, out: str, dataset: str) -> dict:
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
        **reporting.profile(dataset),
    }


def rounds_to(acc: np.ndarray, target: float) -> float:
    """First round at or above ``target``; rounds + 1 when never reached (censored)."""
    hit = np.nonzero(acc >= target)[0]
    return float(hit[0] + 1) if len(hit) else float(len(acc) + 1)


PAPER = "Sun et al., ICLR 2023 (FL-Simulator README, CIFAR-10): FedSpeed above FedAvg, FedProx, SCAFFOLD, FedDyn"
PIECES = [f"dir{a}-e{e}" for e in (1, 5) for a in (0.6, 0.3, 0.1)]


def main() -> None:
    ap = reporting.parser(__doc__, PIECES)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--target", type=float, default=0.85)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = ap.parse_args()
    settings = {"profile": args.dataset, "rounds": args.rounds, "target": args.target, "methods": args.methods,
                "clients": "20, 25% per round", "client": "batch 16, lr 0.05, wd 1e-3",
                "base model": reporting.profile(args.dataset).get("model", {}).get("name", "mlp(64)"),
                "rounds to target": f"first round with test acc >= target; rounds + 1 when never reached"}
    name = reporting.results_name("fedspeed", args.dataset)
    for piece in args.only or PIECES:
        started = time.time()
        alpha, epochs = float(piece[3:].split("-e")[0]), int(piece.split("-e")[1])
        final, rounds = {}, {}
        with tempfile.TemporaryDirectory() as out:
            for method in args.methods:
                curves = [fedsim.run(scenario(method, alpha, epochs, seed, args.rounds, out, args.dataset))
                          .metrics["test_acc"].to_numpy() for seed in args.seeds]
                final[method] = [float(c[-1]) for c in curves]
                rounds[method] = [rounds_to(c, args.target) for c in curves]
                print(f"{piece} {method}: final {np.mean(final[method]):.4f}", flush=True)
        rows = [{"method": m, "final test acc": reporting.spread(final[m])["mean"], "sd": reporting.spread(final[m])["std"],
                 "per seed": final[m], f"rounds to {args.target}": rounds[m]} for m in args.methods]
        claims = []
        for variant in (v for v in ("fedspeed", "fedspeed-code") if v in args.methods):
            label = "FedSpeed (paper)" if variant == "fedspeed" else "FedSpeed (code)"
            for base in (b for b in ("fedavg", "fedprox", "scaffold", "feddyn") if b in args.methods):
                claims.append(reporting.claim(f"{label} ends above {base}, Dir({alpha}) E={epochs}", PAPER,
                                              "final test acc", label, base, final[variant], final[base]))
            if "fedavg" in args.methods:
                claims.append(reporting.claim(
                    f"{label} reaches {args.target} in fewer rounds than fedavg, Dir({alpha}) E={epochs}",
                    "Sun et al. 2023: fewer communication rounds at large local intervals", "rounds to target",
                    label, "fedavg", rounds[variant], rounds["fedavg"], higher_is_better=False))
        path = reporting.write(name, settings=settings, seeds=args.seeds, tables={f"Dir({alpha}), {epochs} local epochs": rows},
                               claims=claims, started=started, piece=piece)
        for c in claims:
            print(f"  {c['claim']}: {c['verdict']}")
        print(f"wrote {path} ({time.time() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
