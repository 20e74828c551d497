"""Decentralized learning on digits: the DFedSAM and MoDeST claims at laptop scale.

Table 1 (Shi et al. 2023): final mean node accuracy and consensus distance of D-PSGD
(DFedAvg form), DFedSAM and DFedSAM-MGS (Q = 2, 4) on a ring and a 4×4 torus of 16
nodes, Dirichlet(0.3) label skew, against D-PSGD on the same graph and against FedAvg
(full participation, same local work). Claim: DFedSAM above D-PSGD; MGS closes the gap
to FedAvg.

Table 2 (de Vos et al. 2023): MoDeST (s = 8 of 32, sf = 0.8), D-PSGD (random 4-regular
graph) and FedAvg (8 of 32 per round, server with unlimited bandwidth) on the same
simulated network (heterogeneous compute, bandwidth and latency): bytes sent and virtual
time until the evaluated model first reaches the target accuracy. Claim: MoDeST needs
several times fewer bytes than D-PSGD and converges about as fast as FedAvg.

Cut to fit ~10 minutes on 2 shared cores: digits (1437 training images) instead of
CIFAR-10, a one-hidden-layer MLP instead of ResNet-18/VGG, 16 and 32 nodes instead of
100 and 1000, 25–80 rounds of one local epoch instead of 500–1000 rounds of five, one seed.

    python benchmarks/decentralized.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fedsim  # noqa: E402

OUT = {"dir": "/tmp/fedsim-bench-decentralized", "progress": False, "plot": False, "save_model": False}

TABLE1 = {
    "name": "bench_dfedsam",
    "seed": 0,
    "rounds": 25,
    "num_clients": 16,
    "dataset": {"name": "digits"},
    "partition": {"name": "dirichlet", "alpha": 0.3, "min_partition_size": 10},
    "model": {"name": "mlp", "hidden": [64]},
    "client": {"epochs": 1, "batch_size": 16, "lr": 0.05, "momentum": 0.9},
    "evaluation": {"eval_every": 5},
    "output": OUT,
}
RHO = 0.05
LR_DECAY = 0.998

TABLE2 = {
    "name": "bench_modest",
    "seed": 0,
    "num_clients": 32,
    "dataset": {"name": "digits"},
    "partition": {"name": "dirichlet", "alpha": 1.0, "min_partition_size": 10},
    "model": {"name": "mlp", "hidden": [64]},
    "client": {"epochs": 1, "batch_size": 16, "lr": 0.05, "momentum": 0.9},
    "network": {"compute_seconds_per_example": 0.005, "bandwidth": 1.25e6, "latency": 0.05, "heterogeneity": 0.5},
    "evaluation": {"eval_every": 1},
    "output": OUT,
}
TARGET = 0.80
SAMPLE = 8


def row(method: str, setting: str, metric: str, value, baseline, ratio=None) -> str:
    def fmt(v):
        if v is None:
            return "—"
        if isinstance(v, float) and abs(v) >= 1e4:
            return f"{v:,.0f}"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    ratio = value / baseline if ratio is None and value is not None and baseline else ratio
    return f"| {method} | {setting} | {metric} | {fmt(value)} | {fmt(baseline)} | {fmt(ratio)} |"


def table1() -> list[str]:
    fedavg = fedsim.run(TABLE1, strategy={"name": "fedavg", "fraction_train": 1.0}).metrics
    fedavg_acc = float(fedavg["test_acc"].iloc[-1])
    methods = [
        ("D-PSGD", {"name": "dpsgd", "lr_decay": LR_DECAY}),
        ("DFedSAM", {"name": "dfedsam", "rho": RHO, "lr_decay": LR_DECAY}),
        ("DFedSAM-MGS Q=2", {"name": "dfedsam_mgs", "rho": RHO, "lr_decay": LR_DECAY, "gossip_steps": 2}),
        ("DFedSAM-MGS Q=4", {"name": "dfedsam_mgs", "rho": RHO, "lr_decay": LR_DECAY, "gossip_steps": 4}),
    ]
    lines = [
        "Table 1: 16 nodes, digits, Dirichlet(0.3), MLP, 25 rounds x 1 local epoch; "
        "baseline = D-PSGD on the same graph",
        "",
        "| method | setting | metric | value | baseline | ratio |",
        "|---|---|---|---|---|---|",
        row("FedAvg", "star, all 16 clients", "final test acc", fedavg_acc, None),
    ]
    for topology in ("ring", "torus"):
        base = None
        for label, strategy in methods:
            m = fedsim.run(TABLE1, strategy=strategy, topology={"name": topology}).metrics
            last = m.iloc[-1]
            acc, dist = float(last["node_acc_mean"]), float(last["consensus_distance"])
            base = base or (acc, dist)
            setting = f"{topology} (gap {float(last['spectral_gap']):.3f})"
            lines += [
                row(label, setting, "final mean node acc", acc, base[0]),
                row(label, setting, "node acc min / max", f"{last['node_acc_min']:.3f} / {last['node_acc_max']:.3f}",
                    None, "—"),
                row(label, setting, "consensus distance", dist, base[1]),
                row(label, setting, "gap to FedAvg acc", fedavg_acc - acc, fedavg_acc - base[0]),
                row(label, setting, "bytes sent by node 0", float(m["bytes_sent_per_node"].iloc[-1][0]), None),
            ]
    return lines


def to_target(metrics, bytes_columns: list[str]) -> tuple[int | None, float | None, float | None, float]:
    """(first round at the target, bytes sent until then, virtual time until then, final acc)."""
    m = metrics.dropna(subset=["test_acc"]).copy()
    m["cum_bytes"] = metrics[bytes_columns].sum(axis=1).cumsum()
    hit = m[m["test_acc"] >= TARGET]
    final = float(m["test_acc"].iloc[-1])
    if hit.empty:
        return None, None, None, final
    first = hit.iloc[0]
    return int(first["round"]), float(first["cum_bytes"]), float(first["virtual_time"]), final


def table2() -> list[str]:
    fedavg = {"name": "fedavg", "fraction_train": SAMPLE / 32}
    modest = {"name": "modest", "sample_size": SAMPLE, "success_fraction": 0.8}
    dpsgd = dict(rounds=35, strategy={"name": "dpsgd"}, topology={"name": "random_regular", "degree": 4})
    runs = [  # (method, setting, overrides, columns of bytes sent)
        ("FedAvg", f"{SAMPLE} of 32 per round", dict(rounds=80, strategy=fedavg), ["bytes_down", "bytes_up"]),
        ("D-PSGD", "random 4-regular, 32 nodes", dpsgd, ["bytes_up"]),
        ("MoDeST", f"s={SAMPLE} of 32, sf=0.8, 1 aggregator", dict(rounds=80, strategy=modest), ["bytes_up"]),
    ]
    results = {}
    for label, setting, over, cols in runs:
        m = fedsim.run(TABLE2, **over).metrics
        results[label] = (setting, *to_target(m, cols))
    lines = [
        f"Table 2: 32 nodes, digits, Dirichlet(1.0), MLP; target test accuracy {TARGET}; baseline = D-PSGD",
        "(FedAvg and MoDeST: the global/aggregated model; D-PSGD: mean over node models)",
        "",
        "| method | setting | metric | value | baseline | ratio |",
        "|---|---|---|---|---|---|",
    ]
    _, d_round, d_bytes, d_time, _ = results["D-PSGD"]
    for label, (setting, rnd, nbytes, vtime, final) in results.items():
        lines += [
            row(label, setting, "rounds to target", rnd, d_round),
            row(label, setting, "bytes to target", nbytes, d_bytes),
            row(label, setting, "virtual seconds to target", vtime, d_time),
            row(label, setting, "final test acc", final, None),
        ]
    fed_time, mod_time = results["FedAvg"][3], results["MoDeST"][3]
    if fed_time and mod_time:
        lines.append(row("MoDeST vs FedAvg", "time to target", "MoDeST / FedAvg", mod_time, fed_time))
    return lines


def main() -> None:
    start = time.perf_counter()
    lines = table1() + [""] + table2()
    lines += ["", f"total wall time {time.perf_counter() - start:.0f} s"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
