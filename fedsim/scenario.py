"""Scenario schema: one YAML file describes a whole federated experiment.

Validation happens in two phases, both reported with the file, the key path, what was
expected and what was found (and the YAML line where there is one):

1. the scenario's own structure (pydantic models, unknown keys forbidden);
2. each component's parameters against the params model its registry entry declares.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator

from fedsim import registry
from fedsim.world.network import ChurnEvent, NetworkParams


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
    max_loss: float = Field(1e4, gt=0, description="stop the run when a loss is NaN or above this")
    federated: bool = False
    batch_size: int = Field(1024, ge=1)


class ClientResources(_Strict):
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)


class InProcessRuntime(_Strict):
    name: Literal["inprocess"] = "inprocess"
    threads: int = Field(1, ge=1, description="torch intra-op threads while the run lasts")
    batched: bool = Field(False, description="train each round's cohort as stacked chunks (torch.func.vmap)")
    batch_clients: int = Field(256, ge=1, description="clients per stacked chunk when batched")


class RayRuntime(_Strict):
    name: Literal["ray"]
    address: str | None = None
    client_resources: ClientResources = ClientResources()
    engine: Literal["actors", "flower"] = Field(
        "actors", description="actors: fedsim's workers, a chunk of the cohort per call; flower: run_simulation"
    )
    workers: int | None = Field(None, ge=1, description="worker actors (default: as many as client_resources fit)")


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as (host, port); ValueError when malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8000")
    return host.removeprefix("[").removesuffix("]"), int(port)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class DeploymentRuntime(_Strict):
    """A running Flower SuperLink with one SuperNode per client (``fedsim cluster up``, compose.yaml)."""

    name: Literal["deployment"]
    superlink: str = Field("127.0.0.1:8000", description="HOST:PORT of the SuperLink (one HTTP port for all its APIs)")
    root_certificates: str | None = Field(
        None, description="CA certificate (PEM) that signed the SuperLink's; null: the system trust store"
    )
    allow_insecure_remote: bool = Field(False, description="allow insecure: true for a SuperLink off this host")
    insecure: bool = Field(False, description="plain HTTP without TLS: loopback SuperLinks only, unless allowed")
    round_timeout: float = Field(
        600.0, gt=0, description="seconds to wait for a round's replies; nodes silent by then count as failed"
    )
    connect_timeout: float = Field(
        300.0, gt=0, description="seconds to wait for num_clients SuperNodes, and for each set-up exchange with them"
    )
    poll_interval: float = Field(0.5, gt=0, description="seconds between the server's pulls for replies")

    @field_validator("superlink")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_address(value)
        return value

    @field_validator("insecure")
    @classmethod
    def _insecure_only_on_loopback(cls, insecure: bool, info: ValidationInfo) -> bool:
        if not insecure:
            return insecure
        if info.data.get("root_certificates"):
            raise ValueError("insecure (no TLS) contradicts root_certificates; set one of them")
        superlink = info.data.get("superlink")
        if superlink and not info.data.get("allow_insecure_remote") and not is_loopback(split_address(superlink)[0]):
            raise ValueError(
                f"insecure (plain HTTP) is allowed only for a loopback SuperLink, not {superlink}: "
                "use TLS (root_certificates) or set allow_insecure_remote: true"
            )
        return insecure


Runtime = Annotated[InProcessRuntime | RayRuntime | DeploymentRuntime, Field(discriminator="name")]


class Faults(_Strict):
    """Injected faults (fedsim.world.faults): crashing clients and stragglers."""

    crash_probability: float = Field(0.0, ge=0, le=1)
    straggler_probability: float = Field(0.0, ge=0, le=1)
    straggler_delay: float = Field(0.0, ge=0, description="seconds a straggler sleeps before training")
    deadline: float | None = Field(None, gt=0, description="seconds the server waits for a straggler")


class Audit(_Strict):
    """One-shot canary-client audit (fedsim.world.audit; Andrew et al., ICLR 2024): ``canaries``
    clients upload C·u_j instead of training; the final model's cosine with each inserted
    u_j, against ``held_out`` directions never inserted, gives an empirical ε lower bound."""

    canaries: int = Field(10, ge=1, description="clients whose upload is a canary direction")
    held_out: int = Field(200, ge=2, description="canary directions never inserted (the null distribution)")
    norm: float | None = Field(None, gt=0, description="canary norm C (default: the dp defense's clip, else 1)")
    delta: float = Field(1e-5, gt=0, lt=1)


class Output(_Strict):
    dir: str = "runs"
    save_model: bool = True
    plot: bool = True
    progress: bool = True
    checkpoint_every: int = Field(0, ge=0, description="save checkpoint.pt every k rounds (0: never)")
    tensorboard: bool = False
    mlflow: bool = False
    mlflow_tracking_uri: str | None = Field(None, description="default: sqlite:///<dir>/mlflow.db")


class Scenario(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    rounds: int = Field(ge=1)
    num_clients: int = Field(ge=1)
    dataset: Component = Component(name="digits")
    partition: Component = Component(name="iid")
    model: Component = Component(name="mlp")
    strategy: Component = Component(name="fedavg")
    faults: Faults | None = None  # injected client crashes and stragglers (fedsim.world.faults)
    participation: Component | None = None  # exogenous client availability (fedsim.world.participation)
    byzantine: Component | None = Field(None, description="compromised clients and their attack")
    client: ClientTraining = ClientTraining()
    eavesdropper: Component | None = None  # gradient inversion by the server (kind "inversion")
    defense: Component | None = None  # a privacy defense wrapping the strategy (kind "defense")
    audit: Audit | None = None  # canary-client privacy audit (fedsim.world.audit)
    evaluation: Evaluation = Evaluation()
    runtime: Runtime = InProcessRuntime()
    output: Output = Output()
    sweep: dict[str, list[Any]] | None = Field(None, description="dotted key -> values; run with fedsim sweep")
    # decentralized runs (fedsim.world.topology, fedsim.world.network)
    topology: Component | None = None
    network: NetworkParams | None = None
    churn: list[ChurnEvent] = []

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
    "participation": "participation",
    "byzantine": "byzantine",
    "topology": "topology",
    "eavesdropper": "inversion",
    "defense": "defense",
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


def _strip_tags(loc: tuple, data: dict) -> tuple:
    """Drop discriminated unions' tags from an error location: runtime.ray.x -> runtime.x,
    participation.probabilities.uniform.low -> participation.probabilities.low."""
    out, node = [], data
    for part in loc:
        if isinstance(node, dict) and part not in node and part in (node.get("name"), node.get("kind")):
            continue
        out.append(part)
        node = node.get(part) if isinstance(node, dict) else None
    return tuple(out)


def _describe(err: dict, source: str, lines: dict[tuple, int], data: dict) -> str:
    loc = _strip_tags(tuple(err["loc"]), data)
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
    errors += _decentralized_only(scenario, data)
    errors += _defense_fits(scenario, data)
    errors += _batched_fits(scenario, data)
    if errors:
        raise _fail(errors, source, lines, data)
    return scenario


def _decentralized_only(scenario: Scenario, data: dict) -> list[dict]:
    """``topology`` and ``churn`` belong to decentralized strategies (registered with ``decentralized=True``).

    For those, the topology must admit its mixing rule at this size, and churn must name
    existing nodes.
    """
    try:
        decentralized = registry.get("strategy", scenario.strategy.name).extras.get("decentralized", False)
    except KeyError:
        return []  # reported above
    if not decentralized:
        msg = f"only decentralized strategies use it; strategy '{scenario.strategy.name}' is centralized"
        return [
            {"loc": (key,), "type": "value_error", "msg": msg, "input": data.get(key)}
            for key in ("topology", "churn")
            if getattr(scenario, key)
        ]
    errors = []
    if scenario.topology is not None and scenario.topology._params is not None:
        from fedsim.world.topology import build_topology

        try:
            build_topology(scenario.topology, scenario.num_clients, scenario.seed).mixing(1)
        except ValueError as exc:
            errors.append({"loc": ("topology",), "type": "value_error", "msg": str(exc), "input": data.get("topology")})
    for i, event in enumerate(scenario.churn):
        bad = [n for n in event.nodes or [] if not 0 <= n < scenario.num_clients]
        if bad:
            msg = f"no such nodes among num_clients={scenario.num_clients}"
            errors.append({"loc": ("churn", i, "nodes"), "type": "value_error", "msg": msg, "input": bad})
    return errors


def _defense_fits(scenario: Scenario, data: dict) -> list[dict]:
    """A defense that wraps a strategy names the strategies it can wrap (``strategies`` extra);
    an audit needs more clients than canaries."""
    errors = []
    if scenario.audit is not None and scenario.audit.canaries >= scenario.num_clients:
        msg = f"needs fewer canary clients than num_clients={scenario.num_clients}"
        errors.append({"loc": ("audit", "canaries"), "type": "value_error", "msg": msg, "input": scenario.audit.canaries})
    if scenario.audit is not None:
        able = [e.name for e in registry.entries()["strategy"] if e.extras.get("canary")]
        if scenario.strategy.name in registry.names("strategy") and scenario.strategy.name not in able:
            msg = f"strategy '{scenario.strategy.name}' has no canary clients; the audit supports {', '.join(able)}"
            errors.append({"loc": ("audit",), "type": "value_error", "msg": msg, "input": data.get("audit")})
    if scenario.defense is None:
        return errors
    try:
        fits = registry.get("defense", scenario.defense.name).extras.get("strategies")
    except KeyError:
        return errors  # reported above
    if fits is not None and scenario.strategy.name not in fits:
        msg = f"defense '{scenario.defense.name}' wraps the strategies {', '.join(fits)}, not '{scenario.strategy.name}'"
        errors.append({"loc": ("defense", "name"), "type": "value_error", "msg": msg, "input": scenario.defense.name})
    return errors


def _batched_fits(scenario: Scenario, data: dict) -> list[dict]:
    """``runtime.batched`` needs a strategy whose client step is local SGD with per-client
    terms (registered with a ``batched`` handler), a defense that declares its client mod
    batchable, no dropout (its masks come from each client's global RNG stream) and no
    canary audit (canary clients upload instead of training)."""
    if not getattr(scenario.runtime, "batched", False):
        return []
    reasons = []
    try:
        strategy = registry.get("strategy", scenario.strategy.name)
        if "batched" not in strategy.extras:
            able = [e.name for e in registry.entries()["strategy"] if "batched" in e.extras]
            reasons.append(
                f"strategy '{scenario.strategy.name}' has no batched client step (its client is not local SGD "
                f"with per-client corrections); batchable strategies: {', '.join(able)}"
            )
    except KeyError:
        pass  # reported above
    if scenario.defense is not None and scenario.defense.name in registry.names("defense"):
        if not registry.get("defense", scenario.defense.name).extras.get("batched"):
            reasons.append(f"defense '{scenario.defense.name}' does not declare a batchable client mod")
    if float(scenario.model.raw_params().get("dropout", 0) or 0) > 0:
        reasons.append("the model has dropout: its masks come from each client's seeded global RNG, "
                       "which vmap cannot replay")
    if scenario.audit is not None:
        reasons.append("a canary audit replaces some clients' training by uploads; run it unbatched")
    return [{"loc": ("runtime", "batched"), "type": "value_error", "msg": f"cannot batch: {r}", "input": True}
            for r in reasons]


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
