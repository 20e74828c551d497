"""A first hour without surprises: help texts, a fast ``--help``, ``fedsim list``, summaries
that show each run's headline numbers, printouts that are not cut."""

import json
import re
import resource
import subprocess
import sys
from pathlib import Path

import click
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from fedsim import cli
from fedsim.cli import app
from fedsim.recorder import plot_metrics, summarize, summary_table

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_run_help_shows_the_override_syntax_and_argument_help():
    text = runner.invoke(app, ["run", "--help"], terminal_width=200).output
    assert "fedsim run FILE [key.path=value ...]" in text
    assert "scenario YAML file" in text and "dotted keys with YAML values" in text
    assert "(numbers, true/false, [lists])" in text


def _commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


def test_every_argument_and_option_of_every_command_has_help():
    missing = [
        (" ".join(path), p.name)
        for path, cmd in _commands(typer.main.get_command(app))
        for p in cmd.params
        if p.name != "help" and not getattr(p, "help", None)
    ]
    assert missing == []


def test_importing_the_cli_imports_neither_torch_nor_flower():
    code = "import sys, fedsim.cli; print(sorted(m for m in ('torch', 'flwr', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_fedsim_help_takes_under_a_second_of_cpu():
    """CPU time, not wall time: the machine may be busy; `import torch` alone costs ~2 s."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "fedsim", "--help"], capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 0 and "Usage" in proc.stdout
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 1.0, cpu


def test_list_names_required_parameters_uses_plurals_and_whole_descriptions():
    text = runner.invoke(app, ["list"], terminal_width=400).output
    assert "PydanticUndefined" not in text
    assert "path (required)" in text
    titles = [line.strip() for line in text.splitlines() if re.fullmatch(r"[a-z][a-z ]*", line.strip())]
    assert "strategies" in titles and "topologies" in titles and "datasets" in titles
    assert "strategys" not in titles and "topologys" not in titles
    # the diabetes docstring's first paragraph spans lines; it is described whole, folded, not cut
    from fedsim import registry

    description = registry.get("dataset", "diabetes").description
    assert "disease progression after one year), a fixed seeded split" in description
    assert description.endswith("A regression dataset: float32 targets, one output.")
    assert "…" not in text


def test_plural_and_param_summary():
    assert [cli.plural(k) for k in ("strategy", "topology", "dataset", "byzantine")] == [
        "strategies", "topologies", "datasets", "byzantine attacks"]
    from fedsim.data.datasets import FileDatasetParams

    assert cli.param_summary(FileDatasetParams) == "path (required), limit_train=None, limit_test=None"


# ---------------------------------------------------------------------- summaries


def rows(**columns):
    n = len(next(iter(columns.values())))
    base = {"round": list(range(1, n + 1)), "train_loss": [1.0] * n, "bytes_down": [10] * n,
            "bytes_up": [10] * n, "seconds": [0.5] * n}
    return pd.DataFrame(base | columns)


def test_personalized_runs_show_their_federated_accuracy():
    """HyperFL has no global model: test_acc stays empty, fed_acc is its accuracy."""
    df = rows(test_acc=[None, None, None], fed_acc=[0.5, 0.75, 0.625], fed_loss=[1.0, 0.8, 0.9])
    summary = summarize(df)
    assert summary["final_test_acc"] is None
    assert summary["final_fed_acc"] == 0.625 and summary["best_fed_acc"] == 0.75
    table = summary_table(df, "h")
    assert ["final federated accuracy", "0.6250"] in [[c._cells[i] for c in table.columns] for i in range(table.row_count)]


def test_attack_runs_show_psnr_and_ssim_means_over_attacked_rounds():
    df = rows(test_acc=[0.5, 0.6, 0.7], attack_psnr=[10.0, None, 14.0], attack_ssim=[0.25, None, 0.75])
    summary = summarize(df)
    assert summary["mean_attack_psnr"] == 12.0 and summary["mean_attack_ssim"] == 0.5
    table = summary_table(df, "a")
    cells = [[c._cells[i] for c in table.columns] for i in range(table.row_count)]
    assert ["attack PSNR (dB), mean of attacked rounds", "12.000"] in cells
    assert ["attack SSIM, mean of attacked rounds", "0.500"] in cells


def test_the_plot_has_no_empty_legend_entries(tmp_path):
    fig = plot_metrics(rows(test_acc=[None, None], fed_acc=[0.5, 0.6]), tmp_path / "m.png", "h")
    acc, loss = fig.axes
    assert [t.get_text() for t in acc.get_legend().get_texts()] == ["federated (clients' data)"]
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["train (clients)"]
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"


def test_hyperfl_run_summary_has_its_accuracy(tiny):
    import fedsim

    tiny.update(rounds=1, strategy={"name": "hyperfl"}, model={"name": "hyperfl"}, evaluation={"federated": True})
    res = fedsim.run(tiny)
    summary = json.loads((res.run_dir / "summary.json").read_text())
    assert summary["final_test_acc"] is None and 0.0 < summary["final_fed_acc"] <= 1.0


# ---------------------------------------------------------------- uncut printouts


def test_report_shows_whole_configurations(monkeypatch, tmp_path):
    long = "strategy.name=fedprox,strategy.mu=0.001,partition.alpha=0.05,client.lr=0.02,client.epochs="
    table = pd.DataFrame({"config": [long + "1", long + "2"], "seeds": [3, 3], "final_acc": ["0.9 ± 0.01"] * 2})
    monkeypatch.setattr("fedsim.sweep.report", lambda sweep_dir, target: table)
    result = runner.invoke(app, ["report", str(tmp_path)], terminal_width=80)
    assert result.exit_code == 0, result.output
    assert long + "1" in result.output and long + "2" in result.output


def test_cluster_up_prints_the_run_command_on_one_line(monkeypatch, tmp_path):
    class FakeCluster:
        superlink = "127.0.0.1:8000"

        def __init__(self, directory, nodes, certs, node_auth, port):
            self.dir = directory

        def start(self):
            pass

        def runtime(self):
            return {"name": "deployment", "superlink": self.superlink, "insecure": True,
                    "root_certificates": "/a/long/path/to/the/state/directory/certs/ca.crt"}

    monkeypatch.setattr("fedsim.runtimes.cluster.LocalCluster", FakeCluster)
    result = runner.invoke(app, ["cluster", "up", "--nodes", "3", "--insecure", "--dir", str(tmp_path)],
                           terminal_width=60)
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("fedsim run FILE"))
    assert line.endswith("runtime.root_certificates=/a/long/path/to/the/state/directory/certs/ca.crt")


def test_readme_links_point_at_files_that_exist():
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        if "://" not in target:
            assert (ROOT / target).exists(), target
    for gone in ("ARCHITECTURE.md", "reference/privacy.md", "../shared"):  # the project's notes, not in the repository
        assert gone not in readme


def test_the_errors_page_example_is_what_fedsim_prints(tmp_path, monkeypatch):
    page = (ROOT / "docs" / "errors.md").read_text()
    scenario = page.split("With this `typo.yaml`:\n\n```yaml\n", 1)[1].split("```", 1)[0]
    command, expected = page.split("```\n$ ", 1)[1].split("```", 1)[0].split("\n", 1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "typo.yaml").write_text(scenario)
    args = command.split()[1:]
    from fedsim.cli import err

    monkeypatch.setattr(err, "width", 1000)
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.output == expected
