"""The evaluation job: best trial of the study -> test metrics -> ``results.json`` + ``best_model.pth``.

Runs after the whole array (``afterany``), so it must cope with a study where some trials failed
or were pruned: it picks the best COMPLETE trial, evaluates that trial's ``best.pt`` on the test
tiles and writes everything a paper table or a re-run needs (hyperparameters, metrics, confusion
matrix, config, trial counts, timings, code version). Both outputs are written atomically, so a
reader never sees half a result. ``sbatch sbatch/eval.sbatch`` runs ``python -m hpc.evaluate``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from dualseg.config import Config, from_dict
from dualseg.errors import DualsegError, InputError, report_error
from dualseg.io import atomic_copy, atomic_write_text
from hpc import study as st
from hpc.helpers import code_version, connect_url, trial_dir


def _timings(trials: list[optuna.trial.FrozenTrial]) -> dict[str, Any]:
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    durations = [(t.datetime_complete - t.datetime_start).total_seconds()
                 for t in trials if t.datetime_start and t.datetime_complete and t.state == TrialState.COMPLETE]
    return {
        "search_started": min(starts).isoformat() if starts else None,
        "search_finished": max(ends).isoformat() if ends else None,
        "search_wall_s": (max(ends) - min(starts)).total_seconds() if starts and ends else None,
        "trial_mean_s": sum(durations) / len(durations) if durations else None,
    }


def _finite(obj: Any) -> Any:
    """JSON without NaN/inf (invalid JSON for strict readers): such values become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def evaluate_study(storage_url: str, study_name: str, scratch: str | Path | None = None,
                   out_dir: str | Path | None = None) -> dict[str, Any]:
    """Evaluate the study's best trial; returns the results dict (also written to ``results.json``)."""
    from dualseg.train import evaluate_checkpoint

    t0 = time.monotonic()
    storage = st.open_storage(connect_url(storage_url), pool_size=2, retries=3)
    try:
        study = st.load_study(storage, study_name)
        trials = study.get_trials(deepcopy=False)
        attrs = study.user_attrs
    finally:
        storage.engine.dispose()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    if not complete:
        raise InputError(f"--study: {study_name!r} has no COMPLETE trial to evaluate (trials by state: {counts})")
    best = study.best_trial
    scratch_dir = Path(scratch or attrs.get("scratch") or os.environ.get("SCRATCH") or "runs")
    study_dir = scratch_dir / study_name
    ckpt = trial_dir(study_dir, best.number) / "best.pt"
    if not ckpt.exists():
        raise InputError(f"best trial {best.number}: checkpoint {ckpt} not found (wrong --scratch?)")
    cfg_dict = attrs.get("config")
    cfg = from_dict(Config, cfg_dict) if cfg_dict else None
    if cfg is not None:
        from dualseg.config import apply_overrides

        cfg = apply_overrides(cfg, dict(best.params))
    test = evaluate_checkpoint(ckpt, cfg, split="test")
    out = Path(out_dir) if out_dir else study_dir / "results"
    results = {
        "study": study_name,
        "direction": study.direction.name.lower(),
        "objective": attrs.get("objective", "val_loss"),
        "best_trial": {"number": best.number, "value": best.value, "params": best.params,
                       "user_attrs": best.user_attrs},
        "test": {k: test.get(k) for k in ("loss", "oa", "miou", "iou", "f1", "support", "confusion_matrix",
                                          "class_names", "majority_baseline", "epoch")},
        "trials": {"requested": attrs.get("trials"), "by_state": counts},
        "config": cfg_dict,
        "timings": {**_timings(trials), "eval_s": time.monotonic() - t0},
        "code_version": code_version(),
        "checkpoint": str(ckpt),
        "results_dir": str(out),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_copy(ckpt, out / "best_model.pth")
    atomic_write_text(out / "results.json", json.dumps(_finite(results), indent=2, sort_keys=True, default=str) + "\n")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpc.evaluate", description=__doc__.split("\n")[0])
    st.add_study_arguments(p)
    p.add_argument("--scratch", default=os.environ.get("DUALSEG_SCRATCH"), help="default: the study's own record")
    p.add_argument("--out", default=None, help="results folder (default <scratch>/<study>/results)")
    a = p.parse_args(argv)
    try:
        st.check_study_arguments(a)
        r = evaluate_study(a.storage, a.study, a.scratch, a.out)
    except DualsegError as exc:
        return report_error(exc, lambda m: st.scrub(m, st.parse_url_password(a.storage)))
    t = r["test"]
    print(f"best trial {r['best_trial']['number']} {r['best_trial']['params']}")
    print(f"test loss {t['loss']:.4f} OA {t['oa']:.4f} mIoU {t['miou']:.4f} -> {r['results_dir']}/results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
