"""The jobs a search submits, from one :class:`Plan`: the worker array and the evaluation job.

Both scripts exist before anything is submitted, so ``--dry-run`` prints exactly what would run and
``sbatch --test-only`` judges *both* against the partition before the study is created (an evaluation
job that cannot fit must not strand a running array). The evaluation job's resources derive from the
launch and from what the partition's smallest node offers; ``--eval-cpus/--eval-gpus/--eval-mem/
--eval-time`` override them. The local backend runs the same workers, one disjoint GPU set each.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualseg.config import Config, to_dict
from dualseg.errors import InputError
from dualseg.io import atomic_write_text
from hpc import slurm
from hpc.config import HpcConfig
from hpc.paths import REPO_ROOT, log_dir
from hpc.storage import PASSFILE_ENV, StorageURL
from hpc.submit.local import LocalBackend
from hpc.submit.resources import Resources, eval_job_name, worker_job_name
from hpc.submit.slurm import SlurmBackend, directives
from hpc.trials import WorkerSpec

EVAL_TEMPLATE = REPO_ROOT / "sbatch" / "eval.sbatch"
WORKERS = "worker array"
EVAL = "evaluation job"


@dataclass
class Plan:
    """What a search job is submitted with: everything resolved from config + command line, before any side effect."""

    cfg: Config
    hpc: HpcConfig
    executor: str
    scratch: Path
    storage: StorageURL
    incarnation: str | None = None
    passfile: Path | None = None
    allow_change: bool = False  # --allow-change: a relaunch may change the target, objective or search space

    @property
    def study_dir(self) -> Path:
        return self.scratch / self.hpc.study

    @property
    def logdir(self) -> Path:
        return log_dir(self.study_dir)

    def worker_spec(self) -> WorkerSpec:
        h = self.hpc
        overrides = {"trials": h.trials, "study": h.study, "gpus_per_node": h.gpus_per_node,
                     "scratch": str(self.scratch)}
        return WorkerSpec(to_dict(self.cfg), self.storage.public, h.study, str(self.scratch), overrides,
                          self.incarnation)


def job_environment(plan: Plan) -> dict[str, str]:
    """What jobs inherit from us: the public URL and the passfile path, never a password."""
    env = {"DUALSEG_STORAGE": plan.storage.public}
    if plan.passfile is not None:
        env[PASSFILE_ENV] = str(plan.passfile)
    return env


def scrub_environment(plan: Plan) -> None:
    """sbatch exports our environment into the job (and slurmctld stores it): drop every password first."""
    os.environ.pop("PGPASSWORD", None)
    os.environ.update(job_environment(plan))


def worker_resources(plan: Plan) -> Resources:
    """Every worker: ``nodes`` x one task per GPU (one CPU task without GPUs), requeued on timeout."""
    h = plan.hpc
    return Resources(
        job_name=worker_job_name(h.study), log_folder=plan.logdir, time_min=slurm.time_to_minutes(h.time),
        nodes=h.nodes, tasks_per_node=max(1, h.gpus_per_node), gpus_per_node=h.gpus_per_node,
        cpus_per_task=h.cpus_per_task, mem=h.mem, partition=h.partition, account=h.account, qos=h.qos,
        parallelism=h.parallel, signal_delay_s=h.signal_delay_s, setup=tuple(h.setup),
        srun_args=("--kill-on-bad-exit=1",),  # one dead rank ends the step: no rank hangs in a collective
    )


def array_script(plan: Plan, workers: int | None = None) -> str:
    """The sbatch script submitit submits for the array (for ``--dry-run`` and ``--test-only``)."""
    return SlurmBackend().render(workers or plan.hpc.workers, worker_resources(plan))


def eval_resources(plan: Plan, node: slurm.NodeResources | None) -> Resources:
    """One task on one node: CPUs/GPUs the partition's smallest node has, unless overridden."""
    h = plan.hpc
    cpus = h.eval_cpus or min(h.cpus_per_task or 2, node.cpus if node else 2)
    gpus = h.eval_gpus if h.eval_gpus is not None else (1 if h.gpus_per_node else 0)
    if node is not None and h.eval_cpus is None:
        cpus = max(1, min(cpus, node.cpus))
    return Resources(job_name=eval_job_name(h.study), log_folder=plan.logdir,
                     time_min=slurm.time_to_minutes(h.eval_time, "--eval-time"), cpus_per_task=cpus,
                     gpus_per_node=gpus, mem=h.eval_mem, partition=h.partition, account=h.account, qos=h.qos,
                     setup=tuple(h.setup))  # requeued after a node failure or preemption: it heals or evaluates again


