"""FedAU under unknown, heterogeneous participation: final test accuracy and server memory.

Reproduces the comparison of Wang & Ji (ICLR 2024, Table 1 and Sec. 5) at digits scale:
FedAU against FedAvg averaging over the participants, FedAvg averaging over all N, the
known-probability oracle, MIFA and FedVarp, under Bernoulli, Markov and cyclic
participation with label-correlated p_n (p_n = max(p_min, C·p̄·Σ_c q_{n,c} v_c)) on the
FedAU label split (per-client Dir(α_d = 0.1) label mixes). Each method uses the local and
global learning rates of the IBM/fedau README (tuned there for CIFAR-10).

The set-up (scenarios/fedau_<process>.yaml) is cut from the paper's to fit ~10 minutes on
2 CPU cores: scikit-learn digits (1437 training images) and a 64-unit MLP instead of
CIFAR-10 and a CNN; N = 20 clients instead of 250; 500 rounds instead of 10 000 (a client
at p_min = 0.02 takes part about 10 times instead of about 200); cyclic period 20 instead
of 100 (about as many cycles per run); 3 seeds instead of 5. FedAU runs with K = ∞.

    PYTHONPATH=. python benchmarks/fedau.py [--rounds R] [--seeds 0 1 2] [--processes bernoulli ...]

Prints one row per (participation, method): final test accuracy mean ± std over the seeds,
the ratio to FedAU's, and the strategy's server state in bytes (measured: the sum of
``nbytes`` of the arrays it holds, reported every round as ``server_state_bytes``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
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


def run(process: str, method: str, seed: int, rounds: int | None, out: str):
    strategy, lr = METHODS[method]
    overrides = {
        "seed": seed,
        "strategy": strategy,
        "client.lr": lr,
        "output": {"dir": out, "progress": False, "plot": False, "save_model": False},
    }
    if rounds is not None:
        overrides |= {"rounds": rounds, "evaluation.eval_every": rounds}
    return fedsim.run(ROOT / "scenarios" / f"fedau_{process}.yaml", overrides)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=None, help="override the scenarios' rounds")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--processes", nargs="+", default=list(PROCESSES), choices=PROCESSES)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = ap.parse_args()
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for process in args.processes:
            results = {}
            for method in args.methods:
                accs, state = [], 0
                for seed in args.seeds:
                    res = run(process, method, seed, args.rounds, out)
                    print(f"{process} {method} seed {seed}: {res.final_accuracy:.4f}", file=sys.stderr, flush=True)
                    accs.append(res.final_accuracy)
                    state = max(state, int(res.metrics["server_state_bytes"].max()))
                results[method] = (np.array(accs), state)
                sc = res.scenario
            ref = results.get("FedAU", next(iter(results.values())))[0].mean()
            for method, (accs, state) in results.items():
                rows.append((process, method, accs.mean(), accs.std(), ref, accs.mean() / ref, state))
    print(
        f"\nFedAU benchmark: {sc.dataset.name}, {sc.model.name}, N={sc.num_clients}, {sc.rounds} rounds, "
        f"seeds {args.seeds}, label-correlated p_n (p̄=0.1, p_min=0.02), Dir(0.1) label split\n"
    )
    print(f"{'participation':<13} {'method':<20} {'final test acc':>16} {'FedAU acc':>10} {'ratio':>6} {'server state (bytes)':>21}")
    for process, method, mean, std, ref, ratio, state in rows:
        print(f"{process:<13} {method:<20} {mean:>9.4f} ± {std:.4f} {ref:>10.4f} {ratio:>6.3f} {state:>21,}")
    print(f"\ntotal time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
