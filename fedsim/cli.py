"""The ``fedsim`` command line (typer + rich).

Every user error (an invalid scenario, a bad override, a missing file) prints one clear
message and exits with status 2, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table




def _keep_argument_help() -> None:
    """Show each argument's help: click >= 8.3 gives ``Argument`` a ``help`` of its own
    and its ``__init__`` resets it after typer 0.20's ``TyperArgument`` has set it."""
    from typer.core import TyperArgument

    if getattr(TyperArgument, "_fedsim_keeps_help", False):
        return
    init = TyperArgument.__init__

    def __init__(self, *args, help: str | None = None, **kwargs):  # noqa: A002 (click's name)
        init(self, *args, help=help, **kwargs)
        self.help = help

    TyperArgument.__init__ = __init__
    TyperArgument._fedsim_keeps_help = True


_keep_argument_help()
app = typer.Typer(no_args_is_help=True, add_completion=False, help="Federated-learning simulation on Flower.")
out = Console()
err = Console(stderr=True, soft_wrap=True)

ScenarioFile = Annotated[Path, typer.Argument(help="scenario YAML file")]
Overrides = Annotated[
    list[str] | None,
    typer.Argument(help="overrides: dotted keys with YAML values, e.g. rounds=5 strategy.mu=0.1 client.lr=0.02", show_default=False),
]


def _load(file: Path, overrides: list[str] | None):
    from fedsim.scenario import ScenarioError, load

    try:
        return load(file, overrides or [])
    except ScenarioError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, markup=True)
        raise typer.Exit(2) from None


OVERRIDE_EPILOG = ("Overrides set any key of the scenario for this run: key.path=value, the value read as YAML "
                   "(numbers, true/false, \\[lists]), e.g. fedsim run scenarios/fedprox.yaml rounds=5 "
                   "strategy.mu=0.1 partition.alpha=0.3 runtime.name=ray")


@app.command(epilog=OVERRIDE_EPILOG)
def run(file: ScenarioFile, overrides: Overrides = None) -> None:
    """Run a scenario: fedsim run FILE \\[key.path=value ...]."""
    from fedsim.experiment import run_scenario

    scenario = _load(file, overrides)
    if scenario.sweep:
        sweep(file, [])
        return
    _execute(lambda: run_scenario(scenario))


def _execute(job):
    """Run a job; a divergence, a deployment that could not finish or a disk fault exits 1,
    a data, scenario or checkpoint problem 2, each with one message."""
    from fedsim.runtimes.deployment import DeploymentError
    from fedsim.apps.server import Diverged
    from fedsim.scenario import ScenarioError

    try:
        return job()
    except Diverged as exc:
        err.print(f"[red]stopped:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    except (ScenarioError, ValueError, FileNotFoundError) as exc:  # problems the user can fix
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except OSError as exc:  # the machine: a full disk, a read-only or blocked output path
        where = f" {exc.filename}" if exc.filename else ""
        err.print(f"[red]error:[/red] cannot write{where}: {exc.strerror or exc} "
                  "(check output.dir: free space, permissions, and that no file is in the way); "
                  "files written before are intact", highlight=False)
        raise typer.Exit(1) from None
    except DeploymentError as exc:  # the run started on a SuperLink and could not finish
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None


@app.command()
def resume(run_dir: Annotated[Path, typer.Argument(help="a run directory with a checkpoint.pt")]) -> None:
    """Continue a run from its last checkpoint (output.checkpoint_every)."""
    from fedsim.experiment import resume_run

    if not (run_dir / "scenario.yaml").exists():
        err.print(f"[red]error:[/red] {run_dir}: not a run directory (no scenario.yaml)")
        raise typer.Exit(2)
    _execute(lambda: resume_run(run_dir))


@app.command()
def sweep(
    file: ScenarioFile,
    axes: Annotated[list[str] | None, typer.Argument(help="grid axes: key.path=v1,v2,...")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="configurations run in parallel processes")] = 1,
    out_dir: Annotated[Path | None, typer.Option("--dir", help="sweep directory (default runs/<name>-sweep)")] = None,
) -> None:
    """Run every combination of the scenario's sweep: grid and the axes given here."""
    from fedsim.sweep import run_sweep

    sweep_dir = _execute(lambda: run_sweep(file, axes or [], jobs=jobs, out_dir=out_dir, log=err.print))
    err.print(f"sweep directory: {sweep_dir}  (fedsim report {sweep_dir})")


