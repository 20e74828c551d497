"""fedsim: federated-learning simulation on Flower.

``fedsim.run(path_or_dict, **overrides)`` runs a scenario and returns a ``RunResult`` with
the per-round metrics as a pandas DataFrame, the final model and the run directory.
"""

import os
import warnings

# Flower phones home and checks for updates unless told not to; fedsim never does.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

# tqdm (through Hugging Face datasets) warns in notebooks without ipywidgets; fedsim shows
# no tqdm bars, so the warning says nothing to its users
warnings.filterwarnings("ignore", message="IProgress not found")

__all__ = ["run", "load_scenario"]


def __getattr__(name: str):
    """``fedsim.run`` and ``fedsim.load_scenario``, imported on first use: ``fedsim --help``
    and other light commands start without pydantic models, numpy or torch."""
    if name in __all__:
        from fedsim import api

        return getattr(api, name)
    raise AttributeError(f"module 'fedsim' has no attribute {name!r}")
__version__ = "0.1.0"
