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

Writes ``benchmarks/results/inversion.json``, one piece per dataset and part; each seed
changes the model initialisation, the victims and the noise; claims are paired over seeds:

    python benchmarks/inversion.py [--seeds 0 1 2] [--only digits-dropout digits-prior ...]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402

import reporting  # noqa: E402

from fedsim.attacks.dia import DIAParams, DropoutInversion, well_informed  # noqa: E402
from fedsim.attacks.gifd import GIFDParams, gifd  # noqa: E402
from fedsim.attacks.ig import InvertingGradients  # noqa: E402
from fedsim.attacks.inversion import Knowledge, LocalTraining, Observation  # noqa: E402
from fedsim.attacks.inversion.metrics import score  # noqa: E402
from fedsim.attacks.inversion.params import PixelAttackParams  # noqa: E402
from fedsim.attacks.inversion.replay import client_step  # noqa: E402
from fedsim.data.datasets import load_dataset  # noqa: E402
from fedsim.models import build_model  # noqa: E402
from fedsim.training import derive_seed, torch_generator  # noqa: E402

PIXELS = (0.0, 1.0)
OTHER = {"digits": "patches", "patches": "digits"}
LOCAL = {1: LocalTraining(lr=0.1, steps=3, batch_size=1), 4: LocalTraining(lr=0.1, steps=3, batch_size=4)}


