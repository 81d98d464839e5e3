"""dualseg: dual-stream (Sentinel-1 + Sentinel-2) time-series segmentation.

A pure library (data, model, training, metrics, evaluation) usable from a notebook; the SLURM and
Optuna orchestration lives in the separate ``hpc`` package.
"""

from dualseg.config import Config, DataConfig, ModelConfig, TrainConfig, load_config
from dualseg.errors import DualsegError, InputError, TrainingError

__version__ = "0.1.0"

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
]
