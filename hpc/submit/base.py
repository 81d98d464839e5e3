"""What a submission backend offers, as a :class:`typing.Protocol` (like :mod:`hpc.requeue`).

Two implementations, one module each: :class:`hpc.submit.slurm.SlurmBackend` (sbatch through
submitit) and :class:`hpc.submit.local.LocalBackend` (submitit's local executor). Both take the
same :class:`~hpc.submit.resources.Resources` and return submitit jobs; ``what`` names the job in
error lines (``sbatch refused the <what>: ...``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from hpc.submit.resources import Resources

R = TypeVar("R")


class Backend(Protocol):
    """Checks an array before any side effect, then submits it."""

    def check(self, n: int, resources: Resources, what: str) -> None:
        """One InputError line if an array of ``n`` such tasks cannot run here; nothing submitted."""
        ...

    def submit_array(self, fns: Sequence[Callable[[], R]], resources: Resources, what: str) -> list[Any]:
        """One task per callable; returns submitit's jobs (``job_id`` ``<array>_<i>`` on SLURM, a pid locally)."""
        ...


def array_id(jobs: Sequence[Any]) -> str:
    """The array (or plain job) id of jobs submitted together."""
    return str(jobs[0].job_id).split("_")[0]
