"""Submitting jobs: one backend interface, two implementations, used by launch, heal and predict.

- :mod:`hpc.submit.resources` — :class:`Resources`, the typed shape of a job.
- :mod:`hpc.submit.base` — the :class:`Backend` protocol (``check``, ``submit_array``).
- :mod:`hpc.submit.slurm` — :class:`SlurmBackend` (submitit's ``SlurmExecutor``; renders the sbatch
  script, ``--test-only``, plain ``sbatch`` scripts, the partition check, the refusal line).
- :mod:`hpc.submit.local` — :class:`LocalBackend` (submitit's ``LocalExecutor``, disjoint GPU sets).
- :mod:`hpc.submit.jobs` — what a search submits from one :class:`~hpc.submit.jobs.Plan`: the worker
  array and the evaluation job.
"""

from __future__ import annotations

from dualseg.errors import InputError
from hpc.submit.base import Backend, array_id
from hpc.submit.local import LocalBackend
from hpc.submit.resources import MAX_REQUEUES, Resources
from hpc.submit.slurm import SlurmBackend


def backend(executor: str) -> Backend:
    """The backend of a resolved executor name (``slurm`` or ``local``)."""
    if executor == "slurm":
        return SlurmBackend()
    if executor == "local":
        return LocalBackend()
    raise InputError(f"--executor: expected slurm or local, got {executor!r}")

