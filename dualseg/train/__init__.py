"""Distributed training, checkpoints, metrics and evaluation of dualseg models.

Flat API used by the CLI and the HPC layer: :func:`fit`, :func:`evaluate_checkpoint`,
:class:`FitResult`, ``EpochCallback``, :func:`setup_logging` / :func:`set_log_context`; what to do
when ``fit`` raises is in :mod:`dualseg.train.failures` (``classify``, ``describe``, ``release_resources``).
"""

from dualseg.train.checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint
from dualseg.train.distributed import DistInfo, cleanup, init_distributed
from dualseg.train.early_stopping import EarlyStopping
from dualseg.train.evaluate import evaluate_checkpoint
from dualseg.train.log import get_log_context, set_log_context, setup_logging
from dualseg.train.metrics import confusion_matrix, majority_baseline, metrics_from_confusion
from dualseg.train.rundir import default_run_dir, has_checkpoint, read_metrics, scratch_root
from dualseg.train.schedule import build_scheduler, warmup_cosine
from dualseg.train.trainer import EpochCallback, FitResult, fit

__all__ = [
    "CheckpointError",
    "DistInfo",
    "EarlyStopping",
    "EpochCallback",
    "FitResult",
    "build_scheduler",
    "cleanup",
    "confusion_matrix",
    "default_run_dir",
    "evaluate_checkpoint",
    "fit",
    "get_log_context",
    "has_checkpoint",
    "init_distributed",
    "load_checkpoint",
    "load_model_state",
    "majority_baseline",
    "metrics_from_confusion",
    "read_metrics",
    "save_checkpoint",
    "scratch_root",
    "set_log_context",
    "setup_logging",
    "warmup_cosine",
]
