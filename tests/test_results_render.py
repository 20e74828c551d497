"""The rendered results pages and README summary equal what their results files render to."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import render  # noqa: E402


@pytest.mark.parametrize("path", sorted(render.expected(), key=str), ids=lambda p: p.name)
def test_rendered_file_matches_its_results(path):
    assert path.exists(), f"{path} missing: run python benchmarks/render.py"
    assert path.read_text() == render.expected()[path], f"{path} is stale: run python benchmarks/render.py"


def test_no_page_without_a_results_file():
    assert [p for p in render.PAGES.glob("*.md") if p.stem != "claims" and not (render.RESULTS / f"{p.stem}.json").exists()] == []


def test_verdicts_are_computed_from_the_values():
    sys.path.insert(0, str(render.ROOT / "benchmarks"))
    import reporting

    for record in render.records():
        for c in record["claims"]:
            again = reporting.verdict(c["values"], c["baseline_values"], c["higher_is_better"], c.get("min_effect", 0.0))
            assert again["verdict"] == c["verdict"], (record["name"], c["claim"])


def test_render_formats_hand_checked_cells():
    assert render.fmt(0.94351) == "0.9435" and render.fmt(None) == "—" and render.fmt(1234567.0) == "1.235e+06"
    assert render.mean_sd([1.0, 2.0, 3.0]) == "2 ± 1"
    assert render.table([{"a": 1, "b": 0.5}, {"a": 2, "c": "x|y"}]) == [
        "| a | b | c |", "|---|---|---|", "| 1 | 0.5 | — |", "| 2 | — | x\\|y |"]


def test_every_claim_that_did_not_reproduce_has_a_cause():
    """Every claim not reproduced (or inconclusive) is shown with a cause from benchmarks/causes.py."""
    from causes import cause

    missing = [(r["name"], c["claim"]) for r in render.records() for c in r["claims"]
               if c["verdict"] != "reproduced" and cause(r["name"], c["claim"]) is None]
    assert missing == [], f"add a cause to benchmarks/causes.py for: {missing}"
