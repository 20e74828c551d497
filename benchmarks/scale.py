"""Start-up time, steady round time and peak memory of fedsim's in-process runtime as the
population N grows at a fixed cohort.

Every run: 10 clients per round (``fraction_train`` = 10 / N), 5 local steps of batch 16
per client, MLP(64), the global model tested on the held-out set every round, no
federated evaluation, 5 rounds, one thread (torch and BLAS); each run in a fresh Python
process (so that peak RSS is that run's). Populations:

- ``synthetic``: LEAF Synthetic(1, 1) IID with 2,000 users (about 4·10^5 training rows),
  split IID over N = 20, 1,000, 10,000, 100,000 clients;
- ``fashion-mnist``: the 60,000 training images (Debian's ``dataset-fashion-mnist``), split
  IID over N = 20, 1,000, 10,000 and 60,000 clients (one image each: no split can give
  100,000 non-empty clients).

Columns: ``startup_s`` from the ``fedsim.run`` call to the start of round 1 (dataset,
partitions, model, world; imports excluded and shown apart), ``round1_s``, ``steady_s``
(median of rounds 2..5), ``peak_rss_mib``, and the CPU seconds of start-up, round 1 and a
steady round (rounds 2..4)
(``time.process_time``: what the wall times would be on an idle machine, give or take
waiting). Targets: start-up + round 1 ≤ 10 s and peak RSS < 2 GiB at N = 100,000;
``steady_s`` flat in N. The machine may be shared (load average recorded per run): read
the CPU columns and the trend, not the third digit of the wall times.

    python benchmarks/scale.py [--only scale] [--populations synthetic fashion-mnist]
    python benchmarks/scale.py --render [docs/engine.md]   # the tables from results/scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reporting  # noqa: E402  (benchmarks/reporting.py)

NAME = "scale"
FASHION = "/usr/share/datasets/fashion-mnist"
POPULATIONS = {
    "synthetic": {"dataset": {"name": "synthetic", "num_users": 2000, "iid": True}, "sizes": [20, 1_000, 10_000, 100_000]},
    "fashion-mnist": {"dataset": {"name": "mnist", "path": FASHION}, "sizes": [20, 1_000, 10_000, 60_000]},
}
COHORT, ROUNDS = 10, 5
STARTUP_TARGET_S, RSS_TARGET_MIB = 10.0, 2048


def meets_targets(row: dict) -> bool:
    """Round 1 done within the start-up target of the ``fedsim.run`` call, under the RSS target."""
    return row["startup_s"] + row["round1_s"] <= STARTUP_TARGET_S and row["peak_rss_mib"] < RSS_TARGET_MIB

# One run, in a child process: times the phases and reports them as one JSON line.
CHILD = r"""
import json, resource, sys, tempfile, time
t0 = time.perf_counter()
import torch
import fedsim
import fedsim.experiment  # what fedsim.run imports on first use: an import, not start-up
from fedsim.apps import server
imported = time.perf_counter() - t0
torch.set_num_threads(1)
scenario, n = json.loads(sys.argv[1]), int(sys.argv[2])
stamps = {}
original = server.FederatedLoop.round
def round_(self, rnd, arrays):
    stamps.setdefault(rnd, (time.perf_counter(), time.process_time()))
    return original(self, rnd, arrays)
server.FederatedLoop.round = round_
with tempfile.TemporaryDirectory() as out:
    scenario["output"] = {"dir": out, "progress": False, "plot": False, "save_model": False}
    start, start_cpu = time.perf_counter(), time.process_time()
    res = fedsim.run(scenario)
