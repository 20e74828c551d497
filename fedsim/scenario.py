"""Scenario schema: one YAML file describes a whole federated experiment.

Validation happens in two phases, both reported with the file, the key path, what was
expected and what was found (and the YAML line where there is one):

1. the scenario's own structure (pydantic models, unknown keys forbidden);
2. each component's parameters against the params model its registry entry declares;

then cross-field checks (rounds an attack or churn event names, clients the data can
feed). Every problem of a file and its overrides is reported at once; unknown keys and
names get a "did you mean" from :mod:`difflib`; a problem an override made is blamed on
that override (``override strategy.muu=1``), not on a line of the file.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import typing
import ipaddress
import json
import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel, ConfigDict, Field, JsonValue, PrivateAttr, ValidationError, ValidationInfo, field_validator,
    model_validator,
)

from fedsim import registry
from fedsim.world.devices import AsynchronousParams, DeviceParams, asynchronous_errors
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

    epochs: int = Field(1, ge=0, description="local epochs over the client's data")
    steps: int | None = Field(None, ge=1, description="local steps instead of epochs")
    batch_size: int = Field(32, ge=1, description="local minibatch size")
    lr: float = Field(0.05, gt=0, description="local SGD learning rate")
    momentum: float = Field(0.0, ge=0, lt=1, description="local SGD momentum")
    weight_decay: float = Field(0.0, ge=0, description="local SGD weight decay (L2)")


class Evaluation(_Strict):
    """Evaluation of the global model on the held-out test set (and, optionally, on the clients' data)."""

    eval_every: int = Field(1, ge=1, description="evaluate every k rounds (and the last)")
    max_loss: float = Field(1e4, gt=0, description="stop the run when a loss is NaN or above this")
    federated: bool = Field(False, description="also evaluate the global model on each client's own data (fed_acc)")
    batch_size: int = Field(1024, ge=1, description="evaluation batch size")


class ClientResources(_Strict):
    """Resources of each Ray client actor: how many clients train at once, and where."""

    num_cpus: float = Field(1.0, gt=0, description="CPUs per client actor")
    num_gpus: float = Field(0.0, ge=0, description="GPUs (or a fraction) per client actor")


DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"


class _Device(_Strict):
    device: str = Field(
        "cpu",
        pattern=DEVICE_PATTERN,
        description="where models train and evaluate: auto (CUDA when present) | cpu | cuda | cuda:N | mps",
    )

    @field_validator("device")
    @classmethod
    def _device_exists(cls, value: str) -> str:
        from fedsim.training import resolve_device

        resolve_device(value)  # ValueError naming what is missing
        return value


class InProcessRuntime(_Device):
    """fedsim's own Grid: the ClientApp is called in this process, one message after another."""

    name: Literal["inprocess"] = "inprocess"
    threads: int = Field(1, ge=1, description="torch intra-op threads while the run lasts")
    batched: bool = Field(False, description="train each round's cohort as stacked chunks (torch.func.vmap)")
    batch_clients: int = Field(256, ge=1, description="clients per stacked chunk when batched")


class RayRuntime(_Device):
    """Ray actors host the ClientApp; ``client_resources.num_gpus`` > 0 gives each actor
    that share of a GPU (Ray hides GPUs from actors that ask for none)."""

    name: Literal["ray"]
    address: str | None = Field(None, description='a running Ray cluster ("auto" or HOST:PORT); null: a local Ray instance')
    client_resources: ClientResources = ClientResources()
    engine: Literal["actors", "flower"] = Field(
        "actors", description="actors: fedsim's workers, a chunk of the cohort per call; flower: run_simulation"
    )
    workers: int | None = Field(None, ge=1, description="worker actors (default: as many as client_resources fit)")

    @model_validator(mode="after")
    def _gpu_actors(self) -> RayRuntime:
        if self.device.startswith("cuda") and self.client_resources.num_gpus == 0:
            raise ValueError(
                f"device: {self.device} needs client_resources.num_gpus > 0 (e.g. 0.25: four actors per GPU); "
                "Ray hides the GPUs from actors that ask for none"
            )
        if self.device.startswith("cuda:") and self.device != "cuda:0":
            raise ValueError(f"device: {self.device}: a Ray actor sees only the GPU Ray gives it, as cuda:0; use cuda")
        return self


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
    """What a run writes, and where: <dir>/<name>/<timestamp>/."""

    dir: str = Field("runs", description="root of the run directories")
    save_model: bool = Field(True, description="write model.pt (the final global model's state dict)")
    plot: bool = Field(True, description="write metrics.png")
    progress: bool = Field(True, description="rich progress bar and summary table")
    checkpoint_every: int = Field(0, ge=0, description="save checkpoint.pt every k rounds (0: never)")
    tensorboard: bool = Field(False, description="also log to TensorBoard (<run dir>/tensorboard)")
    mlflow: bool = Field(False, description="also log to MLflow")
    mlflow_tracking_uri: str | None = Field(None, description="default: sqlite:///<dir>/mlflow.db")


class Scenario(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="the run directory: <output.dir>/<name>/<timestamp>")
    seed: int = Field(0, description="the root of every random stream")
    rounds: int = Field(ge=1, description="communication rounds")
    num_clients: int = Field(ge=1, description="clients (nodes); client i holds partition i")
    dataset: Component = Field(Component(name="digits"), description="the data (kind dataset)")
    partition: Component = Field(Component(name="iid"), description="how the training set is split over clients (kind partitioner)")
    model: Component = Field(Component(name="mlp"), description="the model; input shape and classes come from the data")
    strategy: Component = Field(Component(name="fedavg"), description="the algorithm (kind strategy)")
    faults: Faults | None = Field(None, description="injected client crashes and stragglers (fedsim.world.faults)")
    participation: Component | None = Field(None, description="exogenous client availability (fedsim.world.participation)")
    byzantine: Component | None = Field(None, description="compromised clients and their attack")
    client: ClientTraining = Field(ClientTraining(), description="local training of every client")
    eavesdropper: Component | None = Field(None, description="gradient inversion by the server (kind inversion)")
    defense: Component | None = Field(None, description="a privacy defense wrapping the strategy (kind defense)")
    audit: Audit | None = Field(None, description="canary-client privacy audit (fedsim.world.audit)")
    evaluation: Evaluation = Field(Evaluation(), description="evaluation of the global model")
    runtime: Runtime = Field(InProcessRuntime(), description="where the Flower app runs: inprocess, ray or deployment")
    output: Output = Field(Output(), description="what the run writes")
    sweep: dict[str, list[JsonValue]] | None = Field(None, description="dotted key -> values; run with fedsim sweep")
    # decentralized runs (fedsim.world.topology, fedsim.world.network)
    topology: Component | None = Field(None, description="the gossip graph of decentralized strategies (kind topology)")
    network: NetworkParams | None = Field(None, description="the virtual clock's network model")
    churn: list[ChurnEvent] = Field([], description="nodes that crash, leave or join (decentralized strategies)")
    # event-driven runs on the virtual clock (fedsim.apps.asynchronous, fedsim.world.devices)
    asynchronous: AsynchronousParams | None = Field(
        None, description="event-driven (asynchronous) execution on the virtual clock")
    devices: DeviceParams | None = Field(None, description="per-client device speeds and availability (or a trace)")

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
    """Map each key path of a YAML document to its 1-based line number (an aliased node
    is walked once: a document of nested aliases stays linear)."""
    index: dict[tuple, int] = {}
    seen: set[int] = set()

    def walk(node, path):
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    p = path + (key.value,)
                    index[p] = key.start_mark.line + 1
                    walk(value, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, value in enumerate(node.value):
                index[path + (i,)] = value.start_mark.line + 1
                walk(value, path + (i,))

    try:
        walk(yaml.compose(text, Loader=yaml.SafeLoader), ())
    except (yaml.YAMLError, RecursionError):
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


def _shown(value: Any) -> str:
    """A found value in a message: JSON for scalars, short and bounded for the rest (a
    YAML document can alias one list into an exponentially large tree)."""
    if isinstance(value, dict):
        return "a mapping"
    if value is None or isinstance(value, (str, int, float, bool)):
        shown = json.dumps(value)
    else:
        shown = _REPR.repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


_REPR = reprlib.Repr()  # Python 3.11's Repr takes no keyword arguments
_REPR.maxlevel, _REPR.maxlist, _REPR.maxstring, _REPR.maxother = 3, 6, 60, 60


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, unions, lists)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _known_keys(parent: tuple, data: dict) -> list[str]:
    """The keys the scenario allows in the mapping at ``parent`` (for "did you mean")."""
    node: Any = data
    models: list[type[BaseModel]] = [Scenario]
    keys: list[str] = []
    rest = parent
    if parent and parent[0] in COMPONENTS:
        section = data.get(parent[0])
        if not isinstance(section, dict) or not isinstance(section.get("name"), str):
            return []
        try:
            models = [registry.get(COMPONENTS[parent[0]], section["name"]).params]
        except KeyError:
            return []
        node, rest, keys = section, parent[1:], ["name"] if len(parent) == 1 else []
    for part in rest:
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
        if isinstance(part, int):  # an item of a list: the same models
            continue
        models = [m for model in models if part in model.model_fields
                  for m in _models_in(model.model_fields[part].annotation)]
    if len(models) > 1 and isinstance(node, dict):  # a discriminated union: the one named
        named = [m for m in models if "name" in m.model_fields
                 and node.get("name") in typing.get_args(m.model_fields["name"].annotation)]
        models = named or models
    return keys + [k for m in models for k in m.model_fields]


def did_you_mean(word: Any, choices: list[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` (difflib), else ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _override_for(loc: tuple, origins: dict[tuple, str]) -> str | None:
    """The override that set the value at ``loc`` or a mapping above it."""
    return next((origins[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in origins), None)


def _describe(err: dict, source: str, lines: dict[tuple, int], data: dict, origins: dict[tuple, str]) -> str:
    loc = _strip_tags(tuple(err["loc"]), data)
    ctx = err.get("ctx", {})
    if err["type"] == "union_tag_invalid":  # the tag key itself (runtime.name)
        loc = (*loc, str(ctx.get("discriminator", "name")).strip("'"))
    path = ".".join(str(p) for p in loc) or "(top level)"
    override = _override_for(loc, origins) if loc else None
    if override is not None:
        where = f"override {override}"
    else:
        line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
        where = f"{source}:{line}" if line else source
    found = err.get("input")
    if err["type"] == "extra_forbidden":
        hint = did_you_mean(loc[-1], _known_keys(loc[:-1], data)) if loc else ""
        return f"{where}: key '{path}': unknown key (found {_shown(found)}){hint}"
    if err["type"] == "missing":
        return f"{where}: key '{path}': required key is missing"
    if err["type"] in ("union_tag_invalid", "literal_error"):
        choices = re.findall(r"'([^']*)'", ctx.get("expected_tags", ctx.get("expected", "")))
        word = ctx.get("tag", found)
        return (f"{where}: key '{path}': unknown value {_shown(word)}{did_you_mean(word, choices)} "
                f"(choices: {', '.join(choices)})")
    return f"{where}: key '{path}': {err['msg']} (found {_shown(found)})"


def _fail(errors: list[dict], source: str, lines: dict[tuple, int], data: dict,
          origins: dict[tuple, str] | None = None) -> ScenarioError:
    msgs = list(dict.fromkeys(_describe(e, source, lines, data, origins or {}) for e in errors))
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


def apply_overrides(data: dict, overrides: list[str] | dict[str, Any], origins: dict[tuple, str] | None = None) -> dict:
    """Set dotted keys (``strategy.mu=0.1``) in a copy of the raw scenario mapping.

    Every malformed override is reported at once; ``origins`` (when given) receives each
    key path set and the override that set it, so validation blames the override."""
    data = copy.deepcopy(data)
    items: list[tuple[list[str], Any, str]] = []
    problems: list[str] = []
    if isinstance(overrides, dict):
        items = [(k.replace("__", ".").split("."), v, f"{k.replace('__', '.')}={v}") for k, v in overrides.items()]
    else:
        for item in overrides:
            try:
                items.append((*parse_override(item), item))
            except ScenarioError as exc:
                problems.append(str(exc))
    for path, value, text in items:
        node = data
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                problems.append(f"override {text}: '{'.'.join(path[: i + 1])}' is not a mapping")
                break
            node = nxt
        else:
            node[path[-1]] = value
            if origins is not None:
                origins[tuple(path)] = text
    if problems:
        raise ScenarioError("\n".join(problems) if len(problems) == 1 else "invalid overrides:\n  " + "\n  ".join(problems))
    return data


def read_yaml(path: str | Path) -> tuple[dict, dict[tuple, int]]:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(
            f"{path}: not a text file (byte {exc.start} is not UTF-8): a scenario is a YAML mapping"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ScenarioError(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise ScenarioError(f"{path}: nested too deeply to be a scenario") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a scenario must be a YAML mapping, found {type(data).__name__}")
    return data, _line_index(text)


def validate(data: dict, source: str = "<scenario>", lines: dict | None = None,
             origins: dict[tuple, str] | None = None) -> Scenario:
    """Validate a raw scenario mapping: its structure, every component's params, then the
    cross-field checks; all problems are reported together."""
    lines = lines or {}
    scenario: Scenario | None = None
    errors: list[dict] = []
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        errors += exc.errors()
    errors += _component_errors(scenario, data)
    if scenario is not None:
        errors += _decentralized_only(scenario, data)
        errors += _defense_fits(scenario, data)
        errors += _rounds_in_range(scenario)
        errors += _data_fits(scenario)
        errors += asynchronous_errors(scenario, data)
        errors += _device_fits(scenario)
        errors += _batched_fits(scenario, data)
    if errors:
        raise _fail(errors, source, lines, data, origins)
    assert scenario is not None
    return scenario


def _component_errors(scenario: Scenario | None, data: dict) -> list[dict]:
    """Each component's params against its registered params model (kept on the
    component). Without a valid scenario, the raw sections that name a component."""
    errors: list[dict] = []
    for field, kind in COMPONENTS.items():
        comp: Component | None = None
        if scenario is not None:
            comp = getattr(scenario, field)
            if comp is None:  # an optional section left out
                continue
            name, raw = comp.name, comp.raw_params()
        else:
            section = data.get(field) if isinstance(data, dict) else None
            if not isinstance(section, dict) or not isinstance(section.get("name"), str):
                continue
            name, raw = section["name"], {k: v for k, v in section.items() if k != "name"}
        try:
            entry = registry.get(kind, name)
        except KeyError as exc:
            msg = exc.args[0] + did_you_mean(name, registry.names(kind))
            errors.append({"loc": (field, "name"), "type": "value_error", "msg": msg, "input": name})
            continue
        try:
            params = entry.params.model_validate(raw)
        except ValidationError as exc:
            errors += [{**e, "loc": (field, *e["loc"])} for e in exc.errors()]
            continue
        if comp is not None:  # the resolved scenario names every parameter, defaults included
            comp._params = params
            comp.__pydantic_extra__ = params.model_dump()
    return errors


def _rounds_in_range(scenario: Scenario) -> list[dict]:
    """Rounds a component or a churn event names must exist (1..rounds); client ids a
    component targets (``targets``) must be partition ids (0..num_clients-1)."""
    errors = []
    for field in COMPONENTS:
        comp: Component | None = getattr(scenario, field)
        params = comp._params if comp is not None else None
        for key, low, high, what in (("rounds", 1, scenario.rounds, f"rounds={scenario.rounds}"),
                                     ("targets", 0, scenario.num_clients - 1, f"num_clients={scenario.num_clients}")):
            values = getattr(params, key, None)
            if not isinstance(values, (list, tuple, set, frozenset)):
                continue
            bad = sorted(v for v in values if isinstance(v, int) and not low <= v <= high)
            if bad:
                msg = f"{bad} out of range: the scenario has {what} ({key} {low}..{high})"
                errors.append({"loc": (field, key), "type": "value_error", "msg": msg, "input": bad})
    for i, event in enumerate(scenario.churn):
        if event.round > scenario.rounds:
            msg = f"churn at round {event.round} never happens: the scenario has rounds={scenario.rounds}"
            errors.append({"loc": ("churn", i, "round"), "type": "value_error", "msg": msg, "input": event.round})
    return errors


def _data_fits(scenario: Scenario) -> list[dict]:
    """num_clients against the training examples the dataset holds (datasets that know it
    before loading register ``train_size=f(params)``; partitioners that need more than one
    example per client register ``min_examples=f(params, num_clients)``)."""
    ds, part, n = scenario.dataset, scenario.partition, scenario.num_clients
    if ds._params is None or part._params is None:
        return []
    size = registry.get("dataset", ds.name).extras.get("train_size", lambda p: None)(ds._params)
    if size is None:
        return []
    need = registry.get("partitioner", part.name).extras.get("min_examples", lambda p, k: k)(part._params, n)
    if need <= size:
        return []
    msg = (f"dataset '{ds.name}' has {size} training examples; partition '{part.name}' needs {need} "
           f"for {n} clients: lower num_clients")
    return [{"loc": ("num_clients",), "type": "value_error", "msg": msg, "input": n}]


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


def _device_fits(scenario: Scenario) -> list[dict]:
    """Strategies registered with ``cpu_only=True`` (client code that draws its seeded noise
    or state on CPU next to the model) refuse a GPU ``runtime.device``."""
    device = getattr(scenario.runtime, "device", "cpu")
    try:
        cpu_only = registry.get("strategy", scenario.strategy.name).extras.get("cpu_only", False)
    except KeyError:
        return []  # reported above
    from fedsim.training import resolve_device

    if not cpu_only or resolve_device(device).type == "cpu":
        return []
    msg = f"strategy '{scenario.strategy.name}' trains on CPU only; use device: cpu"
    return [{"loc": ("runtime", "device"), "type": "value_error", "msg": msg, "input": device}]


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
    origins: dict[tuple, str] = {}
    try:
        if overrides:
            data = apply_overrides(data, overrides, origins)
        return validate(data, name, lines, origins)
    except RecursionError:
        raise ScenarioError(f"{name}: nested too deeply to be a scenario") from None


def from_json(blob: str) -> Scenario:
    """Rebuild a validated scenario from ``Scenario.to_dict()`` JSON (sent to clients)."""
    return validate(json.loads(blob), "<message>")
