"""Does the ``ray`` runtime buy parallelism? Per-round wall time of ``ray`` (fedsim's worker
actors, ``--workers`` of them, one CPU and one torch thread each) against ``inprocess`` (one
thread) on the CNN settings of ``benchmarks/runtime_overhead.py``: digits, IID, every client
trains each round (FedAvg), LeNet-style CNN, 2 local epochs of batch 16, momentum 0.9,
the global model evaluated every round.

Every run is a fresh Python process (``--child``), so neither runtime inherits the other's
state (a process that has hosted a Ray driver runs in-process rounds a few percent slower);
a ray run starts its own local Ray instance (``num_cpus`` = the machine's cores) before
its clock starts. The two runtimes alternate in ABBA order (inprocess, ray, ray,
inprocess, ...) ``--repeats`` times per setting, so that load from other processes hits
both alike; each run's time is the median of its rounds 2..R; the ratio ray/inprocess is
taken per repeat (paired) and summarised by its median. The 1-minute load average and a
two-process probe are recorded before each pair. Target: ratio <= 0.65 with 2 workers.
Both runtimes give the same metrics (checked here on the final accuracy).

    nice python benchmarks/ray_parallel.py [--clients 20 100] [--workers 2] [--rounds 11] [--repeats 5]
    python benchmarks/batched.py --render     # prints this file's table too
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reporting  # noqa: E402

import flower_app  # noqa: E402  (the runtime-overhead workloads)

TARGET = 0.65
SETTLE = 2.0  # seconds of quiet after a child run


def timed(clients: int, rounds: int, runtime: dict) -> tuple[float, float]:
    """(median s/round over rounds 2..R, final test accuracy) of one fedsim run."""
    import fedsim

    name, params = flower_app.WORKLOADS["cnn"]["model"]
    with tempfile.TemporaryDirectory() as out:
        res = fedsim.run({
            "name": "ray-parallel", "seed": 0, "rounds": rounds, "num_clients": clients,
            "dataset": {"name": "digits"}, "partition": {"name": "iid"},
            "model": {"name": name, **params}, "strategy": {"name": "fedavg", "fraction_train": 1.0},
            "client": flower_app.WORKLOADS["cnn"]["client"], "runtime": runtime,
            "output": {"dir": out, "progress": False, "plot": False, "save_model": False},
        })
    return statistics.median(res.metrics["seconds"].tolist()[1:]), float(res.metrics["test_acc"].iloc[-1])


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def _spin_when(start, n: int) -> None:
    start.wait()
    _spin(n)


def parallel_probe(n: int = 2_000_000) -> float:
    """What two processes buy on this machine right now: wall time of two processes doing
    n units of pure-Python work each, at once, over one process doing 2n units (0.5: two
    free cores; 1.0: no parallelism available to this session)."""
    ctx = multiprocessing.get_context("fork")
    t0 = time.perf_counter()
    _spin(2 * n)
    serial = time.perf_counter() - t0
    start = ctx.Event()
    procs = [ctx.Process(target=_spin_when, args=(start, n)) for _ in range(2)]
    for proc in procs:
        proc.start()
    time.sleep(0.2)  # both started and waiting
    t0 = time.perf_counter()
    start.set()
    for proc in procs:
        proc.join()
    return (time.perf_counter() - t0) / serial


def autogroup() -> bool | None:
    """Linux's per-session CPU fair share (``kernel.sched_autogroup_enabled``): when it is on
    and other sessions keep the cores busy, this session gets the same share of CPU time
    whether it runs one process or three, so extra workers cannot lower its wall time."""
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return None


def child(runtime: str, clients: int, rounds: int, workers: int) -> tuple[float, float]:
    """(steady s/round, final accuracy) of one run of ``runtime`` in a fresh Python process."""
    out = subprocess.run([sys.executable, __file__, "--child", runtime, str(clients), str(rounds), str(workers)],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    time.sleep(SETTLE)  # Ray's processes finish exiting before the next run starts
    return tuple(json.loads(out.strip().splitlines()[-1]))


def run_child(runtime: str, clients: int, rounds: int, workers: int) -> None:
    """``--child RUNTIME CLIENTS ROUNDS WORKERS``: print [steady s/round, final accuracy] of one run."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    if runtime == "ray":
        spec = {"name": "ray", "workers": workers, "client_resources": {"num_cpus": 1}}
    else:
        spec = {"name": "inprocess"}
    print(json.dumps(timed(clients, rounds, spec)), flush=True)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        return run_child(sys.argv[2], *map(int, sys.argv[3:6]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[20, 100])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    started = time.time()
    rows = []
    for clients in args.clients:
        runs: dict[str, list[float]] = {"inprocess": [], "ray": []}
        ratios, load, probe = [], [], []
        for rep in range(args.repeats):
            load.append(os.getloadavg()[0])
            probe.append(parallel_probe())
            accs = {}
            for runtime in ("inprocess", "ray") if rep % 2 == 0 else ("ray", "inprocess"):
                seconds, accs[runtime] = child(runtime, clients, args.rounds, args.workers)
                runs[runtime].append(seconds)
            if accs["ray"] != accs["inprocess"]:
                raise SystemExit(f"ray and inprocess disagree: final accuracy {accs['ray']} vs {accs['inprocess']}")
            ratios.append(runs["ray"][-1] / runs["inprocess"][-1])
            print(f"cnn {clients}, repeat {rep + 1}: inprocess {runs['inprocess'][-1]:.3f} s, ray {runs['ray'][-1]:.3f} s, "
                  f"ratio {ratios[-1]:.2f}", flush=True)
        row = {"workload": "cnn", "clients": clients, "inprocess_s_per_round": runs["inprocess"],
               "ray_s_per_round": runs["ray"], "ratio_ray_to_inprocess": ratios, "median_ratio": statistics.median(ratios),
               "meets_target": statistics.median(ratios) <= TARGET, "final_acc": accs["inprocess"],
               "load_avg_1min": load, "two_process_probe": probe}
        rows.append(row)
        print(f"cnn {clients}: ratio {row['median_ratio']:.2f} (load {min(load):.1f}-{max(load):.1f}, "
              f"probe {statistics.median(probe):.2f})", flush=True)
    settings = {"workload": flower_app.WORKLOADS["cnn"], "dataset": "digits", "partition": "iid",
                "strategy": "fedavg, fraction_train 1.0", "rounds": args.rounds, "repeats": args.repeats,
                "order": "ABBA", "process_per_run": True,
                "workers": args.workers, "worker_cpus": 1, "inprocess_threads": 1, "cpus": os.cpu_count(),
                "target_ratio": TARGET, "sched_autogroup": autogroup()}
    path = reporting.write("ray_parallel", settings=settings, seeds=[0], tables={"ray_vs_inprocess": rows},
                           started=started)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
