"""What every rank of every array task runs: pull trials from the shared study until it is full.

Rank 0 alone talks to the database. Under the study-wide ask lock it decides what the whole job
does next (train trial N / wait / stop) and broadcasts that to the other ranks, so every rank
trains the same hyperparameters and stops together. The counting rules (exact number of finished
trials, retry of trials whose job died) live in :mod:`hpc.trials`.

Preemption/time limit: USR2 makes the trainer save ``last.pt`` mid-epoch and return; then
submitit's handler calls :meth:`Worker.checkpoint` on rank 0, whose returned instance (pickled for
the requeued job) remembers the running trial, so the requeued job continues that very trial
from ``last.pt`` instead of asking a new one.
``python -m hpc.worker`` is the same loop without submitit pickles (``sbatch/train.sbatch``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from dualseg.config import Config, apply_overrides, from_dict, to_dict
from dualseg.errors import DualsegError, InputError, TrainingError, report_error
from dualseg.io import atomic_write_text
from hpc import study as st
from hpc.config import parse_hpc
from hpc.helpers import connect_url, trial_dir
from hpc.trials import Assignment, Coordinator, WorkerSpec

log = logging.getLogger("hpc.worker")


def _objective_value(history: list[dict[str, float]], objective: str, direction: str) -> float:
    values = [float(h[objective]) for h in history if objective in h]
    if not values:
        raise TrainingError(f"trainer reported no {objective!r} values")
    return min(values) if direction == "minimize" else max(values)


_STOP = threading.Event()  # set by USR2: the trainer saves mid-epoch and returns "interrupted"


def _broadcast(obj: Any, world: int) -> Any:
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class Worker:
    """The callable submitit pickles once per array task and runs on every rank.

    USR2 (time limit / preemption) only sets a flag; the trainer polls it (``should_stop``, rank
    0's answer broadcast), saves ``last.pt`` mid-epoch and returns; only then is submitit's own
    handler invoked, which calls :meth:`checkpoint` (pickling an instance that remembers the
    running trial) and requeues the job with ``scontrol requeue``.
    """

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.resume_trial_id: int | None = None  # set on rank 0 while a trial runs; pickled on USR2
        self._requeue: Any = None

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on rank 0: requeue this callable, remembering the running trial."""
        import submitit

        log.warning("requeueing; the requeued job continues the same trial (storage id %s)", self.resume_trial_id)
        clone = Worker(self.spec)
        clone.resume_trial_id = self.resume_trial_id
        return submitit.helpers.DelayedSubmission(clone)

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "resume_trial_id": self.resume_trial_id}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._requeue = None

    def __call__(self) -> dict[str, Any]:
        import submitit

        # all GPUs of the node stay visible: the trainer selects cuda:LOCAL_RANK itself
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        submitit_handler = signal.getsignal(signal.SIGUSR2)

        def on_usr2(signum: int, frame: Any) -> None:
            log.warning("received USR2 (time limit or preemption): saving, then requeueing")
            _STOP.set()

        def requeue() -> None:
            if callable(submitit_handler):
                submitit_handler(signal.SIGUSR2, None)  # checkpoint() + scontrol requeue + exit
            raise SystemExit(3)

        self._requeue = requeue
        signal.signal(signal.SIGUSR2, on_usr2)
        return run_worker(self.spec, self)


def run_worker(spec: WorkerSpec, owner: Worker | None = None) -> dict[str, Any]:
    """The loop on every rank. Returns counts of what this job did (rank 0's view)."""
    from dualseg.train import fit, init_distributed
    from dualseg.train.log import set_log_context, setup_logging

    setup_logging(stream=sys.stdout)  # <job>_<rank>_log.out: the log; .err: warnings, tracebacks, bars
    set_log_context(node=os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0])
    cfg = from_dict(Config, spec.config)
    hpc = parse_hpc(cfg, spec.hpc_overrides)
    info = init_distributed(cfg.train.device)  # kept for the whole loop; fit reuses it
    rank, world = info.rank, info.world_size
    coord = None
    if rank == 0:
        try:
            coord = Coordinator(spec, hpc)
        except Exception:
            _broadcast(Assignment("stop", reason="rank 0 could not open the study"), world)
            raise
    direction = st.direction_for(hpc.objective)
    study_dir = Path(spec.scratch) / spec.study
    done: dict[str, int] = {"completed": 0, "pruned": 0, "failed": 0}
    resume = owner.resume_trial_id if owner is not None else None

    def requeue_now() -> None:
        if rank == 0 and owner is not None and owner._requeue is not None:
            if coord is not None and owner.resume_trial_id is not None:
                coord.mark_requeued(owner.resume_trial_id)  # live workers keep it beating while queued
            owner._requeue()
        if rank == 0:
            raise SystemExit(3)
        _broadcast(None, world)  # other ranks: block until the requeue kills the step (or rank 0 dies)
        raise SystemExit(3)

    while True:
        job: Assignment | None = None
        if coord is not None:
            if _STOP.is_set():  # between trials: requeue only if the study still needs work
                job = Assignment("stop", reason="USR2 and the study is full") if coord.study_full() \
                    else Assignment("requeue")
            else:
                try:
                    job = coord.next(resume)
                except Exception:
                    _broadcast(Assignment("stop", reason="rank 0 failed"), world)
                    raise
        job = _broadcast(job, world)
        assert job is not None
        resume = None
        if job.action == "requeue":
            requeue_now()
        if job.action == "stop":
            log.info("stopping: %s", job.reason)
            return done
        if job.action == "wait":
            log.info("waiting for running trials (%s)", job.reason)
            time.sleep(hpc.poll_interval)
            continue
        if owner is not None and rank == 0:
            owner.resume_trial_id = job.trial_id
        set_log_context(trial=job.number, epoch=None)
        log.info("trial %d (%s): %s", job.number, job.reason, job.params)
        trial_cfg = apply_overrides(cfg, {**job.params, "train.run_name": f"trial-{job.number}"})
        run_dir = trial_dir(study_dir, job.number)

        def callback(epoch: int, metrics: dict[str, float], _id: int = job.trial_id) -> bool:
            if coord is None:
                return False
            return coord.report(_id, epoch, float(metrics[hpc.objective]))

        heartbeat = coord.heartbeat(job.trial_id) if coord is not None else None
        if heartbeat is not None:
            heartbeat.__enter__()
        try:
            result = fit(trial_cfg, run_dir=run_dir, callback=callback, resume=True, should_stop=_STOP.is_set)
        except (TrainingError, InputError) as exc:
            if coord is not None:
                coord.tell(job.trial_id, TrialState.FAIL, None, {"error": str(exc)[:500]})
            done["failed"] += 1
            log.error("trial %d failed: %s", job.number, exc)
            if isinstance(exc, InputError):
                raise
            continue
        finally:
            # On a crash the trial stays RUNNING; with the heartbeat stopped a live worker fails
            # it after hpc.grace_period and re-queues it, resuming from last.pt.
            if heartbeat is not None:
                heartbeat.__exit__()
        set_log_context(epoch=None)
        if result.stopped == "interrupted":
            requeue_now()
        if coord is not None:
            attrs = {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                     "stopped": result.stopped, "run_dir": str(run_dir)}
            if result.stopped == "callback":
                coord.tell(job.trial_id, TrialState.PRUNED, None, attrs)
                done["pruned"] += 1
            else:
                value = _objective_value(result.history, hpc.objective, direction)
                coord.tell(job.trial_id, TrialState.COMPLETE, value, attrs)
                done["completed"] += 1
            log.info("trial %d %s", job.number, result.stopped)
        if owner is not None:
            owner.resume_trial_id = None
        set_log_context(trial=None)


