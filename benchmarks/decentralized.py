"""Decentralized learning on digits: the DFedSAM and MoDeST claims at laptop scale.

Table 1 (Shi et al. 2023): final mean node accuracy and consensus distance of D-PSGD
(DFedAvgM form), DFedSAM and DFedSAM-MGS (Q = 2, 4) on a ring and a 4×4 torus of 16
nodes, Dirichlet(0.3) label skew, against D-PSGD on the same graph and against FedAvg
(full participation, same local work). Claim: DFedSAM above D-PSGD; MGS closes the gap
to FedAvg.

Table 2 (de Vos et al. 2023): MoDeST (s = 8 of 32, sf = 0.8), D-PSGD (random 4-regular
graph) and FedAvg (8 of 32 per round, server with unlimited bandwidth) on the same
simulated network (heterogeneous compute, bandwidth and latency): bytes sent and virtual
time until the evaluated model first reaches the target accuracy. Claim: MoDeST needs
several times fewer bytes than D-PSGD and converges about as fast as FedAvg.

The row the earlier tables called D-PSGD is the ``dpsgd`` strategy in its default
train-then-gossip order with momentum 0.9 and one local epoch: DFedAvgM, labelled so here.

Cut to fit on 2 shared cores: digits (1437 training images) instead of CIFAR-10, a
one-hidden-layer MLP instead of ResNet-18/VGG, 16 and 32 nodes instead of 100 and 1000,
25–80 rounds of one local epoch instead of 500–1000 rounds of five.

    python benchmarks/decentralized.py [--seeds 0 1 2] [--only ring torus modest] [--dataset fashion_mnist]
"""

from __future__ import annotations

import time

import fedsim
import reporting

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


DFEDAVGM = "DFedAvgM"  # the dpsgd strategy as run here: train then gossip, momentum 0.9 (not one-step D-PSGD)
PAPER1 = "Shi et al. 2023 (DFedSAM), Tables 1-2: DFedSAM above D-PSGD/DFedAvg(M); MGS closes the gap to FedAvg"
PAPER2 = "de Vos et al. 2023 (MoDeST): several times fewer bytes than D-PSGD, about as fast as FedAvg"
PIECES = ["ring", "torus", "modest"]


def table1(topology: str, seeds: list[int], dataset: str) -> tuple[list[dict], list[dict]]:
    methods = [
        (DFEDAVGM, {"name": "dpsgd", "lr_decay": LR_DECAY}),
        ("DFedSAM", {"name": "dfedsam", "rho": RHO, "lr_decay": LR_DECAY}),
        ("DFedSAM-MGS Q=2", {"name": "dfedsam_mgs", "rho": RHO, "lr_decay": LR_DECAY, "gossip_steps": 2}),
        ("DFedSAM-MGS Q=4", {"name": "dfedsam_mgs", "rho": RHO, "lr_decay": LR_DECAY, "gossip_steps": 4}),
    ]
    base = {**TABLE1, **reporting.profile(dataset)}
    fedavg = [float(fedsim.run(base, seed=s, strategy={"name": "fedavg", "fraction_train": 1.0}).metrics["test_acc"]
                    .iloc[-1]) for s in seeds]
    rows = [{"method": "FedAvg", "setting": "star, all 16 clients", "final acc (per seed)": fedavg,
             "mean": reporting.spread(fedavg)["mean"]}]
    acc, dist = {}, {}
    for label, strategy in methods:
        lasts = [fedsim.run(base, seed=s, strategy=strategy, topology={"name": topology}).metrics.iloc[-1] for s in seeds]
        acc[label] = [float(last["node_acc_mean"]) for last in lasts]
        dist[label] = [float(last["consensus_distance"]) for last in lasts]
        rows.append({"method": label, "setting": f"{topology} (gap {float(lasts[0]['spectral_gap']):.3f})",
                     "final acc (per seed)": acc[label], "mean": reporting.spread(acc[label])["mean"],
                     "consensus distance": reporting.spread(dist[label])["mean"],
                     "gap to FedAvg": reporting.spread(fedavg)["mean"] - reporting.spread(acc[label])["mean"],
                     "node acc min": min(float(last["node_acc_min"]) for last in lasts),
                     "node acc max": max(float(last["node_acc_max"]) for last in lasts)})
        print(f"{topology} {label}: {reporting.spread(acc[label])['mean']:.4f}", flush=True)
    claims = [
        reporting.claim(f"DFedSAM above {DFEDAVGM} on a {topology}", PAPER1, "final mean node acc", "DFedSAM",
                        DFEDAVGM, acc["DFedSAM"], acc[DFEDAVGM]),
        reporting.claim(f"DFedSAM-MGS Q=4 above DFedSAM on a {topology}", PAPER1, "final mean node acc",
                        "DFedSAM-MGS Q=4", "DFedSAM", acc["DFedSAM-MGS Q=4"], acc["DFedSAM"]),
        reporting.claim(f"DFedSAM-MGS Q=4 lowers the consensus distance on a {topology}", PAPER1,
                        "consensus distance", "DFedSAM-MGS Q=4", "DFedSAM", dist["DFedSAM-MGS Q=4"], dist["DFedSAM"],
                        higher_is_better=False),
    ]
    return rows, claims


