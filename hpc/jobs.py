"""The jobs a search submits, rendered from one :class:`Plan`: the worker array and the evaluation job.

Both scripts exist before anything is submitted, so ``--dry-run`` prints exactly what would run and
``sbatch --test-only`` judges *both* against the partition before the study is created (an evaluation
job that cannot fit must not strand a running array). The evaluation job's resources derive from the
launch and from what the partition's smallest node offers; ``--eval-cpus/--eval-gpus/--eval-mem/
--eval-time`` override them. The local executor runs the same workers, one disjoint GPU set each.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dualseg.config import Config, to_dict
from dualseg.errors import InputError
from dualseg.io import atomic_write_text
from hpc import slurm
from hpc.config import HpcConfig
from hpc.paths import REPO_ROOT
from hpc.storage import PASSFILE_ENV, StorageURL
from hpc.trials import WorkerSpec

EVAL_TEMPLATE = REPO_ROOT / "sbatch" / "eval.sbatch"
MAX_REQUEUES = 100  # time-limit requeues per array task, cluster and local alike


@dataclass
class Plan:
    """Everything resolved from config + command line, before any side effect."""

    cfg: Config
    hpc: HpcConfig
    executor: str
    scratch: Path
    storage: StorageURL
    incarnation: str | None = None
    passfile: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def study_dir(self) -> Path:
        return self.scratch / self.hpc.study

    @property
    def logdir(self) -> Path:
        return self.study_dir / "logs"

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


def slurm_executor(plan: Plan, workers: int | None = None) -> Any:
    import submitit

    h = plan.hpc
    ex = submitit.SlurmExecutor(folder=plan.logdir, max_num_timeout=MAX_REQUEUES)
    params: dict[str, Any] = {
        "job_name": f"dualseg-{h.study}",
        "nodes": h.nodes,
        "ntasks_per_node": max(1, h.gpus_per_node),
        "time": slurm.time_to_minutes(h.time),
        "signal_delay_s": h.signal_delay_s,
        "array_parallelism": min(h.parallel or h.workers, workers or h.workers),
        "additional_parameters": {"requeue": True},
        "srun_args": ["--kill-on-bad-exit=1"],  # one dead rank ends the step: no rank hangs in a collective
    }
    if h.gpus_per_node:
        params["gpus_per_node"] = h.gpus_per_node
    for key in ("partition", "account", "qos", "mem", "cpus_per_task"):
        if getattr(h, key) is not None:
            params[key] = getattr(h, key)
    if h.setup:
        params["setup"] = list(h.setup)
    ex.update_parameters(**params)
    return ex


def array_script(plan: Plan, workers: int | None = None) -> str:
    """The sbatch script submitit submits for the array (for ``--dry-run`` and ``--test-only``)."""
    from submitit.slurm.slurm import _make_sbatch_string

    n = workers or plan.hpc.workers
    ex = slurm_executor(plan, n)
    extra: dict[str, Any] = {"map_count": n} if n > 1 else {}
    return _make_sbatch_string(command=ex._submitit_command_str, folder=ex.folder, **ex.parameters, **extra)


@dataclass(frozen=True)
class EvalResources:
    cpus: int
    gpus: int
    mem: str | None
    time_min: int


def eval_resources(plan: Plan, node: slurm.NodeResources | None) -> EvalResources:
    """One task on one node: CPUs/GPUs the partition's smallest node has, unless overridden."""
    h = plan.hpc
    cpus = h.eval_cpus or min(h.cpus_per_task or 2, node.cpus if node else 2)
    gpus = h.eval_gpus if h.eval_gpus is not None else (1 if h.gpus_per_node else 0)
    if node is not None and h.eval_cpus is None:
        cpus = max(1, min(cpus, node.cpus))
    return EvalResources(cpus, gpus, h.eval_mem, slurm.time_to_minutes(h.eval_time, "--eval-time"))


