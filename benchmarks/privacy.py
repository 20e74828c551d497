"""The privacy–utility–attack matrix: what each defense costs in accuracy, what it formally
buys (ε at δ = 1e-5), what a canary audit can demonstrate, and whether gradient inversion of
one upload still works.

Rows (base: ``scenarios/privacy_matrix.yaml``, digits, 300 clients of ~5 examples, MLP(64)
with dropout 0.1, 10% of the clients per round, 30 rounds):

- FedAvg (no defense);
- DP-FedAvg at ε = 1, 4, 8 (Poisson sampling q = 0.1, clip C = 1, noise calibrated to
  the target ε over the run, noise added by the server), and at ε = 4 with the noise added
  by the clients (fixed-size cohorts of 30, distributed DP);
- SGM at the noise that gives the secret-sketch ε of DP-FedAvg's ε = 4 (both ε views);
- HyperFL: the paper's accuracy (``local_acc``, before aggregation) and ``fed_acc`` (after);
- DIFF2 and its baseline DP-GD at equal ε on their regression (diabetes, test MSE) and
  classification (digits, test accuracy) settings.

Columns: method, setting, metric, value, baseline (FedAvg's value; DP-GD's for DIFF2),
ratio, ε (formal; for SGM the secret-sketch ε, the public-sketch ε in ``ε public``),
ε audit (one-shot canary clients, ``fedsim.world.audit``, on the final model), and PSNR/SSIM
of IG and DIA reconstructions of one upload of a target client. The attack runs use the
same defense and noise multiplier on 30 clients that all train in round 1 (so the share of
client-side noise matches the accuracy run's cohort of 30), each client one SGD step on one
example; the eavesdropping server inverts client 0's upload (200 iterations). For HyperFL
the server is informed (it holds the target's private v_i and ϕ_i; phase 1 skipped, one
phase-2 step). "n/a" says the upload is not a model update the attacks can match (a sketch,
a tabular gradient).

Writes ``benchmarks/results/privacy.json``, one piece per group of rows (``--only``):

    python benchmarks/privacy.py [--seeds 0 1 2] [--only fedavg dp hyperfl sgm diff2-diabetes diff2-digits]
                                 [--rounds 30] [--other-rounds R] [--iterations 200] [--dataset fashion_mnist]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import fedsim
import reporting
from fedsim.scenario import read_yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "scenarios" / "privacy_matrix.yaml"
CLIP = 1.0


def dp(epsilon: float, **extra) -> dict:
    return {"name": "dp", "clipping_norm": CLIP, "target_epsilon": epsilon, **extra}


HYPERFL = ROOT / "scenarios" / "hyperfl.yaml"
DIFF2 = ROOT / "scenarios" / "diff2.yaml"
DIGITS = {"dataset": {"name": "digits"}}  # DIFF2's classification setting: digits, fc10, cross-entropy
SGM_LR = 0.05
FEDAVG_ON_HYPERFL_SPLIT = {  # the same target net and split, FedAvg with HyperFL's local settings
    "model": {"name": "hyperfl_target", "target": "cnn"},
    "strategy": {"name": "fedavg", "fraction_train": 1.0},
    "client": {"epochs": 5, "batch_size": 50, "lr": 0.02, "momentum": 0.5, "weight_decay": 5e-4},
    "evaluation": {"federated": False},
}


def row(method: str, setting: str, overrides: dict | None = None, *, base: Path = BASE,
        metric: str = "test_acc", baseline: str = "FedAvg/no defense", group: str = "dp") -> dict:
    """A matrix row: a scenario (base + overrides), the metric it reports, its baseline row and
    its group (a piece of the benchmark: rows compared by a claim share a group)."""
    return {"method": method, "setting": setting, "overrides": overrides or {}, "base": base,
            "metric": metric, "baseline": baseline, "group": group}


ROWS = [
    row("FedAvg", "no defense", group="fedavg"),
    row("DP-FedAvg", "ε=1", {"defense": dp(1.0)}),
    row("DP-FedAvg", "ε=4", {"defense": dp(4.0)}),
    row("DP-FedAvg", "ε=8", {"defense": dp(8.0)}),
    row("DP-FedAvg", "ε=4, client noise", {"defense": dp(4.0, sampling="fixed", noise="client")}),
    # no canaries here: with 20 clients each canary is 5% of the federation not training
    row("FedAvg", "HyperFL split", FEDAVG_ON_HYPERFL_SPLIT, base=HYPERFL, baseline="FedAvg/HyperFL split",
        group="hyperfl"),
    # the paper's accuracy (official acc2): each client's model after local training, before aggregation
    row("HyperFL", "personalised, before aggregation (paper)", base=HYPERFL, metric="local_acc",
        baseline="FedAvg/HyperFL split", group="hyperfl"),
    row("HyperFL", "personalised, after aggregation", base=HYPERFL, metric="fed_acc", baseline="FedAvg/HyperFL split",
        group="hyperfl"),
    # SGM: σ_g calibrated so that its secret-sketch ε is DP-FedAvg's 4; τ = C/η_local
    row("SGM", "secret-sketch ε=4", {"strategy": {
        "name": "sgm", "fraction_train": 0.1, "clip": CLIP / 0.2, "sketch_dim": 4096, "target_epsilon": 4.0,
        "server_opt": "adam", "server_lr": SGM_LR}}, group="sgm"),
    # DIFF2 against DP-GD at equal ε (sample-level, trusted server); settings: the best of a
    # small grid each (README), tuning not privacy-accounted, as in the paper
    row("DP-GD", "diabetes ε=3", {"strategy": {"restart": 1}}, base=DIFF2, metric="test_loss",
        baseline="DP-GD/diabetes ε=3", group="diff2-diabetes"),
    row("DIFF2", "diabetes ε=3, T=10", base=DIFF2, metric="test_loss", baseline="DP-GD/diabetes ε=3",
        group="diff2-diabetes"),
    row("DP-GD", "digits ε=3", {**DIGITS, "strategy": {"restart": 1, "clip": 1.0, "lr": 2.0, "noise": "calibrated"}},
        base=DIFF2, baseline="DP-GD/digits ε=3", group="diff2-digits"),
    row("DIFF2", "digits ε=3, T=20", base=DIFF2, baseline="DP-GD/digits ε=3", group="diff2-digits", overrides={
        **DIGITS, "strategy": {"restart": 20, "clip": 1.0, "diff_clip": 0.3, "lr": 0.5, "noise": "calibrated"}}),
]


def merge(base: dict, overrides: dict) -> dict:
    """Nested update; a component given with another ``name`` replaces the base's whole."""
    out = dict(base)
    for key, value in overrides.items():
        old = out.get(key)
        nested = isinstance(value, dict) and isinstance(old, dict) and value.get("name", old.get("name")) == old.get("name")
        out[key] = merge(old, value) if nested else value
    return out


