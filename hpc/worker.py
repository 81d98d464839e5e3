"""What every rank of every array task runs: pull trials from the shared study until it is full.

Rank 0 alone talks to the database. It decides what the whole job does next (train trial N / wait /
stop) and broadcasts that, so every rank trains the same hyperparameters and stops together. The
counting rules live in :mod:`hpc.trials`, signals in :mod:`hpc.signals`, requeueing in
:mod:`hpc.requeue`. A trial that raises (out of memory, disk quota, NaN, bad data) fails *that trial*
with its error recorded and the job goes on; only errors that leave the process unusable end the job,
after failing the trial. ``python -m hpc.worker`` is the same loop without submitit pickles.
"""

from __future__ import annotations

if not __package__:  # run as a file: re-run as `python -m hpc.<name>` (hpc/_script.py)
    import os
    import runpy

    runpy.run_path(os.path.join(os.path.dirname(__file__), "_script.py"))

import argparse
import logging
import math
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from dualseg.config import Config, apply_overrides, from_dict, to_dict
from dualseg.errors import DualsegError, InputError, TrainingError, report_error
from hpc.config import parse_hpc
from hpc.paths import check_study_dir, resolve_scratch, trial_dir
from hpc.requeue import NoRequeue, RequeueStrategy, ScontrolRequeue, SubmititRequeue
from hpc.retention import on_trial_finished
from hpc.signals import SIGNALS
from hpc.slurm import SlurmEnv
from hpc.storage import StorageURL, open_database
from hpc.trials import Assignment, Coordinator, TrialLost, WorkerSpec

log = logging.getLogger("hpc.worker")


def _broadcast(obj: Any, world: int) -> Any:
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def objective_value(history: list[dict[str, Any]], objective: str, direction: str) -> float:
    values = [float(h[objective]) for h in history if objective in h]
    if not values:
        raise TrainingError(f"trainer reported no {objective!r} values")
    return min(values) if direction == "minimize" else max(values)


class Worker:
    """The callable submitit pickles once per array task and runs on every rank.

    :meth:`checkpoint` is submitit's requeue protocol: the returned clone (pickled for the requeued
    job) remembers the running trial, so the requeued job continues it from ``last.pt``.
    """

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.resume_trial_id: int | None = None

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        log.warning("requeueing; the requeued job continues the same trial (storage id %s)", self.resume_trial_id)
        clone = Worker(self.spec)
        clone.resume_trial_id = self.resume_trial_id
        return submitit.helpers.DelayedSubmission(clone)

    def __call__(self) -> dict[str, Any]:
        import submitit

        submitit_usr2 = signal.getsignal(signal.SIGUSR2)
        SIGNALS.install()  # first: a signal during start-up is honoured, not lost
        # all GPUs of the node stay visible: the trainer selects cuda:LOCAL_RANK itself
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return run_worker(self.spec, SubmititRequeue(submitit_usr2, self))


def _fail_trial(coord: Coordinator | None, job: Assignment, exc: BaseException, fatal: bool) -> None:
    from dualseg.train.failures import describe, is_oom

    what = describe(exc)
    if is_oom(exc):
        log.error("trial %d ran out of memory with %s", job.number, job.params)
    else:
        log.error("trial %d failed: %s", job.number, what)
    if coord is not None:
        coord.tell(job.trial_id, TrialState.FAIL, None, {"error": what[:500], "fatal": fatal})


def run_worker(spec: WorkerSpec, requeue: RequeueStrategy | None = None) -> dict[str, Any]:
    """The loop on every rank. Returns counts of what this job did (rank 0's view)."""
    from dualseg.train import fit, init_distributed
    from dualseg.train.distributed import cleanup
    from dualseg.train.failures import classify, release_resources
    from dualseg.train.log import set_log_context, setup_logging

    requeue = requeue or NoRequeue()
    setup_logging(stream=sys.stdout)  # <job>_<rank>_log.out: the log; .err: warnings, tracebacks, bars
    slurm = SlurmEnv.read()
    set_log_context(node=slurm.nodename or socket.gethostname().split(".")[0])
    cfg = from_dict(Config, spec.config)
    hpc = parse_hpc(cfg, spec.hpc_overrides)
    info = init_distributed(cfg.train.device)  # kept for the whole loop; fit reuses it
    rank, world = info.rank, info.world_size
    coord: Coordinator | None = None
    done: dict[str, int] = {"completed": 0, "pruned": 0, "failed": 0}
    started = time.monotonic()
    try:
        if rank == 0:
            try:
                check_study_dir(Path(spec.scratch) / spec.study, spec.incarnation, spec.study)
                coord = Coordinator(spec, hpc)
            except BaseException:
                _broadcast(Assignment("stop", reason="rank 0 could not open the study"), world)
                raise
        _loop(spec, cfg, hpc, info, coord, requeue, done, fit, classify, release_resources, set_log_context)
    finally:
        if coord is not None:
            try:
                coord.record_allocation((time.monotonic() - started) * world)
            except Exception as exc:  # noqa: BLE001 - bookkeeping must not mask the real exit reason
                log.warning("allocation not recorded: %s", type(exc).__name__)
            coord.db.close()
        cleanup(info)  # every exit path: a process group left behind aborts the process at exit
    return done


