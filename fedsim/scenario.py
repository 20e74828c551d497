"""Scenario schema: one YAML file describes a whole federated experiment.

Validation happens in two phases, both reported with the file, the key path, what was
expected and what was found (and the YAML line where there is one):

1. the scenario's own structure (pydantic models, unknown keys forbidden);
2. each component's parameters against the params model its registry entry declares.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from fedsim import registry


class ScenarioError(Exception):
    """An invalid scenario: the message names the file, the key path and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Component(BaseModel):
    """A registered component: ``name`` plus that component's own keyword parameters."""

    model_config = ConfigDict(extra="allow")
    name: str
    _params: registry.Params | None = PrivateAttr(default=None)

    @property
    def params(self) -> registry.Params:
        assert self._params is not None, "component parameters not validated"
        return self._params

    def raw_params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ClientTraining(_Strict):
    """Local training every client runs (strategies may add to it)."""

    epochs: int = Field(1, ge=0)
    steps: int | None = Field(None, ge=1, description="local steps instead of epochs")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)


class Evaluation(_Strict):
    eval_every: int = Field(1, ge=1)
    federated: bool = False
    batch_size: int = Field(1024, ge=1)


class ClientResources(_Strict):
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)


class InProcessRuntime(_Strict):
    name: Literal["inprocess"] = "inprocess"
    threads: int = Field(1, ge=1, description="torch intra-op threads while the run lasts")


class RayRuntime(_Strict):
    name: Literal["ray"]
    address: str | None = None
    client_resources: ClientResources = ClientResources()


Runtime = Annotated[InProcessRuntime | RayRuntime, Field(discriminator="name")]


class Output(_Strict):
    dir: str = "runs"
    save_model: bool = True
    plot: bool = True
    progress: bool = True


class Scenario(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    rounds: int = Field(ge=1)
    num_clients: int = Field(ge=1)
    dataset: Component = Component(name="digits")
    partition: Component = Component(name="iid")
    model: Component = Component(name="mlp")
    strategy: Component = Component(name="fedavg")
    client: ClientTraining = ClientTraining()
    eavesdropper: Component | None = None  # gradient inversion by the server (kind "inversion")
    evaluation: Evaluation = Evaluation()
    runtime: Runtime = InProcessRuntime()
    output: Output = Output()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def digest(self) -> str:
        """Short hash of the resolved scenario (names caches and runs)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


COMPONENTS = {
    "dataset": "dataset",
    "partition": "partitioner",
    "model": "model",
    "strategy": "strategy",
    "eavesdropper": "inversion",
}


# --------------------------------------------------------------------------- loading


def _line_index(text: str) -> dict[tuple, int]:
    """Map each key path of a YAML document to its 1-based line number."""
    index: dict[tuple, int] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                p = path + (key.value,)
                index[p] = key.start_mark.line + 1
                walk(value, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, value in enumerate(node.value):
                index[path + (i,)] = value.start_mark.line + 1
                walk(value, path + (i,))

    try:
        walk(yaml.compose(text, Loader=yaml.SafeLoader), ())
    except yaml.YAMLError:
        pass
    return index


def _describe(err: dict, source: str, lines: dict[tuple, int], data: dict) -> str:
    loc = tuple(err["loc"])
    section = data.get(loc[0]) if loc else None
    if len(loc) > 1 and isinstance(section, dict) and section.get("name") == loc[1]:
        loc = (loc[0],) + loc[2:]  # drop a discriminated union's tag: runtime.ray.x -> runtime.x
    path = ".".join(str(p) for p in loc) or "(top level)"
    line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
    where = f"{source}:{line}" if line else source
    found = err.get("input")
    if err["type"] == "extra_forbidden":
        return f"{where}: key '{path}': unknown key (found {found!r})"
    if err["type"] == "missing":
        return f"{where}: key '{path}': required key is missing"
    shown = json.dumps(found, default=str) if not isinstance(found, dict) else "a mapping"
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{where}: key '{path}': {err['msg']} (found {shown})"


def _fail(errors: list[dict], source: str, lines: dict[tuple, int], data: dict) -> ScenarioError:
    msgs = [_describe(e, source, lines, data) for e in errors]
    head = f"invalid scenario {source}" if len(msgs) > 1 else "invalid scenario"
    return ScenarioError(head + ":\n  " + "\n  ".join(msgs))


def parse_override(item: str) -> tuple[list[str], Any]:
    """``key.path=value``: the value is read as a YAML scalar (numbers, bools, lists)."""
    if "=" not in item:
        raise ScenarioError(f"override {item!r}: expected key.path=value")
    key, raw = item.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ScenarioError(f"override {item!r}: empty key path")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as exc:
        raise ScenarioError(f"override {item!r}: value is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str] | dict[str, Any]) -> dict:
    """Set dotted keys (``strategy.mu=0.1``) in a copy of the raw scenario mapping."""
    data = copy.deepcopy(data)
    items = (
        [(k.replace("__", ".").split("."), v) for k, v in overrides.items()]
        if isinstance(overrides, dict)
        else [parse_override(o) for o in overrides]
    )
    for path, value in items:
        node = data
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ScenarioError(
                    f"override '{'.'.join(path)}': '{'.'.join(path[: i + 1])}' is not a mapping"
                )
            node = nxt
        node[path[-1]] = value
    return data


def read_yaml(path: str | Path) -> tuple[dict, dict[tuple, int]]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ScenarioError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a scenario must be a YAML mapping, found {type(data).__name__}")
    return data, _line_index(text)


def validate(data: dict, source: str = "<scenario>", lines: dict | None = None) -> Scenario:
    """Validate a raw scenario mapping: structure first, then every component's params."""
    lines = lines or {}
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise _fail(exc.errors(), source, lines, data) from None
    errors: list[dict] = []
    for field, kind in COMPONENTS.items():
        comp: Component | None = getattr(scenario, field)
        if comp is None:  # an optional section left out
            continue
        try:
            entry = registry.get(kind, comp.name)
        except KeyError as exc:
            errors.append(
                {"loc": (field, "name"), "type": "value_error", "msg": exc.args[0], "input": comp.name}
            )
            continue
        try:
            comp._params = entry.params.model_validate(comp.raw_params())
        except ValidationError as exc:
            errors += [{**e, "loc": (field, *e["loc"])} for e in exc.errors()]
    if errors:
        raise _fail(errors, source, lines, data)
    return scenario


def load(
    source: str | Path | dict, overrides: list[str] | dict[str, Any] | None = None
) -> Scenario:
    """Read (a file path or a mapping), apply dotted overrides, validate."""
    if isinstance(source, dict):
        data, lines, name = source, {}, "<dict>"
    else:
        data, lines = read_yaml(source)
        name = str(source)
    if overrides:
        data = apply_overrides(data, overrides)
    return validate(data, name, lines)


def from_json(blob: str) -> Scenario:
    """Rebuild a validated scenario from ``Scenario.to_dict()`` JSON (sent to clients)."""
    return validate(json.loads(blob), "<message>")