seconds = res.metrics["seconds"].tolist()
print(json.dumps({"import_s": imported, "startup_s": stamps[1][0] - start, "round1_s": seconds[0],
                  "startup_cpu_s": stamps[1][1] - start_cpu, "round1_cpu_s": stamps[2][1] - stamps[1][1],
                  "steady_cpu_s": sorted(stamps[r + 1][1] - stamps[r][1] for r in range(2, len(stamps)))[(len(stamps) - 2) // 2],
                  "steady_s": sorted(seconds[1:])[len(seconds[1:]) // 2], "round_s": seconds,
                  "test_acc": float(res.metrics["test_acc"].iloc[-1]),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def scenario(population: str, n: int) -> dict:
    return {
        "name": f"scale-{population}-{n}", "seed": 0, "rounds": ROUNDS, "num_clients": n,
        "dataset": POPULATIONS[population]["dataset"], "partition": {"name": "iid"},
        "model": {"name": "mlp", "hidden": [64]},
        "strategy": {"name": "fedavg", "fraction_train": COHORT / n, "fraction_evaluate": 0.0},
        "client": {"steps": 5, "batch_size": 16, "lr": 0.05},
    }


def run_one(population: str, n: int) -> dict:
    # one thread for torch (runtime.threads) and for NumPy's BLAS, whose idle threads spin on a busy machine
    env = os.environ | {"FLWR_TELEMETRY_ENABLED": "0", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(scenario(population, n)), str(n)],
                         capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{population} N={n} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def scale_table(args, previous: list[dict]) -> list[dict]:
    """One row per (population, N); rows of populations not measured now are kept."""
    rows = [r for r in previous if r["population"] not in args.populations]
    for population in args.populations:
        for n in POPULATIONS[population]["sizes"]:
            row = {"population": population, "clients": n, "cohort": COHORT, "load_average": os.getloadavg()[0],
                   **run_one(population, n)}
            print(f"{population} N={n}: start-up {row['startup_s']:.2f} s ({row['startup_cpu_s']:.2f} CPU), "
                  f"round 1 {row['round1_s']:.2f} s ({row['round1_cpu_s']:.2f} CPU), "
                  f"steady {row['steady_s']:.3f} s, peak RSS {row['peak_rss_mib']:.0f} MiB", flush=True)
            rows.append(row)
    return rows


# Each table is measured by its own function ``(args, previous rows) -> rows``; ``--only``
# picks tables, the others are kept as they are in the results file.
TABLES = {"scale": scale_table}


def render(record: dict) -> str:
    """The results file's tables as Markdown (what docs/engine.md shows)."""
    out = []
    rows = record["tables"].get("scale", [])
    if rows:
        out += [
            f"In-process runtime, {COHORT} clients per round, 5 local steps each, MLP(64), one thread "
            f"(commit `{record['commit'][:10]}`, {record['created']}; load average shown per run).",
            "",
            f"Targets: start-up + round 1 ≤ {STARTUP_TARGET_S:g} s wall and peak RSS < {RSS_TARGET_MIB:,} MiB "
            "(last column); the import of fedsim and torch is measured apart (import s).",
            "",
            "| population | N | start-up + round 1: wall s (CPU s) | start-up wall s (CPU s) | round 1 wall s (CPU s) | "
            "steady s/round wall (CPU) | peak RSS MiB | import s | load avg | targets met |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            out.append(
                f"| {r['population']} | {r['clients']:,} | {r['startup_s'] + r['round1_s']:.2f} "
                f"({r['startup_cpu_s'] + r['round1_cpu_s']:.2f}) | {r['startup_s']:.2f} ({r['startup_cpu_s']:.2f}) | "
                f"{r['round1_s']:.2f} ({r['round1_cpu_s']:.2f}) | {r['steady_s']:.3f} ({r['steady_cpu_s']:.3f}) | "
                f"{r['peak_rss_mib']:.0f} | "
                f"{r['import_s']:.1f} | {r['load_average']:.1f} | {'yes' if meets_targets(r) else 'no'} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--populations", nargs="+", choices=sorted(POPULATIONS), default=list(POPULATIONS))
    reporting.table_options(ap, TABLES)
    args = ap.parse_args()
    settings = {"cohort": COHORT, "rounds": ROUNDS, "populations": POPULATIONS, "cpus": os.cpu_count(), "torch_threads": 1}
    reporting.run_tables(NAME, args, TABLES, render, settings)


if __name__ == "__main__":
    main()
