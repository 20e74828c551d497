"""The one results format of fedsim's benchmarks: ``benchmarks/results/<name>.json``.

Every benchmark writes its numbers with :func:`write` (git commit, package versions, seeds,
settings, per-seed values, wall time); tables in the docs are rendered from these files,
never typed. A claim row carries a verdict computed from per-seed values by :func:`verdict`.

File layout::

    {"name", "created", "commit", "dirty", "versions": {...}, "settings": {...},
     "seeds": [...], "wall_seconds", "tables": {table: [row, ...]},
     "claims": [{"claim", "paper", "metric", "ours", "baseline", "higher_is_better",
                 "values", "baseline_values", "diffs", "rule", "verdict"}, ...]}
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
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
          claims: list[dict] | None = None, started: float | None = None) -> Path:
    """Write ``benchmarks/results/<name>.json`` atomically and return its path."""
    record = {
        "name": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--", "fedsim", "strategies", "attacks", "defenses")),
        "versions": versions(),
        "settings": settings,
        "seeds": list(seeds),
        "wall_seconds": None if started is None else round(time.time() - started, 1),
        "tables": tables,
        "claims": claims or [],
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    fd, tmp = tempfile.mkstemp(dir=RESULTS, prefix=f".{name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh, indent=1, default=float)
        fh.write("\n")
    os.replace(tmp, path)
    return path


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
