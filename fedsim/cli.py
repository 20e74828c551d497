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

from fedsim.scenario import ScenarioError, load

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Federated-learning simulation on Flower.")
out = Console()
err = Console(stderr=True, soft_wrap=True)

ScenarioFile = Annotated[Path, typer.Argument(help="scenario YAML file")]
Overrides = Annotated[list[str] | None, typer.Argument(help="dotted overrides: key.path=value ...")]


def _load(file: Path, overrides: list[str] | None):
    try:
        return load(file, overrides or [])
    except ScenarioError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, markup=True)
        raise typer.Exit(2) from None


@app.command()
def run(file: ScenarioFile, overrides: Overrides = None) -> None:
    """Run a scenario: fedsim run FILE [key.path=value ...]."""
    from fedsim.experiment import run_scenario

    scenario = _load(file, overrides)
    try:
        run_scenario(scenario)
    except (ValueError, FileNotFoundError) as exc:  # data or set-up problems the user can fix
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


@app.command()
def attack(file: ScenarioFile, overrides: Overrides = None) -> None:
    """Run the scenario's eavesdropper attack standalone on one client step (round 1)."""
    from attacks.standalone import attack_one_step

    scenario = _load(file, overrides)
    try:
        results, _, run_dir = attack_one_step(scenario)
    except (ValueError, FileNotFoundError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    table = Table(title=f"{scenario.name}: {scenario.eavesdropper.name} on one client step")
    for col in ("client", "upload", "examples", "PSNR (dB)", "SSIM", "label acc", "matching loss", "seconds"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(str(r["client"]), r["upload"], str(r["examples"]), f"{r['psnr']:.2f}", f"{r['ssim']:.3f}",
                      f"{r['label_acc']:.2f}", f"{r['matching_loss']:.2e}", f"{r['seconds']:.1f}")
    out.print(table)
    out.print(f"LPIPS: {results[0]['lpips']}; run directory: {run_dir}")


@app.command()
def validate(file: ScenarioFile, overrides: Overrides = None) -> None:
    """Check a scenario and print it resolved, with every default filled in."""
    import yaml

    scenario = _load(file, overrides)
    out.print(yaml.safe_dump(scenario.to_dict(), sort_keys=False), highlight=False)
    err.print(f"[green]{file}: valid[/green]")


@app.command(name="list")
def list_components() -> None:
    """List the registered datasets, partitioners, models and strategies."""
    from fedsim import registry

    for kind, entries in registry.entries().items():
        if not entries:
            continue
        table = Table(title=f"{kind}s", title_justify="left")
        table.add_column("name", style="bold")
        table.add_column("description")
        table.add_column("parameters")
        for e in entries:
            params = ", ".join(f"{k}={f.default!r}" for k, f in e.params.model_fields.items())
            table.add_row(e.name, e.description, params)
        out.print(table)


@app.command()
def partitions(file: ScenarioFile, overrides: Overrides = None) -> None:
    """Print each client's number of examples and label histogram."""
    from fedsim.data import load_dataset
    from fedsim.partition import label_histograms, make_partitions

    sc = _load(file, overrides)
    try:
        ds = load_dataset(sc.dataset.name, sc.dataset.raw_params(), sc.seed)
        parts = make_partitions(sc.partition.name, sc.partition.params, ds.y_train, sc.num_clients, sc.seed, ds.groups)
    except (ValueError, FileNotFoundError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
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


def main() -> None:
    app()
