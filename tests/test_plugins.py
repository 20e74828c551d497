"""Third-party plugins load through the ``fedsim.plugins`` entry-point group."""

import os
import subprocess
import sys
import textwrap

PLUGIN = '''
"""A third-party fedsim plugin: one model."""
import torch
from pydantic import Field
from fedsim.registry import Params, register


class WideParams(Params):
    width: int = Field(7, ge=1)


@register("model", "plugin_wide", params=WideParams)
def plugin_wide(params, input_shape, num_classes):
    """A plugin's model: flatten, one hidden layer of `width` units."""
    d = 1
    for s in input_shape:
        d *= s
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(d, params.width), torch.nn.ReLU(), torch.nn.Linear(params.width, num_classes))
'''

PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "fedsim-plugin-wide"
version = "0.0.1"

[project.entry-points."fedsim.plugins"]
wide = "fedsim_plugin_wide"

[tool.setuptools]
py-modules = ["fedsim_plugin_wide"]
"""


def test_an_installed_plugin_registers_its_components(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "fedsim_plugin_wide.py").write_text(PLUGIN)
    (pkg / "pyproject.toml").write_text(PYPROJECT)
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "--target", str(site), str(pkg)],
        check=True,
    )
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(site)!r})
        import fedsim
        from fedsim import registry
        assert "plugin_wide" in registry.names("model"), registry.names("model")
        res = fedsim.run({{"name": "plug", "rounds": 1, "num_clients": 2, "model": {{"name": "plugin_wide", "width": 5}},
                          "output": {{"dir": {str(tmp_path / "runs")!r}, "progress": False}}}})
        assert res.model[1].out_features == 5
        try:
            fedsim.load_scenario({{"name": "x", "rounds": 1, "num_clients": 2, "model": {{"name": "plugin_wide", "depth": 5}}}})
        except Exception as exc:
            assert "model.depth" in str(exc), exc
        else:
            raise AssertionError("unknown plugin parameter accepted")
        print("PLUGIN-OK")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert "PLUGIN-OK" in proc.stdout, proc.stderr[-2000:]
    listing = subprocess.run([sys.executable, "-m", "fedsim", "list"], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(site), "COLUMNS": "200"})
    assert "plugin_wide" in listing.stdout and "A plugin's model" in listing.stdout
