"""Which trial a job runs next, decided by rank 0 under a study-wide lock.

``finished + running >= trials`` means "wait", never "ask", so N workers asking at once can neither
overshoot nor undershoot the requested number of finished trials. A RUNNING trial whose job died
stops beating; the next worker that takes the lock fails it (``fail_stale_trials``) and Optuna's
``RetryHeartbeatStaleTrialCallback`` re-queues it as WAITING with the same parameters; the next ask
pops it and :func:`seed_from_retry` hands it the dead trial's checkpoint.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from dualseg.io import atomic_copy
from hpc import study as st
from hpc.config import HpcConfig, ParamSpec, search_specs
from hpc.helpers import build_pruner, build_sampler, connect_url, job_label, squeue_states, trial_dir

log = logging.getLogger("hpc.trials")
QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RUNNING", "SUSPENDED"}


@dataclass
class WorkerSpec:
    """Everything a job needs, picklable and free of secrets (the URL carries no password)."""

    config: dict[str, Any]
    storage: str
    study: str
    scratch: str
    hpc_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class Assignment:
    """Rank 0's decision for the whole job, broadcast to every rank."""

    action: str  # "train" | "wait" | "stop"
    trial_id: int = -1
    number: int = -1
    params: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


class Heartbeat:
    """Records the trial's heartbeat every ``interval`` s; database hiccups are retried, not fatal."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int, interval: int) -> None:
        self._storage, self._trial_id, self._interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception as exc:  # noqa: BLE001 - keep beating; the next beat may get through
                log.warning("heartbeat failed (%s); retrying", type(exc).__name__)
            self._stop.wait(self._interval)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def suggest(trial: optuna.Trial, specs: dict[str, ParamSpec]) -> dict[str, Any]:
    """Sample the configured search space (a re-queued WAITING trial returns its fixed values)."""
    params: dict[str, Any] = {}
    for name, s in specs.items():
        if s.type == "int":
            params[name] = trial.suggest_int(name, int(s.low), int(s.high), step=int(s.step or 1), log=s.log)  # type: ignore[arg-type]
        elif s.type == "float":
            params[name] = trial.suggest_float(name, s.low, s.high, step=s.step, log=s.log)  # type: ignore[arg-type]
        else:
            params[name] = trial.suggest_categorical(name, s.choices)  # type: ignore[arg-type]
    return params


def seed_from_retry(study_dir: Path, frozen: optuna.trial.FrozenTrial) -> Path | None:
    """Copy the newest checkpoint of the trials this one retries into its own folder."""
    with warnings.catch_warnings():  # experimental-API notice, once per retry, is noise in job logs
        warnings.simplefilter("ignore")
        history = optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(frozen)
    target = trial_dir(study_dir, frozen.number)
    if (target / "last.pt").exists():
        return target
    for number in reversed(history):
        source = trial_dir(study_dir, number)
        if (source / "last.pt").exists():
            target.mkdir(parents=True, exist_ok=True)
            for name in ("last.pt", "best.pt", "metrics.jsonl"):
                if (source / name).exists():
                    atomic_copy(source / name, target / name)
            log.info("trial %d resumes from the checkpoint of failed trial %d", frozen.number, number)
            return source
    return None


class Coordinator:
    """Rank 0's side: the study, the lock and the counting rules."""

    def __init__(self, spec: WorkerSpec, hpc: HpcConfig) -> None:
        self.spec, self.hpc = spec, hpc
        self.storage = st.open_storage(
            connect_url(spec.storage),
            heartbeat_interval=hpc.heartbeat_interval,
            grace_period=hpc.grace_period,
            max_retry=hpc.max_retry,
            pool_size=hpc.pool_size,
            retries=hpc.db_retries,
        )
        worker = int(os.environ.get("SLURM_ARRAY_TASK_ID") or os.environ.get("SLURM_JOB_ID") or os.getpid())
        self.study = st.load_study(self.storage, spec.study, build_sampler(hpc, worker), build_pruner(hpc))
        self.specs = search_specs(hpc)
        self.study_dir = Path(spec.scratch) / spec.study

    def _retry(self, fn: Any, what: str) -> Any:
        return st.with_retries(fn, what, self.hpc.db_retries)

    def next(self, resume_trial_id: int | None) -> Assignment:
        job = self._retry(lambda: self._next(resume_trial_id), "ask")
        if job.action == "train" and job.reason == "new":  # outside the lock: checkpoints can be large
            seed_from_retry(self.study_dir, self.storage.get_trial(job.trial_id))
        return job

    def _next(self, resume_trial_id: int | None) -> Assignment:
        with st.ask_lock(self.storage, self.spec.study):
            if resume_trial_id is not None:
                frozen = self.storage.get_trial(resume_trial_id)
                if frozen.state == TrialState.RUNNING:  # requeued: continue the very same trial
                    self.storage.record_heartbeat(resume_trial_id)
                    self.storage.set_trial_user_attr(resume_trial_id, "requeued_job", None)
                    return Assignment("train", resume_trial_id, frozen.number, dict(frozen.params), "resumed")
                log.warning("trial %d became %s while this job was requeued; its retry continues it",
                            frozen.number, frozen.state.name)
            self._keep_queued_alive()
            optuna.storages.fail_stale_trials(self.study)
            trials = self.study.get_trials(deepcopy=False)
            counts = st.count_states(self.study)
            done = st.finished(counts)
            if done >= self.hpc.trials:
                return Assignment("stop", reason=f"study has {done}/{self.hpc.trials} finished trials")
            retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
            lost = [t.number for t in trials if t.state == TrialState.FAIL and t.number not in retried]
            if len(lost) >= self.hpc.max_failed:
                return Assignment("stop", reason=f"{len(lost)} failed trials (hpc.max_failed={self.hpc.max_failed})")
            if counts["WAITING"] == 0 and done + counts["RUNNING"] >= self.hpc.trials:
                return Assignment("wait", reason=f"{done} finished + {counts['RUNNING']} running")
            trial = self.study.ask()
            self.storage.record_heartbeat(trial._trial_id)
            params = suggest(trial, self.specs)
            trial.set_user_attr("job_id", job_label())
            return Assignment("train", trial._trial_id, trial.number, params, "new")

    def study_full(self) -> bool:
        """The study already holds the requested number of finished trials."""
        counts = self._retry(lambda: st.count_states(self.study), "count trials")
        return st.finished(counts) >= self.hpc.trials

    def mark_requeued(self, trial_id: int) -> None:
        """Before a USR2 requeue: the trial will wait in the queue without a heartbeat."""
        self._retry(lambda: self.storage.set_trial_user_attr(trial_id, "requeued_job", job_label()), "mark requeued")

    def _keep_queued_alive(self) -> None:
        """Beat for RUNNING trials whose requeued job still waits in squeue.

        A requeued job may wait in the queue far longer than ``grace_period``; it is not dead, so
        its trial must not be failed and retried under a new number. Once its job has left the
        queue (cancelled, failed) the heartbeat check takes its normal course.
        """
        waiting = {t._trial_id: str(t.user_attrs["requeued_job"])
                   for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                   if t.user_attrs.get("requeued_job")}
        if not waiting:
            return
        states = squeue_states(list(waiting.values()))
        for trial_id, job in waiting.items():
            if states.get(job) in QUEUED_STATES:
                self.storage.record_heartbeat(trial_id)

    def report(self, trial_id: int, step: int, value: float) -> bool:
        """Report an epoch's objective; True means prune."""
        trial = optuna.Trial(self.study, trial_id)

        def go() -> bool:
            if step not in self.storage.get_trial(trial_id).intermediate_values:
                trial.report(value, step)
            return trial.should_prune()

        return bool(self._retry(go, "report"))

    def tell(self, trial_id: int, state: TrialState, value: float | None, attrs: dict[str, Any]) -> None:
        def go() -> None:
            for k, v in attrs.items():
                self.storage.set_trial_user_attr(trial_id, k, v)
            try:
                self.study.tell(self.storage.get_trial(trial_id).number, value, state=state)
            except optuna.exceptions.UpdateFinishedTrialError:
                log.warning("trial was already finished by someone else (stale heartbeat?)")

        self._retry(go, "tell")

    def heartbeat(self, trial_id: int) -> Heartbeat:
        return Heartbeat(self.storage, trial_id, self.hpc.heartbeat_interval)