def run(sc: dict, out: str) -> tuple:
    sc = merge(sc, {"output": {"dir": out, "progress": False, "plot": False, "save_model": False}})
    result = fedsim.run(sc)
    return result, json.loads((result.run_dir / "summary.json").read_text())


def attack_scenario(sc: dict, metrics, attack: str, iterations: int) -> dict | None:
    """One round on 30 clients that all train one SGD step on one example; the server
    inverts client 0's upload. DP rows keep the accuracy run's noise multiplier. HyperFL:
    phase 1 skipped, one phase-2 step, and an informed server (it holds the target's v_i
    and ϕ_i: the informed attacker)."""
    name = sc["strategy"]["name"]
    if name not in ("fedavg", "fedprox", "hyperfl"):
        return None
    one_step = (
        {"strategy": {"fraction_train": 1.0, "head_epochs": 0, "hyper_steps": 1, "batch_size": 1}}
        if name == "hyperfl"
        else {"strategy": {"fraction_train": 1.0}, "client": {"steps": 1, "batch_size": 1, "epochs": 1}}
    )
    attack_sc = merge(sc, {
        "rounds": 1, "num_clients": 30, "partition": {"name": "iid"}, **one_step,
        "eavesdropper": {"name": attack, "rounds": [1], "targets": [0], "iterations": iterations},
    })
    attack_sc.pop("audit", None)
    if "defense" in sc:
        z = float(metrics["noise_multiplier"].iloc[0])
        defense = {k: v for k, v in sc["defense"].items() if k != "target_epsilon"}
        attack_sc["defense"] = {**defense, "noise_multiplier": z, "sampling": "fixed"}
    return attack_sc


GROUPS = ["fedavg", "dp", "hyperfl", "sgm", "diff2-diabetes", "diff2-digits"]
# (group, ours, baseline, metric, higher is better, claim, paper)
CLAIMS = [
    ("hyperfl", "HyperFL/personalised, before aggregation (paper)", "FedAvg/HyperFL split", "value", True,
     "HyperFL (paper metric) at least as accurate as FedAvg on the same target net",
     "Guo et al., AAAI 2025: HyperFL keeps FedAvg-level accuracy"),
    ("hyperfl", "HyperFL/personalised, before aggregation (paper)", "FedAvg/HyperFL split", "ig_psnr", False,
     "IG reconstructs a HyperFL upload worse than a FedAvg upload (PSNR)",
     "Guo et al., AAAI 2025: HyperFL resists gradient inversion"),
    ("diff2-diabetes", "DIFF2/diabetes ε=3, T=10", "DP-GD/diabetes ε=3", "value", False,
     "DIFF2 below DP-GD's test MSE at equal ε (diabetes)", "Murata & Suzuki, ICML 2023: DIFF2 beats DP-GD"),
    ("diff2-digits", "DIFF2/digits ε=3, T=20", "DP-GD/digits ε=3", "value", True,
     "DIFF2 above DP-GD's test accuracy at equal ε (digits)", "Murata & Suzuki, ICML 2023: DIFF2 beats DP-GD"),
]


