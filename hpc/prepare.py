"""What every launch does before it submits: the data present and checked, the study created once (or a
relaunch judged), the scratch claimed, orphans of gone workers re-queued, the submission recorded.

The database is checked first, so a wrong password or an unreachable host leaves nothing behind; every
check runs before the first write, so a launch either submits a search that can run or writes nothing.
"""

from __future__ import annotations

from pathlib import Path

from dualseg import code_version
from dualseg.config import Config, to_dict
from dualseg.data.preflight import check_dataset
from dualseg.errors import InputError
from hpc import slurm
from hpc.final import final_pending
from hpc.paths import claim_study_dir, new_incarnation
from hpc.relaunch import check_relaunch
from hpc.storage import check_server, create_or_load_study, open_database, write_passfile
from hpc.study import Counts, OpenStudy, StudyRecord, open_study, update_record
from hpc.submit.jobs import Plan
from hpc.submit.resources import worker_job_name


def prepare(plan: Plan) -> None:
    """Side effects every launch needs before submitting: data present, study created once, scratch claimed.

    The database is checked first, so a wrong password or an unreachable host leaves nothing behind.
    """
    check_dataset(plan.cfg.data, missing_ok=True)  # existing data: checked before the database is touched
    db_path = plan.storage.sqlite_path
    if db_path is not None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    db = open_database(plan.storage, create_tables=True)
    try:
        ensure_data(plan.cfg)
        check_dataset(plan.cfg.data)  # every split, every tile (generated data too), before any job exists
        try:
            before = db.load_study(plan.hpc.study)
            existing, finished = StudyRecord.read(before), Counts.of(before.get_trials(deepcopy=False)).finished
        except InputError:
            existing, finished = StudyRecord(), 0
        record = StudyRecord(config=to_dict(plan.cfg), trials=plan.hpc.trials, scratch=str(plan.scratch),
                             objective=plan.hpc.objective, code_version=code_version(), incarnation=None,
                             launch={k: v for k, v in to_dict(plan.hpc).items() if k != "storage"})
        pending = existing.config is not None and finished >= existing.trials and \
            final_pending(db, plan.hpc.study, existing)
        check_relaunch(plan.hpc.study, existing, record, finished, plan.allow_change, pending)
        check_server(plan.storage, plan.hpc.workers)
        plan.incarnation = record.incarnation = existing.incarnation or new_incarnation()
        claim_study_dir(plan.study_dir, plan.incarnation, plan.hpc.study)
        study = create_or_load_study(db, plan.hpc.study, plan.hpc.direction, record.launch_attrs())
        adopt_orphans(OpenStudy(db, study, StudyRecord.read(study)), plan)
    finally:
        db.close()
    plan.logdir.mkdir(parents=True, exist_ok=True)
    plan.passfile = write_passfile(plan.storage, plan.study_dir / ".pgpass")


def ensure_data(cfg: Config) -> None:
    """Generate the synthetic tiles once here, so N ranks of N jobs never race to write them."""
    root = Path(cfg.data.root)
    splits = Path(cfg.data.splits) if cfg.data.splits else root / "splits.json"
    if splits.exists() or cfg.data.train_tiles:
        return
    if cfg.data.synthetic is None:
        raise InputError(f"data.root: no tiles at {root} (no {splits.name}) and data.synthetic is not set")
    from dualseg.data.synthetic import ensure_synthetic

    print(f"generating synthetic data in {root} ...", flush=True)
    ensure_synthetic(root, cfg.data.synthetic)


def record_submission(plan: Plan, array_id: str) -> None:
    """The arrays of this study (the evaluation job's self-healing checks whether any still runs)."""
    with open_study(plan.storage, plan.hpc.study, budget_s=60) as opened:
        update_record(opened, lambda r: {"arrays": [*r.arrays, array_id]})


def adopt_orphans(opened: OpenStudy, plan: Plan) -> None:
    """Launching again a study none of whose arrays still runs: its RUNNING trials are orphans; re-queue them
    now (with their parameters and checkpoints) so the new workers continue them at once."""
    from hpc.heal import fail_orphans

    arrays = opened.record.arrays
    listed = slurm.squeue_listing([worker_job_name(plan.hpc.study)], 0) if arrays else None
    if arrays and listed is None:
        print("warning: squeue does not answer; trials of earlier workers are left to the self-healing", flush=True)
    elif arrays and listed is not None and not any(j.split("_")[0] in arrays for j in listed):
        n = fail_orphans(opened, plan.hpc.max_retry, listed)
        if n:
            print(f"re-queued {n} trial(s) whose workers are gone; the new workers continue them", flush=True)
