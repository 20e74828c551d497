"""Scenario validation: every bad input gives one clear message and exit status 2."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fedsim.cli import app
from fedsim.scenario import ScenarioError, load

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

GOOD = """\
name: t
rounds: 2
num_clients: 4
dataset:
  name: digits
strategy:
  name: fedprox
  mu: 0.1
"""


def write(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD + "roundz: 3\n", ["s.yaml:9", "'roundz'", "unknown key"]),
        (GOOD.replace("mu: 0.1", "mu: 0.1\n  muu: 2"), ["s.yaml:9", "'strategy.muu'", "unknown key"]),
        (GOOD.replace("mu: 0.1", "mu: -1"), ["s.yaml:8", "'strategy.mu'", "greater than or equal to 0", "found -1"]),
        (GOOD.replace("rounds: 2", "rounds: many"), ["s.yaml:2", "'rounds'", "valid integer", '"many"']),
        (GOOD.replace("name: fedprox", "name: fedprocks"), ["s.yaml:7", "'strategy.name'", "unknown strategy 'fedprocks'", "fedavg"]),
        (GOOD.replace("num_clients: 4\n", ""), ["'num_clients'", "required key is missing"]),
        (GOOD + "runtime:\n  name: inprocess\n  address: 1.2.3.4\n", ["s.yaml:11", "'runtime.address'", "unknown key"]),
        (GOOD + "runtime:\n  name: spark\n", ["s.yaml:10", "'runtime.name'", "spark", "choices: inprocess, ray"]),
        (GOOD + "dataset: [1, 2\n", ["s.yaml", "not valid YAML"]),
        ("- just\n- a list\n", ["must be a YAML mapping", "list"]),
    ],
)
def test_invalid_scenarios_exit_2_with_a_clear_message(tmp_path, text, expected):
    path = write(tmp_path, text)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for piece in expected:
        assert piece in result.output, (piece, result.output)


def test_bad_override_and_missing_file(tmp_path):
    path = write(tmp_path, GOOD)
    result = runner.invoke(app, ["validate", str(path), "strategy.mu"])
    assert result.exit_code == 2 and "expected key.path=value" in result.output
    result = runner.invoke(app, ["validate", str(path), "strategy.mu=-3"])
    assert result.exit_code == 2 and "'strategy.mu'" in result.output
    result = runner.invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "cannot read scenario" in result.output


def test_the_real_cli_prints_no_traceback(tmp_path):
    path = write(tmp_path, GOOD.replace("mu: 0.1", "mu: lots"))
    proc = subprocess.run([sys.executable, "-m", "fedsim", "run", str(path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "'strategy.mu'" in proc.stderr


def test_overrides_set_nested_keys_and_components_get_their_params(tmp_path):
    path = write(tmp_path, GOOD)
    sc = load(path, ["strategy.mu=0.5", "client.lr=0.2", "partition.name=dirichlet", "partition.alpha=0.1"])
    assert sc.strategy.params.mu == 0.5
    assert sc.client.lr == 0.2
    assert sc.partition.params.alpha == 0.1
    assert sc.model.name == "mlp"  # defaults filled in


def test_resolved_scenario_round_trips(tmp_path):
    sc = load(write(tmp_path, GOOD))
    again = load(sc.to_dict())
    assert again.to_dict() == sc.to_dict()
    assert again.digest() == sc.digest()


def test_yaml_is_read_with_a_safe_loader(tmp_path):
    path = write(tmp_path, GOOD + "extra: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load(path)


def test_every_shipped_scenario_validates():
    for path in sorted((ROOT / "scenarios").glob("*.yaml")):
        load(path)
        assert yaml.safe_load(path.read_text())["name"]


def test_all_problems_of_a_file_and_its_overrides_at_once_with_did_you_mean(tmp_path):
    path = write(tmp_path, GOOD.replace("strategy:", "clinet:\n  lr: 0.1\nstrategy:").replace("mu: 0.1", "mu: 0.1\n  muu: 2"))
    result = runner.invoke(app, ["validate", str(path), "client.lrr=2", "rounds=x", "runtime.name=rey"])
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert lines[0] == f"error: invalid scenario {path}:"
    expected = [
        "s.yaml:6: key 'clinet': unknown key (found a mapping); did you mean 'client'?",
        "override rounds=x: key 'rounds': Input should be a valid integer",
        "override client.lrr=2: key 'client.lrr': unknown key (found 2); did you mean 'lr'?",
        "override runtime.name=rey: key 'runtime.name': unknown value \"rey\"; did you mean 'ray'? "
        "(choices: inprocess, ray, deployment)",
        "s.yaml:11: key 'strategy.muu': unknown key (found 2); did you mean 'mu'?",
    ]
    for piece in expected:
        assert any(piece in line for line in lines), (piece, result.output)
    assert len(lines) == 1 + len(expected)


def test_an_override_is_blamed_on_the_override_not_a_file_line(tmp_path):
    path = write(tmp_path, GOOD)
    result = runner.invoke(app, ["validate", str(path), "strategy.muu=1"])
    assert result.exit_code == 2
    assert "override strategy.muu=1: key 'strategy.muu': unknown key (found 1); did you mean 'mu'?" in result.output
    assert "s.yaml:" not in result.output


def test_unknown_component_names_get_did_you_mean(tmp_path):
    path = write(tmp_path, GOOD)
    result = runner.invoke(app, ["validate", str(path), "strategy.name=fedprx", "model.name=cnnn"])
    assert "override strategy.name=fedprx: key 'strategy.name': unknown strategy 'fedprx'" in result.output
    assert "did you mean 'fedprox'?" in result.output
    assert "did you mean 'cnn'?" in result.output


def test_several_malformed_overrides_are_reported_together(tmp_path):
    path = write(tmp_path, GOOD)
    result = runner.invoke(app, ["validate", str(path), "strategy.mu", "=3", "rounds.x=1"])
    assert result.exit_code == 2
    for piece in ("override 'strategy.mu': expected key.path=value", "override '=3': empty key path",
                  "override rounds.x=1: 'rounds' is not a mapping"):
        assert piece in result.output, (piece, result.output)


def test_the_docs_error_example_is_what_fedsim_prints(tmp_path, monkeypatch):
    """The `fedsim validate bad.yaml` block of docs/scenarios.md, reproduced with a file whose
    line 8 holds mu: -1 and line 9 muu: 2."""
    readme = (ROOT / "docs" / "scenarios.md").read_text()
    block = readme.split("$ fedsim validate bad.yaml\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(GOOD.replace("mu: 0.1", "mu: -1\n  muu: 2"))
    result = runner.invoke(app, ["validate", "bad.yaml"])
    assert result.exit_code == 2
    assert result.output == block


def test_resolved_scenarios_name_every_component_default_and_validate_again():
    """The resolved scenario (scenario.yaml, fedsim validate) lists each component's
    parameters with their defaults; it validates again to the same scenario."""
    from fedsim import registry

    for path in sorted((ROOT / "scenarios").glob("*.yaml")):
        sc = load(path)
        resolved = sc.to_dict()
        for field, kind in (("dataset", "dataset"), ("partition", "partitioner"), ("model", "model"), ("strategy", "strategy")):
            params = registry.get(kind, resolved[field]["name"]).params
            assert set(resolved[field]) == {"name", *params.model_fields}, (path.name, field)
        assert load(resolved).to_dict() == resolved, path.name
    resolved = load(ROOT / "scenarios" / "fedprox.yaml").to_dict()  # neither key is in the file
    assert resolved["partition"]["self_balancing"] is False and resolved["model"]["dropout"] == 0.0