def run_row(spec: dict, seed: int, args, out: str) -> dict:
    """One row at one seed: the metric's final value, ε (both views for SGM), the canary audit
    (Alg. 1 estimate, its bootstrap interval and the equal-variance estimate) and IG/DIA."""
    base, _ = read_yaml(spec["base"])
    sc = merge(base, {**spec["overrides"], "seed": seed})
    if spec["base"] == BASE:
        sc["rounds"] = args.rounds
    elif args.other_rounds:
        sc["rounds"] = args.other_rounds
    result, summary = run(sc, out)
    values = result.metrics[spec["metric"]].dropna()
    audit = summary.get("audit", {})
    r = {
        "value": float(values.iloc[-1]) if len(values) else None,
        # SGM: the paper's secret-sketch ε here, the conservative public-sketch ε next to it
        "epsilon": summary.get("epsilon_secret_sketch", summary.get("epsilon")),
        "epsilon_public": summary.get("epsilon_public_sketch"),
        "audit": audit.get("epsilon_audit"), "audit_ci95": audit.get("epsilon_audit_ci95"),
        "audit_equal_variance": audit.get("epsilon_audit_equal_variance"),
        "MB_up": summary["bytes_up"] / 1e6 / max(summary["rounds"], 1),
    }
    for attack in ("ig", "dia"):
        attack_sc = attack_scenario(sc, result.metrics, attack, args.iterations)
        if attack_sc is not None:
            res, _ = run(attack_sc, out)
            r[f"{attack}_psnr"] = float(res.metrics["attack_psnr"].iloc[0])
            r[f"{attack}_ssim"] = float(res.metrics["attack_ssim"].iloc[0])
    return r


def main() -> None:
    ap = reporting.parser(__doc__, GROUPS)
    ap.add_argument("--rounds", type=int, default=30, help="rounds of the privacy_matrix.yaml rows")
    ap.add_argument("--other-rounds", type=int, default=None, help="rounds of the HyperFL and DIFF2 rows (default: their scenarios')")
    ap.add_argument("--iterations", type=int, default=200, help="IG/DIA iterations per attacked upload")
    args = ap.parse_args()
    settings = {"profile": args.dataset, "rounds": args.rounds, "other rounds": args.other_rounds,
                "iterations": args.iterations, "base": "scenarios/privacy_matrix.yaml",
                "audit": "epsilon_audit: Andrew et al. 2024 Alg. 1 (unequal variances), 95% bootstrap interval over "
                         "20 canaries; equal-variance estimate beside it"}
    name = reporting.results_name("privacy", args.dataset)
    for group in args.only or GROUPS:
        started = time.time()
        specs = [spec for spec in ROWS if spec["group"] == group]
        per_seed = {}
        with tempfile.TemporaryDirectory() as out:
            for spec in specs:
                key = f"{spec['method']}/{spec['setting']}"
                if args.dataset != "digits" and spec["base"] == BASE:
                    spec = {**spec, "overrides": {**spec["overrides"], **reporting.profile(args.dataset)}}
                per_seed[key] = [run_row(spec, seed, args, out) for seed in args.seeds]
                print(f"{key}: {[r['value'] for r in per_seed[key]]}", flush=True)
        rows = []
        for spec in specs:
            key = f"{spec['method']}/{spec['setting']}"
            runs = per_seed[key]
            col = lambda k: [r.get(k) for r in runs]  # noqa: E731
            rows.append({"method": spec["method"], "setting": spec["setting"], "metric": spec["metric"],
                         "value per seed": col("value"), "ε": runs[0]["epsilon"], "ε public": runs[0]["epsilon_public"],
                         "ε audit per seed": col("audit"), "audit 95% interval per seed": col("audit_ci95"),
                         "ε audit equal-variance per seed": col("audit_equal_variance"), "MB up/round": runs[0]["MB_up"],
                         "IG PSNR per seed": col("ig_psnr"), "DIA PSNR per seed": col("dia_psnr")})
        claims = []
        for g, ours, base, key, higher, text, paper in CLAIMS:
            if g == group:
                pick = "value" if key == "value" else key
                claims.append(reporting.claim(text, paper, key if key != "value" else
                                              next(s["metric"] for s in specs if f"{s['method']}/{s['setting']}" == ours),
                                              ours, base, [r[pick] for r in per_seed[ours]],
                                              [r[pick] for r in per_seed[base]], higher_is_better=higher))
        path = reporting.write(name, settings=settings, seeds=args.seeds, tables={f"Rows: {group}": rows},
                               claims=claims, started=started, piece=group)
        for c in claims:
            print(f"  {c['claim']}: {c['verdict']}")
        print(f"wrote {path} ({time.time() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