def victims(ds, batch: int, count: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches of ``batch`` training examples with distinct labels, scanning the
    training split from a seeded offset (seed 0: from the start).

    Each batch is in label order: the client's order within a batch is arbitrary, and so the
    oracle's per-example masks line up with the attacker's (sorted) inferred labels."""
    out = []
    start = 0 if seed == 0 else int(np.random.default_rng(derive_seed(seed, "bench-victims")).integers(len(ds.y_train) // 2))
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


def upload(net, x, y, kind, noise: float, key, seed: int = 0) -> tuple[Observation, list]:
    """The client's upload (train mode, recorded masks), optionally with Gaussian noise."""
    local = LOCAL[len(x)] if kind == "update" else None
    up, masks = client_step(net, x, y, kind, local, torch_generator(seed, "client", *key))
    if noise:
        gen = torch_generator(seed, "noise", *key)
        up = {k: u + noise * u.pow(2).mean().sqrt() * torch.randn(u.shape, generator=gen) for k, u in up.items()}
    obs = Observation(net, up, kind, len(x), local, tuple(x.shape[1:]), 10, PIXELS, 1, 0,
                      derive_seed(seed, "attack", *key))
    return obs, masks


def model(name: str, params: dict, ds, seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(seed, "bench-model", name))
        return build_model(name, params, ds.input_shape, ds.num_classes)


class Bench:
    def __init__(self, args):
        self.args = args
        self.seed = 0
        self.rows: list[dict] = []
        self.console = Console(stderr=True)

    def record(self, setting: dict, method: str, recs: list, truths: list, seconds: float):
        scores = [score(r.images, r.labels, x, y, PIXELS) for r, (x, y) in zip(recs, truths, strict=True)]
        row = {
            **setting,
            "seed": self.seed,
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

    def dropout(self, name: str, ds):
        a = self.args
        pix = dict(iterations=a.iterations, tv=1e-5, schedule="multistep", early_stop_patience=None, stop_loss=1e-5)
        for kind in a.uploads:
            for batch in (1, 4):
                cases = victims(ds, batch, a.victims if batch == 1 else 1, self.seed)
                for p in (0.0, 0.1, 0.25, 0.5):
                    net = model("mlp", {"hidden": [256, 256], "dropout": p}, ds, self.seed)
                    setting = {"dataset": name, "part": "dropout", "upload": kind, "B": batch, "p": p, "noise": 0.0}
                    observed = [upload(net, x, y, kind, 0.0, (name, kind, batch, p, v), self.seed)
                                for v, (x, y) in enumerate(cases)]
                    methods = [("ig", lambda o, m: InvertingGradients(PixelAttackParams(**pix)).reconstruct(o))]
                    if p > 0:
                        methods += [
                            ("dia", lambda o, m: DropoutInversion(DIAParams(**pix)).reconstruct(o)),
                            ("wiig", lambda o, m: well_informed(o, m, PixelAttackParams(**pix))),
                        ]
                    for method, attack in methods:
                        start = time.perf_counter()
                        recs = [attack(o, m) for o, m in observed]
                        self.record(setting, method, recs, cases, time.perf_counter() - start)

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
        net = model("cnn", {"channels": [4, 8]}, ds, self.seed)
        uploads = a.uploads if name != "patches" else ["gradient"]
        for kind in uploads:
            for batch in (1, 4):
                cases = victims(ds, batch, a.victims if batch == 1 else 1, self.seed)
                for noise in (0.0, 1.0):
                    setting = {"dataset": name, "part": "prior", "upload": kind, "B": batch, "p": 0.0, "noise": noise}
                    observed = [upload(net, x, y, kind, noise, (name, "prior", kind, batch, noise, v), self.seed)[0]
                                for v, (x, y) in enumerate(cases)]
                    start = time.perf_counter()
                    self.record(setting, "ig", [InvertingGradients(ig_params).reconstruct(o) for o in observed], cases,
                                time.perf_counter() - start)
                    for which, attack in priors.items():
                        start = time.perf_counter()
                        recs = [attack.reconstruct(o) for o in observed]
                        seconds = time.perf_counter() - start
                        latent = [type(r)(r.alternatives["latent"], r.labels, r.info["stage0_loss"]) for r in recs]
                        self.record(setting, f"{which}: z only", latent, cases, 0.0)
                        self.record(setting, f"{which}: gifd", recs, cases, seconds)

    def piece_tables(self, rows: list[dict]) -> list[dict]:
        """Per (setting, method): PSNR and SSIM per seed (each the mean over the setting's victims)."""
        keys = ("dataset", "part", "upload", "B", "p", "noise", "method")
        groups: dict[tuple, list[dict]] = {}
        for r in rows:
            groups.setdefault(tuple(r[k] for k in keys), []).append(r)
        return [{**dict(zip(keys, key)), "PSNR per seed": [r["psnr"] for r in g], "mean PSNR": float(np.mean([r["psnr"] for r in g])),
                 "SSIM per seed": [r["ssim"] for r in g], "label acc": float(np.mean([r["label_acc"] for r in g]))}
                for key, g in groups.items()]

    def piece_claims(self, rows: list[dict], part: str, seeds: list[int]) -> list[dict]:
        """Paired over seeds; each seed's value is the mean PSNR over the part's settings."""
        def per_seed(method, **where):
            return [float(np.mean([r["psnr"] for r in rows if r["seed"] == s and r["method"] == method
                                   and all(r[k] == v for k, v in where.items())])) for s in seeds]

        methods = {r["method"] for r in rows}
        on = f" on {rows[0]['dataset']}"  # which images: digits, patches (or Fashion-MNIST)
        claims = []
        if part == "dropout":
            for p in (0.1, 0.25, 0.5):
                claims.append(reporting.claim(
                    f"DIA beats IG on dropout uploads, p={p}{on}", DIA_PAPER, "PSNR (dB)", "dia", "ig",
                    per_seed("dia", p=p), per_seed("ig", p=p)))
        else:
            for which in ("in", "ood"):
                if f"{which}: gifd" not in methods:
                    continue
                for noise in (0.0, 1.0):
                    claims.append(reporting.claim(
                        f"GIFD ({which} prior) beats IG, noise {noise:g}x RMS{on}", GIFD_PAPER, "PSNR (dB)",
                        f"{which}: gifd", "ig", per_seed(f"{which}: gifd", noise=noise), per_seed("ig", noise=noise)))
                claims.append(reporting.claim(
                    f"GIFD's feature stages improve on its latent-only stage ({which} prior, noise 1x RMS){on}", GIFD_PAPER,
                    "PSNR (dB)", f"{which}: gifd", f"{which}: z only", per_seed(f"{which}: gifd", noise=1.0),
                    per_seed(f"{which}: z only", noise=1.0)))
        return claims


DIA_PAPER = "DIA (dropout inversion): beats IG by a wide margin when dropout is on"
GIFD_PAPER = "Fang et al., ICCV 2023 (GIFD): beats IG, in particular on noisy/defended uploads"


def main() -> None:
    pieces = [f"{d}-{p}" for d in ("digits", "patches") for p in ("dropout", "prior")]
    ap = reporting.parser(__doc__, pieces)
    ap.add_argument("--uploads", nargs="+", default=["gradient", "update"], choices=["gradient", "update"])
    ap.add_argument("--victims", type=int, default=2, help="single-image victims for B = 1")
    ap.add_argument("--iterations", type=int, default=200, help="IG/DIA/WIIG iterations (dropout part)")
    ap.add_argument("--gifd-steps", type=int, default=60, help="GIFD steps per stage and restart")
    ap.add_argument("--ood", nargs="*", default=["digits"], help="datasets attacked with an OOD prior too")
    ap.add_argument("--prior-steps", type=int, default=1500)
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "priors")
    args = ap.parse_args()
    torch.set_num_threads(1)
    settings = {"profile": args.dataset, "uploads": args.uploads, "victims (B=1)": args.victims,
                "IG/DIA/WIIG iterations": args.iterations, "GIFD steps per stage and restart": args.gifd_steps,
                "GIFD restarts": 2, "prior steps": args.prior_steps, "OOD prior for": args.ood,
                "noise": "Gaussian, std = 1 x RMS of each uploaded tensor (noise 1)"}
    name = reporting.results_name("inversion", args.dataset)
    bench = Bench(args)
    for piece in args.only or pieces:
        started = time.time()
        dataset, part = piece.split("-")
        if dataset == "digits" and args.dataset != "digits":
            dataset = args.dataset
        ds = load_dataset(dataset, {}, 0)
        first = len(bench.rows)
        for seed in args.seeds:
            bench.seed = seed
            getattr(bench, part)(dataset, ds)
        rows = bench.rows[first:]
        claims = bench.piece_claims(rows, part, args.seeds)
        path = reporting.write(name, settings=settings, seeds=args.seeds, tables={piece: bench.piece_tables(rows)},
                               claims=claims, started=started, piece=piece)
        for c in claims:
            print(f"  {c['claim']}: {c['verdict']}")
        print(f"wrote {path} ({time.time() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