# --- python -m hpc.worker: the same loop under plain srun (sites that forbid pickles) ---------


def _slurm_torch_env() -> None:
    """Map SLURM's task variables to torchrun's (what submitit's TorchDistributedEnvironment does)."""
    nodes = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                           capture_output=True, text=True, check=True).stdout.split()
    job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ["SLURM_JOB_ID"])
    task = os.environ.get("SLURM_ARRAY_TASK_ID", "0")
    ntasks = int(os.environ.get("SLURM_NTASKS", "1"))
    os.environ.setdefault("MASTER_ADDR", nodes[0])
    os.environ.setdefault("MASTER_PORT", str(20000 + (int(job) * 7 + int(task)) % 40000))
    os.environ["RANK"] = os.environ.get("SLURM_PROCID", "0")
    os.environ["WORLD_SIZE"] = str(ntasks)
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    os.environ["LOCAL_WORLD_SIZE"] = str(ntasks // int(os.environ.get("SLURM_NNODES", "1")))


def _state_file(spec: WorkerSpec) -> Path:
    job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ.get("SLURM_JOB_ID", "local"))
    task = os.environ.get("SLURM_ARRAY_TASK_ID", "0")
    return Path(spec.scratch) / spec.study / "jobs" / f"{job}_{task}.trial"


def main(argv: list[str] | None = None) -> int:
    from dualseg.config import load_config

    p = argparse.ArgumentParser(prog="python -m hpc.worker", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=os.environ.get("DUALSEG_CONFIG") or None,
                   help="default: the config recorded in the study by `launch.py --prepare-only`")
    st.add_study_arguments(p)
    p.add_argument("--scratch", default=None, help="default: the one recorded in the study by the launcher")
    p.add_argument("--trials", type=int, default=None, help="default: the target recorded in the study")
    a = p.parse_args(argv)
    try:
        st.check_study_arguments(a)
        public, _ = st.split_password(st.normalize_url(a.storage))
        storage = st.open_storage(connect_url(public), retries=5)
        attrs = st.load_study(storage, a.study).user_attrs  # created by `launch.py --prepare-only`
        storage.engine.dispose()
        if a.config:
            cfg = load_config(a.config)
        elif attrs.get("config"):
            cfg = from_dict(Config, attrs["config"])
        else:
            raise InputError(f"--config: not given and study {a.study!r} has no recorded config")
        hpc = parse_hpc(cfg, {"study": a.study, "scratch": a.scratch})
        scratch = a.scratch or attrs.get("scratch") or hpc.scratch or cfg.train.scratch or os.environ.get("SCRATCH") or "runs"
        trials = a.trials or attrs.get("trials") or hpc.trials
        spec = WorkerSpec(to_dict(cfg), public, hpc.study, str(Path(scratch).resolve()),
                          {"study": hpc.study, "trials": int(trials)})
        if "SLURM_JOB_NODELIST" in os.environ:
            _slurm_torch_env()
        owner = Worker(spec)
        state = _state_file(spec)
        if os.environ.get("RANK", "0") == "0" and state.exists():
            owner.resume_trial_id = int(state.read_text().strip() or -1)
            state.unlink()

        def requeue() -> None:  # what submitit does for pickled jobs, with a state file instead
            if owner.resume_trial_id is not None:
                atomic_write_text(state, str(owner.resume_trial_id))
            jid = os.environ.get("SLURM_JOB_ID")
            if jid:
                subprocess.run(["scontrol", "requeue", jid], check=False, timeout=60)
            raise SystemExit(3)

        owner._requeue = requeue
        signal.signal(signal.SIGUSR2, lambda signum, frame: _STOP.set())
        run_worker(spec, owner)
    except DualsegError as exc:
        return report_error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