def eval_script(plan: Plan, dependency: str | None, res: EvalResources) -> str:
    """Render sbatch/eval.sbatch: our #SBATCH lines replace the template's, settings exported at the marker."""
    h = plan.hpc
    sbatch = {"job-name": f"dualseg-eval-{h.study}", "time": str(res.time_min), "nodes": "1", "ntasks": "1",
              "cpus-per-task": str(res.cpus), "output": str(plan.logdir / "%j_0_log.out"),
              "error": str(plan.logdir / "%j_0_log.err")}
    for key in ("partition", "account", "qos"):
        if getattr(h, key) is not None:
            sbatch[key] = str(getattr(h, key))
    if res.mem:
        sbatch["mem"] = res.mem
    if res.gpus:
        sbatch["gpus-per-node"] = str(res.gpus)
    if dependency:
        sbatch["dependency"] = f"afterany:{dependency}"
    out: list[str] = []
    for line in EVAL_TEMPLATE.read_text().splitlines():
        m = re.match(r"#SBATCH\s+--([\w-]+)", line)
        if m and m.group(1) in sbatch:
            continue
        out.append(line)
        if line.startswith("#!"):
            out += [f"#SBATCH --{k}={v}" for k, v in sbatch.items()]
        if line.strip() == "# dualseg: launcher settings":
            env = {"DUALSEG_STUDY": h.study, "DUALSEG_STORAGE_URL": plan.storage.public,
                   "DUALSEG_SCRATCH": str(plan.scratch), "DUALSEG_REPO": str(REPO_ROOT),
                   "DUALSEG_PYTHON": sys.executable, **({PASSFILE_ENV: str(plan.passfile)} if plan.passfile else {})}
            out += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
            out += list(h.setup)
    return "\n".join(out) + "\n"


def partition_node(plan: Plan) -> slurm.NodeResources | None:
    return slurm.partition_resources(plan.hpc.partition) if slurm.available() else None


def check_scripts(plan: Plan) -> EvalResources:
    """``sbatch --test-only`` both scripts (the array's and the evaluation job's): nothing is submitted."""
    node = partition_node(plan)
    res = eval_resources(plan, node)
    slurm.test_only(array_script(plan), "worker array")
    if plan.hpc.eval:
        slurm.test_only(eval_script(plan, None, res), "evaluation job (see --eval-cpus/--eval-gpus/--eval-mem)")
    return res


def submit_array(plan: Plan, workers: int) -> str:
    """Submit ``workers`` array tasks (a plain job when 1); returns the array (or job) id."""
    import subprocess

    import submitit

    from hpc.worker import Worker

    ex = slurm_executor(plan, workers)
    spec = plan.worker_spec()
    try:
        jobs = ex.submit_array([Worker(spec) for _ in range(workers)])
    except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError, OSError) as exc:
        raise InputError(f"sbatch refused the array: {str(exc).strip().splitlines()[-1]}") from None
    return str(jobs[0].job_id).split("_")[0]


def submit_eval(plan: Plan, dependency: str, res: EvalResources) -> str:
    script = plan.logdir / f"eval-{dependency}.sbatch"
    atomic_write_text(script, eval_script(plan, dependency, res))
    return slurm.submit(str(script), cwd=str(REPO_ROOT))


def run_local_workers(plan: Plan) -> list[Any]:
    """The same workers through submitit's local executor: one disjoint GPU set per worker."""
    import submitit

    from hpc.worker import Worker

    h = plan.hpc
    ex = submitit.LocalExecutor(folder=plan.logdir, max_num_timeout=MAX_REQUEUES)
    ex.update_parameters(timeout_min=slurm.time_to_minutes(h.time), tasks_per_node=max(1, h.gpus_per_node),
                         gpus_per_node=h.gpus_per_node, signal_delay_s=h.signal_delay_s)
    visible = _visible_gpus() if h.gpus_per_node else []
    if h.gpus_per_node and len(visible) < h.gpus_per_node * h.workers:
        raise InputError(f"--workers/--gpus-per-node: {h.workers} local worker(s) x {h.gpus_per_node} GPU(s) "
                         f"need {h.workers * h.gpus_per_node} GPUs; {len(visible)} visible")
    jobs = []
    for i in range(h.workers):
        if h.gpus_per_node:
            ex.update_parameters(visible_gpus=visible[i * h.gpus_per_node:(i + 1) * h.gpus_per_node])
        jobs.append(ex.submit(Worker(plan.worker_spec())))
    return jobs


def _visible_gpus() -> list[int]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env:
        return [int(x) for x in env.split(",") if x.strip().isdigit()]
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except Exception:  # noqa: BLE001 - no usable CUDA: no GPUs to hand out
        return []
