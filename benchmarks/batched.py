"""Batched vs sequential clients on CPU: per-round wall time at 10, 100 and 1,000 clients per round.

Fashion-MNIST (Debian's ``dataset-fashion-mnist``), IID partition, every client trains each
round (FedAvg, fraction 1.0), 4 local steps of batch 16 per client (so a round's work grows
with the number of clients, not with their data), one torch thread. Two models: an MLP(64)
and the LeNet-style CNN. For every setting the sequential run (``inprocess``) and the
batched run (``runtime.batched: true``) alternate ``--repeats`` times; each run's time is
the median of its rounds 2..R (round 1 pays lazy initialisation), and the ratio
batched/sequential is taken per repeat (paired) and summarised by its median. The final
accuracies of both runs are recorded too (they agree within float noise).

    nice python benchmarks/batched.py [--clients 10 100 1000] [--cnn-clients 10 100] [--models mlp cnn] [--repeats 3]
    python benchmarks/batched.py --render [--into docs/batched.md]

``--render`` prints the Markdown tables of ``results/batched.json`` (and of
``results/ray_parallel.json``, written by ``benchmarks/ray_parallel.py``); with ``--into`` it
replaces the text between the ``<!-- results:begin -->`` / ``<!-- results:end -->`` markers of
that file.
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

import reporting  # noqa: E402

FMNIST = "/usr/share/datasets/fashion-mnist"
MODELS = {"mlp": {"name": "mlp", "hidden": [64]}, "cnn": {"name": "cnn"}}
CLIENT = {"steps": 4, "batch_size": 16, "lr": 0.05, "momentum": 0.9}


def scenario(model: str, clients: int, rounds: int, out: str, batched: bool) -> dict:
    return {
        "name": "batched-bench", "seed": 0, "rounds": rounds, "num_clients": clients,
        "dataset": {"name": "mnist", "path": FMNIST}, "partition": {"name": "iid"},
        "model": MODELS[model], "strategy": {"name": "fedavg", "fraction_train": 1.0},
        "client": CLIENT, "runtime": {"name": "inprocess", "batched": batched},
        "output": {"dir": out, "progress": False, "plot": False, "save_model": False},
    }


def timed(model: str, clients: int, rounds: int, batched: bool) -> tuple[float, float]:
    """(median s/round over rounds 2..R, final test accuracy) of one run."""
    import fedsim

    with tempfile.TemporaryDirectory() as out:
        res = fedsim.run(scenario(model, clients, rounds, out, batched))
    return statistics.median(res.metrics["seconds"].tolist()[1:]), float(res.metrics["test_acc"].iloc[-1])


def measure(args) -> None:
    started = time.time()
    rows = []
    settings = {"dataset": "fashion-mnist (IDX, Debian dataset-fashion-mnist)", "partition": "iid",
                "strategy": "fedavg, fraction_train 1.0", "client": CLIENT, "models": MODELS, "rounds": args.rounds,
                "repeats": args.repeats, "torch_threads": 1, "cpus": os.cpu_count(), "device": "cpu"}
    for model in args.models:
        for clients in args.clients if model == "mlp" else args.cnn_clients:
            seq, bat, ratios, load = [], [], [], []
            for _ in range(args.repeats):
                load.append(os.getloadavg()[0])
                s, acc_s = timed(model, clients, args.rounds, batched=False)
                b, acc_b = timed(model, clients, args.rounds, batched=True)
                seq.append(s)
                bat.append(b)
                ratios.append(b / s)
            row = {
                "model": model, "clients_per_round": clients,
                "sequential_s_per_round": seq, "batched_s_per_round": bat, "ratio_batched_to_sequential": ratios,
                "median_ratio": statistics.median(ratios), "final_acc_sequential": acc_s, "final_acc_batched": acc_b,
                "load_avg_1min": load,
            }
            rows.append(row)
            print(f"{model} {clients}: seq {statistics.median(seq):.3f} s, batched {statistics.median(bat):.3f} s, "
                  f"ratio {row['median_ratio']:.2f} (load {max(load):.1f})", flush=True)
            # written after every setting, so that an interrupted run keeps what it measured
            path = reporting.write("batched", settings=settings, seeds=[0], tables={"batched_vs_sequential": rows},
                                   started=started)
    print(f"wrote {path}")


def _median(values) -> float:
    return statistics.median(values)


def _load(row: dict) -> str:
    return f"{min(row['load_avg_1min']):.1f}-{max(row['load_avg_1min']):.1f}"


def markdown(caption: str, header: list[str], rows: list[list[str]]) -> list[str]:
    """A caption and a Markdown table, first column left-aligned, the others right-aligned."""
    return [caption, "", "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1),
            *("| " + " | ".join(row) + " |" for row in rows)]


def render_batched(record: dict) -> str:
    s = record["settings"]
    caption = (
        f"Batched vs sequential on CPU ({s['cpus']} cores, {s['torch_threads']} torch thread): Fashion-MNIST, "
        f"{s['client']['steps']} local steps of batch {s['client']['batch_size']} per client, median s/round of "
        f"rounds 2..{s['rounds']}, {s['repeats']} interleaved repeats (commit {record['commit'][:8]})."
    )
    header = ["model", "clients/round", "sequential s/round", "batched s/round",
              "batched/sequential (median of paired)", "final acc seq / batched", "1-min load"]
    rows = [
        [r["model"], f"{r['clients_per_round']:,}", f"{_median(r['sequential_s_per_round']):.3f}",
         f"{_median(r['batched_s_per_round']):.3f}", f"{r['median_ratio']:.2f}x",
         f"{r['final_acc_sequential']:.4f} / {r['final_acc_batched']:.4f}", _load(r)]
        for r in record["tables"]["batched_vs_sequential"]
    ]
    return "\n".join(markdown(caption, header, rows))


def render_ray(record: dict) -> str:
    s = record["settings"]
    caption = (
        f"`ray` ({s['workers']} worker actors, 1 CPU each) vs `inprocess` (1 thread) on the CNN settings of "
        f"`benchmarks/runtime_overhead.py` ({s['cpus']} cores): median s/round of rounds 2..{s['rounds']}, "
        f"{s['repeats']} ABBA-paired repeats, every run in a fresh process (commit {record['commit'][:8]})."
    )
    header = ["setting", "inprocess s/round", "ray s/round", "ray/inprocess (median of paired)", "target",
              "1-min load", "2-process probe"]
    rows = [
        [f"{r['workload']}, {r['clients']} clients", f"{_median(r['inprocess_s_per_round']):.3f}",
         f"{_median(r['ray_s_per_round']):.3f}", f"{r['median_ratio']:.2f}x", f"<= {s['target_ratio']}x",
         _load(r), _probe(r)]
        for r in record["tables"]["ray_vs_inprocess"]
    ]
    lines = markdown(caption, header, rows)
    lines += ["", "2-process probe: wall time of two processes doing n units of pure-Python work at once over "
              "one process doing 2n, measured before each pair (0.50: two free cores; 1.00: no parallelism "
              "available to this session); median over the repeats."]
    loads = [x for r in record["tables"]["ray_vs_inprocess"] for x in r["load_avg_1min"]]
    if min(loads) > s["cpus"]:
        lines += ["", f"The machine was oversubscribed throughout (1-minute load {min(loads):.1f} to {max(loads):.1f} "
                  f"on {s['cpus']} cores, other sessions' work)"
                  + ("; Linux's per-session fair share (`sched_autogroup_enabled` = 1) then gives this session "
                     "about the same CPU time with one process as with two workers" if s.get("sched_autogroup") else "")
                  + ". Where the probe is near 1, no runtime can meet the target; where it is lower, the gap "
                  "between the probe and the ray ratio is the Ray path's own cost (not measured separately)."]
    return "\n".join(lines)


def _probe(row: dict) -> str:
    values = row.get("two_process_probe")
    return f"{_median(values):.2f}" if values else "not measured"


def render() -> str:
    parts = []
    for name, fn in (("batched", render_batched), ("ray_parallel", render_ray)):
        if (reporting.RESULTS / f"{name}.json").exists():
            parts.append(fn(reporting.read(name)))
    return "\n\n".join(parts)


def render_into(path: Path) -> None:
    note = f"<!-- rendered by `python benchmarks/batched.py --render --into {path}`; do not edit -->"
    reporting.splice(path, "results", f"{note}\n\n{render()}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000], help="clients per round (mlp)")
    ap.add_argument("--cnn-clients", type=int, nargs="+", default=[10, 100],
                    help="clients per round for the CNN (1,000 takes minutes per round on a shared 2-core machine)")
    ap.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=sorted(MODELS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--render", action="store_true", help="print the tables of the results files")
    ap.add_argument("--into", type=Path, help="with --render: replace the marked block of this Markdown file")
    args = ap.parse_args()
    if args.render:
        if args.into:
            render_into(args.into)
        else:
            print(render())
        return
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    measure(args)


if __name__ == "__main__":
    main()