def _loop(spec: WorkerSpec, cfg: Config, hpc: Any, info: Any, coord: Coordinator | None, requeue: RequeueStrategy,
          done: dict[str, int], fit: Any, classify: Any, release_resources: Any, set_log_context: Any) -> None:
    rank, world = info.rank, info.world_size
    study_dir = Path(spec.scratch) / spec.study
    resume = requeue.resume_trial_id if rank == 0 else None

    def after_signal(trial_id: int | None) -> None:
        """Stop after a signal: the running trial is marked (kept alive while requeued), then requeue or exit."""
        wants = SIGNALS.requeue_wanted
        if coord is not None:
            if trial_id is not None:
                coord.mark_requeued(trial_id)
            elif wants:  # between trials: requeue only if the study can still give this job work
                counts = coord.counts()
                wants = counts["COMPLETE"] + counts["PRUNED"] + counts["RUNNING"] < hpc.trials
        decision = _broadcast("requeue" if wants else "exit", world)
        if decision == "requeue" and rank == 0:
            requeue.resume_trial_id = trial_id
            requeue.requeue()
        if decision == "requeue":  # other ranks: wait until the requeue ends the step
            _broadcast(None, world)
        log.info("stopping after %s", "/".join(SIGNALS.received) or "a signal")
        raise SystemExit(0 if decision == "exit" else 3)

    while True:
        job: Assignment | None = None
        if coord is not None:
            if SIGNALS.requested():
                job = Assignment("requeue", reason="signal between trials")
            else:
                try:
                    job = coord.next(resume, SIGNALS.requested)
                except BaseException:
                    _broadcast(Assignment("stop", reason="rank 0 failed"), world)
                    raise
        job = _broadcast(job, world)
        assert job is not None
        resume = None
        if job.action == "requeue" or (job.action == "stop" and SIGNALS.requested()):
            after_signal(None)
        if job.action == "stop":
            log.info("stopping: %s", job.reason)
            return
        if job.action == "wait":
            log.info("waiting for running trials (%s)", job.reason)
            deadline = time.monotonic() + hpc.poll_interval
            while time.monotonic() < deadline and not SIGNALS.requested():
                time.sleep(0.2)
            continue
        requeue.resume_trial_id = job.trial_id if rank == 0 else None
        set_log_context(trial=job.number, epoch=None)
        log.info("trial %d (%s): %s", job.number, job.reason, job.params)
        trial_cfg = apply_overrides(cfg, {**job.params, "train.run_name": f"trial-{job.number}",
                                          "train.monitor": hpc.objective})  # best.pt = what the study ranks
        run_dir = trial_dir(study_dir, job.number)
        lost: list[str] = []

        def callback(epoch: int, metrics: dict[str, float], _id: int = job.trial_id, lost: list[str] = lost) -> bool:
            if coord is None:
                return False
            try:
                return coord.report(_id, epoch, float(metrics[hpc.objective]))
            except TrialLost as exc:  # stop all ranks through the normal prune path, then drop it
                lost.append(str(exc))
                return True

        heartbeat = coord.heartbeat(job.trial_id) if coord is not None else None
        if heartbeat is not None:
            heartbeat.__enter__()
        try:
            result = fit(trial_cfg, run_dir=run_dir, callback=callback, resume=True, should_stop=SIGNALS.requested)
        except Exception as exc:
            fatal = classify(exc) == "fatal"
            _fail_trial(coord, job, exc, fatal)
            done["failed"] += 1
            requeue.resume_trial_id = None
            release_resources(exc)
            if fatal:
                raise
            continue
        finally:
            if heartbeat is not None:
                heartbeat.__exit__()
        set_log_context(epoch=None)
        if result.stopped == "interrupted":
            after_signal(job.trial_id)
        if lost:
            log.warning("trial %d dropped: %s; going on with the next trial", job.number, lost[0])
        elif coord is not None:
            _tell(coord, hpc, job, result, run_dir, done)
        requeue.resume_trial_id = None
        set_log_context(trial=None)


