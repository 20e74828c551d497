"""Fed-NGA (Zuo et al., NeurIPS 2025) against Byzantine clients: accuracy and aggregation cost.

Table 1 (pieces ``none`` and one per attack): best and final test accuracy of Fed-NGA and every robust
baseline, with no attack and with a target 20% / 30% Byzantine data weight (C̄α) under each attack,
on digits with a Dirichlet(0.6) label split. Every method runs the same update path
(each client uploads one minibatch gradient at w^t; the server steps
w ← w − η_t · R(gradients) with η_t = 0.5/√(1 + 0.002t)), so only the rule R differs.
The defenders are told the number f of compromised clients of the cell: Krum and
Multi-Krum use f (Multi-Krum averages n − f), the trimmed mean cuts β = f/n per tail.
FoE uses the paper's per-rule ε: 3(M − B) against the mean, CClip and Fed-NGA, 0.1
against the median-type rules (median, trimmed mean, Krum, Multi-Krum, GM).

Table 2 (piece ``timing``): on synthetic updates, against the number of clients n and the
model size d, the wall time of one ``aggregate_train`` call (what each round's
``aggregate_seconds`` records: reading the replies' arrays, the rule, the server step) and
of the rule alone on the decoded n × d matrix (what the paper times). Single-threaded,
fastest of ``--repeats``; f = n/5 for Krum, Multi-Krum and the trimmed mean.

Cut from the paper to fit ~10 minutes on 2 shared CPU cores: digits (8×8, 1,437 training
images) instead of MNIST, an MLP 64-64-10 instead of 784-200-100-10, M = 10 clients
instead of 50, 50 rounds instead of 500; MCA is not implemented. The compromised set is
drawn per seed by data weight; its realised weight is recorded per seed.

Writes ``benchmarks/results/fednga.json``; pieces ``none``, one per attack, ``timing``:

    python benchmarks/fednga.py [--seeds 0 1 2] [--only none sign_flip timing] [--dataset fashion_mnist]
"""

from __future__ import annotations

import os

# Single-threaded BLAS, as a round runs on the in-process runtime (runtime.threads = 1).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import logging  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict  # noqa: E402

import fedsim  # noqa: E402
import reporting  # noqa: E402
from fedsim.attacks.byzantine import compromised_clients  # noqa: E402
from fedsim import registry  # noqa: E402
from fedsim.apps.server import Diverged  # noqa: E402
from fedsim.apps.setup import prepare  # noqa: E402
from fedsim.records import num_examples, stack  # noqa: E402
from fedsim.runtimes.inprocess import _set_task_identity  # noqa: E402
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean  # noqa: E402
from flwr.serverapp.strategy.multikrum import select_multikrum  # noqa: E402
from fedsim.strategies.fednga import normalized_average  # noqa: E402
from fedsim.strategies.robust import centered_clip, geometric_median  # noqa: E402

METHODS = ["fednga", "mean", "median", "trimmed_mean", "krum", "multikrum", "geomed", "cclip"]
ATTACKS = ["gaussian", "all_ones", "sign_flip", "lie", "foe", "label_flip"]
FRACTIONS = [0.2, 0.3]
STRONG_FOE = {"fednga", "mean", "cclip"}  # Fed-NGA App. B: q = −3(M − B) against these


def base_scenario(clients: int, rounds: int, out: str, seed: int = 0, dataset: str = "digits") -> dict:
    return {
        "name": "bench_fednga",
        "seed": seed,
        "rounds": rounds,
        "num_clients": clients,
        "dataset": {"name": "digits"},
        "partition": {"name": "dirichlet", "alpha": 0.6, "min_partition_size": 10},
        "model": {"name": "mlp", "hidden": [64]},
        "client": {"batch_size": 32},
        "evaluation": {"eval_every": 1},
        "output": {"dir": out, "progress": False, "plot": False, "save_model": False},
    } | ({} if dataset == "digits" else reporting.profile(dataset))


def strategy_for(method: str, clients: int, f: int) -> dict:
    s: dict = {"name": method}
    if method in ("krum", "multikrum"):
        s["num_malicious_nodes"] = f
    if method == "multikrum":
        s["num_nodes_to_select"] = clients - f
    if method == "trimmed_mean":
        s["beta"] = f / clients
    return s


CLAIM_BASELINES = ["mean", "median", "krum", "geomed", "cclip"]
PAPER = "Zuo et al., NeurIPS 2025, Table 1: Fed-NGA at least as accurate as the robust baselines under attack"


