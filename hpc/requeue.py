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
from pathlib import Path
from typing import Any, NoReturn, Protocol

from dualseg.io import atomic_write_text
from hpc.slurm import SlurmEnv

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
