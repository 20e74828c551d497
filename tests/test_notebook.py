"""The quickstart notebook runs top to bottom and shows metrics and images."""

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSIM_REPO", str(ROOT))
    nb_path = tmp_path / "quickstart.ipynb"
    shutil.copy(ROOT / "notebooks" / "quickstart.ipynb", nb_path)
    nb = nbformat.read(nb_path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    assert "FedAvg final accuracy: 0." in text
    fedprox = float(text.split("FedProx (alpha 0.1, MLP) final accuracy: ")[1].split()[0])
    assert fedprox > 0.3  # it learns: chance is 0.1 (measured 0.622 at 8 rounds)
    assert "TqdmWarning" not in "".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the matplotlib figure and the run's metrics.png
    assert any("test_acc" in o.get("data", {}).get("text/html", "") for o in outputs)  # the DataFrame
    assert len(list((tmp_path / "runs" / "noniid").iterdir())) == 2
