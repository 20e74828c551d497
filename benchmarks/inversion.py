"""Gradient inversion on digits and scikit-image patches: IG vs DIA (dropout) and IG vs GIFD (noise).

Every attack inverts one client upload computed from examples of the training split
(victims with distinct labels) at an untrained model, with labels inferred from the
upload. Uploads: ``fedsgd`` (the gradient of one batch) and ``fedavg`` (the update after 3
local full-batch SGD steps, lr 0.1, replayed by the attacker), batch sizes 1 and 4.

Part ``dropout`` (DIA's claim: DIA beats IG by a wide margin when dropout is on, and
approaches the true-mask oracle): MLP (2 × 256 hidden, ReLU, dropout p after each) with p
in {0, 0.1, 0.25, 0.5}, client in train mode; methods IG (attacker in eval mode), DIA,
WIIG (IG with the client's true masks, an oracle). At p = 0 DIA and WIIG are IG (tested).

Part ``prior`` (GIFD's claim: GIFD beats IG when the upload is noisy or defended): CNN
(LeNet-style, channels 4, 8, no dropout); uploads clean or with Gaussian noise of standard
deviation 1 × the RMS of each uploaded tensor; methods IG, GIFD over a VAE-decoder prior
trained on the task's public test split ("in") or on the other image set ("ood"), and the
latent-only stage of each GIFD run ("z only").

Cut from the papers' budgets to fit a 2-core CPU (see --help): IG/DIA/WIIG 200 iterations
(papers: 24 000 / 20 000), step decay at 3/8, 5/8, 7/8 for all three (DIA's plateau
schedule never fires at this budget), 1 restart; GIFD 60 steps per stage (paper 1 000),
2 restarts (paper 4), priors trained 1 500 steps; IG in the prior part gets GIFD's step
count (stages × 60 iterations × 2 restarts). Victims: 2 single images (B = 1) or one batch
of 4. On patches the prior part runs FedSGD uploads only and the in-distribution prior only
(the OOD prior for patches would be digits).

    python benchmarks/inversion.py [--datasets digits patches] [--parts dropout prior]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from fedsim.attacks.dia import DIAParams, DropoutInversion, well_informed  # noqa: E402
from fedsim.attacks.gifd import GIFDParams, gifd  # noqa: E402
from fedsim.attacks.ig import InvertingGradients  # noqa: E402
from fedsim.attacks.inversion import Knowledge, LocalTraining, Observation  # noqa: E402
from fedsim.attacks.inversion.metrics import save_grid, score  # noqa: E402
from fedsim.attacks.inversion.params import PixelAttackParams  # noqa: E402
from fedsim.attacks.inversion.replay import client_step  # noqa: E402
from fedsim.data.datasets import load_dataset  # noqa: E402
from fedsim.models import build_model  # noqa: E402
from fedsim.training import derive_seed, torch_generator  # noqa: E402

PIXELS = (0.0, 1.0)
OTHER = {"digits": "patches", "patches": "digits"}
LOCAL = {1: LocalTraining(lr=0.1, steps=3, batch_size=1), 4: LocalTraining(lr=0.1, steps=3, batch_size=4)}


def victims(ds, batch: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches of ``batch`` training examples with distinct labels (fixed picks).

    Each batch is in label order: the client's order within a batch is arbitrary, and so the
    oracle's per-example masks line up with the attacker's (sorted) inferred labels."""
    out, start = [], 0
    for _ in range(count):
        idx, seen = [], set()
        for i in range(start, len(ds.y_train)):
            if ds.y_train[i] not in seen:
                seen.add(ds.y_train[i])
                idx.append(i)
            if len(idx) == batch:
                start = i + 1
                break
        idx = sorted(idx, key=lambda i: ds.y_train[i])  # label order, as the attacker's inferred labels
        out.append((torch.from_numpy(ds.x_train[idx]), torch.from_numpy(ds.y_train[idx])))
    return out


def upload(net, x, y, kind, noise: float, key) -> tuple[Observation, list]:
    """The client's upload (train mode, recorded masks), optionally with Gaussian noise."""
    local = LOCAL[len(x)] if kind == "update" else None
    up, masks = client_step(net, x, y, kind, local, torch_generator(0, "client", *key))
    if noise:
        gen = torch_generator(0, "noise", *key)
        up = {k: u + noise * u.pow(2).mean().sqrt() * torch.randn(u.shape, generator=gen) for k, u in up.items()}
    obs = Observation(net, up, kind, len(x), local, tuple(x.shape[1:]), 10, PIXELS, 1, 0, derive_seed(0, "attack", *key))
    return obs, masks


def model(name: str, params: dict, ds) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(0, "bench-model", name))
        return build_model(name, params, ds.input_shape, ds.num_classes)


