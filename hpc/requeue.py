"""How a job comes back after a time limit: the requeue strategy handed to the worker loop.

Two ways, one interface. Pickled submitit jobs (:class:`SubmititRequeue`) call submitit's own USR2
handler, which pickles the worker's ``checkpoint()`` (the instance remembers the running trial) and
runs ``scontrol requeue``; the pickle-free ``sbatch/train.sbatch`` path (:class:`ScontrolRequeue`)
writes the running trial into a state file under scratch and requeues itself. Both continue the same
trial from ``last.pt`` in the requeued job. :class:`NoRequeue` is for processes outside SLURM.
"""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path
from typing import Any, NoReturn, Protocol

from dualseg.io import atomic_write_text
from hpc.slurm import WAITING_STATES, SlurmEnv

log = logging.getLogger("hpc.requeue")
REQUEUE_EXIT = 3


class RequeueStrategy(Protocol):
    """Remembers the running trial across a requeue, and performs the requeue."""

    resume_trial_id: int | None

    def requeue(self) -> NoReturn: ...


class NoRequeue:
    """Outside SLURM: nothing comes back; the trial is continued by its retry."""

    def __init__(self) -> None:
        self.resume_trial_id: int | None = None

    def requeue(self) -> NoReturn:
        raise SystemExit(REQUEUE_EXIT)


class SubmititRequeue:
    """submitit's handler (captured before ours replaced it): ``checkpoint()`` + ``scontrol requeue`` + exit."""

    def __init__(self, handler: Any, owner: Any) -> None:
        self._handler, self._owner = handler, owner

    @property
    def resume_trial_id(self) -> int | None:
        return self._owner.resume_trial_id

    @resume_trial_id.setter
    def resume_trial_id(self, value: int | None) -> None:
        self._owner.resume_trial_id = value

    def requeue(self) -> NoReturn:
        import signal

        if callable(self._handler):
            self._handler(signal.SIGUSR2, None)  # pickles owner.checkpoint(), requeues, exits
        raise SystemExit(REQUEUE_EXIT)


class ScontrolRequeue:
    """Pickle-free: the running trial goes to ``<scratch>/<study>/jobs/<job>_<task>.trial``."""

    def __init__(self, state_dir: Path, slurm: SlurmEnv) -> None:
        self._slurm = slurm
        self.state_file = Path(state_dir) / f"{slurm.state_key}.trial"
        self.resume_trial_id: int | None = None
        if slurm.procid == 0 and self.state_file.exists():
            text = self.state_file.read_text().strip()
            self.resume_trial_id = int(text) if text.lstrip("-").isdigit() else None
            self.state_file.unlink()

    def requeue(self) -> NoReturn:
        if self.resume_trial_id is not None:
            atomic_write_text(self.state_file, str(self.resume_trial_id))
        if self._slurm.job_id:
            log.warning("requeueing job %s; it continues storage trial %s", self._slurm.label, self.resume_trial_id)
            # <array>_<task>: for task 0 of an array $SLURM_JOB_ID alone would requeue every task of it
            subprocess.run(["scontrol", "requeue", self._slurm.label], check=False, timeout=60)
        raise SystemExit(REQUEUE_EXIT)


class QueuedVouching:
    """Which trials of requeued jobs live workers keep beating while those jobs wait in the queue.

    A requeued job may wait far longer than ``grace_period``; it is not dead, so its trial must not be
    failed and retried. A job RUNNING again adopts its trial within seconds, so only waiting jobs are
    vouched for (one RUNNING but training something else must not keep a trial alive for ever). When
    ``squeue`` cannot answer, the trials are vouched for at most ``unknown_for_s``: dead ones still go
    stale in bounded time.
    """

    def __init__(self, period_s: float, unknown_for_s: float) -> None:
        self.period_s, self.unknown_for_s = max(1.0, period_s), unknown_for_s
        self._last = float("-inf")
        self._unknown_since: float | None = None

    def due(self) -> bool:
        """At most one squeue every ``period_s`` (half the heartbeat interval)."""
        now = time.monotonic()
        if now - self._last < self.period_s:
            return False
        self._last = now
        return True

    def vouched(self, queued: dict[int, str], states: dict[str, str] | None) -> list[int]:
        """The trial ids to beat, of ``queued`` (trial id -> its requeued job) and squeue's ``states``
        (``None``: squeue failed)."""
        now = time.monotonic()
        if states is not None:
            self._unknown_since = None
        else:
            self._unknown_since = self._unknown_since or now
            if now - self._unknown_since > self.unknown_for_s:
                return []
        return [trial for trial, job in queued.items() if states is None or states.get(str(job)) in WAITING_STATES]
