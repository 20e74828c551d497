"""The one results format of fedsim's benchmarks: ``benchmarks/results/<name>.json``.

Every benchmark writes its numbers with :func:`write` (git commit, package versions, seeds,
settings, per-seed values, wall time); tables in the docs are rendered from these files,
never typed. A claim row carries a verdict computed from per-seed values by :func:`verdict`.

File layout::

    {"name", "created", "commit", "dirty", "versions": {...}, "settings": {...},
     "command", "rule", "seeds": [...], "wall_seconds", "tables": {table: [row, ...]},
     "pieces": {piece: {"created", "commit", "dirty", "seeds", "wall_seconds", "command", "tables"}},
     "claims": [{"claim", "paper", "metric", "ours", "baseline", "higher_is_better",
                 "values", "baseline_values", "diffs", "rule", "verdict"}, ...]}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
from scipy import stats

RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = ("fedsim", "torch", "flwr", "numpy", "ray", "dp-accounting", "scikit-image")
MIN_SEEDS = 3
ALPHA = 0.05
RULE = (f"paired difference (ours - baseline, sign-adjusted so > 0 favours ours) over >= {MIN_SEEDS} "
        f"seeds: reproduced if a one-sided paired t-test gives p < {ALPHA}; not reproduced if the "
        f"mean difference is <= 0 and the opposite one-sided test gives p < {ALPHA}, or the claim's "
        f"minimum effect lies above the 95% upper confidence bound; inconclusive otherwise "
        f"(and always with fewer than {MIN_SEEDS} seeds)")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=RESULTS.parent, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def verdict(values, baseline_values, higher_is_better: bool = True, min_effect: float = 0.0) -> dict:
    """Verdict of a paired claim "ours beats the baseline (by ``min_effect``)" from per-seed values.

    ``values[i]`` and ``baseline_values[i]`` come from the same seed. Returns the sign-adjusted
    differences, their mean and standard deviation, the p-values and the verdict (see ``RULE``).
    """
    a, b = np.asarray(values, float), np.asarray(baseline_values, float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same seeds: {a.shape} vs {b.shape}")
    d = (a - b) if higher_is_better else (b - a)
    out = {"diffs": d.tolist(), "mean_diff": float(d.mean()) if d.size else None,
           "std_diff": float(d.std(ddof=1)) if d.size > 1 else None, "rule": RULE}
    if d.size < MIN_SEEDS:
        return {**out, "p_better": None, "p_worse": None, "verdict": "inconclusive"}
    if np.all(d == d[0]):  # no spread: the sign decides
        p_better, p_worse = (0.0, 1.0) if d[0] > min_effect else (1.0, 0.0 if d[0] <= 0 else 1.0)
        upper = float(d[0])
    else:
        p_better = float(stats.ttest_1samp(d, min_effect, alternative="greater").pvalue)
        p_worse = float(stats.ttest_1samp(d, 0.0, alternative="less").pvalue)
        sem = d.std(ddof=1) / np.sqrt(d.size)
        upper = float(d.mean() + stats.t.ppf(0.975, d.size - 1) * sem)
    if p_better < ALPHA:
        label = "reproduced"
    elif p_worse < ALPHA or (min_effect > 0 and upper < min_effect):
        label = "not reproduced"
    else:
        label = "inconclusive"
    return {**out, "p_better": p_better, "p_worse": p_worse, "verdict": label}


def claim(text: str, paper: str, metric: str, ours: str, baseline: str, values, baseline_values,
          higher_is_better: bool = True, min_effect: float = 0.0) -> dict:
    """One claim row: what the paper says, both sides' per-seed values and the computed verdict."""
    return {"claim": text, "paper": paper, "metric": metric, "ours": ours, "baseline": baseline,
            "higher_is_better": higher_is_better, "min_effect": min_effect,
            "values": [float(v) for v in values], "baseline_values": [float(v) for v in baseline_values],
            **verdict(values, baseline_values, higher_is_better, min_effect)}


