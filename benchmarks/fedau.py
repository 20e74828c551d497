"""FedAU under unknown, heterogeneous participation: final test accuracy and server memory.

Reproduces the comparison of Wang & Ji (ICLR 2024, Table 1 and Sec. 5) at digits scale:
FedAU against FedAvg averaging over the participants, FedAvg averaging over all N, the
known-probability oracle, MIFA and FedVarp, under Bernoulli, Markov and cyclic
participation with label-correlated p_n (p_n = max(p_min, C·p̄·Σ_c q_{n,c} v_c)) on the
FedAU label split (per-client Dir(α_d = 0.1) label mixes). Each method uses the local and
global learning rates of the IBM/fedau README (tuned there for CIFAR-10).

The set-up (scenarios/fedau_<process>.yaml) is cut from the paper's to fit ~10 minutes on
2 CPU cores: scikit-learn digits (1437 training images) and a 64-unit MLP instead of
CIFAR-10 and a CNN; N = 100 clients instead of 250 (about 14 examples each); 300 rounds
instead of 10 000 (a client at p_min = 0.02 takes part about 6 times instead of about 200);
cyclic period 20 instead of 100 (15 cycles per run); 3 seeds instead of 5. FedAU runs with
K = ∞. N stays large against 1/p_min so that a rare client's weight ω_n/N ≈ 0.5 (0.2 in
the paper) does not let one update dominate a round.

    PYTHONPATH=. python benchmarks/fedau.py [--rounds R] [--seeds 0 1 2] [--processes bernoulli ...]

Prints one row per (participation, method): final test accuracy mean ± std over the seeds,
the ratio to FedAU's, the mean accuracy of the last five evaluations (less sensitive to
the last round's update), and the strategy's peak server state in bytes (measured: the
sum of ``nbytes`` of the arrays it holds, reported every round as ``server_state_bytes``;
the global model itself, which every method holds, is not counted).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import fedsim  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# name: (strategy section, local lr γ), as in the IBM/fedau README commands
METHODS = {
    "FedAU": ({"name": "fedau"}, 0.1),
    "FedAvg-participants": ({"name": "fedavg_updates", "normalize": "participants", "global_lr": 1.78}, 0.0562),
    "FedAvg-all": ({"name": "fedavg_updates", "normalize": "all", "global_lr": 10.0}, 0.1),
    "known-p oracle": ({"name": "known_prob"}, 0.0562),
    "MIFA": ({"name": "mifa"}, 0.0562),
    "FedVarp": ({"name": "fedvarp"}, 0.0562),
}

PROCESSES = ("bernoulli", "markov", "cyclic")  # scenarios/fedau_<process>.yaml


def run(job: tuple[str, str, int, int | None, str]) -> tuple[str, str, int, float, float, int]:
    """One run; returns (process, method, seed, final accuracy, mean of the last 5 evaluations,
    peak server state bytes)."""
    process, method, seed, rounds, out = job
    strategy, lr = METHODS[method]
    overrides = {
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=None, help="override the scenarios' rounds")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--processes", nargs="+", default=list(PROCESSES), choices=PROCESSES)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--workers", type=int, default=2, help="runs in parallel (one per core)")
    args = ap.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        jobs = [(p, m, s, args.rounds, out) for p in args.processes for m in args.methods for s in args.seeds]
        with ProcessPoolExecutor(args.workers) as pool:
            done = {(p, m, s): (final, last, state) for p, m, s, final, last, state in pool.map(run, jobs)}
    sc = fedsim.load_scenario(ROOT / "scenarios" / f"fedau_{args.processes[0]}.yaml")
    rounds = args.rounds or sc.rounds
    print(
        f"\nFedAU benchmark: {sc.dataset.name}, {sc.model.name}, N={sc.num_clients}, {rounds} rounds, "
        f"seeds {args.seeds}, label-correlated p_n (p̄=0.1, p_min=0.02), Dir(0.1) label split\n"
    )
    head = f"{'participation':<13} {'method':<20} {'final test acc':>16} {'FedAU':>7} {'ratio':>6}"
    print(head + f" {'last-5 mean acc':>16} {'server state (bytes)':>21}")
    for p in args.processes:
        ref = np.mean([done[(p, "FedAU", s)][0] for s in args.seeds]) if "FedAU" in args.methods else np.nan
        for m in args.methods:
            final, last, state = (np.array(v) for v in zip(*(done[(p, m, s)] for s in args.seeds)))
            print(
                f"{p:<13} {m:<20} {final.mean():>9.4f} ± {final.std():.4f} {ref:>7.4f} {final.mean() / ref:>6.3f}"
                f" {last.mean():>8.4f} ± {last.std():.4f} {state.max():>21,}"
            )
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        f"\ntotal time: {time.perf_counter() - start:.0f} s wall with {args.workers} workers, "
        f"{cpu.ru_utime + cpu.ru_stime:.0f} s CPU"
    )


if __name__ == "__main__":
    main()
