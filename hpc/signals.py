"""Stop requests from SLURM, handled alike on every rank: SIGTERM and SIGUSR2 only set a flag.

SLURM sends USR2 ``--signal``-seconds before the time limit (and on some sites for preemption) and
SIGTERM on ``scancel``, on preemption with ``PreemptMode=REQUEUE`` (after SIGCONT) and before a node
failure requeue; SIGKILL follows after ``KillWait``. submitit installs its own USR2 handler (checkpoint +
requeue) and *bypasses* SIGTERM; both are replaced here so that nothing is ever raised inside a
handler (a signal during a checkpoint write must not tear it): the trainer polls the flag, saves
``last.pt`` mid-step and returns, and only then does the worker requeue (USR2) or exit (SIGTERM: SLURM
requeues the job itself when it means to). The trial is never released, so a requeued job continues it.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

log = logging.getLogger("hpc.signals")


class StopSignals:
    """The stop flag of this process and which signals set it."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.received: list[str] = []
        self.previous: dict[int, Any] = {}

    def install(self) -> StopSignals:
        for sig in (signal.SIGUSR2, signal.SIGTERM):
            self.previous.setdefault(sig, signal.getsignal(sig))  # installed twice: keep the original
            signal.signal(sig, self._on_signal)
        return self

    def restore(self) -> None:
        """Put back the handlers :meth:`install` replaced (a process that goes on after the loop — the
        local executor's, a test's — must not keep ours), and clear the flag."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self.previous.clear()
        self.received.clear()
        self.event.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        first = not self.event.is_set()
        self.received.append(name)
        self.event.set()
        if first:
            log.warning("received %s: saving at the next step, then %s", name,
                        "requeueing" if name == "SIGUSR2" else "exiting (SLURM requeues if it means to)")

    def requested(self) -> bool:
        return self.event.is_set()

    @property
    def requeue_wanted(self) -> bool:
        """USR2 (time limit, preemption warning): we requeue ourselves. SIGTERM alone: SLURM decides."""
        return "SIGUSR2" in self.received and "SIGTERM" not in self.received


SIGNALS = StopSignals()  # one per process: handlers are process-wide
