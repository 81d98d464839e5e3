"""Where a search stands: ``python hpc/status.py --study NAME [--storage URL]``.

One compact screen: trials by state against the target, the best value and its parameters, the
running trials with the SLURM job that runs each and that job's state in ``squeue`` (a RUNNING
trial whose job is gone is about to be failed by the heartbeat check and retried).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script from the repo root
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from optuna.trial import TrialState  # noqa: E402

from dualseg.errors import DualsegError, InputError, report_error  # noqa: E402
from hpc import study as st  # noqa: E402
from hpc.helpers import connect_url, squeue_states  # noqa: E402


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def collect(storage_url: str, study_name: str) -> dict[str, Any]:
    """The status as a dict (printed by :func:`render`; used by tests)."""
    storage = st.open_storage(connect_url(storage_url), pool_size=2)
    try:
        study = st.load_study(storage, study_name)
        trials = study.get_trials(deepcopy=False)
        target = study.user_attrs.get("trials")
    finally:
        storage.engine.dispose()
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = None
    if complete:
        b = study.best_trial
        best = {"number": b.number, "value": b.value, "params": b.params}
    running = [{"number": t.number, "job": str(t.user_attrs.get("job_id", "?")),
                "last_step": max(t.intermediate_values) if t.intermediate_values else None,
                "retry_of": t.system_attrs.get("failed_trial")}
               for t in trials if t.state == TrialState.RUNNING]
    slurm = squeue_states([r["job"] for r in running if r["job"][:1].isdigit()])
    for r, t in zip(running, [t for t in trials if t.state == TrialState.RUNNING]):
        r["requeued"] = bool(t.user_attrs.get("requeued_job"))
    for r in running:
        r["slurm"] = slurm.get(r["job"], "-")
    return {"study": study_name, "target": target, "counts": counts, "best": best, "running": running,
            "direction": study.direction.name.lower()}


def render(s: dict[str, Any]) -> str:
    c = s["counts"]
    done = c["COMPLETE"] + c["PRUNED"]
    lines = [
        f"study {s['study']} ({s['direction']}): {done}/{s['target'] or '?'} finished",
        "  " + "  ".join(f"{k.lower()} {v}" for k, v in c.items()),
    ]
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
            note = "  (requeued, waiting in the queue)" if r.get("requeued") else ""
            lines.append(f"{r['number']:>6} {r['job']:>12} {r['slurm']:>10} {step:>6} {retry}{note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python hpc/status.py", description=__doc__.split("\n")[0])
    p.add_argument("--study", required=True)
    p.add_argument("--storage", default=os.environ.get(st.STORAGE_ENV),
                   help="study database URL (default $DUALSEG_STORAGE)")
    a = p.parse_args(argv)
    try:
        if not a.storage:
            raise InputError("--storage: not given and $DUALSEG_STORAGE is not set")
        url = st.parse_url(a.storage)
        if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).is_file():
            raise InputError(f"--storage: SQLite file {url.database} does not exist (no study there)")  # [data pre-flight]
        print(render(collect(a.storage, a.study)))
    except DualsegError as exc:
        return report_error(exc, lambda m: st.scrub(m, st.parse_url_password(a.storage)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
