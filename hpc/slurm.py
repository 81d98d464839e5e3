"""Everything this project reads from SLURM, in one place (like Lightning's ``SLURMEnvironment``).

Every ``SLURM_*`` variable is read by :class:`SlurmEnv`; every ``squeue``/``sinfo``/``sbatch`` call
goes through the functions below. ``squeue`` is asked once for a whole list of jobs (it rejects the
list when one id has left the queue, so ``--states=all`` style filtering is done here) and answers
are cached for a few seconds: many workers polling the study must not hammer slurmctld.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from dualseg.errors import InputError

log = logging.getLogger("hpc.slurm")

# squeue states in which a job will still run (or run again): its trial is not dead.
# Queued but not running: a trial whose requeued job waits in one of these is kept alive by the others.
WAITING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "SUSPENDED"})
QUEUED_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RUNNING",
                           "SUSPENDED", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT"})


@dataclass(frozen=True)
class SlurmEnv:
    """This process's view of its SLURM job (all fields None/defaults outside SLURM)."""

    job_id: str | None = None
    array_job_id: str | None = None
    array_task_id: str | None = None
    procid: int = 0
    localid: int = 0
    ntasks: int = 1
    nnodes: int = 1
    nodelist: str | None = None
    nodename: str | None = None
    restart_count: int = 0
    env: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def read(cls, environ: dict[str, str] | None = None) -> SlurmEnv:
        e = dict(os.environ if environ is None else environ)
        return cls(
            job_id=e.get("SLURM_JOB_ID"), array_job_id=e.get("SLURM_ARRAY_JOB_ID"),
            array_task_id=e.get("SLURM_ARRAY_TASK_ID"), procid=int(e.get("SLURM_PROCID", "0")),
            localid=int(e.get("SLURM_LOCALID", "0")), ntasks=int(e.get("SLURM_NTASKS", "1")),
            nnodes=int(e.get("SLURM_NNODES", e.get("SLURM_JOB_NUM_NODES", "1"))),
            nodelist=e.get("SLURM_JOB_NODELIST"), nodename=e.get("SLURMD_NODENAME"),
            restart_count=int(e.get("SLURM_RESTART_COUNT", "0")),
        )

    @property
    def in_job(self) -> bool:
        return self.job_id is not None

    @property
    def label(self) -> str:
        """This job as squeue names it: ``<array>_<task>`` for array tasks, else the job id (or local pid)."""
        if self.array_job_id:
            return f"{self.array_job_id}_{self.array_task_id or '0'}"
        return self.job_id or f"local-{os.getpid()}"

    @property
    def state_key(self) -> str:
        """A file-name-safe key of this array task that survives requeues (``<job>_<task>``)."""
        return f"{self.array_job_id or self.job_id or 'local'}_{self.array_task_id or '0'}"

    def torch_env(self) -> dict[str, str]:
        """torchrun-style variables for ``srun python -m hpc.worker`` (what submitit's
        ``TorchDistributedEnvironment`` exports for pickled jobs)."""
        assert self.nodelist is not None and self.job_id is not None
        nodes = subprocess.run(["scontrol", "show", "hostnames", self.nodelist], capture_output=True, text=True,
                               check=True, timeout=30).stdout.split()
        job = int(self.array_job_id or self.job_id)
        return {"MASTER_ADDR": nodes[0], "MASTER_PORT": str(20000 + (job * 7 + int(self.array_task_id or 0)) % 40000),
                "RANK": str(self.procid), "WORLD_SIZE": str(self.ntasks), "LOCAL_RANK": str(self.localid),
                "LOCAL_WORLD_SIZE": str(self.ntasks // max(1, self.nnodes))}


def available() -> bool:
    """``sbatch`` and ``sinfo`` exist and the controller answers."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"


def partitions() -> list[str]:
    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise InputError(f"--executor slurm: sinfo failed: {_last_line(out.stderr)}")
    return [p.strip().rstrip("*") for p in out.stdout.split() if p.strip()]


@dataclass(frozen=True)
class NodeResources:
    """The smallest node of a partition: what a one-node job can always get there."""

    cpus: int
    mem_mb: int | None
    gpus: int


def partition_resources(partition: str | None) -> NodeResources:
    """CPUs, memory and GPUs of the smallest node of ``partition`` (default partition when None)."""
    cmd = ["sinfo", "-h", "-N", "-o", "%c %m %G"] + (["-p", partition] if partition else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if out.returncode != 0 or not out.stdout.strip():
        raise InputError(f"--partition: sinfo shows no nodes for {partition or 'the default partition'}")
    cpus, mems, gpus = [], [], []
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        cpus.append(int(re.sub(r"\D.*", "", parts[0]) or 1))
        mem = re.sub(r"\D.*", "", parts[1])
        mems.append(int(mem) if mem else None)
        m = re.search(r"gpu(?::[\w.-]+)?:(\d+)", parts[2] if len(parts) > 2 else "")
        gpus.append(int(m.group(1)) if m else 0)
    known = [m for m in mems if m]
    limit = _partition_max_cpus(partition)
    return NodeResources(min(min(cpus), limit or min(cpus)), min(known) if known else None, min(gpus))


def _partition_max_cpus(partition: str | None) -> int | None:
    """``MaxCPUsPerNode`` of the partition (a partition may offer fewer CPUs than its nodes have)."""
    if not partition:
        return None
    out = subprocess.run(["scontrol", "show", "partition", "-o", partition], capture_output=True, text=True, timeout=30)
    m = re.search(r"\bMaxCPUsPerNode=(\d+)", out.stdout)
    return int(m.group(1)) if m else None


JOB_FLAGS = "--nodes/--partition/--account/--qos/--time/--mem/--cpus-per-task"  # what shapes a launcher's job


def test_only(script: str, what: str) -> None:
    """``sbatch --test-only`` of ``script``: SLURM itself judges account, QOS, time, nodes, CPUs, memory.

    ``what`` names the job and may name, in parentheses, the options that shape it (the prediction
    array's, the evaluation job's); otherwise the launcher's :data:`JOB_FLAGS` are named. One list."""
    with tempfile.NamedTemporaryFile("w", suffix=".sbatch", prefix="dualseg-check-") as fh:
        fh.write(script)
        fh.flush()
        out = subprocess.run(["sbatch", "--test-only", fh.name], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        reason = _last_line(out.stderr).removeprefix("sbatch: error: ")
        flags = "" if "(" in what else f" ({JOB_FLAGS})"
        raise InputError(f"sbatch refuses the {what}{flags}: {reason}")


def refused(what: str, message: str) -> InputError:
    """The one error line of a refused submission: ``sbatch refused the <what>: <its last line>``."""
    return InputError(f"sbatch refused the {what}: {_last_line(message).removeprefix('sbatch: error: ')}")


def submit(script_path: str, what: str, cwd: str | None = None) -> str:
    """``sbatch --parsable``: the job id, or one InputError line."""
    out = subprocess.run(["sbatch", "--parsable", script_path], capture_output=True, text=True, cwd=cwd, timeout=60)
    if out.returncode != 0:
        raise refused(what, out.stderr)
    return out.stdout.strip().split(";")[0]


def cancel(job_id: str) -> None:
    subprocess.run(["scancel", job_id], capture_output=True, timeout=60)


_cache: dict[str, tuple[float, dict[str, str]]] = {}
_cache_lock = threading.Lock()


def squeue_listing(names: Sequence[str] = (), max_age_s: float = 5.0) -> dict[str, str] | None:
    """``{job: state}`` of every job squeue lists (array tasks as ``<array>_<task>``), one call, cached.

    ``None`` means *unknown* — squeue failed or timed out (slurmctld busy or restarting) — which is not
    "nothing queued": callers must neither fail a live trial nor keep a dead one alive for long on it.
    ``names`` (job names, e.g. ``dualseg-<study>``) keep the query to this study's jobs instead of the
    whole cluster.
    """
    if shutil.which("squeue") is None:
        return {}
    key = ",".join(names)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < max_age_s:
            return hit[1]
    cmd = ["squeue", "-h", "-r", "-o", "%i %T", *(["--name", ",".join(names)] if names else [])]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        log.warning("squeue failed (%s): job states unknown for now", _last_line(out.stderr) or out.returncode)
        return None
    listed = dict(line.split()[:2] for line in out.stdout.splitlines() if len(line.split()) >= 2)
    with _cache_lock:
        _cache[key] = (time.monotonic(), listed)
    return listed


def squeue_states(job_ids: list[str], max_age_s: float = 5.0, names: Sequence[str] = ()) -> dict[str, str] | None:
    """``{job: state}`` for those of ``job_ids`` squeue still lists (``<array>_<task>``, plain or array ids).

    Filtered here from one listing, because ``squeue -j a,b`` fails as a whole once one id has left the
    queue; ``None`` when squeue cannot tell (see :func:`squeue_listing`).
    """
    wanted = sorted(set(j for j in job_ids if j and j[:1].isdigit()))
    if not wanted:
        return {}
    listed = squeue_listing(names, max_age_s)
    if listed is None:
        return None
    states: dict[str, str] = {}
    for job in wanted:
        if job in listed:
            states[job] = listed[job]
        else:  # an array id matches its tasks
            tasks = [s for j, s in listed.items() if j.split("_")[0] == job]
            if tasks:
                states[job] = "RUNNING" if "RUNNING" in tasks else tasks[0]
    return states


def preempted(job_id: str | None) -> bool:
    """True when SLURM is preempting this job (``PreemptTime`` set). On partitions with ``PreemptMode=REQUEUE``
    and a ``GraceTime`` a job that saves and exits within its grace time is recorded COMPLETED and *not*
    requeued, so a preempted worker must requeue itself; ``scancel`` and node failures leave it unset."""
    if not job_id or shutil.which("scontrol") is None:
        return False
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    fields = dict(f.split("=", 1) for f in out.stdout.split() if "=" in f)
    return out.returncode == 0 and fields.get("PreemptTime", "None") not in ("None", "Unknown", "")


def any_queued(job_ids: list[str], names: Sequence[str] = ()) -> bool | None:
    """True while one of ``job_ids`` (array ids match their tasks) may still run; None when squeue cannot tell."""
    states = squeue_states(job_ids, max_age_s=0, names=names)
    return None if states is None else any(s in QUEUED_STATES for s in states.values())


_TIME_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def time_to_minutes(value: str | int, what: str = "--time") -> int:
    """SLURM ``--time`` syntax (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) to whole minutes."""
    m = _TIME_RE.match(str(value).strip())
    if not m:
        raise InputError(f"{what}: cannot parse {value!r} (use MM, HH:MM:SS or D-HH:MM)")
    days, a, b, c = m.groups()
    if days is not None:
        h, mi, s = int(a), int(b or 0), int(c or 0)
    elif c is not None:
        h, mi, s = int(a), int(b), int(c)
    elif b is not None:
        h, mi, s = 0, int(a), int(b)
    else:
        h, mi, s = 0, int(a), 0
    minutes = int(days or 0) * 1440 + h * 60 + mi + (1 if s else 0)
    if minutes < 1:
        raise InputError(f"{what}: {value!r} is shorter than one minute")
    return minutes
