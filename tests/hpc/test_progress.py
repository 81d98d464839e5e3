"""hpc.progress: stopping local workers after Ctrl-C ends, even with a worker deaf to SIGTERM."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import submitit

from hpc.progress import stop_workers
from hpc.submit.local import _descendants


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def test_a_worker_deaf_to_sigterm_is_killed_with_its_tasks(tmp_path: Path, capsys) -> None:
    """A worker hung in C code or a collective: its task ignores SIGTERM (as here, set before it says so)."""
    ready = tmp_path / "deaf"
    code = (f"import pathlib, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            f"pathlib.Path({str(ready)!r}).touch(); time.sleep(600)")
    ex = submitit.LocalExecutor(folder=tmp_path / "logs")
    ex.update_parameters(timeout_min=5)
    job = ex.submit(functools.partial(exec, code))
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    tree = [int(job.job_id), *_descendants(int(job.job_id))]
    assert ready.exists() and len(tree) >= 2, "the task did not start"
    started = time.monotonic()
    assert stop_workers([job], resend_s=0.5, kill_after_s=3) is False
    assert time.monotonic() - started < 30 and job.done()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in tree), [p for p in tree if _alive(p)]
    assert "did not save within 3 s of SIGTERM: killed" in capsys.readouterr().err
    assert os.getpid() not in tree
