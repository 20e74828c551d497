"""Per-round wall time of fedsim's runtimes against a plain training loop and plain Flower.

One run, same work everywhere: digits, IID partition, every client trains each round,
example-weighted averaging, the global model evaluated on the held-out test set every
round, one torch thread. Two workloads: ``mlp`` (MLP(64), 1 local epoch, batch 32: the
smallest, most overhead-bound case) and ``cnn`` (the main job's local training: LeNet-style
CNN, 2 epochs, batch 16, momentum 0.9).

  (a) loop      a plain Python loop over the clients: the floor
  (b) inprocess fedsim's in-process grid (the default runtime)
  (c) ray       fedsim on Flower's Simulation Engine (Ray)
  (d) flower    a plain Flower app (ClientApp + FedAvg.start) under run_simulation

Each time is the median over rounds 2..R (round 1 pays lazy initialisation); (a) and (b)
are measured ``--repeats`` times, interleaved, and the fastest repeat is kept, so that
load from other processes on the machine does not decide the ratio. Ratios are to (a).
Targets: inprocess ≤ 1.3× loop; ray no slower than plain Flower.

    python benchmarks/runtime_overhead.py [--clients 20 100] [--workloads mlp cnn] [--skip-ray]
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

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import fedsim  # noqa: E402
from fedsim.training import evaluate, local_sgd, torch_generator  # noqa: E402

import flower_app  # noqa: E402  (benchmarks/flower_app.py)


def loop(clients: int, rounds: int) -> list[float]:
    """(a) The floor: the same local training and averaging in a plain loop."""
    ds, parts, model = flower_app.this_world()
    cfg = flower_app.workload()["client"]
    xt, yt = torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        glob = {k: v.clone() for k, v in flower_app.new_model(ds).state_dict().items()}
    times = []
    for rnd in range(1, rounds + 1):
        start = time.perf_counter()
        total = {k: torch.zeros_like(v) for k, v in glob.items()}
        n_sum = 0
        for pid, (x, y) in enumerate(parts):
            model.load_state_dict(glob)
            local_sgd(model, x, y, steps=None, **cfg, gen=torch_generator(0, rnd, pid, "shuffle"))
            for k, v in model.state_dict().items():
                total[k] += v * len(x)
            n_sum += len(x)
        glob = {k: v / n_sum for k, v in total.items()}
        model.load_state_dict(glob)
        evaluate(model, xt, yt)
        times.append(time.perf_counter() - start)
    return times


def fedsim_run(clients: int, rounds: int, runtime: dict) -> list[float]:
    """(b), (c) The same work as a fedsim scenario."""
    name, params = flower_app.workload()["model"]
    with tempfile.TemporaryDirectory() as out:
        res = fedsim.run({
            "name": "overhead", "seed": 0, "rounds": rounds, "num_clients": clients,
            "dataset": {"name": "digits"}, "partition": {"name": "iid"},
            "model": {"name": name, **params},
            "strategy": {"name": "fedavg", "fraction_train": 1.0},
            "client": flower_app.workload()["client"],
            "runtime": runtime,
            "output": {"dir": out, "progress": False, "plot": False, "save_model": False},
        })
    return res.metrics["seconds"].tolist()


def flower_plain(clients: int, rounds: int) -> list[float]:
    """(d) A plain Flower app under run_simulation (Ray), one CPU per client actor."""
    from flwr.simulation import run_simulation

    stamps: list[float] = []
    run_simulation(
        server_app=flower_app.server_app(rounds, stamps),
        client_app=flower_app.clientapp,
        num_supernodes=clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": os.cpu_count()}},
    )
    return [b - a for a, b in zip(stamps, stamps[1:])]  # stamps[0]: evaluation of round 0


def steady(times: list[float]) -> float:
    return statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[20, 100])
    ap.add_argument("--workloads", nargs="+", default=["mlp", "cnn"], choices=sorted(flower_app.WORKLOADS))
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats of (a) and (b)")
    ap.add_argument("--skip-ray", action="store_true", help="only (a) and (b)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    table = Table(title=f"runtime overhead on digits: s/round, median of rounds 2..{args.rounds}")
    for col in ("method", "setting", "s/round", "baseline (a) s/round", "ratio"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for workload in args.workloads:
        os.environ["BENCH_WORKLOAD"] = workload
        for n in args.clients:
            os.environ["BENCH_CLIENTS"] = str(n)
            best = {"(a) plain loop": float("inf"), "(b) fedsim inprocess": float("inf")}
            for _ in range(args.repeats):
                best["(a) plain loop"] = min(best["(a) plain loop"], steady(loop(n, args.rounds)))
                best["(b) fedsim inprocess"] = min(
                    best["(b) fedsim inprocess"], steady(fedsim_run(n, args.rounds, {"name": "inprocess"}))
                )
            if not args.skip_ray:
                best["(c) fedsim ray"] = steady(fedsim_run(n, args.rounds, {"name": "ray"}))
                best["(d) plain Flower run_simulation"] = steady(flower_plain(n, args.rounds))
            base = best["(a) plain loop"]
            for name, t in best.items():
                table.add_row(name, f"{workload}, {n} clients", f"{t:.4f}", f"{base:.4f}", f"{t / base:.2f}x")
            table.add_section()
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
