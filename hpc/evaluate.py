"""The evaluation job: best trial of the study -> test metrics -> ``results.json`` + ``best_model.pth``.

Runs after the whole array (``afterany``). In a SLURM job it first heals the study (:mod:`hpc.heal`):
short of its count with no worker left, it resubmits workers and a new evaluation job instead of
evaluating. It then picks the best COMPLETE trial, evaluates that trial's ``best.pt`` — chosen on the
study's objective (``train.monitor``), so the evaluated model is the one ranked best — on the test
tiles and writes everything a paper table or a re-run needs. Outputs are written atomically.

With ``hpc.final`` on, a complete search first gets its final runs (:mod:`hpc.final`): this job creates the
study ``<study>/final``, submits its worker array and a new evaluation job ``afterany`` that array, and
exits; that job re-enters here (its ``$DUALSEG_STUDY`` is the final study, mapped to its search), heals
the final study like any other and only then evaluates, adding ``results.json``'s ``final`` section.
Re-entry rather than a second kind of job: ``afterany`` fires however the array ends (failed, cancelled,
timed out), and the healing of a re-entered evaluation job is exactly what makes a search robust to that.
"""

from __future__ import annotations

if not __package__:  # run as a file: re-run as `python -m hpc.<name>` (hpc/_script.py)
    import os
    import runpy

    runpy.run_path(os.path.join(os.path.dirname(__file__), "_script.py"))

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from dualseg import code_version
from dualseg.config import Config, apply_overrides, from_dict
from dualseg.errors import DualsegError, InputError, report_error
from dualseg.train.export import export_model
from dualseg.train.rundir import BEST
from hpc.accounting import allocation_efficiency
from hpc.final import final_name, final_stage, parent_name
from hpc.final_plan import final_config
from hpc.paths import study_scratch, trial_dir
from hpc.report import write_report
from hpc.results import final_results, write_results
from hpc.retention import keep_policy, on_study_finished, scratch_usage
from hpc.slurm import SlurmEnv
from hpc.storage import StorageURL, resolve_storage
from hpc.study import Counts, best, open_study

log = logging.getLogger("hpc.evaluate")


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


def evaluate_study(storage: StorageURL, study_name: str, scratch: str | Path | None = None,
                   out_dir: str | Path | None = None) -> dict[str, Any]:
    """Evaluate the study's best trial; returns the results dict (also written to ``results.json``)."""
    from dualseg.train import evaluate_checkpoint

    t0 = time.monotonic()
    with open_study(storage, study_name, budget_s=300) as opened:
        study, record, trials = opened.study, opened.record, opened.trials()
    counts = Counts.of(trials)
    top = best(trials, study.direction)
    if top is None:
        raise InputError(f"--study: {study_name!r} has no COMPLETE trial to evaluate "
                         f"(trials by state: {counts.by_state()})")
    study_dir = study_scratch(scratch, record.scratch) / study_name
    ckpt = trial_dir(study_dir, top.number) / BEST
    if not ckpt.exists():
        raise InputError(f"best trial {top.number}: checkpoint {ckpt} not found (wrong --scratch?)")
    cfg_dict = record.config
    cfg = apply_overrides(from_dict(Config, cfg_dict), dict(top.params)) if cfg_dict else None
    test = evaluate_checkpoint(ckpt, cfg, split="test")
    out = Path(out_dir) if out_dir else study_dir / "results"
    objective = record.objective
    results = {
        "study": study_name,
        "direction": study.direction.name.lower(),
        "objective": objective,
        "best_trial": {"number": top.number, "value": top.value, "params": top.params,
                       "user_attrs": top.user_attrs},
        "checkpoint": {"path": str(ckpt), "epoch": test.get("epoch"), "chosen_on": objective},
        "test": {k: test.get(k) for k in ("loss", "oa", "miou", "iou", "f1", "support", "confusion_matrix",
                                          "class_names", "majority_baseline", "epoch", "overlap", "unpredicted")},
        "trials": {"requested": record.trials, "by_state": counts.by_state(), "resubmits": record.resubmits},
        "config": cfg_dict,
        "timings": {**_timings(trials), "eval_s": time.monotonic() - t0},
        "code_version": code_version(),
        "results_dir": str(out),
    }
    out.mkdir(parents=True, exist_ok=True)
    export_model(ckpt, cfg, out / "best_model.pth")  # slim: what inference needs, weights_only-loadable
    policy = keep_policy((cfg_dict or {}).get("hpc", {}).get("keep"))
    results["retention"] = on_study_finished(study_dir, trials, study.direction, policy)
    results["scratch"] = scratch_usage(study_dir)
    results["allocation"] = allocation_efficiency(trials, record)
    final = final_name(study_name)
    if final_config(record).on and _exists(storage, final):
        try:
            results["final"] = final_results(storage, final, scratch)
        except (DualsegError, ValueError) as exc:  # e.g. no member finished: the search's results still count
            log.warning("final runs not evaluated: %s", exc)
            results["final"] = {"study": final, "error": str(exc)}
    write_results(out / "results.json", results)
    try:
        results["report"] = str(write_report(study_name, storage, study_dir.parent, results_dir=out))
    except DualsegError as exc:  # a report that cannot be drawn must never cost the results
        log.warning("report not written: %s", exc)
    return results


def _exists(storage: StorageURL, name: str) -> bool:
    try:
        with open_study(storage, name, budget_s=60):
            return True
    except InputError:
        return False


def main(argv: list[str] | None = None) -> int:
    from dualseg.train.log import setup_logging

    p = argparse.ArgumentParser(allow_abbrev=False, prog="python -m hpc.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--study", default=os.environ.get("DUALSEG_STUDY"), help="study name (default $DUALSEG_STUDY)")
    p.add_argument("--storage", default=os.environ.get("DUALSEG_STORAGE_URL"),
                   help="study database URL (default $DUALSEG_STORAGE_URL, $DUALSEG_STORAGE)")
    p.add_argument("--scratch", default=os.environ.get("DUALSEG_SCRATCH"), help="default: the study's own record")
    p.add_argument("--out", default=None, help="results folder (default <scratch>/<study>/results)")
    p.add_argument("--no-heal", action="store_true", help="evaluate as is, even when workers are missing")
    a = p.parse_args(argv)
    setup_logging(stream=sys.stdout)
    storage: StorageURL | None = None
    try:
        if not a.study:
            raise InputError("--study: not given and $DUALSEG_STUDY is not set")
        study = parent_name(a.study)  # the final runs' evaluation job evaluates their search
        storage = resolve_storage(a.storage, None, None)
        if storage is None:
            raise InputError("--storage: not given and $DUALSEG_STORAGE is not set")
        if SlurmEnv.read().in_job and not a.no_heal:
            from hpc.heal import heal

            scratch = Path(a.scratch) if a.scratch else None
            with open_study(storage, study, budget_s=300) as opened:
                outcome = heal(opened, storage, scratch)
            if outcome in ("waiting", "resubmitted"):
                return 0
            final = final_stage(storage, study, scratch) if outcome == "complete" else "off"
            if final in ("submitted", "waiting", "resubmitted"):
                return 0  # the final runs' own evaluation job (afterany their array) comes back here
        r = evaluate_study(storage, study, a.scratch, a.out)
    except DualsegError as exc:
        return report_error(exc, storage.scrub if storage is not None else None)
    t = r["test"]
    print(f"best trial {r['best_trial']['number']} {r['best_trial']['params']}")
    print(f"test loss {t['loss']:.4f} OA {t['oa']:.4f} mIoU {t['miou']:.4f} -> {r['results_dir']}/results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
