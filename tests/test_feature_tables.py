"""The results tables of the feature pages (async, engine, batched, multi-node) are what their results
files render to: nobody typed them, and a rerun that changed a number also changed the page."""

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import reporting  # noqa: E402

PAGES = [  # (benchmark module, results file or None for the module's own render(), docs page)
    ("async", "async", "docs/async.md"),
    ("scale", "scale", "docs/engine.md"),
    ("runtime_overhead", "runtime_overhead", "docs/engine.md"),
    ("batched", None, "docs/batched.md"),
    ("deployment", "deployment", "docs/multinode.md"),
]


@pytest.mark.parametrize(("module", "results", "page"), PAGES, ids=[p[0] for p in PAGES])
def test_feature_page_table_is_rendered_from_its_results_file(module, results, page):
    bench = importlib.import_module(module)
    rendered = bench.render() if results is None else bench.render(reporting.read(results))
    assert rendered.strip(), module
    assert rendered in (ROOT / page).read_text(), f"{page} is stale: rerun {module}.py --render"
