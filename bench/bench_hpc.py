"""Coordination cost of the exact-count ask lock, side by side with plain Optuna ask/tell.

N worker processes race to finish T zero-length trials on one storage (SQLite file, or the
PostgreSQL URL given with --storage). "locked" is hpc.worker.Coordinator (count + ask under the
study-wide lock, heartbeat, tell); "plain" is the usual `while finished < T: ask(); tell()` loop.
Printed: trials/s of each, the ratio, and how many trials each ended with (plain overshoots).

    python bench/bench_hpc.py --procs 4 --trials 40 [--storage postgresql://user@host/db]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid

import optuna

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hpc import study as st  # noqa: E402

LOCKED = textwrap.dedent("""
    import sys, json
    from optuna.trial import TrialState
    from dualseg.config import Config, to_dict
    from hpc.config import parse_hpc
    from hpc.trials import Coordinator, WorkerSpec
    url, name, hpc = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    cfg = Config(hpc=hpc)
    coord = Coordinator(WorkerSpec(to_dict(cfg), url, name, "/tmp"), parse_hpc(cfg))
    while (job := coord.next(None)).action != "stop":
        if job.action == "train":
            coord.tell(job.trial_id, TrialState.COMPLETE, 0.0, {})
""")
PLAIN = textwrap.dedent("""
    import sys, json, optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url, name, target = sys.argv[1], sys.argv[2], int(json.loads(sys.argv[3])["trials"])
    study = optuna.load_study(study_name=name, storage=url)
    while sum(t.state.is_finished() for t in study.get_trials(deepcopy=False)) < target:
        t = study.ask()
        t.suggest_float("train.lr", 1e-4, 1e-2, log=True)
        study.tell(t, 0.0)
""")


def run(code: str, url: str, procs: int, trials: int) -> tuple[float, int]:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    storage = st.open_storage(url, create_tables=True)
    st.create_or_load_study(storage, name, "minimize")
    hpc = {"trials": trials, "study": name, "search": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
           "heartbeat_interval": 5, "grace_period": 60, "sampler": "random"}
    t0 = time.perf_counter()
    ps = [subprocess.Popen([sys.executable, "-c", code, url, name, json.dumps(hpc)]) for _ in range(procs)]
    for p in ps:
        p.wait()
    dt = time.perf_counter() - t0
    n = len(optuna.load_study(study_name=name, storage=storage).trials)
    storage.engine.dispose()
    return dt, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--storage", default=None)
    a = ap.parse_args()
    url = a.storage or f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    dt_l, n_l = run(LOCKED, url, a.procs, a.trials)
    dt_p, n_p = run(PLAIN, url, a.procs, a.trials)
    print(f"storage {st.mask_url(st.normalize_url(url))}, {a.procs} workers, target {a.trials} trials")
    print(f"locked (hpc.worker): {n_l} trials in {dt_l:.2f}s  ({n_l / dt_l:.1f} trials/s)")
    print(f"plain ask/tell     : {n_p} trials in {dt_p:.2f}s  ({n_p / dt_p:.1f} trials/s)")
    print(f"time ratio locked/plain: {dt_l / dt_p:.2f}x; overshoot locked {n_l - a.trials}, plain {n_p - a.trials}")


if __name__ == "__main__":
    main()
