"""FedAU under unknown, heterogeneous participation: final test accuracy and server memory.

Reproduces the comparison of Wang & Ji (ICLR 2024, Table 1 and Sec. 5) at digits scale:
FedAU against FedAvg averaging over the participants, FedAvg averaging over all N, the
known-probability oracle, MIFA and FedVarp, under Bernoulli, Markov and cyclic
participation with label-correlated p_n (p_n = max(p_min, C·p̄·Σ_c q_{n,c} v_c)) on the
FedAU label split (per-client Dir(α_d = 0.1) label mixes). Each method uses the local and
global learning rates of the IBM/fedau README (tuned there for CIFAR-10). FedAU runs with
K = ∞ (the paper's default) and with the cutoff K = 50 the README also runs.

The set-up (scenarios/fedau_<process>.yaml) is cut from the paper's to fit ~10 minutes on
2 CPU cores: scikit-learn digits (1437 training images) and a 64-unit MLP instead of
CIFAR-10 and a CNN; N = 100 clients instead of 250 (about 14 examples each); 300 rounds
instead of 10 000 (a client at p_min = 0.02 takes part about 6 times instead of about 200);
cyclic period 20 instead of 100 (15 cycles per run); 3 seeds instead of 5. N stays large against 1/p_min so that a rare client's weight ω_n/N ≈ 0.5 (0.2 in
the paper) does not let one update dominate a round.

    python benchmarks/fedau.py [--seeds 0 1 2] [--only bernoulli ...] [--dataset fashion_mnist]

Writes ``benchmarks/results/fedau.json`` (``fedau_fashion_mnist.json``): per (participation,
method) the final test accuracy per seed, mean and sd, the mean of the last five
evaluations, and the strategy's peak server state in bytes (the sum of ``nbytes`` of the
arrays it holds, ``server_state_bytes``; the global model is not counted); and the claims
"FedAU beats FedAvg-participants / FedAvg-all" per process with their paired verdicts.
With ``--only`` each process is a piece written into the same file.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import fedsim  # noqa: E402
import reporting  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# name: (strategy section, local lr γ), as in the IBM/fedau README commands
METHODS = {
    "FedAU": ({"name": "fedau"}, 0.1),
    "FedAU (K=50)": ({"name": "fedau", "cutoff": 50}, 0.1),
    "FedAvg-participants": ({"name": "fedavg_updates", "normalize": "participants", "global_lr": 1.78}, 0.0562),
    "FedAvg-all": ({"name": "fedavg_updates", "normalize": "all", "global_lr": 10.0}, 0.1),
    "known-p oracle": ({"name": "known_prob"}, 0.0562),
    "MIFA": ({"name": "mifa"}, 0.0562),
    "FedVarp": ({"name": "fedvarp"}, 0.0562),
}

PROCESSES = ("bernoulli", "markov", "cyclic")  # scenarios/fedau_<process>.yaml


def run(job: tuple) -> tuple[str, str, int, float, float, int]:
    """One run; returns (process, method, seed, final accuracy, mean of the last 5 evaluations,
    peak server state bytes)."""
    process, method, seed, rounds, dataset, out = job
    strategy, lr = METHODS[method]
    overrides = {
        **reporting.profile(dataset),
        "seed": seed,
        "strategy": strategy,
        "client.lr": lr,
        "output": {"dir": out, "progress": False, "plot": False, "save_model": False},
    }
    if rounds is not None:
        overrides["rounds"] = rounds
    res = fedsim.run(ROOT / "scenarios" / f"fedau_{process}.yaml", overrides)
    acc = res.metrics["test_acc"].dropna()
    state = int(res.metrics["server_state_bytes"].max())
    print(f"{process} {method} seed {seed}: {acc.iloc[-1]:.4f}", file=sys.stderr, flush=True)
    return process, method, seed, float(acc.iloc[-1]), float(acc.iloc[-5:].mean()), state


CLAIM_BASELINES = ("FedAvg-participants", "FedAvg-all")  # Wang & Ji: FedAU beats both normalisations
PAPER = "Wang & Ji, ICLR 2024, Table 1 and abstract: FedAU above both FedAvg normalisations"


def main() -> None:
    ap = reporting.parser(__doc__, list(PROCESSES))
    ap.add_argument("--rounds", type=int, default=None, help="override the scenarios' rounds")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--workers", type=int, default=1, help="runs in parallel (one per core)")
    args = ap.parse_args()
    started = time.time()
    processes = args.only or list(PROCESSES)
    with tempfile.TemporaryDirectory() as out:
        jobs = [(p, m, s, args.rounds, args.dataset, out) for p in processes for m in args.methods for s in args.seeds]
        with ProcessPoolExecutor(args.workers) as pool:
            done = {(p, m, s): (final, last, state) for p, m, s, final, last, state in pool.map(run, jobs)}
    sc = fedsim.load_scenario(ROOT / "scenarios" / f"fedau_{processes[0]}.yaml")
    settings = {
        "profile": args.dataset, "dataset": reporting.profile(args.dataset).get("dataset", {}).get("name", sc.dataset.name),
        "model": reporting.profile(args.dataset).get("model", {}).get("name", sc.model.name),
        "num_clients": sc.num_clients, "rounds": args.rounds or sc.rounds, "methods": args.methods,
        "participation": "label-correlated p_n (mean 0.1, p_min 0.02), Dir(0.1) label split",
        "metric": "final test accuracy (global model)",
    }
    tables, claims = {}, []
    for p in processes:
        rows = []
        for m in args.methods:
            final, last, state = (list(v) for v in zip(*(done[(p, m, s)] for s in args.seeds)))
            rows.append({"method": m, "final test acc": reporting.spread(final)["mean"],
                         "sd": reporting.spread(final)["std"], "per seed": final,
                         "last-5 mean acc": reporting.spread(last)["mean"], "server state bytes": max(state)})
        tables[f"{p} participation"] = rows
        for fedau in (m for m in ("FedAU", "FedAU (K=50)") if m in args.methods):
            ours = [done[(p, fedau, s)][0] for s in args.seeds]
            for base in CLAIM_BASELINES:
                if base in args.methods:
                    claims.append(reporting.claim(
                        f"{fedau} beats {base} under {p} participation", PAPER, "final test acc", fedau, base,
                        ours, [done[(p, base, s)][0] for s in args.seeds]))
        piece = p if args.only else None
        if piece:
            path = reporting.write(reporting.results_name("fedau", args.dataset), settings=settings, seeds=args.seeds,
                                   tables={k: v for k, v in tables.items() if k.startswith(p)},
                                   claims=[c for c in claims if c["claim"].endswith(f"{p} participation")],
                                   started=started, piece=piece)
    if not args.only:
        path = reporting.write(reporting.results_name("fedau", args.dataset), settings=settings, seeds=args.seeds,
                               tables=tables, claims=claims, started=started)
    for c in claims:
        print(f"{c['claim']}: {c['verdict']} (diffs {', '.join(f'{d:+.4f}' for d in c['diffs'])})")
    print(f"wrote {path} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
