"""Per-round overhead of the ``deployment`` runtime against ``inprocess``, on one host.

The work is the main job reduced to a few clients (scenarios/noniid.yaml: digits,
Dirichlet(0.3), CNN; every client trains each round, one local epoch; test-set evaluation
every round). ``deployment`` runs it on a ``LocalCluster`` on 127.0.0.1 (a SuperLink and
one SuperNode per client, TLS and SuperNode authentication, one torch thread per node);
``inprocess`` runs it in this process (one torch thread). Both give the same metrics.

Reported, per setting:
- s/round: the median ``seconds`` of rounds 2..R (round 1 pays lazy initialisation);
- overhead s/round: deployment minus inprocess;
- set-up: from submitting the run to the start of round 1 (the SuperLink starts the
  ServerApp process, the fleet waits for the nodes and sends each its scenario and data
  indices); cluster start-up is shown separately.

Where the time goes on a deployment: Flower's SuperNode sleeps 3 s between polls when idle
and starts a fresh ClientApp process per message (Python, torch, fedsim and the dataset
are imported again each time); the server pulls replies every ``poll_interval`` (0.5 s).

    python benchmarks/deployment.py [--clients 3] [--rounds 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import fedsim
from fedsim.runtimes.certs import generate
from fedsim.runtimes.cluster import LocalCluster

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "noniid.yaml"


def overrides(clients: int, rounds: int, out: str) -> dict:
    return {
        "num_clients": clients, "rounds": rounds, "strategy.fraction_train": 1.0, "client.epochs": 1,
        "output.dir": out, "output.progress": False, "output.plot": False,
    }


def steady(seconds: list[float]) -> float:
    return statistics.median(seconds[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[3])
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    table = Table(title=f"deployment vs inprocess on one host: scenarios/noniid.yaml reduced, R={args.rounds}")
    for col in ("method", "setting", "metric", "value", "baseline (inprocess)", "ratio"):
        table.add_column(col, justify="left" if col in ("method", "metric") else "right")
    load = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.clients:
            setting = f"cnn, {n} clients"
            local = fedsim.run(SCENARIO, overrides(n, args.rounds, f"{tmp}/local"))
            base = steady(local.metrics["seconds"].tolist())
            t0 = time.perf_counter()
            cluster = LocalCluster(Path(tmp) / f"cluster{n}", n, generate(Path(tmp) / f"certs{n}", nodes=n))
            cluster.start()
            up = time.perf_counter() - t0
            try:
                t1 = time.perf_counter()
                remote = fedsim.run(SCENARIO, overrides(n, args.rounds, f"{tmp}/remote"), runtime=cluster.runtime())
                total = time.perf_counter() - t1
            finally:
                cluster.stop()
            load.append(os.getloadavg()[0])
            assert remote.metrics["test_acc"].round(6).equals(local.metrics["test_acc"].round(6)), "metrics differ"
            seconds = remote.metrics["seconds"].tolist()
            per_round = steady(seconds)
            setup = total - sum(seconds)  # submit -> round 1, and reading the results back
            table.add_row("deployment (TLS)", setting, "s/round", f"{per_round:.2f}", f"{base:.3f}", f"{per_round / base:.0f}x")
            table.add_row("", setting, "overhead s/round", f"{per_round - base:.2f}", "", "")
            table.add_row("", setting, "set-up + wrap-up s", f"{setup:.1f}", "", "")
            table.add_row("", setting, "cluster start-up s", f"{up:.1f}", "", "")
            table.add_section()
    Console(width=120).print(table)
    print(f"1-minute load average after each deployment run: {', '.join(f'{x:.1f}' for x in load)} "
          f"on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