class Bench:
    def __init__(self, args):
        self.args = args
        self.rows: list[dict] = []
        self.grids: dict[str, list] = {}
        self.console = Console(stderr=True)

    def record(self, setting: dict, method: str, recs: list, truths: list, seconds: float, grid_key: str | None = None):
        scores = [score(r.images, r.labels, x, y, PIXELS) for r, (x, y) in zip(recs, truths, strict=True)]
        row = {
            **setting,
            "method": method,
            "psnr": float(np.mean([s["psnr"] for s in scores])),
            "ssim": float(np.mean([s["ssim"] for s in scores])),
            "label_acc": float(np.mean([s["label_acc"] for s in scores])),
            "loss": float(np.mean([r.matching_loss for r in recs])),
            "seconds": seconds,
        }
        self.rows.append(row)
        self.console.print(
            f"  {setting['dataset']:8s} {setting['part']:7s} {setting['upload']:6s} B={setting['B']} "
            f"p={setting['p']:<4} noise={setting['noise']:<3} {method:10s} {row['psnr']:6.2f} dB "
            f"SSIM {row['ssim']:.3f} labels {row['label_acc']:.2f} ({seconds:.0f} s)"
        )
        if grid_key is not None:
            x, _ = truths[0]
            if grid_key not in self.grids:
                self.grids[grid_key] = [("true", x)]
            self.grids[grid_key].append((method, recs[0].images[scores[0]["order"]]))

    def dropout(self, name: str, ds):
        a = self.args
        pix = dict(iterations=a.iterations, tv=1e-5, schedule="multistep", early_stop_patience=None, stop_loss=1e-5)
        for kind in a.uploads:
            for batch in (1, 4):
                cases = victims(ds, batch, a.victims if batch == 1 else 1)
                for p in (0.0, 0.1, 0.25, 0.5):
                    net = model("mlp", {"hidden": [256, 256], "dropout": p}, ds)
                    setting = {"dataset": name, "part": "dropout", "upload": kind, "B": batch, "p": p, "noise": 0.0}
                    grid = f"{name}-dropout" if (kind == "gradient" and batch == 4 and p == 0.25) else None
                    observed = [upload(net, x, y, kind, 0.0, (name, kind, batch, p, v)) for v, (x, y) in enumerate(cases)]
                    methods = [("ig", lambda o, m: InvertingGradients(PixelAttackParams(**pix)).reconstruct(o))]
                    if p > 0:
                        methods += [
                            ("dia", lambda o, m: DropoutInversion(DIAParams(**pix)).reconstruct(o)),
                            ("wiig", lambda o, m: well_informed(o, m, PixelAttackParams(**pix))),
                        ]
                    for method, attack in methods:
                        start = time.perf_counter()
                        recs = [attack(o, m) for o, m in observed]
                        self.record(setting, method, recs, cases, time.perf_counter() - start, grid)

    def prior(self, name: str, ds):
        a = self.args
        knowledge = Knowledge(ds.input_shape, ds.num_classes, PIXELS, name, {}, 0)
        common = dict(steps=a.gifd_steps, restarts=2, prior_steps=a.prior_steps, cache_dir=str(a.cache))
        priors = {}
        sources = [("in", None)] + ([("ood", OTHER[name])] if name in a.ood else [])
        for which, prior_dataset in sources:
            start = time.perf_counter()
            priors[which] = gifd(GIFDParams(**common, prior_dataset=prior_dataset), knowledge)
            rep = priors[which].prior_report
            self.console.print(
                f"  prior {name}/{which}: {rep['source']}, {rep['count']} images, diversity "
                f"{rep['diversity']['ratio']:.2f}, duplicates {rep['diversity']['duplicates']:.3f} "
                f"({time.perf_counter() - start:.0f} s)"
            )
        stages = priors["in"].num_stages
        ig_params = PixelAttackParams(iterations=a.gifd_steps * stages, restarts=2, tv=1e-4)  # GIFD: stages × steps × 2
        net = model("cnn", {"channels": [4, 8]}, ds)
        uploads = a.uploads if name == "digits" else ["gradient"]
        for kind in uploads:
            for batch in (1, 4):
                cases = victims(ds, batch, a.victims if batch == 1 else 1)
                for noise in (0.0, 1.0):
                    setting = {"dataset": name, "part": "prior", "upload": kind, "B": batch, "p": 0.0, "noise": noise}
                    grid = f"{name}-prior" if (kind == "gradient" and batch == 4 and noise == 1.0) else None
                    observed = [upload(net, x, y, kind, noise, (name, "prior", kind, batch, noise, v))[0] for v, (x, y) in enumerate(cases)]
                    start = time.perf_counter()
                    self.record(setting, "ig", [InvertingGradients(ig_params).reconstruct(o) for o in observed], cases,
                                time.perf_counter() - start, grid)
                    for which, attack in priors.items():
                        start = time.perf_counter()
                        recs = [attack.reconstruct(o) for o in observed]
                        seconds = time.perf_counter() - start
                        latent = [type(r)(r.alternatives["latent"], r.labels, r.info["stage0_loss"]) for r in recs]
                        self.record(setting, f"{which}: z only", latent, cases, 0.0, grid)
                        self.record(setting, f"{which}: gifd", recs, cases, seconds, grid)

    def table(self) -> Table:
        t = Table(title="gradient inversion: mean PSNR (dB) / SSIM; baseline = IG on the same uploads")
        for col in ("dataset", "part", "upload", "B", "p", "noise", "method", "PSNR", "SSIM", "labels", "IG PSNR", "ratio", "Δ dB"):
            t.add_column(col, justify="right" if col not in ("dataset", "part", "upload", "method") else "left")
        base = {}
        for r in self.rows:
            key = (r["dataset"], r["part"], r["upload"], r["B"], r["p"], r["noise"])
            if r["method"] == "ig":
                base[key] = r["psnr"]
            b = base[key]
            t.add_row(r["dataset"], r["part"], "fedsgd" if r["upload"] == "gradient" else "fedavg", str(r["B"]),
                      f"{r['p']:g}", f"{r['noise']:g}", r["method"], f"{r['psnr']:.1f}", f"{r['ssim']:.3f}",
                      f"{r['label_acc']:.2f}", f"{b:.1f}", f"{r['psnr'] / b:.2f}", f"{r['psnr'] - b:+.1f}")
        return t

    def claims(self) -> list[str]:
        def mean(part, method, **where):
            vals = [r["psnr"] for r in self.rows if r["part"] == part and r["method"] == method
                    and all(r[k] == v if not callable(v) else v(r[k]) for k, v in where.items())]
            return float(np.mean(vals)) if vals else float("nan"), len(vals)

        out = []
        if any(r["part"] == "dropout" for r in self.rows):
            for p in (0.1, 0.25, 0.5):
                (ig, n), (dia, _), (wiig, _) = (mean("dropout", m, p=p) for m in ("ig", "dia", "wiig"))
                out.append(f"dropout p={p}: IG {ig:.1f} dB, DIA {dia:.1f} dB, WIIG oracle {wiig:.1f} dB (mean of {n} settings)")
        if any(r["part"] == "prior" for r in self.rows):
            for noise in (0.0, 1.0):
                vals = [mean("prior", m, noise=noise) for m in ("ig", "in: z only", "in: gifd", "ood: z only", "ood: gifd")]
                out.append(f"noise {noise:g}×RMS: IG {vals[0][0]:.1f}, z-only(in) {vals[1][0]:.1f}, GIFD(in) {vals[2][0]:.1f}, "
                           f"z-only(ood) {vals[3][0]:.1f}, GIFD(ood) {vals[4][0]:.1f} dB (mean of {vals[0][1]} settings)")
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["digits", "patches"], choices=["digits", "patches"])
    ap.add_argument("--parts", nargs="+", default=["dropout", "prior"], choices=["dropout", "prior"])
    ap.add_argument("--uploads", nargs="+", default=["gradient", "update"], choices=["gradient", "update"])
    ap.add_argument("--victims", type=int, default=2, help="single-image victims for B = 1")
    ap.add_argument("--iterations", type=int, default=200, help="IG/DIA/WIIG iterations (dropout part)")
    ap.add_argument("--gifd-steps", type=int, default=60, help="GIFD steps per stage and restart")
    ap.add_argument("--ood", nargs="*", default=["digits"], help="datasets attacked with an OOD prior too")
    ap.add_argument("--prior-steps", type=int, default=1500)
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "priors")
    ap.add_argument("--out", type=Path, default=None, help="write results JSON and image grids here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    bench = Bench(args)
    start = time.perf_counter()
    for name in args.datasets:
        ds = load_dataset(name, {}, 0)
        if "dropout" in args.parts:
            bench.dropout(name, ds)
        if "prior" in args.parts:
            bench.prior(name, ds)
    console = Console(width=200)
    console.print(bench.table())
    for line in bench.claims():
        console.print(line)
    console.print(f"total {time.perf_counter() - start:.0f} s; LPIPS: unavailable offline")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "attacks_results.json").write_text(json.dumps(bench.rows, indent=1))
        for key, rows in bench.grids.items():
            save_grid(args.out / f"attacks_{key}.png", rows, PIXELS, key)


if __name__ == "__main__":
    main()
