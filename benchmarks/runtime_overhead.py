"""Per-round wall time of fedsim's runtimes against a plain training loop and plain Flower.

One run, same work everywhere: digits, IID partition, every client trains each round,
example-weighted averaging, the global model evaluated on the held-out test set every
round. Two workloads: ``mlp`` (MLP(64), 1 local epoch, batch 32: the smallest, most
overhead-bound case) and ``cnn`` (the main job's local training: LeNet-style CNN, 2
epochs, batch 16, momentum 0.9).

  (a) loop      a plain Python loop over the clients: the floor (1 process, 1 torch thread)
  (b) inprocess fedsim's in-process grid, the default runtime (1 process, 1 torch thread)
  (c) ray       fedsim's worker actors on Ray (one actor per CPU, 1 torch thread each)
  (d) flower    a plain Flower app (ClientApp + FedAvg.start) under run_simulation (same actors)

(a) and (b) run in this process; (c) and (d) each in a fresh child process, since a Ray
driver leaves threads and state behind in the process that hosted it.

Each run's time is the median per-round time over rounds 2..R (round 1 pays start-up); R
is per workload (``ROUNDS``: about two seconds of rounds for the small MLP, whose 50 ms rounds a
burst of load elsewhere on the machine would otherwise decide) and the same for every method.
Every method runs ``--repeats`` times, in ABBA order (a b c d, then d c b a, ...), so each
repeat of a method has a loop run next to it in time; the ratio of a method is the
median over repeats of its time divided by the loop time of the same repeat (paired).
The machine may be shared: the paired ratio is what to read, not the seconds; the CPU
ratio (``time.process_time`` per round, for the methods that run wholly in this process)
is the one a busy machine disturbs least.
Target: inprocess ≤ 1.1× loop.

    python benchmarks/runtime_overhead.py [--clients 20 100] [--workloads mlp cnn] [--skip-ray]
    python benchmarks/runtime_overhead.py --render [docs/engine.md]   # the tables from the results file
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import fedsim  # noqa: E402
from fedsim.apps import server  # noqa: E402
from fedsim.training import evaluate, local_sgd, torch_generator, warm_up  # noqa: E402

import flower_app  # noqa: E402  (benchmarks/flower_app.py)
import reporting  # noqa: E402  (benchmarks/reporting.py)

NAME = "runtime_overhead"
SETTLE = 2.0  # seconds of quiet after a child run
TARGET = 1.1  # inprocess wall time per round, as a multiple of the plain loop's
ROUNDS = {"mlp": 41, "cnn": 6}  # rounds per run, by workload (--rounds sets one for all)
METHODS = {
    "loop": "(a) plain loop",
    "inprocess": "(b) fedsim inprocess",
    "ray": "(c) fedsim ray",
    "flower": "(d) plain Flower run_simulation",
}


def loop(clients: int, rounds: int) -> tuple[list[float], list[float]]:
    """(a) The floor: the same local training and averaging in a plain loop."""
    ds, parts, model = flower_app.this_world()
    cfg = flower_app.workload()["client"]
    xt, yt = torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        glob = {k: v.clone() for k, v in flower_app.new_model(ds).state_dict().items()}
    times, cpu = [], []
    for rnd in range(1, rounds + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
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
        cpu.append(time.process_time() - start_cpu)
    return times, cpu


def fedsim_run(clients: int, rounds: int, runtime: dict) -> tuple[list[float], list[float]]:
    """(b), (c) The same work as a fedsim scenario: wall seconds per round (the recorder's)
    and this process's CPU seconds per round (all of it for inprocess, the server's for ray)."""
    name, params = flower_app.workload()["model"]
    cpu: list[float] = []
    original = server.FederatedLoop.round

    def timed_round(self, rnd, arrays):
        start = time.process_time()
        try:
            return original(self, rnd, arrays)
        finally:
            cpu.append(time.process_time() - start)

    server.FederatedLoop.round = timed_round
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
    server.FederatedLoop.round = original
    return res.metrics["seconds"].tolist(), cpu


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


def workers(method: str) -> str:
    """Processes × torch threads of a method (Ray gives an actor OMP_NUM_THREADS = its num_cpus)."""
    return f"{os.cpu_count()} actors × 1" if method in ("ray", "flower") else f"1 × {torch.get_num_threads()}"


def measure(method: str, n: int, rounds: int) -> tuple[float, float | None]:
    """Steady (wall, CPU) s/round; CPU only where all the work runs in this process.

    The Ray methods run in a child process of their own (:func:`child`): a Ray driver
    leaves threads and state behind in its process, which slowed the in-process runs
    measured after it by a few percent (a run before and after one Ray run, same process)."""
    if method in ("ray", "flower"):
        return child(method, n, rounds), None
    wall, cpu = loop(n, rounds) if method == "loop" else fedsim_run(n, rounds, {"name": method})
    return steady(wall), steady(cpu)


def child(method: str, n: int, rounds: int) -> float:
    """Steady wall s/round of ``method`` measured in a fresh Python process."""
    env = os.environ | {"BENCH_CLIENTS": str(n)}
    out = subprocess.run([sys.executable, __file__, "--child", method, str(rounds)], env=env,
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    time.sleep(SETTLE)  # Ray's processes finish exiting before the next run starts
    return float(out.strip().splitlines()[-1])


def run_child(method: str, rounds: int) -> None:
    """``--child METHOD ROUNDS``: print the steady s/round of one run (settings from the environment)."""
    torch.set_num_threads(1)
    warm_up()
    n = int(os.environ["BENCH_CLIENTS"])
    times = flower_plain(n, rounds) if method == "flower" else fedsim_run(n, rounds, {"name": method})[0]
    print(steady(times), flush=True)


def overhead_table(args, previous: list[dict]) -> list[dict]:
    """Paired ABBA repeats of every method in every setting: one row per (setting, method);
    rows of settings not measured now are kept."""
    methods = ["loop", "inprocess"] + ([] if args.skip_ray else ["ray", "flower"])
    rows = [r for r in previous if r["workload"] not in args.workloads or r["clients"] not in args.clients]
    for workload in args.workloads:
        os.environ["BENCH_WORKLOAD"] = workload
        for n in args.clients:
            os.environ["BENCH_CLIENTS"] = str(n)
            for method in ("loop", "inprocess"):  # this process's caches (dataset, imports, torch's
                measure(method, n, 2)              # kernels) warmed for both, off the clock
            times: dict[str, list[float]] = {m: [] for m in methods}
            cpu: dict[str, list[float | None]] = {m: [] for m in methods}
            for rep in range(args.repeats):
                for method in methods if rep % 2 == 0 else methods[::-1]:
                    wall, cpu_s = measure(method, n, args.rounds[workload])
                    times[method].append(wall)
                    cpu[method].append(cpu_s)
                    print(f"{workload} {n} clients, repeat {rep + 1}: {method} {wall:.4f} s/round (CPU {cpu_s})", flush=True)
            for method in methods:
                ratios = [t / b for t, b in zip(times[method], times["loop"])]
                cpu_ratios = [t / b for t, b in zip(cpu[method], cpu["loop"])] if cpu[method][0] is not None else None
                rows.append({
                    "workload": workload, "clients": n, "method": method, "workers": workers(method),
                    "seconds": times[method], "loop_seconds": times["loop"], "ratios": ratios,
                    "median_seconds": statistics.median(times[method]), "median_ratio": statistics.median(ratios),
                    "cpu_seconds": cpu[method], "cpu_ratios": cpu_ratios,
                    "median_cpu_ratio": statistics.median(cpu_ratios) if cpu_ratios else None,
                })
    return rows


TABLES = {"overhead": overhead_table}


def render(record: dict) -> str:
    """The results file's tables as Markdown (what docs/engine.md shows)."""
    settings = record["settings"]
    out = []
    rows = record["tables"].get("overhead", [])
    if rows:
        out += [
            f"`inprocess` and the other runtimes against the plain loop: median s/round over rounds 2..R "
            f"(R: {', '.join(f'{w} {r}' for w, r in settings['rounds'].items())}), "
            f"{settings['repeats']} ABBA-paired repeats; ratio = median of per-repeat ratios to the loop "
            f"(commit `{record['commit'][:10]}`, {record['created']}, torch {record['versions']['torch']}).",
            "",
            "CPU ratio: the same with this process's CPU seconds per round (load-independent; "
            "in-process methods only). The load average at the start is in the results file.",
            "",
            f"Target: `inprocess` within {TARGET}x of the loop; the last column applies it to the median wall ratio.",
            "",
            "| setting | method | processes × torch threads | wall s/round (median) | wall ratio, per repeat | "
            f"wall ratio (median) | CPU ratio, per repeat | CPU ratio (median) | within {TARGET}x |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            per = ", ".join(f"{x:.2f}" for x in r["ratios"])
            cpu_per = ", ".join(f"{x:.2f}" for x in r["cpu_ratios"]) if r.get("cpu_ratios") else "n/a"
            cpu_med = f"{r['median_cpu_ratio']:.2f}x" if r.get("median_cpu_ratio") else "n/a"
            verdict = ("yes" if r["median_ratio"] <= TARGET else "no") if r["method"] == "inprocess" else ""
            out.append(f"| {r['workload']}, {r['clients']} clients | {METHODS[r['method']]} | {r['workers']} | "
                       f"{r['median_seconds']:.4f} | {per} | {r['median_ratio']:.2f}x | {cpu_per} | {cpu_med} | {verdict} |")
    return "\n".join(out)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        return run_child(sys.argv[2], int(sys.argv[3]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[20, 100])
    ap.add_argument("--workloads", nargs="+", default=["mlp", "cnn"], choices=sorted(flower_app.WORKLOADS))
    ap.add_argument("--rounds", type=int, default=None, help="rounds per run for every workload (default: ROUNDS)")
    ap.add_argument("--repeats", type=int, default=4, help="ABBA repeats of every method")
    ap.add_argument("--skip-ray", action="store_true", help="only (a) and (b)")
    reporting.table_options(ap, TABLES)
    args = ap.parse_args()
    torch.set_num_threads(1)
    warm_up()
    args.rounds = {w: args.rounds or ROUNDS[w] for w in args.workloads}
    settings = {k: v for k, v in vars(args).items() if k not in ("render", "only")}
    settings |= {"cpus": os.cpu_count(), "torch_threads": 1, "load_average_at_start": os.getloadavg()}
    reporting.run_tables(NAME, args, TABLES, render, settings)


if __name__ == "__main__":
    main()