def run_to_end(sc: dict, out: str):
    """A run's metrics. Large losses do not stop it (an attacked mean may blow up and still
    be scored); a NaN loss does, and then the rows up to that round are returned."""
    sc = {**sc, "evaluation": {**sc["evaluation"], "max_loss": 1e300}}
    try:
        return fedsim.run(sc).metrics
    except Diverged:
        runs = sorted((Path(out) / sc["name"]).glob("*/metrics.jsonl"), key=lambda p: p.stat().st_mtime)
        return pd.read_json(runs[-1], lines=True).dropna(subset=["test_acc"])


def accuracy_piece(attack: str, clients: int, rounds: int, seeds: list[int], dataset: str):
    """One attack (or ``none``) at every Byzantine fraction, every method, every seed: the
    table rows (with the realised compromised weight per seed) and the claims."""
    out = tempfile.mkdtemp(prefix="bench_fednga_")
    fractions = [0.0] if attack == "none" else FRACTIONS
    rows, claims = [], []
    for fraction in fractions:
        final: dict[str, list[float]] = {m: [] for m in METHODS}
        best: dict[str, list[float]] = {m: [] for m in METHODS}
        realised, diverged = [], []
        for seed in seeds:
            base = base_scenario(clients, rounds, out, seed, dataset)
            sizes = prepare(fedsim.load_scenario(base)).partition_sizes
            bad = compromised_clients(seed, sizes, fraction, "weight") if fraction else []
            realised.append({"weight": sum(sizes[i] for i in bad) / sum(sizes), "clients": len(bad)})
            for method in METHODS:
                sc = {**base, "strategy": strategy_for(method, clients, len(bad))}
                if attack != "none":
                    sc["byzantine"] = {"name": attack, "fraction": fraction, "count_by": "weight"}
                    if attack == "foe":
                        sc["byzantine"]["epsilon"] = 3.0 * (clients - len(bad)) if method in STRONG_FOE else 0.1
                m = run_to_end(sc, out)
                final[method].append(float(m["test_acc"].iloc[-1]))
                best[method].append(float(m["test_acc"].max()))
                if len(m) < rounds:
                    diverged.append(f"{method} seed {seed} at round {len(m)}")
            print(f"  {attack} {fraction} seed {seed}: realised weight {realised[-1]['weight']:.2f} "
                  f"({realised[-1]['clients']}/{clients})", flush=True)
        weights = ", ".join(f"{r['weight']:.2f} ({r['clients']}/{clients})" for r in realised)
        setting = "no attack" if attack == "none" else f"{attack}, target weight {fraction}"
        for method in METHODS:
            rows.append({"method": method, "setting": setting, "realised weight per seed": weights,
                         "stopped (NaN loss; last accuracy kept)": "; ".join(d for d in diverged if d.startswith(method + " "))
                         or None,
                         "final acc": reporting.spread(final[method])["mean"], "sd": reporting.spread(final[method])["std"],
                         "final per seed": final[method], "best acc (mean)": reporting.spread(best[method])["mean"]})
        if attack != "none":
            for base_method in CLAIM_BASELINES:
                claims.append(reporting.claim(
                    f"Fed-NGA above {base_method} under {attack} at weight {fraction} (realised {weights})", PAPER,
                    "final test acc", "fednga", base_method, final["fednga"], final[base_method]))
    return rows, claims


