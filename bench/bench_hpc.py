"""Coordination at scale: N coordinator processes finish T trivial trials on one PostgreSQL study.

Each process is a real :class:`hpc.trials.Coordinator` (the locked ask, heartbeat thread, TPE sampling
after the lock, tell) with a zero-length objective, so the numbers are pure coordination cost.
Printed (and written as JSON with --json): the final count (must equal T, 0 errors), time the study
lock was held (p50/p99) and how it grows from the first to the last tenth of the trials, ``next()``
wall time (p50/p99), and peak connections of the role (sampled from ``pg_stat_activity``).
``--restart-at K`` restarts PostgreSQL (``pg_ctl restart -m fast``) once K trials have finished.

    python bench/bench_hpc.py --procs 64 --trials 1000                 # a private PostgreSQL server (root)
    python bench/bench_hpc.py --procs 64 --trials 1000 --restart-at 500
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import optuna

from hpc.storage import StorageURL, create_or_load_study, open_database

CHILD = textwrap.dedent("""
    import json, sys, time
    from optuna.trial import TrialState
    from dualseg.config import Config, to_dict
    from hpc.config import parse_hpc
    from hpc.storage import LOCK_HELD_S
    from hpc.trials import Coordinator, WorkerSpec
    url, name, hpc = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    cfg = Config(hpc=hpc)
    coord = Coordinator(WorkerSpec(to_dict(cfg), url, name, "/tmp"), parse_hpc(cfg))
    while True:
        n = len(LOCK_HELD_S)
        t0 = time.perf_counter()
        job = coord.next(None)
        wall = time.perf_counter() - t0
        held = LOCK_HELD_S[n:]
        print(json.dumps({"action": job.action, "number": job.number, "next_s": wall, "lock_s": held}), flush=True)
        if job.action == "stop":
            break
        if job.action == "wait":
            time.sleep(0.05)
            continue
        with coord.heartbeat(job.trial_id):
            x = sum(v for v in job.params.values() if isinstance(v, float))
        coord.tell(job.trial_id, TrialState.COMPLETE, x)
""")

SEARCH = {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
          "model.dropout": {"type": "float", "low": 0.0, "high": 0.3},
          "model.temporal": {"type": "categorical", "choices": ["ltae", "mean"]}}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run(url: str, procs: int, trials: int, restart: tuple[int, object] | None, peak_sql: object) -> dict:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    db = open_database(StorageURL.parse(url), create_tables=True)
    create_or_load_study(db, name, "minimize")
    db.close()
    hpc = {"trials": trials, "study": name, "search": SEARCH, "heartbeat_interval": 5, "grace_period": 120,
           "sampler": "tpe", "seed": 0, "poll_interval": 0.1}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # children import hpc as this process does
    t0 = time.perf_counter()
    ps = [subprocess.Popen([sys.executable, "-c", CHILD, url, name, json.dumps(hpc)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env) for _ in range(procs)]
    peak, stop = [0], threading.Event()

    def sample() -> None:
        restarted = False
        study = optuna.load_study(study_name=name, storage=url)
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], int(peak_sql()))  # type: ignore[operator]
                if restart and not restarted:
                    done = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
                    if done >= restart[0]:
                        restart[1]()  # type: ignore[operator]
                        restarted = True
            except Exception:  # noqa: BLE001 - sampling must survive the restart it causes
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    outs = [p.communicate() for p in ps]
    stop.set()
    wall = time.perf_counter() - t0
    records = [json.loads(line) for out, _ in outs for line in out.splitlines() if line.startswith("{")]
    errors = [err.strip().splitlines()[-1] for (_, err), p in zip(outs, ps) if p.returncode != 0]
    study = optuna.load_study(study_name=name, storage=url)
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    lock = [s for r in records for s in r["lock_s"]]
    by_number = sorted((r["number"], max(r["lock_s"])) for r in records if r["action"] == "train" and r["lock_s"])
    tenth = max(1, len(by_number) // 10)
    first, last = [h for _, h in by_number[:tenth]], [h for _, h in by_number[-tenth:]]
    nxt = [r["next_s"] for r in records if r["action"] == "train"]
    return {
        "procs": procs, "trials": trials, "finished": states.count("COMPLETE") + states.count("PRUNED"),
        "total_trials": len(states), "errors": len(errors), "error_lines": errors[:3], "wall_s": round(wall, 1),
        "lock_p50_ms": round(1000 * pct(lock, 0.5), 2), "lock_p99_ms": round(1000 * pct(lock, 0.99), 2),
        "lock_first_tenth_p50_ms": round(1000 * statistics.median(first), 2) if first else None,
        "lock_last_tenth_p50_ms": round(1000 * statistics.median(last), 2) if last else None,
        "next_p50_ms": round(1000 * pct(nxt, 0.5), 1), "next_p99_ms": round(1000 * pct(nxt, 0.99), 1),
        "peak_connections": peak[0], "restarted_at": restart[0] if restart else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--procs", type=int, default=64)
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--restart-at", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    from tests.faults.conftest import PrivatePostgres, _pg_bin  # the same real server the fault suite uses

    pg = PrivatePostgres(Path("/tmp/dualseg-bench") / uuid.uuid4().hex[:8], _pg_bin())  # type: ignore[arg-type]
    pg.init()
    pg.sql("ALTER SYSTEM SET max_connections = 300;")
    pg.restart()
    try:
        result = run(pg.url, a.procs, a.trials, (a.restart_at, pg.restart) if a.restart_at else None,
                     lambda: pg.connections())
    finally:
        pg.destroy()
    for k, v in result.items():
        print(f"{k:>26}: {v}")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