def write(name: str, *, settings: dict, seeds: list[int], tables: dict[str, list[dict]],
          claims: list[dict] | None = None, started: float | None = None, piece: str | None = None) -> Path:
    """Write ``benchmarks/results/<name>.json`` atomically and return its path.

    With ``piece`` (a benchmark run piecewise with ``--only``), the tables and claims of this
    piece replace the file's earlier ones of the same piece and the other pieces are kept;
    ``pieces`` records each piece's commit, time, seeds, wall time and command.
    """
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    new_tables = set(tables)
    commit = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--", "fedsim", "strategies", "attacks", "defenses"))
    wall = None if started is None else round(time.time() - started, 1)
    claims = [{**c, "piece": piece} if piece else c for c in (claims or [])]
    pieces = {}
    path = RESULTS / f"{name}.json"
    if piece is not None:
        if path.exists():
            old = json.loads(path.read_text())
            if old.get("settings") == settings:  # same profile: keep the other pieces
                pieces = {k: v for k, v in old.get("pieces", {}).items() if k != piece}
                kept = {t for v in pieces.values() for t in v["tables"]}
                tables = {**{k: v for k, v in old["tables"].items() if k in kept and k not in tables}, **tables}
                claims = [c for c in old["claims"] if c.get("piece") in pieces] + claims
        pieces[piece] = {"created": now, "commit": commit, "dirty": dirty, "seeds": list(seeds),
                         "wall_seconds": wall, "command": command(), "tables": sorted(new_tables)}
    record = {
        "name": name,
        "created": now,
        "commit": commit,
        "dirty": dirty or any(v["dirty"] for v in pieces.values()),
        "versions": versions(),
        "command": command(),
        "settings": settings,
        "seeds": list(seeds),
        "wall_seconds": sum(v["wall_seconds"] or 0 for v in pieces.values()) if pieces else wall,
        "rule": RULE,
        "tables": tables,
        "claims": claims,
    }
    if pieces:
        record["pieces"] = dict(sorted(pieces.items()))
    RESULTS.mkdir(exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=RESULTS, prefix=f".{name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh, indent=1, default=float)
        fh.write("\n")
    os.replace(tmp, path)
    return path


def command() -> str:
    """The command line that made this file, relative to the repository root."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(RESULTS.parent.parent)
    except ValueError:
        pass
    return " ".join(["python", str(script), *(shlex.quote(a) for a in sys.argv[1:])])


# ---------------------------------------------------------------- benchmark profiles

# The fast profile is the benchmark's own scenarios (scikit-learn digits, 8x8). The
# fashion_mnist profile swaps in Fashion-MNIST (fedsim's ``fashion_mnist`` dataset,
# Debian's dataset-fashion-mnist files) and the LeNet-5-style ``cnn``; everything else
# (clients, partition, rounds, rates) stays the benchmark's.
PROFILES = {
    "digits": {},
    "fashion_mnist": {"dataset": {"name": "fashion_mnist"}, "model": {"name": "cnn"}},
}


def parser(doc: str, pieces: list[str] | None = None) -> argparse.ArgumentParser:
    """The common options: ``--seeds`` (default 3 seeds), ``--dataset`` (profile) and, for a
    benchmark made of pieces, ``--only`` (run and write those pieces only)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (paired across methods)")
    ap.add_argument("--dataset", choices=list(PROFILES), default="digits", help="profile (results file suffix)")
    if pieces:
        ap.add_argument("--only", nargs="+", choices=pieces, default=None, help="run only these pieces")
    return ap


def results_name(name: str, dataset: str) -> str:
    """``<name>`` for the digits profile, ``<name>_<dataset>`` for another."""
    return name if dataset == "digits" else f"{name}_{dataset}"


def profile(dataset: str) -> dict:
    """Scenario overrides of a profile (a copy)."""
    return json.loads(json.dumps(PROFILES[dataset]))


def spread(values) -> dict:
    """Per-seed values with their mean and sample standard deviation."""
    v = np.asarray(values, float)
    return {"values": v.tolist(), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0}


def read(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def splice(path: str | Path, name: str, text: str) -> None:
    """Put ``text`` between the lines ``<!-- name:begin -->`` and ``<!-- name:end -->`` of the
    Markdown file ``path`` (a benchmark's ``--render FILE``: docs tables are never typed)."""
    path = Path(path)
    doc = path.read_text()
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in doc or end not in doc:
        raise SystemExit(f"{path}: no {begin} ... {end} block to fill")
    head, rest = doc.split(begin, 1)
    path.write_text(f"{head}{begin}\n{text}\n{end}{rest.split(end, 1)[1]}")


def table_options(parser, tables: dict) -> None:
    """The options every table-writing benchmark shares: ``--only`` and ``--render``."""
    parser.add_argument("--only", nargs="+", choices=sorted(tables), default=sorted(tables),
                        help="tables to measure; the others are kept from the results file")
    parser.add_argument("--render", nargs="?", const="-", metavar="FILE",
                        help="print the results file's tables as Markdown (or fill FILE's block) and exit")


def run_tables(name: str, args, tables: dict, render, settings: dict) -> None:
    """A benchmark's main: ``--render`` prints (or splices into a file) the tables of
    ``results/<name>.json``; otherwise each table of ``--only`` is measured by
    ``tables[table](args, previous_rows)`` and written with the others kept as they were."""
    if args.render:
        if args.render == "-":
            print(render(read(name)))
        else:
            splice(args.render, name, render(read(name)))
        return
    started = time.time()
    previous = read(name)["tables"] if (RESULTS / f"{name}.json").exists() else {}
    out = {table: rows for table, rows in previous.items() if table not in args.only}
    out |= {table: tables[table](args, previous.get(table, [])) for table in args.only}
    path = write(name, settings=settings, seeds=[0], tables=out, started=started)
    print(render(read(name)))
    print(f"wrote {path}")
