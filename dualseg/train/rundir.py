"""Where a run's checkpoints and metrics live, checked writable before any compute is spent."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dualseg.config import Config
from dualseg.errors import InputError
from dualseg.io import atomic_write_text, probe_writable

LAST, PREV, BEST, METRICS = "last.pt", "last.prev.pt", "best.pt", "metrics.jsonl"
CHECKPOINTS = (LAST, PREV, BEST)  # resume order: the newest state, the one before it, the best epoch's


def scratch_root(cfg: Config) -> Path:
    """``cfg.train.scratch``, else ``$SCRATCH``, else ``./runs``."""
    return Path(cfg.train.scratch or os.environ.get("SCRATCH") or "runs")


def default_run_dir(cfg: Config) -> Path:
    return scratch_root(cfg) / cfg.train.run_name


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``fit(run_dir=..., resume=True)`` would resume (or fail on damage) rather than start fresh."""
    return any((Path(run_dir) / name).is_file() for name in CHECKPOINTS)


def ensure_writable(run_dir: Path) -> None:
    """Prove ``run_dir`` can be created and written, creating nothing; InputError naming the path if not.

    The folder itself appears with the run's first file (metrics.jsonl, written after the data and
    model checks), so a run that fails before its first epoch leaves no empty run folder behind.
    """
    _, error = probe_writable(run_dir)
    if error is not None:
        reason = error.strerror or type(error).__name__
        raise InputError(f"scratch: run directory {run_dir} is not writable ({reason})")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _line(record: dict[str, Any]) -> str:
    # allow_nan=False: a NaN must never silently become invalid JSON for downstream readers.
    return json.dumps(record, default=_json_default, allow_nan=False, sort_keys=True) + "\n"


def rewrite_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Replace metrics.jsonl with exactly ``history`` (on resume: drops epochs not in the checkpoint)."""
    atomic_write_text(run_dir / METRICS, "".join(_line(r) for r in history))


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one epoch (a torn last line after a crash is repaired by the next resume's rewrite)."""
    with open(run_dir / METRICS, "a", encoding="utf-8") as fh:
        fh.write(_line(record))
        fh.flush()
        os.fsync(fh.fileno())


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    p = Path(run_dir) / METRICS
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def step_seconds(run_dir: Path) -> float:
    """Seconds rank 0 spent in training and validation steps over the run's recorded epochs
    (``train_time_s + val_time_s`` of each metrics.jsonl record; older records without them count 0).

    The numerator of a search's allocation efficiency: times the ranks per trial, over the
    rank-seconds allocated to the workers.
    """
    return sum(float(r.get("train_time_s", 0.0)) + float(r.get("val_time_s", 0.0)) for r in read_metrics(run_dir))
