"""The commands the launcher prints to follow a search, written to work pasted in any directory.

Each is an installed entry point (setup.cfg) with an absolute path for every path argument and the
storage URL without its password (the rule for argv and logs). When the launcher knew the password
(in the URL or ``$PGPASSWORD``) it wrote the study's passfile (``<scratch>/<study>/.pgpass``, mode 0600);
the commands that connect name it as ``PGPASSFILE=...``, so they connect from a fresh shell too. With the
password in ``~/.pgpass`` there is nothing to name.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

from hpc.paths import REPO_ROOT
from hpc.submit.jobs import Plan, worker_resources


def entry_point(name: str, module: str) -> str:
    """How to run console script ``name`` of this environment from anywhere: its name when ``PATH`` finds
    this very script, else its absolute path; ``python -m module`` when it is not installed here."""
    script = Path(sys.executable).parent / name
    found = shutil.which(name)
    if script.is_file():
        return name if found is not None and Path(found).resolve() == script.resolve() else shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m {module}"


def _q(value: str | Path) -> str:
    return shlex.quote(str(value))


def storage_url(plan: Plan) -> str:
    """The study's URL without password; a SQLite path made absolute (``sqlite:///rel`` is relative to cwd)."""
    path = plan.storage.sqlite_path
    return f"sqlite:///{path.resolve()}" if path is not None else plan.storage.public


def _env(plan: Plan) -> str:
    return f"PGPASSFILE={_q(plan.passfile)} " if plan.passfile is not None else ""


def study_args(plan: Plan) -> str:
    """``--study S --storage URL --scratch DIR`` as status and report take them."""
    return f"--study {_q(plan.hpc.study)} --storage {_q(storage_url(plan))} --scratch {_q(plan.scratch)}"


def status_command(plan: Plan) -> str:
    return f"{_env(plan)}{entry_point('dualseg-status', 'hpc.status')} {study_args(plan)}"


def report_command(plan: Plan) -> str:
    return f"{_env(plan)}{entry_point('dualseg-report', 'hpc.report')} {study_args(plan)}"


def logs_command(plan: Plan, job: str) -> str:
    return f"{entry_point('dualseg-logs', 'hpc.logs')} {job} --follow --logdir {_q(plan.logdir)}"


def dashboard_command(plan: Plan) -> str:
    """``optuna-dashboard URL``: the ``dashboard`` extra (setup.cfg) installs it with the PostgreSQL driver."""
    return f"{_env(plan)}optuna-dashboard {_q(storage_url(plan))}"


def submitted_lines(plan: Plan, array_id: str, eval_id: str | None) -> list[str]:
    """The ``follow:`` block after a SLURM submission: ``<array>_0`` of an array, the job itself with one worker
    (not an array: its logs are ``<job>_<rank>_log.*``)."""
    first = f"{array_id}_0" if plan.hpc.workers > 1 else array_id
    return ["follow:",
            f"  {logs_command(plan, first)}",
            f"  {status_command(plan)}",
            f"  {dashboard_command(plan)}    # pip install -e {_q(f'{REPO_ROOT}[dashboard]')}",
            f"  squeue -j {array_id}{',' + eval_id if eval_id else ''}",
            f"  {report_command(plan)}    # once the evaluation job is done"]


def map_command(plan: Plan, results_dir: str | Path) -> str:
    """Maps of the test split with the study's best model (the local search's last line)."""
    out = Path(results_dir).resolve()
    return (f"{entry_point('dualseg-map', 'dualseg.predict')} --model {_q(out / 'best_model.pth')} "
            f"--tiles {_q(Path(plan.cfg.data.root).resolve())} --split test --out {_q(out / 'maps')}")


def pickle_free_command(plan: Plan) -> str:
    """After ``--prepare-only``: ``sbatch/train.sbatch`` with the launch's resources (docs/hpc.md section 6)."""
    res, n = worker_resources(plan), plan.hpc.workers
    opts = [f"--array=0-{n - 1}%{res.array_parallelism(n)}"] if n > 1 else []
    opts += [f"--nodes={res.nodes}", f"--ntasks-per-node={res.tasks_per_node}", f"--time={res.time_min}"]
    opts += [f"--gpus-per-node={res.gpus_per_node}"] if res.gpus_per_node else []
    for key in ("cpus_per_task", "partition", "account", "qos", "mem"):
        opts += [f"--{key.replace('_', '-')}={getattr(res, key)}"] if getattr(res, key) is not None else []
    env = {"DUALSEG_STUDY": plan.hpc.study, "DUALSEG_STORAGE": storage_url(plan), "DUALSEG_REPO": str(REPO_ROOT),
           "DUALSEG_PYTHON": sys.executable, **({"PGPASSFILE": str(plan.passfile)} if plan.passfile else {})}
    opts.append("--export=ALL," + ",".join(f"{k}={v}" for k, v in env.items()))
    return " ".join(["sbatch", *map(_q, opts), _q(REPO_ROOT / "sbatch" / "train.sbatch")])
