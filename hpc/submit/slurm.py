"""The SLURM backend: one executor builder, one sbatch rendering, one refusal path, one partition check.

Arrays are pickled callables submitted by submitit's ``SlurmExecutor`` (requeue on timeout and
preemption comes with it); the script it submits is rendered here too, without an executor (which
needs ``srun`` on this machine), for ``--dry-run`` and ``sbatch --test-only``. Plain scripts (the
evaluation job) go to ``sbatch`` through :func:`hpc.slurm.submit`.
"""

from __future__ import annotations

import contextlib
import io
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dualseg.errors import InputError
from hpc import slurm
from hpc.submit.base import R
from hpc.submit.resources import Resources

# scancel retries a signal SLURM refuses during a requeue ("try again later") and delivers it to the requeued
# job's fresh tasks a fraction of a second after they start: USR2's default action kills a task (exit 140)
# before submitit installs its handler, and the requeued job ends instead of continuing its trial. A
# disposition set to "ignore" survives exec (POSIX), and Python's ``signal.signal`` replaces it once the
# handler is ready; the signal lost in that window asked for what the requeue already does.
TASK_PYTHON = "/bin/sh -c 'trap \"\" USR2; exec \"$0\" \"$@\"' " + shlex.quote(sys.executable)
"""The interpreter every srun task starts (submitit's ``python``): SIGUSR2 ignored until its handler is set."""


def executor_parameters(res: Resources, n: int) -> dict[str, Any]:
    """``SlurmExecutor.update_parameters`` keywords of an array of ``n`` tasks shaped ``res``."""
    params: dict[str, Any] = {"job_name": res.job_name, "nodes": res.nodes, "ntasks_per_node": res.tasks_per_node,
                              "time": res.time_min, "array_parallelism": res.array_parallelism(n)}
    if res.signal_delay_s is not None:
        params["signal_delay_s"] = res.signal_delay_s
    if res.requeue:
        params["additional_parameters"] = {"requeue": True}
    # from SLURM 22.05 srun no longer inherits --cpus-per-task from the allocation: without it every rank is
    # confined to one core that must feed its GPU and run the loader workers
    srun_args = [*res.srun_args, *([f"--cpus-per-task={res.cpus_per_task}"] if res.cpus_per_task else [])]
    if srun_args:
        params["srun_args"] = srun_args
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    for key in ("partition", "account", "qos", "mem", "cpus_per_task"):
        if getattr(res, key) is not None:
            params[key] = getattr(res, key)
    if res.setup:
        params["setup"] = list(res.setup)
    return params


def render_array(res: Resources, n: int) -> str:
    """The sbatch script submitit submits for ``n`` tasks (``--array`` only when ``n > 1``).

    The one use of submitit's private ``_make_sbatch_string``: it is what ``SlurmExecutor`` itself
    renders, and the only way to show (``--dry-run``) and judge (``--test-only``) that exact script
    before submitting. ``tests/hpc/test_submit.py`` compares this rendering with a real executor's
    and pins the keywords we pass, so a submitit upgrade that changes either fails there.
    """
    from submitit.slurm.slurm import _make_sbatch_string

    folder = res.log_folder.expanduser().absolute()  # as submitit's Executor stores it
    # SlurmExecutor._submitit_command_str, without building an executor (that needs srun here)
    command = " ".join([TASK_PYTHON, "-u -m submitit.core._submit", shlex.quote(str(folder))])
    extra: dict[str, Any] = {"map_count": n} if n > 1 else {}
    return _make_sbatch_string(command=command, folder=folder, **executor_parameters(res, n), **extra)


def directives(res: Resources, dependency: str | None = None) -> dict[str, str]:
    """``#SBATCH`` options of a plain one-step script (no srun): ``{option: value}`` in order ("" = a flag)."""
    out = {"job-name": res.job_name, "time": str(res.time_min), "nodes": str(res.nodes),
           "ntasks": str(res.nodes * res.tasks_per_node)}
    if res.cpus_per_task is not None:
        out["cpus-per-task"] = str(res.cpus_per_task)
    out["output"] = str(res.log_folder / "%j_0_log.out")
    out["error"] = str(res.log_folder / "%j_0_log.err")
    for key in ("partition", "account", "qos", "mem"):
        if getattr(res, key) is not None:
            out[key] = str(getattr(res, key))
    if res.gpus_per_node:
        out["gpus-per-node"] = str(res.gpus_per_node)
    if dependency:
        out["dependency"] = f"afterany:{dependency}"
    if res.requeue:
        out["requeue"] = ""
    return out


class SlurmBackend:
    """Submit through ``sbatch``; every refusal is one ``InputError`` line."""

    @staticmethod
    def require() -> None:
        if not slurm.available():
            raise InputError("--executor slurm: SLURM does not answer here (no sbatch/sinfo, or no controller)")

    def check_partition(self, partition: str | None) -> None:
        """``--partition`` names a partition ``sinfo`` knows (nothing to check against without SLURM)."""
        if partition is None or not slurm.available():
            return
        have = slurm.partitions()
        if partition not in have:
            raise InputError(f"--partition: unknown partition {partition!r} (have: {', '.join(have)})")

    def render(self, n: int, res: Resources) -> str:
        return render_array(res, n)

    def check_script(self, script: str, what: str) -> None:
        self.require()
        slurm.test_only(script, what)

    def check(self, n: int, res: Resources, what: str) -> None:
        """``sbatch --test-only`` of the array's script: account, QOS, time, nodes, CPUs, memory."""
        self.check_script(self.render(n, res), what)

    def executor(self, res: Resources, n: int) -> Any:
        """The one executor builder."""
        import submitit

        self.require()
        ex = submitit.SlurmExecutor(folder=res.log_folder, max_num_timeout=res.max_requeues, python=TASK_PYTHON)
        ex.update_parameters(**executor_parameters(res, n))
        return ex

    def submit_array(self, fns: Sequence[Callable[[], R]], res: Resources, what: str) -> list[Any]:
        """An array of ``len(fns)`` tasks (a plain job when 1)."""
        import submitit

        ex = self.executor(res, len(fns))
        try:  # submitit also prints sbatch's stderr when it fails: the error line below says it once
            with contextlib.redirect_stderr(io.StringIO()):
                return list(ex.submit_array(list(fns)))
        except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError, OSError) as exc:
            raise slurm.refused(what, str(exc)) from None

    def submit_script(self, script: Path, what: str, cwd: Path | None = None) -> str:
        """``sbatch`` a plain script; returns the job id."""
        self.require()
        return slurm.submit(str(script), what, cwd=str(cwd) if cwd else None)