def _tell(coord: Coordinator, hpc: Any, job: Assignment, result: Any, run_dir: Path, done: dict[str, int]) -> None:
    attrs = {"best_epoch": result.best_epoch, "monitor": result.monitor, "epochs_run": result.epochs_run,
             "stopped": result.stopped,
             "run_dir": str(run_dir), "busy_s": _busy_seconds(result.history)}
    if result.stopped == "callback":
        state = TrialState.PRUNED
        ok = coord.tell(job.trial_id, state, None, attrs)
        done["pruned"] += ok
    else:
        state = TrialState.COMPLETE
        value = result.best_value if result.monitor == hpc.objective and math.isfinite(result.best_value) \
            else objective_value(result.history, hpc.objective, hpc.direction)
        ok = coord.tell(job.trial_id, state, value, attrs)
        done["completed"] += ok
    log.info("trial %d %s", job.number, result.stopped)
    if ok:  # a finished trial never resumes: its last.pt is dead weight (hpc.keep)
        on_trial_finished(run_dir.parent, job.number, state, hpc.keep)


def _busy_seconds(history: list[dict[str, Any]]) -> float:
    """Seconds this trial spent in training and validation steps (for allocation efficiency)."""
    return float(sum(float(h.get("train_time_s", 0.0)) + float(h.get("val_time_s", 0.0)) for h in history))


# --- python -m hpc.worker: the same loop under plain srun (sites that forbid pickles) ---------


def main(argv: list[str] | None = None) -> int:
    from dualseg.config import load_config
    from dualseg.train.log import setup_logging

    SIGNALS.install()
    setup_logging(stream=sys.stdout)
    p = argparse.ArgumentParser(prog="python -m hpc.worker", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=os.environ.get("DUALSEG_CONFIG") or None,
                   help="default: the config recorded in the study by `launch.py --prepare-only`")
    p.add_argument("--study", default=os.environ.get("DUALSEG_STUDY"), help="study name (default $DUALSEG_STUDY)")
    p.add_argument("--storage", default=None, help="study database URL (default $DUALSEG_STORAGE)")
    p.add_argument("--scratch", default=None, help="default: the one recorded in the study by the launcher")
    p.add_argument("--trials", type=int, default=None, help="default: the target recorded in the study")
    p.add_argument("--db-outage-s", type=float, default=300.0,
                   help="how long to wait for an unreachable database at start (then hpc.db_outage_s)")
    a = p.parse_args(argv)
    slurm = SlurmEnv.read()
    try:
        if not a.study:
            raise InputError("--study: not given and $DUALSEG_STUDY is not set")
        from hpc.storage import resolve_storage

        url = resolve_storage(a.storage, None, None)
        if url is None:
            raise InputError("--storage: not given and $DUALSEG_STORAGE is not set")
        attrs: dict[str, Any] = {}
        if slurm.procid == 0:  # only rank 0 ever connects
            db = open_database(url, budget_s=a.db_outage_s)
            try:
                attrs = db.load_study(a.study).user_attrs  # created by `launch.py --prepare-only`
            finally:
                db.close()
        if slurm.nodelist and slurm.job_id:
            os.environ.update(slurm.torch_env())
        spec = _plain_spec(a, attrs, url, load_config)
        if slurm.procid != 0:
            spec.config = {}  # filled by rank 0's broadcast below
        run_worker(_share_spec(spec), ScontrolRequeue(Path(spec.scratch) / spec.study / "jobs", slurm))
    except DualsegError as exc:
        return report_error(exc, url.scrub if "url" in locals() and url is not None else None)
    finally:
        from dualseg.train.distributed import cleanup

        cleanup()  # _share_spec made the process group (run_worker only reused it): destroy it on every path
    return 0


def _plain_spec(a: argparse.Namespace, attrs: dict[str, Any], url: StorageURL, load_config: Any) -> WorkerSpec:
    if attrs.get("config") is None and not a.config:
        return WorkerSpec({}, url.public, a.study, "")
    cfg = load_config(a.config) if a.config else from_dict(Config, attrs["config"])
    hpc = parse_hpc(cfg, {"study": a.study, "scratch": a.scratch})
    scratch = a.scratch or attrs.get("scratch") or str(resolve_scratch(hpc.scratch, cfg.train.scratch))
    trials = a.trials or attrs.get("trials") or hpc.trials
    return WorkerSpec(to_dict(cfg), url.public, a.study, str(Path(scratch).resolve()),
                      {"study": a.study, "trials": int(trials)}, attrs.get("incarnation"))


def _share_spec(spec: WorkerSpec) -> WorkerSpec:
    """Rank 0 read the study; every other rank gets its spec over the process group (no DB connection)."""
    import torch.distributed as dist

    from dualseg.train import init_distributed

    cfg_device = spec.config.get("train", {}).get("device", "auto") if spec.config else "auto"
    info = init_distributed(os.environ.get("DUALSEG_DEVICE", cfg_device))
    if info.world_size > 1:
        box = [spec]
        dist.broadcast_object_list(box, src=0)
        spec = box[0]
    if not spec.config:
        raise InputError(f"--config: not given and study {spec.study!r} has no recorded config")
    return spec


if __name__ == "__main__":
    sys.exit(main())