def to_target(metrics, bytes_columns: list[str]) -> dict:
    """First round at the target and the bytes / virtual time until then; when the target is
    never reached, the run's totals (and ``reached`` False)."""
    m = metrics.dropna(subset=["test_acc"]).copy()
    m["cum_bytes"] = metrics[bytes_columns].sum(axis=1).cumsum()
    hit = m[m["test_acc"] >= TARGET]
    first = hit.iloc[0] if not hit.empty else m.iloc[-1]
    return {"reached": not hit.empty, "round": int(first["round"]), "bytes": float(first["cum_bytes"]),
            "virtual seconds": float(first["virtual_time"]), "final acc": float(m["test_acc"].iloc[-1])}


def table2(seeds: list[int], dataset: str) -> tuple[list[dict], list[dict]]:
    fedavg = {"name": "fedavg", "fraction_train": SAMPLE / 32}
    modest = {"name": "modest", "sample_size": SAMPLE, "success_fraction": 0.8}
    dpsgd = dict(rounds=35, strategy={"name": "dpsgd"}, topology={"name": "random_regular", "degree": 4})
    runs = [  # (method, setting, overrides, columns of bytes sent)
        ("FedAvg", f"{SAMPLE} of 32 per round", dict(rounds=80, strategy=fedavg), ["bytes_down", "bytes_up"]),
        (DFEDAVGM, "random 4-regular, 32 nodes", dpsgd, ["bytes_up"]),
        ("MoDeST", f"s={SAMPLE} of 32, sf=0.8, 1 aggregator", dict(rounds=80, strategy=modest), ["bytes_up"]),
    ]
    base = {**TABLE2, **reporting.profile(dataset)}
    results = {label: [to_target(fedsim.run(base, seed=s, **over).metrics, cols) for s in seeds]
               for label, _, over, cols in runs}
    rows = []
    for label, setting, _, _ in runs:
        r = results[label]
        rows.append({"method": label, "setting": setting, "reached (per seed)": [x["reached"] for x in r],
                     "rounds to target": [x["round"] for x in r], "bytes to target": [x["bytes"] for x in r],
                     "virtual seconds to target": [x["virtual seconds"] for x in r],
                     "final acc": [x["final acc"] for x in r]})
    get = lambda label, key: [x[key] for x in results[label]]  # noqa: E731
    claims = [
        reporting.claim(f"MoDeST needs fewer bytes to {TARGET} than {DFEDAVGM}", PAPER2, "bytes to target", "MoDeST",
                        DFEDAVGM, get("MoDeST", "bytes"), get(DFEDAVGM, "bytes"), higher_is_better=False),
        reporting.claim(f"MoDeST reaches {TARGET} in less virtual time than {DFEDAVGM}", PAPER2,
                        "virtual seconds to target", "MoDeST", DFEDAVGM, get("MoDeST", "virtual seconds"),
                        get(DFEDAVGM, "virtual seconds"), higher_is_better=False),
    ]
    return rows, claims


def main() -> None:
    ap = reporting.parser(__doc__, PIECES)
    args = ap.parse_args()
    settings = {"profile": args.dataset, "table 1": "16 nodes, Dirichlet(0.3), 25 rounds x 1 local epoch, "
                f"momentum 0.9, rho {RHO}, lr decay {LR_DECAY}",
                "table 2": f"32 nodes, Dirichlet(1.0), target {TARGET}, simulated heterogeneous network",
                f"{DFEDAVGM}": "strategy dpsgd in its default train-then-gossip order with momentum: DFedAvgM, "
                "not one-step D-PSGD", "model": reporting.profile(args.dataset).get("model", {}).get("name", "mlp(64)")}
    name = reporting.results_name("decentralized", args.dataset)
    for piece in args.only or PIECES:
        started = time.time()
        if piece == "modest":
            rows, claims = table2(args.seeds, args.dataset)
            title = f"Table 2: MoDeST vs FedAvg and {DFEDAVGM}, bytes and virtual time to {TARGET}"
        else:
            rows, claims = table1(piece, args.seeds, args.dataset)
            title = f"Table 1: DFedSAM(-MGS) on a 16-node {piece}"
        path = reporting.write(name, settings=settings, seeds=args.seeds, tables={title: rows}, claims=claims,
                               started=started, piece=piece)
        for c in claims:
            print(f"  {c['claim']}: {c['verdict']}")
        print(f"wrote {path} ({time.time() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
