"""``manifest.json``: what produced a run directory, and whether the run finished.

Written atomically (a temporary file renamed over the old one) when a run starts, with
``status: "running"``, and rewritten when it ends with ``completed``, ``diverged`` or
``failed`` and the end time. A run killed outright keeps ``running``. It records the
fedsim version, the git commit when fedsim runs from a checkout (``git_dirty`` when the
checkout has uncommitted changes), the versions of torch, flwr, ray, numpy and Python,
the platform, the device, the resolved scenario's hash and seed.

:func:`differences` lists how a set of runs differ in any of these (``fedsim report``
prints them as warnings).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import subprocess
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from fedsim.scenario import Scenario

FILE = "manifest.json"
PACKAGES = ("fedsim", "torch", "flwr", "ray", "numpy")
# keys that must agree between every pair of runs compared
ENVIRONMENT = ("fedsim", "git_commit", "git_dirty", "torch", "flwr", "ray", "numpy", "python", "platform", "device")


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def git_state(path: Path = Path(__file__).resolve().parent) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout holding ``path``; (None, None) for an installed package."""
    try:
        commit = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, bool(status.strip())


def device(scenario: Scenario) -> str:
    """The device the run trains on: the runtime's ``device`` when it has one, else the CPU."""
    return str(getattr(scenario.runtime, "device", None) or "cpu")


def config_hash(scenario: Scenario) -> str:
    """Hash of the resolved scenario without what differs between the seeds of one
    configuration by design (``seed``, ``name``, ``output``)."""
    data = {k: v for k, v in scenario.to_dict().items() if k not in ("seed", "name", "output")}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def environment(scenario: Scenario) -> dict[str, Any]:
    commit, dirty = git_state()
    return {
        **{name: _version(name) for name in PACKAGES},
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device(scenario),
    }


def write(run_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Replace ``run_dir/manifest.json`` atomically: readers see the old or the new file, never half."""
    path = Path(run_dir) / FILE
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(manifest, fh, indent=1)
    os.replace(tmp, path)
    return path


def read(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / FILE
    return json.loads(path.read_text()) if path.exists() else None


def start(run_dir: str | Path, scenario: Scenario) -> dict[str, Any]:
    """Write the manifest of a run that starts now (a resumed run keeps its first start)."""
    previous = read(run_dir) or {}
    manifest = {
        **environment(scenario),
        "scenario_hash": scenario.digest(),
        "config_hash": config_hash(scenario),
        "seed": scenario.seed,
        "started": previous.get("started", _now()),
        "resumed": previous.get("resumed", []) + ([_now()] if previous else []),
        "ended": None,
        "status": "running",
    }
    write(run_dir, manifest)
    return manifest


def end(run_dir: str | Path, status: str, error: str | None = None) -> dict[str, Any]:
    """Record the end of the run: ``status`` is ``completed``, ``diverged`` or ``failed``."""
    manifest = {**(read(run_dir) or {}), "ended": _now(), "status": status}
    if error is not None:
        manifest["error"] = error
    write(run_dir, manifest)
    return manifest


def differences(run_dirs: list[Path], same_config: dict[str, list[Path]] | None = None) -> list[str]:
    """Warnings about runs that should be comparable and are not.

    Every environment key (versions, commit, platform, device) must agree across all runs;
    runs grouped into one configuration (``same_config``: label -> its run directories)
    must share the scenario up to seed, name and output; every run must have completed.
    """
    manifests = {d: read(d) for d in run_dirs}
    warnings = [f"{d}: no {FILE} (a run from before manifests, or not a run directory)"
                for d, m in manifests.items() if m is None]
    found = {d: m for d, m in manifests.items() if m is not None}
    for key in ENVIRONMENT:
        values = {json.dumps(m.get(key)) for m in found.values()}
        if len(values) > 1:
            seen = ", ".join(sorted(values))
            warnings.append(f"runs differ in {key}: {seen}")
    for d, m in found.items():
        if m.get("status") != "completed":
            warnings.append(f"{d}: status {m.get('status')!r}")
    for label, dirs in (same_config or {}).items():
        hashes = {found[d].get("config_hash") for d in dirs if d in found}
        if len(hashes) > 1:
            warnings.append(f"configuration {label}: its runs were made from different scenarios "
                            f"(config hashes {', '.join(sorted(map(str, hashes)))})")
    return warnings