@app.command()
def report(
    sweep_dir: Annotated[Path, typer.Argument(help="a sweep directory")],
    target: Annotated[float, typer.Option(help="accuracy for 'rounds to target'")] = 0.9,
) -> None:
    """Table over a sweep's runs (mean ± std over seeds) and comparison plots."""
    from fedsim.sweep import manifest_warnings, report as make_report

    table = _execute(lambda: make_report(sweep_dir, target))
    for warning in manifest_warnings(sweep_dir):
        err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    view = Table(title=f"{sweep_dir}")
    for col in table.columns:  # whole cells: two configurations never look the same
        view.add_column(str(col), justify="left" if col == "config" else "right", no_wrap=True)
    for row in table.itertuples(index=False):
        view.add_row(*(str(v) for v in row))
    _print_whole(view)
    err.print(f"wrote {sweep_dir / 'report.csv'} and {sweep_dir / 'report_accuracy.png'}")


def _print_whole(table: Table) -> None:
    """Print a table at its natural width, wider than the terminal if need be (not cut)."""
    from rich.measure import Measurement

    width = Measurement.get(out, out.options.update(width=100_000), table).maximum
    Console(width=max(out.width, width)).print(table)


@app.command()
def attack(file: ScenarioFile, overrides: Overrides = None) -> None:
    """Run the scenario's eavesdropper attack standalone on one client step (round 1)."""
    from fedsim import registry

    attack_one_step = registry.get("command", "attack").factory
    scenario = _load(file, overrides)
    results, _, run_dir = _execute(lambda: attack_one_step(scenario))
    table = Table(title=f"{scenario.name}: {scenario.eavesdropper.name} on one client step")
    for col in ("client", "upload", "examples", "PSNR (dB)", "SSIM", "label acc", "matching loss", "seconds"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(str(r["client"]), r["upload"], str(r["examples"]), f"{r['psnr']:.2f}", f"{r['ssim']:.3f}",
                      f"{r['label_acc']:.2f}", f"{r['matching_loss']:.2e}", f"{r['seconds']:.1f}")
    out.print(table)
    out.print(f"LPIPS: {results[0]['lpips']}; run directory: {run_dir}")


@app.command()
def trace(
    path: Annotated[Path, typer.Argument(help="CSV file to write")],
    clients: Annotated[int, typer.Option(min=1, help="number of clients")] = 100,
    horizon: Annotated[float, typer.Option(min=0, help="virtual seconds of availability to draw")] = 3600.0,
    seed: Annotated[int, typer.Option(help="seed of every draw")] = 0,
    compute: Annotated[float, typer.Option(min=0, help="mean seconds per training example")] = 0.005,
    bandwidth: Annotated[float, typer.Option(min=0, help="bytes per second")] = 1.25e6,
    latency: Annotated[float, typer.Option(min=0, help="one-way latency (s)")] = 0.05,
    heterogeneity: Annotated[float, typer.Option(min=0, help="log-normal spread of device speeds")] = 1.0,
    mean_online: Annotated[float | None, typer.Option(help="mean online period (s); unset: always online")] = None,
    mean_offline: Annotated[float, typer.Option(min=0, help="mean offline period (s)")] = 600.0,
) -> None:
    """Write a synthetic device and availability trace (devices.trace; see docs/async.md)."""
    from pydantic import ValidationError

    from fedsim.world.devices import Availability, synthetic_trace
    from fedsim.world.network import NetworkParams

    try:
        network = NetworkParams(compute_seconds_per_example=compute, bandwidth=bandwidth, latency=latency,
                                heterogeneity=heterogeneity)
        availability = None if mean_online is None else Availability(mean_online=mean_online, mean_offline=mean_offline)
    except ValidationError as exc:
        err.print(f"[red]error:[/red] {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}", highlight=False)
        raise typer.Exit(2) from None
    try:
        synthetic_trace(path, clients, seed, horizon, network, availability)
    except OSError as exc:
        err.print(f"[red]error:[/red] {path}: {exc.strerror}", highlight=False)
        raise typer.Exit(2) from None
    err.print(f"wrote {path}")


@app.command(epilog=OVERRIDE_EPILOG)
def validate(file: ScenarioFile, overrides: Overrides = None) -> None:
    """Check a scenario and print it resolved, with every default filled in."""
    import yaml

    scenario = _load(file, overrides)
    out.print(yaml.safe_dump(scenario.to_dict(), sort_keys=False), highlight=False)
    err.print(f"[green]{file}: valid[/green]")


@app.command()
def schema() -> None:
    """Print the JSON Schema of a scenario file, every registered component's parameters
    included (make schema writes schema/scenario.schema.json)."""
    import json

    from fedsim.scenario_schema import scenario_schema

    print(json.dumps(scenario_schema(), indent=1))


PLURALS = {"strategy": "strategies", "topology": "topologies", "world_layer": "world layers",
           "participation": "participation models",
           "byzantine": "byzantine attacks", "inversion": "inversion attacks"}


def plural(kind: str) -> str:
    return PLURALS.get(kind, kind + "s")


def param_summary(params) -> str:
    """``name=default`` for each parameter; ``name (required)`` when it has no default."""
    return ", ".join(f"{k} (required)" if f.is_required() else f"{k}={f.get_default(call_default_factory=True)!r}"
                     for k, f in params.model_fields.items())


@app.command(name="list")
def list_components() -> None:
    """List the registered components (datasets, partitioners, models, strategies, ...) with their parameters."""
    from fedsim import registry

    for kind, entries in registry.entries().items():
        if not entries:
            continue
        table = Table(title=plural(kind), title_justify="left")
        table.add_column("name", style="bold", no_wrap=True)
        table.add_column("description", overflow="fold")
        table.add_column("parameters", overflow="fold")
        for e in entries:
            table.add_row(e.name, e.description, param_summary(e.params))
        out.print(table)


@app.command()
def partitions(file: ScenarioFile, overrides: Overrides = None) -> None:
    """Print each client's number of examples and label histogram."""
    from fedsim.data.datasets import load_dataset
    from fedsim.data.partition import label_histograms, make_partitions

    sc = _load(file, overrides)
    ds = _execute(lambda: load_dataset(sc.dataset.name, sc.dataset.raw_params(), sc.seed))
    parts = _execute(lambda: make_partitions(sc.partition.name, sc.partition.params, ds.y_train, sc.num_clients,
                                             sc.seed, ds.groups))
    hist = label_histograms(parts, ds.y_train, ds.num_classes)
    table = Table(title=f"{sc.name}: {sc.partition.name} partition of {sc.dataset.name}")
    table.add_column("client", justify="right")
    table.add_column("examples", justify="right")
    for c in range(ds.num_classes):
        table.add_column(str(c), justify="right")
    for i, row in enumerate(hist):
        table.add_row(str(i), str(int(row.sum())), *(str(int(v)) for v in row))
    table.add_row("total", str(int(hist.sum())), *(str(int(v)) for v in hist.sum(0)), style="bold")
    out.print(table)


@app.command(name="plot-weights")
def plot_weights(run_dir: Annotated[Path, typer.Argument(help="a run directory")]) -> None:
    """Plot a FedAU run's estimated weights against the true 1/p_n (fedau_weights.png)."""
    from fedsim.world.participation import plot_weights as plot

    missing = [f for f in ("participation.json", "fedau_weights.json") if not (run_dir / f).exists()]
    if missing:
        err.print(f"[red]error:[/red] {run_dir}: no {' or '.join(missing)} (a FedAU run with a participation section writes them)")
        raise typer.Exit(2)
    out.print(f"wrote {plot(run_dir)}")


@app.command()
def certs(
    directory: Annotated[Path, typer.Argument(help="where to write them")],
    nodes: Annotated[int, typer.Option(help="SuperNode key pairs to write (node-<i>.key/.pub)")] = 0,
    host: Annotated[list[str] | None, typer.Option(help="another name or address the SuperLink is reached at")] = None,
    days: Annotated[int, typer.Option(help="validity of the CA and server certificate")] = 365,
) -> None:
    """Write a CA, the SuperLink's TLS certificate and SuperNode keys (kept when present)."""
    from fedsim.runtimes.certs import generate, server_hosts

    c = generate(directory, nodes=nodes, hosts=tuple(host or ()), days=days)
    out.print(f"CA {c.ca_cert}; SuperLink certificate {c.server_cert} for {', '.join(sorted(server_hosts(c)))}")
    if nodes:
        out.print(f"SuperNode keys {c.node_key(0).name} .. {c.node_key(nodes - 1).name} (public: .pub) in {c.dir}")


cluster_app = typer.Typer(no_args_is_help=True, help="A local SuperLink and SuperNodes on 127.0.0.1 (deployment runtime).")
app.add_typer(cluster_app, name="cluster")
ClusterDir = Annotated[Path, typer.Option("--dir", help="state directory (pids, logs, certificates)")]


@cluster_app.command("up")
def cluster_up(
    nodes: Annotated[int, typer.Option(help="SuperNodes to start: one per client of the scenario")],
    port: Annotated[int, typer.Option(help="the SuperLink's port on 127.0.0.1")] = 8000,
    directory: ClusterDir = Path(".fedsim-cluster"),
    insecure: Annotated[bool, typer.Option(help="plain HTTP instead of TLS (127.0.0.1 only)")] = False,
    node_auth: Annotated[bool, typer.Option(help="SuperNode authentication (TLS only)")] = True,
) -> None:
    """Start a SuperLink and N SuperNodes on 127.0.0.1; prints the runtime overrides to use."""
    from fedsim.runtimes.certs import generate
    from fedsim.runtimes.cluster import STATE_FILE, LocalCluster

    if (directory / STATE_FILE).exists():
        err.print(f"[red]error:[/red] a cluster is up in {directory}: fedsim cluster down --dir {directory}")
        raise typer.Exit(2)
    certs = None if insecure else generate(directory / "certs", nodes=nodes if node_auth else 0)
    cluster = LocalCluster(directory, nodes, certs, node_auth=node_auth and not insecure, port=port)
    try:
        cluster.start()
    except RuntimeError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    rt = " ".join(f"runtime.{k}={v}" for k, v in cluster.runtime().items())
    out.print(f"SuperLink {cluster.superlink} and {nodes} SuperNodes are up; logs in {cluster.dir / 'logs'}")
    out.print(f"fedsim run FILE num_clients={nodes} {rt}", highlight=False, soft_wrap=True)  # one line: copy-pasteable


@cluster_app.command("down")
def cluster_down(directory: ClusterDir = Path(".fedsim-cluster")) -> None:
    """Stop the cluster started in this state directory (by the process ids it recorded)."""
    from fedsim.runtimes.cluster import LocalCluster

    try:
        cluster = LocalCluster.load(directory)
    except FileNotFoundError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    cluster.stop()
    out.print(f"stopped the SuperLink {cluster.superlink} and its SuperNodes")


@cluster_app.command("register")
def cluster_register(
    keys: Annotated[list[Path], typer.Argument(help="SuperNode public keys (node-<i>.pub)")],
    superlink: Annotated[str, typer.Option(help="HOST:PORT")],
    root_certificates: Annotated[Path | None, typer.Option(help="CA certificate of the SuperLink")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the SuperLink")] = 120.0,
) -> None:
    """Register SuperNode public keys with a SuperLink started with --enable-supernode-auth."""
    from fedsim.runtimes.cluster import wait_for_superlink
    from fedsim.runtimes.deployment import register_nodes

    if root_certificates is None:
        err.print("[red]error:[/red] node registration needs TLS: --root-certificates CA")
        raise typer.Exit(2)
    try:
        client = wait_for_superlink(superlink, root_certificates, timeout)
    except RuntimeError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    try:
        for line in register_nodes(client, keys):
            out.print(line, highlight=False)
    finally:
        client.close()


@app.command()
def compose(
    file: ScenarioFile,
    overrides: Overrides = None,
    image: Annotated[str, typer.Option(help="the fedsim image (built from ./Dockerfile)")] = "fedsim:latest",
) -> None:
    """Print a Docker compose file: SuperLink, one SuperNode per client, and the run."""
    from fedsim.runtimes.cluster import compose_yaml

    sc = _load(file, overrides)
    print(compose_yaml(str(file), list(overrides or []), sc.num_clients, image), end="")


@app.command()
def health(
    address: Annotated[str, typer.Argument(envvar="FEDSIM_HEALTH_ADDRESS", help="gRPC health service HOST:PORT")] = "127.0.0.1:9099",
) -> None:
    """Exit 0 when a Flower process's health service (--health-server-address) is serving."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.RpcError as exc:
        err.print(f"unhealthy: {address}: {exc.code().name}")
        raise typer.Exit(1) from None
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        err.print(f"unhealthy: {address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
        raise typer.Exit(1)


def main() -> None:
    app()