def eval_script(plan: Plan, dependency: str | None, res: Resources) -> str:
    """Render sbatch/eval.sbatch: our #SBATCH lines replace the template's, settings exported at the marker."""
    h = plan.hpc
    sbatch = directives(res, dependency)
    out: list[str] = []
    for line in EVAL_TEMPLATE.read_text().splitlines():
        m = re.match(r"#SBATCH\s+--([\w-]+)", line)
        if m and m.group(1) in sbatch:
            continue
        out.append(line)
        if line.startswith("#!"):
            out += [f"#SBATCH --{k}={v}" if v else f"#SBATCH --{k}" for k, v in sbatch.items()]
        if line.strip() == "# dualseg: launcher settings":
            env = {"DUALSEG_STUDY": h.study, "DUALSEG_STORAGE_URL": plan.storage.public,
                   "DUALSEG_SCRATCH": str(plan.scratch), "DUALSEG_REPO": str(REPO_ROOT),
                   "DUALSEG_PYTHON": sys.executable, **({PASSFILE_ENV: str(plan.passfile)} if plan.passfile else {})}
            out += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
            out += list(res.setup)
    return "\n".join(out) + "\n"


def partition_node(plan: Plan) -> slurm.NodeResources | None:
    return slurm.partition_resources(plan.hpc.partition) if slurm.available() else None


def fit_cpus(plan: Plan, node: slurm.NodeResources | None) -> None:
    """CPUs follow GPUs: without ``--cpus-per-task`` a GPU rank gets its share of the node's CPUs (the
    partition's smallest node / GPUs per node), and the loader workers of a rank must fit its CPUs (an
    explicit ``data.num_workers``; "auto" fits by construction: each rank counts the CPUs it was given)."""
    h, workers = plan.hpc, plan.cfg.data.num_workers
    if h.cpus_per_task is None and h.gpus_per_node and node is not None:
        h.cpus_per_task = max(1, node.cpus // h.gpus_per_node)
    if workers != "auto" and h.cpus_per_task is not None and workers + 1 > h.cpus_per_task:
        raise InputError(f"data.num_workers: {workers} loader worker(s) + the rank itself need {workers + 1} CPUs per "
                         f"rank, --cpus-per-task is {h.cpus_per_task}; lower data.num_workers or raise --cpus-per-task")


def check_scripts(plan: Plan) -> Resources:
    """``sbatch --test-only`` both scripts (the array's and the evaluation job's): nothing is submitted."""
    backend = SlurmBackend()
    res = eval_resources(plan, partition_node(plan))
    backend.check(plan.hpc.workers, worker_resources(plan), WORKERS)
    if plan.hpc.eval:
        backend.check_script(eval_script(plan, None, res), f"{EVAL} (see --eval-cpus/--eval-gpus/--eval-mem)")
    return res


def submit_array(plan: Plan, workers: int) -> str:
    """Submit ``workers`` array tasks (a plain job when 1); returns the array (or job) id."""
    from hpc.submit.base import array_id
    from hpc.worker import Worker

    spec = plan.worker_spec()
    return array_id(SlurmBackend().submit_array([Worker(spec) for _ in range(workers)], worker_resources(plan),
                                                WORKERS))


def submit_eval(plan: Plan, dependency: str, res: Resources) -> str:
    script = plan.logdir / f"eval-{dependency}.sbatch"
    atomic_write_text(script, eval_script(plan, dependency, res))
    return SlurmBackend().submit_script(script, EVAL, cwd=REPO_ROOT)


def run_local_workers(plan: Plan) -> list[Any]:
    """The same workers through the local backend: one disjoint GPU set per worker. They ignore Ctrl-C: the
    launcher stops them (:meth:`LocalBackend.stop`) and hands their trials back."""
    from hpc.worker import Worker

    fns = [Worker(plan.worker_spec()) for _ in range(plan.hpc.workers)]
    return LocalBackend(own_interrupt=True).submit_array(fns, worker_resources(plan),
                                                        f"{WORKERS} (--workers x --gpus-per-node)")
