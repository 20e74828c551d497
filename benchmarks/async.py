"""FedBuff vs synchronous FedAvgM vs FedAsync: time to accuracy on heterogeneous devices.

FedBuff (Nguyen et al., AISTATS 2022) reports reaching a target accuracy up to 3.8× faster
than synchronous FL (FedAvgM) and up to 2.5× faster than FedAsync when client speeds are
heterogeneous (stragglers). This benchmark runs the three on the same virtual clock
(``fedsim.apps.asynchronous``): the same devices (log-normal compute speed, bandwidth and
latency, spread ``heterogeneity``), the same clients, data split, model and local SGD,
the same concurrency (clients training at once), 3 seeds. Time to accuracy is the virtual
time of the first evaluation at or above the target (evaluations every ``eval_interval``
virtual seconds; a run that never gets there counts as the budget, and is flagged).

The fast profile (default, ``--dataset digits``) is scikit-learn digits cut to fit a few
minutes on one core: 50 clients (Dirichlet α = 0.5 label split), a 64-unit MLP, one local
epoch; the paper's are CelebA / Sent140 / CIFAR-10 with 100s of concurrent clients. The
Fashion-MNIST profile is not in this build (no ``fashion_mnist`` dataset registered).

    python benchmarks/async.py [--dataset digits] [--seeds 0 1 2]   # runs, writes results/async.json
    python benchmarks/async.py --render                               # the docs table from the JSON
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import reporting  # noqa: E402

import fedsim  # noqa: E402
from fedsim import registry  # noqa: E402
from fedsim.recorder import plot_accuracy_time  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "async.md"
PLOT = ROOT / "docs" / "async_accuracy_time.png"

PROFILES = {
    "digits": {
        "target": 0.85,
        "scenario": {
            "num_clients": 50,
            "dataset": {"name": "digits"},
            "partition": {"name": "dirichlet", "alpha": 0.5, "min_partition_size": 10},
            "model": {"name": "mlp", "hidden": [64]},
            "client": {"epochs": 1, "batch_size": 8, "lr": 0.05},
            "network": {"heterogeneity": 1.0},
            "asynchronous": {"time_budget": 45.0, "concurrency": 10, "eval_interval": 0.5},
        },
    },
}

# name: strategy section (same concurrency 10: the synchronous cohort is 10 clients)
METHODS = {
    "FedBuff": {"name": "fedbuff", "buffer_size": 3, "server_lr": 1.0, "server_momentum": 0.5},
    "FedAvgM (sync)": {"name": "sync_fedavg", "clients_per_round": 10, "server_lr": 1.0, "server_momentum": 0.5},
    "FedAsync": {"name": "fedasync", "alpha": 0.6, "staleness": {"kind": "polynomial", "a": 0.5}},
}
PAPER = {"FedAvgM (sync)": 3.8, "FedAsync": 2.5}  # FedBuff's reported speed-ups (arXiv 2106.06639 v1 abstract)


def run_one(profile: dict, method: str, seed: int, out: str) -> dict:
    sc = {"name": re.sub(r"\W+", "_", method).strip("_"), "seed": seed, "rounds": 100_000,
          "strategy": METHODS[method], **profile["scenario"],
          "output": {"dir": out, "progress": False, "plot": False, "save_model": False}}
    res = fedsim.run(sc)
    df = res.metrics.dropna(subset=["test_acc"])
    reached = df[df["test_acc"] >= profile["target"]]
    budget = profile["scenario"]["asynchronous"]["time_budget"]
    used = res.metrics[res.metrics["round"] > 0]
    staleness = [s for row in used["staleness"] for s in row]
    return {
        "method": method, "seed": seed,
        "time_to_target": float(reached["virtual_time"].iloc[0]) if len(reached) else budget,
        "reached": bool(len(reached)),
        "final_acc": float(df["test_acc"].iloc[-1]),
        "server_updates": int(res.metrics["round"].max()),
        "client_updates": int(len(staleness)),
        "staleness_mean": float(np.mean(staleness)) if staleness else 0.0,
        "staleness_max": int(max(staleness)) if staleness else 0,
        "utilisation": float(res.metrics["utilisation"].iloc[-1]),
        "curve": [[float(t), float(a)] for t, a in zip(df["virtual_time"], df["test_acc"], strict=True)],
    }


def plot(rows: list[dict], target: float, path: Path) -> None:
    """Accuracy vs virtual time, one line per method and seed."""
    colors = dict(zip(METHODS, ("tab:blue", "tab:orange", "tab:green"), strict=True))
    lines = [(row["method"] if row["seed"] == rows[0]["seed"] else None, *np.array(row["curve"]).T.tolist(),
              colors[row["method"]]) for row in rows]
    plot_accuracy_time(lines, path, f"accuracy vs virtual time ({len({r['seed'] for r in rows})} seeds)", target)


def benchmark(dataset: str, seeds: list[int]) -> Path:
    if dataset not in PROFILES or dataset not in registry.names("dataset"):
        sys.exit(f"error: --dataset {dataset}: no profile in this build (profiles: {', '.join(PROFILES)})")
    profile = PROFILES[dataset]
    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for seed in seeds:
            for method in METHODS:
                row = run_one(profile, method, seed, out)
                print(f"{method:15s} seed {seed}: time to {profile['target']:.0%} = {row['time_to_target']:.2f} s"
                      f"{'' if row['reached'] else ' (not reached)'}, final acc {row['final_acc']:.3f}, "
                      f"staleness mean {row['staleness_mean']:.2f}", flush=True)
                rows.append(row)
    tta = {m: [r["time_to_target"] for r in rows if r["method"] == m] for m in METHODS}
    claims, speedups = [], []
    for baseline, paper in PAPER.items():
        ratios = np.array(tta[baseline]) / np.array(tta["FedBuff"])
        speedups.append({"baseline": baseline, "ratios": ratios.tolist(), "mean_ratio": float(ratios.mean()),
                         "paper": paper})
        claims.append(reporting.claim(
            f"FedBuff reaches {profile['target']:.0%} test accuracy in less virtual time than {baseline}",
            f"up to {paper}x faster (Nguyen et al. 2022, abstract)", "virtual seconds to target",
            "FedBuff", baseline, tta["FedBuff"], tta[baseline], higher_is_better=False))
    plot(rows, profile["target"], PLOT)
    return reporting.write(
        "async",
        settings={"dataset": dataset, "target": profile["target"], "scenario": profile["scenario"],
                  "methods": METHODS, "plot": str(PLOT.relative_to(ROOT))},
        seeds=seeds,
        tables={"runs": rows, "speedups": speedups},
        claims=claims,
        started=started,
    )


def render(record: dict) -> str:
    """The docs' results table (Markdown) from ``results/async.json``."""
    s = record["settings"]
    target = s["target"]
    lines = [f"{s['dataset']}, {s['scenario']['num_clients']} clients, concurrency "
             f"{s['scenario']['asynchronous']['concurrency']}, device heterogeneity "
             f"{s['scenario']['network']['heterogeneity']}, seeds {record['seeds']}, "
             f"commit `{record['commit'][:10]}`, {record['wall_seconds']} s wall.", "",
             f"| method | virtual s to {target:.0%} (mean ± sd) | final acc | client updates | staleness mean / max "
             "| utilisation |", "|---|---|---|---|---|---|"]
    runs = record["tables"]["runs"]
    for method in s["methods"]:
        rs = [r for r in runs if r["method"] == method]
        t = np.array([r["time_to_target"] for r in rs])
        missed = sum(not r["reached"] for r in rs)
        lines.append(
            f"| {method} | {t.mean():.2f} ± {t.std(ddof=1):.2f}{f' ({missed} not reached)' if missed else ''} "
            f"| {np.mean([r['final_acc'] for r in rs]):.3f} | {np.mean([r['client_updates'] for r in rs]):.0f} "
            f"| {np.mean([r['staleness_mean'] for r in rs]):.2f} / {max(r['staleness_max'] for r in rs)} "
            f"| {np.mean([r['utilisation'] for r in rs]):.2f} |")
    lines += ["", "| FedBuff's speed-up over | per seed | mean | paper | verdict (FedBuff faster) |",
              "|---|---|---|---|---|"]
    for sp, cl in zip(record["tables"]["speedups"], record["claims"], strict=True):
        per = ", ".join(f"{r:.2f}×" for r in sp["ratios"])
        lines.append(f"| {sp['baseline']} | {per} | {sp['mean_ratio']:.2f}× | up to {sp['paper']}× | {cl['verdict']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--render", action="store_true", help="only rewrite docs/async.md's table from the JSON")
    args = parser.parse_args()
    if not args.render:
        print(f"wrote {benchmark(args.dataset, args.seeds)}")
    record = reporting.read("async")
    print(render(record))
    reporting.splice(DOC, "results", render(record))


if __name__ == "__main__":
    main()
