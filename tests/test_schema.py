"""The scenario JSON Schema: the shipped copy is current, every shipped scenario points at it
and validates against it, and invalid scenarios (also rejected by fedsim.scenario) do not."""

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from fedsim.cli import app
from fedsim.scenario import ScenarioError, validate
from fedsim.scenario_schema import scenario_schema

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "schema" / "scenario.schema.json"
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))
HEADER = "# yaml-language-server: $schema=../schema/scenario.schema.json"


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SHIPPED.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_shipped_schema_is_current():
    printed = CliRunner().invoke(app, ["schema"])
    assert printed.exit_code == 0
    assert json.loads(printed.output) == scenario_schema()
    # a fresh process: components that other tests register in this one are not built in
    fresh = subprocess.run([sys.executable, "-m", "fedsim", "schema"], capture_output=True, text=True, check=True)
    assert json.loads(SHIPPED.read_text()) == json.loads(fresh.stdout), "stale: run `make schema`"


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_shipped_scenario_names_the_schema_and_validates(path, validator):
    assert path.read_text().splitlines()[0] == HEADER
    errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []


def test_component_keys_are_selected_by_name(validator):
    base = {"name": "x", "rounds": 2, "num_clients": 3}
    fedprox = {**base, "strategy": {"name": "fedprox", "mu": 0.1}}
    assert validator.is_valid(fedprox)
    validate(fedprox)
    strategy = validator.schema["$defs"]["strategy.fedprox"]
    assert strategy["properties"]["name"]["const"] == "fedprox"
    assert strategy["properties"]["mu"]["minimum"] == 0  # FedProxParams: mu >= 0


INVALID = {
    "unknown top-level key": {"rounds_": 3},
    "a bound": {"rounds": 0},
    "another component's key": {"strategy": {"name": "fedavg", "mu": 0.1}},
    "unregistered name": {"strategy": {"name": "fedavgg"}},
    "a param's bound": {"strategy": {"name": "fedprox", "mu": -1}},
    "the other runtime's key": {"runtime": {"name": "ray", "threads": 2}},
    "a nested section's key": {"participation": {"name": "bernoulli", "probabilities": {"kind": "nope"}}},
    "a wrong type": {"client": {"lr": "fast"}},
}


@pytest.mark.parametrize("change", INVALID.values(), ids=INVALID.keys())
def test_invalid_scenarios_fail_the_schema_and_fedsim(change, validator):
    scenario = {"name": "x", "rounds": 2, "num_clients": 3, **change}
    assert not validator.is_valid(scenario)
    with pytest.raises(ScenarioError):
        validate(scenario)


def test_the_readme_scenario_is_ten_lines_and_valid(validator):
    import re

    block = re.search(r"## A scenario\n\n```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    assert block.splitlines()[0] == "# yaml-language-server: $schema=schema/scenario.schema.json"
    assert len(block.strip().splitlines()) == 10
    assert validator.is_valid(yaml.safe_load(block))
    validate(yaml.safe_load(block), "README.md")
