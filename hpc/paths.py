"""Scratch layout: the one scratch default chain, study and trial folders, study incarnations.

``<scratch>/<study>/`` holds ``trial-<n>/{last,best}.pt + metrics.jsonl``, ``logs/``, ``results/`` and
``incarnation`` — the id of the study these folders belong to. A new study that happens to reuse the
name (deleted and re-created, or a fresh SQLite file) would otherwise resume the old run's
``trial-0/last.pt`` and report its metrics as new; instead it is refused with one clear line. A retry
(a new trial number) starts from the newest checkpoint of the trials it retries (:func:`seed_from_retry`).
"""

from __future__ import annotations

import logging
import os
import uuid
import warnings
from pathlib import Path

import optuna

from dualseg.errors import InputError
from dualseg.io import atomic_copy, atomic_write_text
from dualseg.train.rundir import CHECKPOINTS, METRICS, has_checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("hpc.paths")


def resolve_scratch(cli: str | None, train_scratch: str | None = None) -> Path:
    """Scratch root: ``--scratch`` / ``hpc.scratch``, then ``train.scratch``, ``$SCRATCH``, ``./runs``."""
    raw = cli or train_scratch or os.environ.get("SCRATCH") or "runs"
    return Path(raw).expanduser().resolve()


def study_scratch(cli: str | Path | None, recorded: str | None) -> Path:
    """Scratch root of an existing study: ``--scratch``, else the one its launcher recorded, else the chain."""
    if cli is None and recorded:
        return Path(recorded)
    return resolve_scratch(str(cli) if cli is not None else None)


def log_dir(study_dir: str | Path) -> Path:
    """``<scratch>/<study>/logs``: every job of the study logs here (submitit's and the plain sbatch scripts')."""
    return Path(study_dir) / "logs"


def trial_dir(study_dir: str | Path, number: int) -> Path:
    """``<scratch>/<study>/trial-<number>``."""
    return Path(study_dir) / f"trial-{number}"


def new_incarnation() -> str:
    return uuid.uuid4().hex


def claim_study_dir(study_dir: Path, incarnation: str, study: str) -> None:
    """Bind ``study_dir`` to this study incarnation, or refuse folders left by another one."""
    marker = study_dir / "incarnation"
    if marker.exists():
        have = marker.read_text().strip()
        if have != incarnation:
            raise InputError(f"--scratch: {study_dir} holds trial folders of another study named {study!r} "
                             f"(incarnation {have[:8]}, this one {incarnation[:8]}); use another --study or "
                             "--scratch, or remove that folder")
        return
    if any(study_dir.glob("trial-*")):
        raise InputError(f"--scratch: {study_dir} holds trial folders of an earlier study named {study!r}; "
                         "use another --study or --scratch, or remove that folder")
    atomic_write_text(marker, incarnation + "\n")


def check_study_dir(study_dir: Path, incarnation: str | None, study: str) -> None:
    """Workers: the folder must belong to this study (the launcher claimed it)."""
    if incarnation is None:
        return
    marker = study_dir / "incarnation"
    if marker.exists() and marker.read_text().strip() != incarnation:
        raise InputError(f"--scratch: {study_dir} belongs to another incarnation of study {study!r}; refusing "
                         "to resume its trial folders")


def seed_from_retry(study_dir: Path, frozen: optuna.trial.FrozenTrial) -> Path | None:
    """Copy the newest checkpoint of the trials this one retries into its own folder."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(frozen)
    target = trial_dir(study_dir, frozen.number)
    if has_checkpoint(target):
        return target
    for number in reversed(history):
        source = trial_dir(study_dir, number)
        if has_checkpoint(source):
            target.mkdir(parents=True, exist_ok=True)
            for name in (*CHECKPOINTS, METRICS):
                if (source / name).exists():
                    atomic_copy(source / name, target / name)
            log.info("trial %d resumes from the checkpoint of failed trial %d", frozen.number, number)
            return source
    return None
