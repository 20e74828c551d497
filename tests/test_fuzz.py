"""Property-based fuzzing (hypothesis) of ``fedsim validate`` and of override parsing: no
input prints a traceback or exits with anything but 0 (valid) or 2 (bad input), and no
YAML tag executes anything (scenarios are read with a safe loader)."""

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fedsim.cli import app

runner = CliRunner()
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))

GOOD = {"name": "t", "rounds": 2, "num_clients": 4, "dataset": {"name": "digits"},
        "strategy": {"name": "fedprox", "mu": 0.1}}

# words the schema knows, so that generated documents reach deep into validation
KEYS = ["name", "rounds", "num_clients", "seed", "dataset", "partition", "model", "strategy", "client",
        "evaluation", "runtime", "output", "faults", "churn", "topology", "network", "byzantine",
        "eavesdropper", "defense", "audit", "participation", "sweep", "lr", "mu", "alpha", "epochs",
        "batch_size", "dir", "threads", "round", "action", "nodes", "fraction", "rounds", "targets"]
NAMES = ["digits", "iid", "dirichlet", "pathological", "shard", "mlp", "cnn", "fedavg", "fedprox", "fedau",
         "inprocess", "ray", "deployment", "ig", "dp", "modest", "ring", "lie", "bernoulli", "crash"]

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True)
           | st.sampled_from(NAMES) | st.text(max_size=12) | st.binary(max_size=8))
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6),
                                                                 inner, max_size=5),
    max_leaves=25,
)
DANGEROUS_TAGS = [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/new:os.system ['touch {marker}']",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!python/object/apply:subprocess.call [['touch', '{marker}']]",
]


def check(args: list[str]) -> int:
    result = runner.invoke(app, ["validate", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}\n{result.output}"
    )
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 2), result.output
    return result.exit_code


def validate_text(content: str | bytes, overrides: list[str] = ()) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.yaml"
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
        return check([str(path), *overrides])


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes(content):
    validate_text(content)


@FUZZ
@given(st.text(max_size=300))
def test_any_text(content):
    validate_text(content)


@FUZZ
@given(documents)
def test_any_yaml_document(doc):
    validate_text(yaml.safe_dump(doc, allow_unicode=True))


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), documents, max_size=4))
@example({"sweep": {"seed": [b"\xff"]}})  # found by hand: bytes the resolved scenario cannot print
def test_a_valid_scenario_with_random_sections_replaced(extra):
    validate_text(yaml.safe_dump(GOOD | extra, allow_unicode=True))


override_keys = st.lists(st.sampled_from(KEYS) | st.text(max_size=5), min_size=0, max_size=4).map(".".join)
override_values = st.sampled_from(NAMES) | st.text(max_size=20) | scalars.map(
    lambda v: yaml.safe_dump(v, default_flow_style=True).removesuffix("\n...\n").strip()
    if not isinstance(v, bytes) else "!!binary " + v.hex())
overrides = st.lists(
    st.builds(lambda k, v: f"{k}={v}", override_keys, override_values) | st.text(max_size=20), max_size=5
)


@FUZZ
@given(overrides)
def test_any_overrides(items):
    validate_text(yaml.safe_dump(GOOD), [i for i in items if i and not i.startswith("-")])


@settings(max_examples=len(DANGEROUS_TAGS) * 2, deadline=None)
@given(st.sampled_from(DANGEROUS_TAGS), st.booleans())
def test_no_yaml_tag_executes_anything(tag, as_override):
    with tempfile.TemporaryDirectory() as tmp:
        marker = Path(tmp) / "pwned"
        value = tag.format(marker=marker)
        if as_override:
            path = Path(tmp) / "s.yaml"
            path.write_text(yaml.safe_dump(GOOD))
            assert check([str(path), f"seed={value}"]) == 2
        else:
            assert validate_text(yaml.safe_dump(GOOD) + f"extra: {value}\n") == 2
        assert not marker.exists()


@FUZZ
@given(st.text(max_size=40))
def test_parse_override_returns_a_path_and_value_or_says_why_not(item):
    from fedsim.scenario import ScenarioError, parse_override

    try:
        path, _ = parse_override(item)
    except ScenarioError as exc:
        assert str(exc).startswith(f"override {item!r}: ")
    else:
        key = item.split("=", 1)[0]
        assert path == key.split(".") and all(path)
