"""The layout shows the design: plugin folders install as ``fedsim.*``, no import cycles
among fedsim's modules, and the core reaches plugins only through the registry."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
# the installed package name of each folder in the repository
FOLDERS = {"fedsim": "fedsim", "strategies": "fedsim.strategies", "attacks": "fedsim.attacks",
           "defenses": "fedsim.defenses"}
PLUGINS = ("fedsim.strategies", "fedsim.attacks", "fedsim.defenses")


def modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """fedsim modules that ``name`` imports anywhere (module level, functions, TYPE_CHECKING)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from pkg import submodule` imports the submodule; `from mod import name` the module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def graph() -> nx.DiGraph:
    mods = modules()
    g = nx.DiGraph()
    g.add_nodes_from(mods)
    for name, path in mods.items():
        g.add_edges_from((name, target) for target in imported(path, name, set(mods)))
    return g


def test_walker_sees_known_edges():
    g = graph()
    assert len(g) >= 80
    assert g.has_edge("fedsim.apps.server", "fedsim.world.base")
    assert g.has_edge("fedsim.strategies.fedspeed", "fedsim.strategies.fedavg")
    assert g.has_edge("fedsim.cli", "fedsim.experiment")  # an import inside a function counts


def test_no_import_cycles():
    cycles = list(nx.simple_cycles(graph()))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c + [c[0]]) for c in cycles[:5])


def test_core_imports_no_plugin():
    g = graph()
    bad = [(a, b) for a, b in g.edges if not a.startswith(PLUGINS) and b.startswith(PLUGINS)]
    assert not bad, f"the core imports plugins by name (use the registry): {bad}"


def test_world_layers_are_registered_in_order():
    from fedsim import registry

    order = {e.name: e.extras["order"] for e in registry.entries()["world_layer"]}
    stack = sorted(order, key=order.get)  # innermost first
    assert stack == ["clock", "canary_audit", "eavesdropper", "byzantine", "faults", "participation"]
    assert registry.get("world_layer", "byzantine").factory.__module__ == "fedsim.attacks.byzantine"


@pytest.mark.slow
def test_wheel_installs_only_fedsim(tmp_path):
    """The wheel's only top-level package is fedsim; plugins import as fedsim.* from it."""
    src = tmp_path / "src"  # a copy, so that the build leaves nothing in the checkout
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "build", "*.egg-info",
                                                            "__pycache__", "benchmarks", "tests", "notebooks"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(src)], check=True)
    wheel = next(tmp_path.glob("fedsim-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.startswith("fedsim-")}
    assert top == {"fedsim"}
    assert "fedsim/strategies/fedau.py" in names and "fedsim/attacks/inversion/prior.py" in names
    assert "fedsim/runtimes/flwr_app/pyproject.toml" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "fedsim = fedsim.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    # from outside the repository: no top-level strategies/attacks/defenses in this install
    code = ("import importlib.util as u; import fedsim.strategies.fedau, fedsim.defenses.sgm;"
            "print([u.find_spec(n) is None for n in ('strategies', 'attacks', 'defenses')])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[True, True, True]"