def synthetic_replies(n: int, d: int, rng: np.random.Generator) -> list[Message]:
    """n replies, each one update of d floats as a (d/100 × 100) weight and a 100-vector bias."""
    _set_task_identity(1)
    out = []
    for i in range(n):
        instr = Message(RecordDict(), dst_node_id=10 + i, message_type="train")
        instr.metadata.__dict__["_message_id"] = f"m{i}"
        arrays = ArrayRecord(
            {"w": Array(rng.normal(size=(d // 100 - 1, 100)).astype(np.float32)),
             "b": Array(rng.normal(size=100).astype(np.float32))}
        )
        metrics = MetricRecord({"num-examples": int(rng.integers(20, 200)), "train_loss": 1.0})
        out.append(Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=instr))
    return out


def fresh(replies: list[Message], arrays: list[dict]) -> list[Message]:
    """The replies with new ArrayRecords over the same Arrays (FedMedian/FedTrimmedAvg pop what they read)."""
    for reply, items in zip(replies, arrays, strict=True):
        reply.content = RecordDict({"arrays": ArrayRecord(dict(items)), "metrics": reply.content["metrics"]})
    return replies


def rules(n: int) -> dict:
    """Each rule on the decoded (n × d) matrix U with weights a: the code each strategy runs."""
    f = n // 5
    return {
        "fednga": lambda U, a, recs: normalized_average(U, a),
        "mean": lambda U, a, recs: a @ U,
        "median": lambda U, a, recs: np.median(U.numpy(), axis=0),  # FedMedian's op
        "trimmed_mean": lambda U, a, recs: trim_mean(U.numpy(), f / n),  # Flower's function
        # Flower's Krum works on records only: one array per record, so it includes one read of U
        "krum": lambda U, a, recs: select_multikrum(recs, f, 1),
        "multikrum": lambda U, a, recs: select_multikrum(recs, f, n - f),
        "geomed": lambda U, a, recs: geometric_median(U, a, 1e-5, 1e-5, 100),
        "cclip": lambda U, a, recs: centered_clip(U, torch.zeros(U.shape[1]), 10.0, 1),
    }


def fastest(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def timing_table(grid: list[tuple[int, int]], repeats: int) -> pd.DataFrame:
    torch.set_num_threads(1)  # as aggregate_seconds is measured in a run (runtime.threads = 1)
    rng = np.random.default_rng(0)
    rows = []
    for n, d in grid:
        replies = synthetic_replies(n, d, rng)
        arrays = [dict(r.content["arrays"].items()) for r in replies]
        model = ArrayRecord({k: Array(np.zeros(v.shape, np.float32)) for k, v in arrays[0].items()})
        setup = type("Setup", (), {"scenario": fedsim.load_scenario({"name": "t", "rounds": 1, "num_clients": n})})
        reps = repeats if n * d <= 10**7 else 2
        read = fastest(lambda: stack([r.content["arrays"] for r in replies]), reps)
        U = stack([r.content["arrays"] for r in replies])
        a = torch.tensor([num_examples(r.content) for r in replies], dtype=U.dtype)
        a /= a.sum()
        recs = [RecordDict({"arrays": ArrayRecord({"u": Array(u.numpy())})}) for u in U]
        for method, rule in rules(n).items():
            entry = registry.get("strategy", method)
            params = entry.params(**{k: v for k, v in strategy_for(method, n, n // 5).items() if k != "name"})

            def one_round():
                strategy = entry.factory(params, setup)
                strategy.current = model  # what configure_train keeps: the model sent this round
                strategy.aggregate_train(1, fresh(replies, arrays))

            rows.append(
                {"method": method, "n": n, "d": d, "read_ms": read * 1e3,
                 "aggregate_ms": fastest(one_round, reps) * 1e3,
                 "rule_ms": fastest(lambda: rule(U, a, recs), reps) * 1e3}
            )
        print(f"  n={n:4d} d={d:>9,d} done", flush=True)
    df = pd.DataFrame(rows)
    for col in ("aggregate_ms", "rule_ms"):
        ref = df[df.method == "fednga"].set_index(["n", "d"])[col]
        df[col.replace("_ms", "_ratio")] = df[col] / [ref[(n, d)] for n, d in zip(df.n, df.d)]
    return df


def main() -> None:
    pieces = ["none", *ATTACKS, "timing"]
    ap = reporting.parser(__doc__, pieces)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    settings = {"profile": args.dataset, "clients": args.clients, "rounds": args.rounds, "partition": "Dirichlet(0.6)",
                "model": reporting.profile(args.dataset).get("model", {}).get("name", "mlp(64)"),
                "fractions": FRACTIONS, "compromised set": "by data weight, seeded per seed (realised weight printed)",
                "timing": "synthetic updates, single-threaded, fastest of repeats, f = n/5"}
    name = reporting.results_name("fednga", args.dataset)
    for piece in args.only or pieces:
        started = time.time()
        if piece == "timing":
            grid = [(n, d) for d in (10_000, 100_000) for n in (10, 50, 200)] + [(10, 1_000_000), (50, 1_000_000)]
            df = timing_table(grid, args.repeats)
            cols = ["method", "n", "d", "read_ms", "aggregate_ms", "aggregate_ratio", "rule_ms", "rule_ratio"]
            tables, claims = {"Aggregation time (ms per call; ratio = / Fed-NGA's)": df[cols].to_dict("records")}, []
        else:
            rows, claims = accuracy_piece(piece, args.clients, args.rounds, args.seeds, args.dataset)
            tables = {f"Accuracy: {piece}": rows}
        path = reporting.write(name, settings=settings, seeds=args.seeds, tables=tables, claims=claims,
                               started=started, piece=piece)
        for c in claims:
            print(f"  {c['claim']}: {c['verdict']}")
        print(f"wrote {path} ({time.time() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
