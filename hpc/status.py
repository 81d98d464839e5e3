"""Where a search stands: ``python hpc/status.py --study NAME [--storage URL]``.

One compact screen: trials by state against the target, the best value and its parameters, the
running trials with the SLURM job of each and that job's state in ``squeue`` (a RUNNING trial whose
job is gone is *stale*: the next ask fails and retries it), failed trials with their errors,
resubmissions by the self-healing evaluation job, and scratch usage. Without ``--storage`` or
``$DUALSEG_STORAGE`` it finds the local default study (``<scratch>/<study>/study.db``).
"""

from __future__ import annotations

if not __package__:  # run as a file: re-run as `python -m hpc.<name>` (hpc/_script.py)
    import os
    import runpy

    runpy.run_path(os.path.join(os.path.dirname(__file__), "_script.py"))

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from dualseg.errors import DualsegError, report_error
from hpc.accounting import allocation_efficiency
from hpc.config import FINAL_SUFFIX
from hpc.final import final_progress
from hpc.paths import resolve_scratch
from hpc.retention import human, scratch_usage
from hpc.slurm import QUEUED_STATES, squeue_states
from hpc.storage import StorageURL, study_storage
from hpc.study import Counts, TrialRecord, best, open_study
from hpc.submit.resources import worker_job_name


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def collect(storage: StorageURL, study_name: str) -> dict[str, Any]:
    """The status as a dict (printed by :func:`render`; used by tests)."""
    with open_study(storage, study_name, budget_s=30) as opened:
        study, record, trials = opened.study, opened.record, opened.trials()
    top = best(trials, study.direction)
    run = [(t, TrialRecord.of(t)) for t in trials if t.state == TrialState.RUNNING]
    slurm = squeue_states([r.job or "?" for _, r in run], names=[worker_job_name(study_name)])
    running = []
    for t, r in run:
        job = r.job or "?"
        state = "?" if slurm is None else slurm.get(job, "-")  # "?": squeue cannot tell right now
        running.append({"number": t.number, "job": job, "slurm": state, "requeued": bool(r.requeued_job),
                        "last_step": max(t.intermediate_values) if t.intermediate_values else None,
                        "retry_of": r.retry_of,
                        "stale": slurm is not None and job[:1].isdigit() and state not in QUEUED_STATES})
    failed = [{"number": t.number, "error": TrialRecord.of(t).error or "no heartbeat (job died)"}
              for t in trials if t.state == TrialState.FAIL]
    scratch = Path(record.scratch) / study_name if record.scratch else None
    usage = scratch_usage(scratch) if scratch is not None and scratch.is_dir() else None
    return {"study": study_name, "target": record.trials or None, "counts": Counts.of(trials).by_state(),
            "best": None if top is None else {"number": top.number, "value": top.value, "params": top.params},
            "running": running, "failed": failed, "direction": study.direction.name.lower(),
            "resubmits": record.resubmits, "arrays": record.arrays, "scratch": usage,
            "allocation": allocation_efficiency(trials, record), "final": final_progress(storage, study_name)}


def render(s: dict[str, Any]) -> str:
    c = s["counts"]
    done = c["COMPLETE"] + c["PRUNED"]
    lines = [f"study {s['study']} ({s['direction']}): {done}/{s['target'] or '?'} finished",
             "  " + "  ".join(f"{k.lower()} {v}" for k, v in c.items())]
    if s["best"]:
        b = s["best"]
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in b["params"].items())
        lines.append(f"best: trial {b['number']} value {_fmt(b['value'])}  {params}")
    else:
        lines.append("best: - (no complete trial yet)")
    if s["running"]:
        lines.append(f"{'trial':>6} {'job':>12} {'slurm':>10} {'epoch':>6} retry-of")
        for r in s["running"]:
            step = "-" if r["last_step"] is None else r["last_step"]
            retry = "-" if r["retry_of"] is None else r["retry_of"]
            note = "  (requeued, waiting in the queue)" if r["requeued"] and not r["stale"] else ""
            note = "  STALE: its job is gone; the next ask retries it" if r["stale"] else note
            lines.append(f"{r['number']:>6} {r['job']:>12} {r['slurm']:>10} {step:>6} {retry}{note}")
    for f in s["failed"][-5:]:
        lines.append(f"failed: trial {f['number']}: {f['error']}")
    if s["resubmits"]:
        arrays = ", ".join(map(str, s["arrays"]))
        lines.append(f"self-healing: workers resubmitted {s['resubmits']} time(s); arrays {arrays}")
    if s.get("final"):
        f = s["final"]
        lines.append(f"final runs: {f['complete']}/{f['total']} members complete, {f['running']} running, "
                     f"{f['waiting']} waiting, {f['failed']} failed (study {s['study']}{FINAL_SUFFIX})")
    a = s["allocation"]
    if a["efficiency"] is not None:
        lines.append(f"allocation efficiency: {a['efficiency']:.2f} (training+validation steps "
                     f"{a['busy_rank_s']:.0f} of {a['allocated_rank_s']:.0f} rank-seconds allocated)")
    if s["scratch"] is not None:
        u = s["scratch"]
        lines.append(f"scratch: {human(u['bytes'])} ({human(u['checkpoint_bytes'])} in checkpoints) in {u['path']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="python hpc/status.py", description=__doc__.split("\n")[0])
    p.add_argument("--study", default=os.environ.get("DUALSEG_STUDY") or "dualseg-default",
                   help="study name (default $DUALSEG_STUDY, else the local default study)")
    p.add_argument("--storage", default=None, help="study database URL (default $DUALSEG_STORAGE, else the local "
                   "SQLite study under --scratch)")
    p.add_argument("--scratch", default=None, help="where the local default study lives (default $SCRATCH, ./runs)")
    a = p.parse_args(argv)
    storage: StorageURL | None = None
    try:
        local = resolve_scratch(a.scratch) / a.study / "study.db"
        storage = study_storage(a.storage, local)
        print(render(collect(storage, a.study)))
    except DualsegError as exc:
        return report_error(exc, storage.scrub if storage is not None else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
