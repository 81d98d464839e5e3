"""hpc.signals and hpc.requeue: real signals to this process set the flag; nothing raises in a handler."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from hpc.requeue import ScontrolRequeue
from hpc.signals import StopSignals
from hpc.slurm import SlurmEnv


@pytest.fixture()
def signals():
    s = StopSignals().install()
    yield s
    s.restore()


def _deliver(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.05)


def test_usr2_asks_for_a_requeue(signals: StopSignals) -> None:
    assert not signals.requested()
    _deliver(signal.SIGUSR2)
    _deliver(signal.SIGUSR2)  # twice in a row: still one stop, nothing raised
    assert signals.requested() and signals.requeue_wanted and signals.received == ["SIGUSR2", "SIGUSR2"]


def test_restore_puts_back_the_original_handlers_and_clears_the_flag() -> None:
    mine = []
    original = signal.signal(signal.SIGUSR2, lambda *_: mine.append("usr2"))
    try:
        s = StopSignals().install()
        s.install()  # installed twice (Worker, then the plain main): the original is still what comes back
        _deliver(signal.SIGUSR2)
        assert s.requested() and mine == []
        s.restore()
        assert not s.requested() and s.received == []
        _deliver(signal.SIGUSR2)
        assert mine == ["usr2"] and not s.requested()
    finally:
        signal.signal(signal.SIGUSR2, original)


def test_sigterm_stops_and_leaves_the_requeue_to_slurm(signals: StopSignals) -> None:
    _deliver(signal.SIGTERM)
    assert signals.requested() and not signals.requeue_wanted


def test_pickle_free_requeue_remembers_the_trial_across_processes(tmp_path: Path) -> None:
    env = SlurmEnv.read({"SLURM_ARRAY_JOB_ID": "42", "SLURM_ARRAY_TASK_ID": "3"})  # no SLURM_JOB_ID: no scontrol
    r = ScontrolRequeue(tmp_path, env)
    r.resume_trial_id = 17
    with pytest.raises(SystemExit):
        r.requeue()
    assert (tmp_path / "42_3.trial").read_text() == "17"
    again = ScontrolRequeue(tmp_path, env)  # the requeued job
    assert again.resume_trial_id == 17 and not (tmp_path / "42_3.trial").exists()
