"""Checkpoint retention on scratch: the ``hpc.keep`` policy and how much a study occupies.

Every trial writes ``last.pt`` (for requeue) and ``best.pt`` (for evaluation) of ~3x the weights
each; kept for ever, a 50-trial PASTIS search fills hundreds of GB of scratch. The policy:

- when a trial finishes (COMPLETE or PRUNED), its ``last.pt`` is deleted: nothing resumes it any
  more (a FAILED trial keeps it: a retry of that trial is seeded from it);
- when the study ends (after the evaluation job exported ``best_model.pth``), ``best.pt`` is kept
  for the ``best_top_k`` best COMPLETE trials only, every other checkpoint of a finished trial goes.

``metrics.jsonl`` files (learning curves for the report) are always kept. Deletions only ever
touch ``<study_dir>/trial-<n>/{last,best}.pt`` of trials in a finished state.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from dualseg.config import from_dict
from dualseg.errors import InputError
from dualseg.train.rundir import BEST, LAST, PREV
from hpc.paths import trial_dir

log = logging.getLogger("hpc.retention")

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass
class KeepPolicy:
    """``hpc.keep``: ``last`` keeps ``last.pt`` of finished trials; ``best_top_k`` trials keep ``best.pt``
    at the end of the study (``-1``: all of them)."""

    last: bool = False
    best_top_k: int = 3

    def __post_init__(self) -> None:
        if self.best_top_k < -1:
            raise InputError(f"hpc.keep.best_top_k must be >= 0 (or -1 for all), got {self.best_top_k}")


def keep_policy(raw: dict[str, Any] | KeepPolicy | None) -> KeepPolicy:
    """The policy of an ``hpc.keep`` mapping (strict keys), or the default."""
    if isinstance(raw, KeepPolicy):
        return raw
    return from_dict(KeepPolicy, raw or {}, "hpc.keep") if raw else KeepPolicy()


def _remove(path: Path) -> int:
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    log.info("retention: removed %s (%.1f MB)", path, size / 2**20)
    return size


def on_trial_finished(study_dir: str | Path, number: int, state: TrialState,
                      policy: KeepPolicy | None = None) -> int:
    """Call after ``study.tell``: deletes the trial's ``last.pt`` (COMPLETE/PRUNED). Returns bytes freed."""
    policy = policy or KeepPolicy()
    if policy.last or state not in (TrialState.COMPLETE, TrialState.PRUNED):
        return 0
    return _remove(trial_dir(study_dir, number) / LAST) + _remove(trial_dir(study_dir, number) / PREV)


def top_k(trials: list[FrozenTrial], direction: optuna.study.StudyDirection, k: int) -> list[int]:
    """Numbers of the ``k`` best COMPLETE trials (all when ``k == -1``), best first."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    sign = 1.0 if direction == optuna.study.StudyDirection.MINIMIZE else -1.0
    done.sort(key=lambda t: (sign * float(t.value or 0.0), t.number))  # value is set: filtered above
    return [t.number for t in (done if k < 0 else done[:k])]


def on_study_finished(study_dir: str | Path, trials: list[FrozenTrial], direction: optuna.study.StudyDirection,
                      policy: KeepPolicy | None = None) -> dict[str, Any]:
    """Apply the end-of-study policy to finished trials; returns ``{"kept": [...], "freed_bytes": n}``.

    Trials still RUNNING/WAITING are never touched (a study evaluated before its last requeue).
    """
    policy = policy or KeepPolicy()
    keep = top_k(trials, direction, policy.best_top_k)
    freed = 0
    for t in trials:
        if t.state not in FINISHED:
            continue
        d = trial_dir(study_dir, t.number)
        if not policy.last:
            freed += _remove(d / LAST) + _remove(d / PREV)
        if t.number not in keep:
            freed += _remove(d / BEST)
    return {"kept": keep, "freed_bytes": freed}


def scratch_usage(study_dir: str | Path) -> dict[str, Any]:
    """Bytes under ``study_dir``: total, in checkpoints (``*.pt``/``*.pth``), per trial, file count."""
    root = Path(study_dir)
    total = ckpt = files = 0
    per_trial: dict[str, int] = {}
    if root.is_dir():
        for p in root.rglob("*"):
            try:
                if not p.is_file() or p.is_symlink():
                    continue
                size = p.stat().st_size
            except FileNotFoundError:  # removed while we walk (a finishing trial)
                continue
            total += size
            files += 1
            if p.suffix in (".pt", ".pth"):
                ckpt += size
            top = p.relative_to(root).parts[0]
            if top.startswith("trial-"):
                per_trial[top] = per_trial.get(top, 0) + size
    return {"path": str(root), "bytes": total, "checkpoint_bytes": ckpt, "files": files, "trials": per_trial}


def human(n: float) -> str:
    """``1.5 GB``-style size for status lines."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
