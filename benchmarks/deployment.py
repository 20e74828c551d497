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

Writes ``benchmarks/results/deployment.json``; its table is rendered into docs/multinode.md.

    python benchmarks/deployment.py [--clients 3] [--rounds 4]
    python benchmarks/deployment.py --render [docs/multinode.md]   # the table from the results file
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fedsim  # noqa: E402
import reporting  # noqa: E402  (benchmarks/reporting.py)
from fedsim.runtimes.certs import generate  # noqa: E402
from fedsim.runtimes.cluster import LocalCluster  # noqa: E402

NAME = "deployment"
ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "noniid.yaml"


def overrides(clients: int, rounds: int, out: str) -> dict:
    return {
        "num_clients": clients, "rounds": rounds, "strategy.fraction_train": 1.0, "client.epochs": 1,
        "output.dir": out, "output.progress": False, "output.plot": False,
    }


def steady(seconds: list[float]) -> float:
    return statistics.median(seconds[1:])


def overhead_table(args, previous: list[dict]) -> list[dict]:
    """One row per client count: inprocess and deployment s/round, set-up and cluster start-up."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.clients:
            local = fedsim.run(SCENARIO, overrides(n, args.rounds, f"{tmp}/local"))
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
            same = bool(remote.metrics["test_acc"].round(6).equals(local.metrics["test_acc"].round(6)))
            if not same:
                raise SystemExit(f"{n} clients: deployment and inprocess metrics differ")
            seconds = remote.metrics["seconds"].tolist()
            rows.append({
                "clients": n, "inprocess_s_per_round": steady(local.metrics["seconds"].tolist()),
                "deployment_s_per_round": steady(seconds), "deployment_round_s": seconds,
                "setup_and_wrapup_s": total - sum(seconds),  # submit -> round 1, and reading the results back
                "cluster_startup_s": up, "same_metrics": same, "load_average": os.getloadavg()[0],
            })
            print(f"{n} clients: deployment {rows[-1]['deployment_s_per_round']:.2f} s/round, "
                  f"inprocess {rows[-1]['inprocess_s_per_round']:.3f}", flush=True)
    return rows


TABLES = {"overhead": overhead_table}


def render(record: dict) -> str:
    """The results file's table as Markdown (what docs/multinode.md shows)."""
    rows = record["tables"].get("overhead", [])
    out = [f"`scenarios/noniid.yaml` reduced (every client trains each round, one epoch, {record['settings']['rounds']} "
           f"rounds), median s/round of rounds 2..R; TLS and SuperNode authentication on 127.0.0.1 "
           f"(commit `{record['commit'][:10]}`, {record['created']}).", "",
           "| clients | inprocess s/round | deployment s/round | ratio | overhead s/round | set-up + wrap-up s | "
           "cluster start-up s | same metrics | load avg |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dep, loc = r["deployment_s_per_round"], r["inprocess_s_per_round"]
        out.append(f"| {r['clients']} | {loc:.3f} | {dep:.2f} | {dep / loc:.0f}x | {dep - loc:.2f} | "
                   f"{r['setup_and_wrapup_s']:.1f} | {r['cluster_startup_s']:.1f} | "
                   f"{'yes' if r['same_metrics'] else 'no'} | {r['load_average']:.1f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[3])
    ap.add_argument("--rounds", type=int, default=4)
    reporting.table_options(ap, TABLES)
    args = ap.parse_args()
    reporting.run_tables(NAME, args, TABLES, render, {"rounds": args.rounds, "cpus": os.cpu_count(), "torch_threads": 1})


if __name__ == "__main__":
    main()
