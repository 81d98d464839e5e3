"""The local backend: submitit's ``LocalExecutor`` on this machine, one disjoint GPU set per task.

The same callables as on SLURM run as local processes (``tasks_per_node`` each) with the same time
limit and requeue budget; task ``i`` sees GPUs ``[i*g, (i+1)*g)`` of the visible ones, so two tasks
never share a GPU. Nodes, CPUs, memory, partition and ``setup`` lines are cluster notions and are
ignored here.

Ctrl-C: a terminal sends SIGINT to the whole foreground process group, and submitit's controller and
tasks would each die with a ``KeyboardInterrupt`` traceback in the middle of a trial. With
``own_interrupt`` the tasks start with SIGINT ignored (inherited across exec, as a shell runs a
background job), so Ctrl-C reaches only the caller, which stops them with :meth:`LocalBackend.stop`:
SIGTERM, the workers' own stop signal (the controller forwards it to every task).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dualseg.errors import InputError
from hpc.submit.base import R
from hpc.submit.resources import Resources


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux ``/proc/<pid>/task/<tid>/children``; none where it is missing)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        for children in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            try:
                kids = [int(k) for k in children.read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def visible_gpus() -> list[int]:
    """GPU indices this process may hand out: ``CUDA_VISIBLE_DEVICES``, else every CUDA device.

    Set but empty means no GPU (as CUDA reads it). submitit's local executor hands GPUs out by index, so
    a list of GPU UUIDs (``GPU-...``/``MIG-...``) is refused in one line instead of being dropped.
    """
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        tokens = [x.strip() for x in env.split(",") if x.strip()]
        if any(not t.isdigit() for t in tokens):
            raise InputError(f"CUDA_VISIBLE_DEVICES={env}: the local executor hands out GPUs by index; "
                             "give indices (nvidia-smi -L lists them)")
        return [int(t) for t in tokens]
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except Exception:  # noqa: BLE001 - no usable CUDA: no GPUs to hand out
        return []


@contextmanager
def _sigint_ignored(active: bool) -> Iterator[None]:
    """Processes started inside ignore SIGINT (only the main thread may change a handler)."""
    if not active or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class LocalBackend:
    """Run the array here; ``job_id`` of each job is its controller's pid.

    ``own_interrupt``: the tasks ignore Ctrl-C; the caller stops them with :meth:`stop` (see module doc).
    """

    def __init__(self, own_interrupt: bool = False) -> None:
        self.own_interrupt = own_interrupt

    @staticmethod
    def stop(jobs: Sequence[Any]) -> None:
        """SIGTERM to every controller still running (forwarded to its tasks: they save and exit)."""
        for job in jobs:
            if not job.done():
                try:
                    os.kill(int(job.job_id), signal.SIGTERM)
                except ProcessLookupError:
                    pass

    @staticmethod
    def kill(jobs: Sequence[Any]) -> None:
        """SIGKILL every controller still running and every process under it (a task deaf to SIGTERM: hung
        in a collective or in C code). The tree is read before anything dies: orphans would be lost."""
        for job in jobs:
            if job.done():
                continue
            pid = int(job.job_id)
            for target in [*_descendants(pid), pid]:
                try:
                    os.kill(target, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def gpu_sets(self, n: int, res: Resources, what: str) -> list[list[int]]:
        """Task ``i``'s GPUs (empty lists for CPU tasks); one InputError line when too few are visible."""
        g = res.gpus_per_node
        if not g:
            return [[] for _ in range(n)]
        visible = visible_gpus()
        if len(visible) < g * n:
            raise InputError(f"the {what} needs {g * n} GPUs ({n} local task(s) x {g}); {len(visible)} visible")
        return [visible[i * g:(i + 1) * g] for i in range(n)]

    def check(self, n: int, res: Resources, what: str) -> None:
        self.gpu_sets(n, res, what)

    def submit_array(self, fns: Sequence[Callable[[], R]], res: Resources, what: str) -> list[Any]:
        import submitit

        sets = self.gpu_sets(len(fns), res, what)
        ex = submitit.LocalExecutor(folder=res.log_folder, max_num_timeout=res.max_requeues)
        params: dict[str, Any] = {"timeout_min": res.time_min, "tasks_per_node": res.tasks_per_node,
                                  "gpus_per_node": res.gpus_per_node}
        if res.signal_delay_s is not None:
            params["signal_delay_s"] = res.signal_delay_s
        ex.update_parameters(**params)
        jobs = []
        with _sigint_ignored(self.own_interrupt):
            for fn, gpus in zip(fns, sets):
                if gpus:
                    ex.update_parameters(visible_gpus=gpus)
                jobs.append(ex.submit(fn))
        return jobs
