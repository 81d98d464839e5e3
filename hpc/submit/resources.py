"""The shape of a job, typed: what every task of an array (or one plain job) is submitted with.

One dataclass for the worker array, the evaluation job and the map array, so that both backends
build their executor from the same fields and a bad value is one error line before anything is
submitted. ``time_min`` is already in minutes and ``mem`` in SLURM's syntax: callers parse them with
their option names (``hpc.config``; ``sbatch --test-only`` judges the rest).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dualseg.errors import InputError

MAX_REQUEUES = 100  # time-limit requeues per array task, cluster and local alike


def worker_job_name(study: str) -> str:
    """The SLURM job name of a study's workers (squeue asks for this study's jobs by name)."""
    return f"dualseg-{study}"


def eval_job_name(study: str) -> str:
    return f"dualseg-eval-{study}"


@dataclass(frozen=True)
class Resources:
    """Per task: ``nodes`` x ``tasks_per_node`` processes, ``gpus_per_node`` GPUs per node.

    ``parallelism`` caps the array tasks running at once (None: all); ``signal_delay_s`` None keeps the
    executor's default; ``setup`` lines run in the job before ``srun`` (cluster shell lines such as
    ``module load``: the local executor runs in this environment and ignores them).
    """

    job_name: str
    log_folder: Path
    time_min: int
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    parallelism: int | None = None
    requeue: bool = True
    signal_delay_s: int | None = None
    setup: tuple[str, ...] = ()
    srun_args: tuple[str, ...] = ()
    max_requeues: int = MAX_REQUEUES

    def __post_init__(self) -> None:
        checks = [
            (self.nodes >= 1, f"--nodes: must be >= 1 (got {self.nodes})"),
            (self.tasks_per_node >= 1, f"--ntasks-per-node: must be >= 1 (got {self.tasks_per_node})"),
            (self.gpus_per_node >= 0, f"--gpus-per-node: must be >= 0 (got {self.gpus_per_node})"),
            (self.cpus_per_task is None or self.cpus_per_task >= 1,
             f"--cpus-per-task: must be >= 1 (got {self.cpus_per_task})"),
            (self.time_min >= 1, f"--time: must be >= 1 minute (got {self.time_min})"),
            (self.parallelism is None or self.parallelism >= 1, f"--parallel: must be >= 1 (got {self.parallelism})"),
            (self.signal_delay_s is None or self.signal_delay_s >= 0,
             f"signal_delay_s: must be >= 0 (got {self.signal_delay_s})"),
            (self.max_requeues >= 0, f"max_requeues: must be >= 0 (got {self.max_requeues})"),
            (bool(self.job_name.strip()), "--job-name: must not be empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    def array_parallelism(self, n: int) -> int:
        """Array tasks at once for an array of ``n``."""
        return min(self.parallelism or n, n)
