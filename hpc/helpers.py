"""Small shared pieces of the HPC layer: scratch layout, sampler/pruner factories, code version."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import optuna
from sqlalchemy.engine import make_url

from hpc.config import HpcConfig

REPO_ROOT = Path(__file__).resolve().parent.parent


def trial_dir(study_dir: Path, number: int) -> Path:
    """``<scratch>/<study>/trial-<number>``: where a trial's last/best checkpoints and metrics live."""
    return Path(study_dir) / f"trial-{number}"


def resolve_scratch(hpc_scratch: str | None, train_scratch: str | None) -> Path:
    """Scratch root: ``hpc.scratch`` / ``--scratch``, then ``train.scratch``, ``$SCRATCH``, ``./runs``."""
    raw = hpc_scratch or train_scratch or os.environ.get("SCRATCH") or "runs"
    return Path(raw).expanduser().resolve()


def job_label() -> str:
    """This job as squeue names it: ``<array>_<task>`` for array tasks, else the job id."""
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return os.environ.get("SLURM_JOB_ID") or f"local-{os.getpid()}"


def build_sampler(hpc: HpcConfig, worker: int = 0) -> optuna.samplers.BaseSampler:
    """TPE (default) or random; every worker builds its own (samplers are not stored in the DB).

    With ``hpc.seed`` set, each worker gets ``seed + worker``: the same seed everywhere would make
    all workers draw the same startup points.
    """
    seed = None if hpc.seed is None else hpc.seed + worker
    if hpc.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, hpc.trials // 3)))


def build_pruner(hpc: HpcConfig) -> optuna.pruners.BasePruner:
    """Median, successive halving or hyperband over epochs (``none``: never prune)."""
    p = hpc.pruner
    if p.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.kind == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    if p.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()


def connect_url(public_url: str) -> str:
    """The URL to connect with inside a job.

    Jobs receive the URL without password. libpq then reads ``PGPASSWORD`` or ``~/.pgpass``; if the
    user instead exported the full URL as ``$DUALSEG_STORAGE`` and it names the same database, its
    password is used in memory only.
    """
    url = make_url(public_url)
    full = os.environ.get("DUALSEG_STORAGE")
    if url.password is None and full:
        try:
            env_url = make_url(full)
        except Exception:  # noqa: BLE001
            return public_url
        if env_url.password and env_url._replace(password=None) == url:
            return env_url.render_as_string(hide_password=False)
    return public_url


def squeue_states(job_ids: list[str]) -> dict[str, str]:
    """``{job id: SLURM state}`` for the jobs squeue still knows (empty without SLURM).

    One call per id: squeue rejects the whole list when one id has left the queue.
    """
    if shutil.which("squeue") is None:
        return {}
    states: dict[str, str] = {}
    for job in sorted(set(job_ids)):
        try:
            out = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", job], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        for line in out.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == job:
                states[job] = parts[1]
    return states


def code_version() -> str:
    """``git describe`` of the checkout (for results.json), else the package version."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    import dualseg

    return f"dualseg {dualseg.__version__}"
