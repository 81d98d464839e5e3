"""The loop every rank of a worker job runs: ask (rank 0) -> broadcast -> train on every rank -> tell.

Rank 0 alone talks to the database (:class:`hpc.trials.Coordinator`); it decides what the whole job
does next (train trial N / wait / stop) and broadcasts that, so every rank trains the same
hyperparameters and stops together. A trial that raises (out of memory, disk quota, NaN, bad data)
fails *that trial* with its error recorded and the job goes on; only errors that leave the process
unusable end the job, after failing the trial. After a signal the running trial is marked and the job
requeues itself (USR2) or exits (SIGTERM: SLURM requeues if it means to).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from optuna.trial import TrialState

from dualseg.config import Config, apply_overrides
from dualseg.errors import TrainingError, cause_chain, one_line
from hpc import slurm
from hpc.config import HpcConfig
from hpc.final_plan import REFIT_OBJECTIVE
from hpc.paths import trial_dir
from hpc.requeue import RequeueStrategy
from hpc.retention import on_trial_finished
from hpc.signals import SIGNALS
from hpc.study import NullHeartbeat, TrialOutcome
from hpc.trials import Assignment, Coordinator, TrialLost, WorkerSpec

if TYPE_CHECKING:
    from dualseg.train import DistInfo, FitResult

log = logging.getLogger("hpc.worker")


def broadcast(obj: Any, world: int) -> Any:
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


def told_objective(cfg: Config, hpc: HpcConfig) -> str:
    """What a trial reports and tells: the study's objective, or, for a run without validation (a final run's
    refit on train+val), its training loss (the last epoch's is told; the test split scores it afterwards)."""
    return hpc.objective if cfg.train.validate else REFIT_OBJECTIVE


def _fail_trial(coord: Coordinator | None, job: Assignment, exc: BaseException, fatal: bool) -> None:
    from dualseg.train.failures import describe, is_oom

    what = describe(exc)
    if is_oom(exc):
        log.error("trial %d ran out of memory with %s", job.number, job.params)
    else:
        log.error("trial %d failed: %s", job.number, what)
    causes = [f"{type(e).__name__}: {one_line(e)}" for e in list(cause_chain(exc))[1:]]
    if causes:  # a wrapper's words hide the reason (Optuna: "An exception is raised during the commit")
        log.error("trial %d failed because of: %s", job.number, " <- ".join(causes)[:1000])
    if coord is not None:
        coord.tell(job.trial_id, TrialState.FAIL, None, TrialOutcome(error=what[:500], fatal=fatal))


class TrialRunner:
    """One job's loop: ask (rank 0) -> broadcast -> train on every rank -> tell, until told to stop.

    Rank 0 holds the :class:`Coordinator`; the other ranks hold ``None`` and follow the broadcasts.
    """

    def __init__(self, spec: WorkerSpec, cfg: Config, hpc: HpcConfig, info: DistInfo, coord: Coordinator | None,
                 requeue: RequeueStrategy) -> None:
        self.spec, self.cfg, self.hpc, self.coord, self.requeue = spec, cfg, hpc, coord, requeue
        self.rank, self.world = info.rank, info.world_size
        self.study_dir = Path(spec.scratch) / spec.study
        self.done: dict[str, int] = {"completed": 0, "pruned": 0, "failed": 0}

    def run(self) -> None:
        resume = self.requeue.resume_trial_id if self.rank == 0 else None
        waiting_since: float | None = None
        while True:
            job = broadcast(self._ask(resume, waiting_since), self.world)
            resume = None
            if job.action == "requeue" or (job.action == "stop" and SIGNALS.requested()):
                self._after_signal(None)
            if job.action == "stop":
                log.info("stopping: %s", job.reason)
                return
            if job.action == "wait":
                if waiting_since is None:
                    waiting_since = time.monotonic()
                    log.info("waiting for running trials (%s)", job.reason)
                deadline = time.monotonic() + self.hpc.poll_interval
                while time.monotonic() < deadline and not SIGNALS.requested():
                    time.sleep(0.2)
                continue
            waiting_since = None
            self._train(job)

    def _ask(self, resume: int | None, waiting_since: float | None) -> Assignment | None:
        if self.coord is None:
            return None  # the other ranks: rank 0's decision arrives by broadcast
        if SIGNALS.requested():
            return Assignment("requeue", reason="signal between trials")
        try:
            job = self.coord.next(resume, SIGNALS.requested)
            if job.action == "wait" and waiting_since is not None \
                    and time.monotonic() - waiting_since > self.hpc.max_wait_s:
                # the study's last trials run elsewhere: give the allocation (and the array's %parallel slot,
                # which a requeued task may need) back; should they fail, the self-healing resubmits workers
                return Assignment("stop", reason=f"nothing to train for {self.hpc.max_wait_s:.0f} s "
                                                 f"(hpc.max_wait_s; {job.reason}): releasing the allocation")
            return job
        except BaseException:
            broadcast(Assignment("stop", reason="rank 0 failed"), self.world)
            raise

    def _after_signal(self, trial_id: int | None) -> NoReturn:
        """Stop after a signal: the running trial is marked (kept alive while requeued), then requeue or exit."""
        wants = SIGNALS.requeue_wanted
        if self.coord is not None and not wants and slurm.preempted(slurm.SlurmEnv.read().job_id):
            log.warning("this job is being preempted: requeueing it (SLURM would record it COMPLETED and drop it)")
            wants = True
        if self.coord is not None:
            if trial_id is not None:
                self.coord.mark_requeued(trial_id)
            elif wants:  # between trials: requeue only if the study can still give this job work
                counts = self.coord.counts()
                wants = counts.finished + counts.running < self.hpc.trials
        decision = broadcast("requeue" if wants else "exit", self.world)
        if decision == "requeue" and self.rank == 0:
            self.requeue.resume_trial_id = trial_id
            self.requeue.requeue()
        if decision == "requeue":  # other ranks: wait until the requeue ends the step
            broadcast(None, self.world)
        log.info("stopping after %s", "/".join(SIGNALS.received) or "a signal")
        raise SystemExit(0 if decision == "exit" else 3)

    def _train(self, job: Assignment) -> None:
        from dualseg.train import fit
        from dualseg.train.failures import release_resources
        from dualseg.train.log import set_log_context

        self.requeue.resume_trial_id = job.trial_id if self.rank == 0 else None
        set_log_context(trial=job.number, epoch=None)
        log.info("trial %d (%s): %s", job.number, job.reason, job.params)
        trial_cfg = apply_overrides(self.cfg, {**job.params, "train.run_name": f"trial-{job.number}",
                                               "train.monitor": self.hpc.objective,  # best.pt = what the study ranks
                                               "train.hparams": dict(job.params)})  # TensorBoard's HParams
        run_dir = trial_dir(self.study_dir, job.number)
        objective = told_objective(trial_cfg, self.hpc)

        def callback(epoch: int, metrics: dict[str, float]) -> bool:
            # TrialLost (finished or taken over elsewhere) is raised through fit, on every rank alike, before
            # this epoch's checkpoint: a job that lost its trial writes nothing more into its folder
            return self.coord.report(job.trial_id, epoch, float(metrics[objective])) \
                if self.coord is not None else False

        heartbeat = self.coord.heartbeat(job.trial_id) if self.coord is not None else NullHeartbeat()
        with heartbeat:  # beats through checkpoint seeding and environment pauses too
            if self.coord is not None:
                self.coord.seed(job)  # a retry starts from its predecessor's checkpoint
            outage = EnvironmentOutage(self.hpc.env_outage_s)
            while True:
                try:
                    result = fit(trial_cfg, run_dir=run_dir, callback=callback, resume=True,
                                 should_stop=SIGNALS.requested)
                    break
                except Exception as exc:
                    judged = broadcast(_judge(exc) if self.rank == 0 else None, self.world)  # rank 0 decides
                    release_resources(exc)
                    if judged == "lost":
                        log.warning("trial %d dropped: %s; going on with the next trial", job.number,
                                    next(e for e in cause_chain(exc) if isinstance(e, TrialLost)) if self.rank == 0
                                    else "rank 0 lost it")
                        self.requeue.resume_trial_id = None
                        return
                    if judged == "environment":
                        self._pause(job, exc, outage)
                        continue
                    _fail_trial(self.coord, job, exc, judged == "fatal")
                    self.done["failed"] += 1
                    self.requeue.resume_trial_id = None
                    if judged == "fatal":
                        raise
                    return
        if outage.since is not None:
            log.warning("trial %d: the file system works again after %.0f s", job.number, outage.lasted())
        set_log_context(epoch=None)
        if result.stopped == "interrupted":
            self._after_signal(job.trial_id)
        if self.coord is not None:
            self._tell(job, result, run_dir, objective)
        self.requeue.resume_trial_id = None
        set_log_context(trial=None)

    def _pause(self, job: Assignment, exc: BaseException, outage: EnvironmentOutage) -> None:
        """The scratch is full (or read-only, stale, failing): wait with backoff, keeping the trial's state;
        past ``hpc.env_outage_s`` hand the trial back (WAITING, resumable) and end this job cleanly."""
        delay = broadcast(outage.failed() if self.rank == 0 else None, self.world)  # rank 0's clock decides
        if delay is None:
            log.error("trial %d: %s for %.0f s (hpc.env_outage_s=%.0f): handing the trial back and stopping; "
                      "it resumes from its checkpoint", job.number, _env_line(exc), outage.lasted(), outage.budget_s)
            if self.coord is not None:
                self.coord.release(job.trial_id, "the file system failed for longer than hpc.env_outage_s")
            self.requeue.resume_trial_id = None
            raise SystemExit(0)
        if outage.attempts == 1:
            log.warning("trial %d: %s — the file system's fault, not the trial's: it keeps its state; retrying "
                        "for up to %.0f s", job.number, _env_line(exc), outage.budget_s)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not SIGNALS.requested():
            time.sleep(0.5)
        if broadcast(SIGNALS.requested() if self.rank == 0 else None, self.world):
            self._after_signal(job.trial_id)

    def _tell(self, job: Assignment, result: FitResult, run_dir: Path, objective: str) -> None:
        assert self.coord is not None
        outcome = TrialOutcome(best_epoch=result.best_epoch, monitor=result.monitor, epochs_run=result.epochs_run,
                               stopped=result.stopped, run_dir=str(run_dir), data_root=str(self.cfg.data.root),
                               busy_s=_busy_seconds(result.history))
        if result.stopped == "callback":
            state, value = TrialState.PRUNED, None
        else:
            state = TrialState.COMPLETE
            value = result.best_value if result.monitor == objective and math.isfinite(result.best_value) \
                else objective_value(result.history, objective, self.hpc.direction)
        ok = self.coord.tell(job.trial_id, state, value, outcome)
        self.done["pruned" if state == TrialState.PRUNED else "completed"] += ok
        log.info("trial %d %s", job.number, result.stopped)
        if ok:  # a finished trial never resumes: its last.pt is dead weight (hpc.keep)
            on_trial_finished(run_dir.parent, job.number, state, self.hpc.keep)


class EnvironmentOutage:
    """One trial's run of environment errors: backoff delays until ``budget_s`` has passed since the first."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s, self.attempts = budget_s, 0
        self.since: float | None = None

    def failed(self) -> float | None:
        """The next delay, or None when the budget is spent."""
        now = time.monotonic()
        self.since = self.since if self.since is not None else now
        self.attempts += 1
        if now - self.since >= self.budget_s:
            return None
        return min(60.0, 2.0 * 2 ** min(self.attempts - 1, 5), max(1.0, self.since + self.budget_s - now))

    def lasted(self) -> float:
        return 0.0 if self.since is None else time.monotonic() - self.since


def _judge(exc: BaseException) -> str:
    """``lost`` (someone else finished or owns the trial: drop it), ``environment`` (retry, the trial keeps its
    state), ``trial`` (fail it, go on) or ``fatal`` (end the job)."""
    from dualseg.train.failures import classify, environment_error

    if any(isinstance(e, TrialLost) for e in cause_chain(exc)):
        return "lost"
    return "environment" if environment_error(exc) is not None else classify(exc)


def _env_line(exc: BaseException) -> str:
    from dualseg.train.failures import environment_error

    err = environment_error(exc)
    return f"{err.strerror or err} ({err.filename})" if err is not None and err.filename else str(err or exc)


def _busy_seconds(history: list[dict[str, Any]]) -> float:
    """Seconds this trial spent in training and validation steps (for allocation efficiency)."""
    return float(sum(float(h.get("train_time_s", 0.0)) + float(h.get("val_time_s", 0.0)) for h in history))
