"""Following a local search while it runs: one line per finished trial, then worker failures; Ctrl-C.

The embedded default used to print nothing for minutes; now every finished trial prints its number,
state, value, the best so far and the elapsed time. Workers are waited for with ``results()`` (a
multi-task local job has one result per task) and each failure is reported as one line. Ctrl-C reaches
only the launcher (the workers ignore it, :mod:`hpc.submit.local`): :func:`stop_local` stops them the
way SLURM does, and hands the trials they held back to the study, so the same command resumes them.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from typing import Any

from optuna.trial import TrialState

from dualseg.errors import one_line
from hpc.study import Counts, TrialRecord, best, hand_back, open_study
from hpc.submit.jobs import Plan
from hpc.submit.local import LocalBackend


class Interrupted(KeyboardInterrupt):
    """Ctrl-C after a stage's workers were stopped and its trials handed back (the final runs' own stage)."""

    def __init__(self, study: str, handed: list[int]) -> None:
        super().__init__(study)
        self.study, self.handed = study, handed


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def follow_local(plan: Plan, workers: list[Any], poll_s: float = 2.0, hidden: frozenset[int] = frozenset(),
                 target: int | None = None) -> list[str]:
    """Print finished trials until every worker is done; return one line per failed worker. ``hidden``:
    members not to show (a final study's stale ones), counted out of ``target`` (default: the plan's)."""
    t0, total = time.monotonic(), target or plan.hpc.trials
    seen: set[int] = set()
    with open_study(plan.storage, plan.hpc.study, budget_s=60) as opened:
        while True:
            running = [w for w in workers if not w.done()]
            trials = sorted((t for t in opened.trials() if TrialRecord.of(t).member not in hidden),
                            key=lambda t: t.number)
            done = Counts.of(trials).finished
            for i, t in enumerate(trials):
                if t.state.is_finished() and t.number not in seen:
                    seen.add(t.number)
                    top = best(trials[:i + 1], opened.study.direction)  # the best so far, in trial order
                    best_txt = f"best {_fmt(top.value)} (trial {top.number})" if top else "best -"
                    err = f"  {TrialRecord.of(t).error or ''}" if t.state == TrialState.FAIL else ""
                    print(f"trial {t.number:>3} {t.state.name.lower():<8} value {_fmt(t.value):>8}  {best_txt}  "
                          f"[{done}/{total} finished, {time.monotonic() - t0:.0f}s]{err}", flush=True)
            if not running:
                break
            time.sleep(poll_s)
    failures = []
    for w in workers:
        try:
            w.results()
        except Exception as exc:  # noqa: BLE001 - one line per failed worker, then a non-zero exit
            errors = re.findall(r"^(?:[\w.]+\.)?(\w*Error|\w*Exception): (.+)$", str(exc), re.M)
            why = f"{errors[-1][0]}: {errors[-1][1]}" if errors else one_line(exc)
            failures.append(f"local worker {w.job_id} failed: {why[:300]} (log: {plan.logdir})")
    return failures


def _local_job_gone(job: str) -> bool:
    """A trial's job that has ended: a local worker (``local-<pid>``) whose process is gone. SLURM jobs and
    unlabelled trials (a study may be shared) are never judged here: a dead one goes stale in time."""
    pid = job.removeprefix("local-")
    if pid == job or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: alive
        return False
    return False


def stop_workers(workers: list[Any], resend_s: float = 5.0, kill_after_s: float = 120.0) -> bool:
    """SIGTERM the workers (each saves its trial at the next step and exits) and wait; returns False when
    some were killed. SIGTERM is sent again every ``resend_s`` (a task still starting up has no handler yet);
    a worker still alive after ``kill_after_s`` (hung in a collective, deaf to SIGTERM) is killed with its
    processes, so Ctrl-C always ends the launcher (its trial then resumes from its last checkpoint)."""
    start = sent = time.monotonic()
    LocalBackend.stop(workers)
    while any(not w.done() for w in workers):
        now = time.monotonic()
        if now - start > kill_after_s:
            print(f"stopping: {sum(not w.done() for w in workers)} worker(s) did not save within "
                  f"{kill_after_s:.0f} s of SIGTERM: killed; their trials resume from their last checkpoint",
                  file=sys.stderr, flush=True)
            LocalBackend.kill(workers)
            deadline = time.monotonic() + 30
            while any(not w.done() for w in workers) and time.monotonic() < deadline:
                time.sleep(0.2)
            return False
        if now - sent > resend_s:
            LocalBackend.stop(workers)
            sent = now
        time.sleep(0.2)
    return True


def stop_local(plan: Plan, workers: list[Any], resend_s: float = 5.0, kill_after_s: float = 120.0) -> list[int]:
    """After Ctrl-C: stop the workers (:func:`stop_workers`), then hand their RUNNING trials back (WAITING: a
    rerun continues each from its checkpoint); returns the numbers. A second Ctrl-C meanwhile is ignored,
    so the trials are always handed back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop_workers(workers, resend_s, kill_after_s)
    with open_study(plan.storage, plan.hpc.study, budget_s=60) as opened:
        return hand_back(opened.db, opened.study, _local_job_gone)
