"""Python API for notebooks and scripts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedsim.scenario import Scenario, load


def load_scenario(source: str | Path | dict, overrides: list[str] | dict[str, Any] | None = None) -> Scenario:
    """Read and validate a scenario (a YAML path or a mapping) with dotted overrides."""
    return load(source, overrides)


def run(source: str | Path | dict | Scenario, overrides: dict[str, Any] | list[str] | None = None, **kwargs: Any):
    """Run a scenario and return a ``RunResult`` (metrics DataFrame, final model, run dir).

    Overrides use dotted keys, as a dict (``{"strategy.mu": 0.1}``), a list of
    ``key=value`` strings, or keyword arguments with ``__`` for dots
    (``fedsim.run("scenarios/noniid.yaml", rounds=5, strategy__mu=0.1)``).
    """
    from fedsim.experiment import run_scenario

    if isinstance(source, Scenario):
        scenario = source
        if overrides or kwargs:
            scenario = load(source.to_dict(), _merge(overrides, kwargs))
    else:
        scenario = load(source, _merge(overrides, kwargs))
    return run_scenario(scenario)


def _merge(overrides, kwargs) -> dict[str, Any] | list[str]:
    if isinstance(overrides, list):
        return overrides + [f"{k.replace('__', '.')}={v}" for k, v in kwargs.items()]
    return {**(overrides or {}), **{k.replace("__", "."): v for k, v in kwargs.items()}}
