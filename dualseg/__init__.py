"""dualseg: dual-stream (Sentinel-1 + Sentinel-2) time-series segmentation.

A pure library (data, model, training, metrics, evaluation) usable from a notebook; the SLURM and
Optuna orchestration lives in the separate ``hpc`` package.
"""

import subprocess
from pathlib import Path

from dualseg.config import Config, DataConfig, ModelConfig, TrainConfig, load_config
from dualseg.errors import DualsegError, InputError, TrainingError

__version__ = "0.1.0"


def code_version() -> str:
    """``git describe`` of the source checkout (recorded in models and results), else the package version."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10, check=False)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return f"dualseg {__version__}"

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "load_config",
    "DualsegError",
    "InputError",
    "TrainingError",
    "__version__",
    "code_version",
]
