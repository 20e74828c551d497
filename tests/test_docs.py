"""The documentation: the site builds with ``mkdocs build --strict`` (no network), and the
worked plugin example of docs/plugins.md installs, registers through the entry point and runs."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples"


@pytest.mark.slow  # imports every component and renders the API reference (~30 s)
def test_site_builds_strictly(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or "mkdocs"
    env = {**os.environ, "NO_PROXY": "*", "no_proxy": "*", "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    result = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    site = tmp_path / "site"
    reference = (site / "reference" / "scenario" / "index.html").read_text()
    # the generated reference lists every registered component with its own parameters
    for text in ("fedspeed", "sam_normalize", "dirichlet_shares", "label_correlated", "round_timeout"):
        assert text in reference, text
    assert "fedsim.manifest" in (site / "api" / "index.html").read_text()
    assert "fonts.googleapis.com" not in (site / "index.html").read_text()


SCRIPT = """
import sys
sys.path.insert(0, {site!r})
import torch
import fedsim
from fedsim import registry
from fedsim.apps.setup import prepare
from fedsim.scenario import load

assert "fedavgm" in registry.names("strategy")  # registered by the entry point alone
assert "fedsim_fedavgm" in sys.modules
runs = dict(rounds=2, num_clients=4, output__dir={runs!r}, output__progress=False, output__plot=False)
path = {scenario!r}

def weights(result):
    return torch.cat([p.flatten() for p in result.model.state_dict().values()])

beta = 0.9
momentum = fedsim.run(path, strategy__server_momentum=beta, **runs)
plain = fedsim.run(path, strategy__server_momentum=0.0, **runs)
fedavg = fedsim.run(path, strategy={{"name": "fedavg", "fraction_train": 0.5}}, **runs)
one_round = fedsim.run(path, **{{**runs, "rounds": 1}})
x0 = torch.cat([p.flatten() for p in prepare(load(path, ["rounds=2", "num_clients=4"])).model.state_dict().values()])
x1 = weights(one_round)

# beta = 0, eta = 1 is FedAvg
assert torch.equal(weights(plain), weights(fedavg))
# Alg. 1: v_1 = x0 - x1, so x2 = x2(FedAvg from x1) - beta * (x0 - x1)
expected = weights(fedavg) - beta * (x0 - x1)
assert torch.allclose(weights(momentum), expected, atol=1e-6), (weights(momentum) - expected).abs().max()
assert not torch.allclose(weights(momentum), weights(fedavg), atol=1e-3)
print("ok", len(momentum.metrics))
"""


@pytest.mark.slow  # pip-installs the example, then a fresh interpreter imports torch and Flower and runs 4 short runs
def test_plugin_example_installs_registers_and_runs(tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(site), str(EXAMPLE / "fedavgm_plugin")], check=True)
    script = SCRIPT.format(site=str(site), runs=str(tmp_path / "runs"), scenario=str(EXAMPLE / "fedavgm.yaml"))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok 2" in result.stdout
