"""What a study records: the one typed schema of the attributes the launcher, workers, healing,
evaluation, status and report share.

Optuna stores study and trial attributes as free-form JSON under string keys; seven modules used to
read and write them by hand, and the copies drifted. Every key lives here now, read through
:meth:`StudyRecord.read` / :meth:`TrialRecord.of` and written through the helpers below, with a
``record_version`` so that a study written by a newer dualseg is refused instead of misread.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import optuna

from dualseg.errors import InputError

# 2: a final study's record carries ``final`` (its members). A plain search's record is written as 1,
# which it still is, so a dualseg that reads up to 1 keeps reading searches but refuses a final study
# instead of running its members as search trials.
RECORD_VERSION = 2
PLAIN_RECORD_VERSION = 1
VERSION_KEY = "record_version"
ALLOC_PREFIX = "alloc:"  # one study attribute per job run: alloc:<array>_<task>:<restart> -> rank-seconds
RETRY_OF = "failed_trial"  # system attribute set by Optuna's RetryHeartbeatStaleTrialCallback on a retry


@dataclass
class FinalMember:
    """One final run: the parent study's trial whose configuration it retrains, with which seed and fold.

    ``rank`` is the configuration's place in the parent's ranking (0 = best); ``fold`` the fold rotation
    (None without folds); ``epochs`` the epoch count it trains when derived (``hpc.final.epochs``);
    ``distributions`` the parent trial's Optuna distributions of ``params`` (``distribution_to_json``), with which
    the claiming worker records them as the final trial's own params (:func:`hpc.final.claim_member`).
    """

    parent_study: str
    parent_trial: int
    rank: int
    seed: int
    params: dict[str, Any] = field(default_factory=dict)
    fold: int | None = None
    fold_name: str | None = None
    epochs: int | None = None
    distributions: dict[str, str] = field(default_factory=dict)

    def same_run(self, other: FinalMember) -> bool:
        """Trains exactly what ``other`` trains (its rank in the ranking may differ)."""
        return (self.parent_study, self.parent_trial, self.seed, self.params, self.fold_name, self.epochs) == \
            (other.parent_study, other.parent_trial, other.seed, other.params, other.fold_name, other.epochs)


@dataclass
class FinalPlan:
    """What the final study ``<study>/final`` is: its members, in member order (a trial's ``member``).

    ``stale``: members planned from an earlier ranking of the parent (a search extended with
    ``--allow-change``); their trials stay in the study (counted, never evaluated or claimed again).
    """

    parent: str
    members: list[FinalMember] = field(default_factory=list)
    refit: str = "train"
    stale: list[int] = field(default_factory=list)

    def current(self) -> list[int]:
        """The member indices results, status and the report are about."""
        return [i for i in range(len(self.members)) if i not in set(self.stale)]

    @classmethod
    def from_attr(cls, raw: dict[str, Any]) -> FinalPlan:
        from dualseg.config import from_dict

        return from_dict(cls, raw, "final")


@dataclass
class StudyRecord:
    """The study's own attributes (``study.user_attrs``), typed.

    ``launch`` is the launcher's resolved ``hpc:`` section (no storage URL): the self-healing rebuilds
    the submission from it. ``arrays`` and ``resubmits`` change while the search runs (self-healing).
    """

    config: dict[str, Any] | None = None
    trials: int = 0
    scratch: str | None = None
    objective: str = "val_loss"
    code_version: str | None = None
    incarnation: str | None = None
    launch: dict[str, Any] = field(default_factory=dict)
    arrays: list[str] = field(default_factory=list)
    resubmits: int = 0
    allocations: dict[str, float] = field(default_factory=dict)  # job-run key -> allocated rank-seconds
    final: FinalPlan | None = None  # set on a final study only: which parent trial/seed/fold each member is
    record_version: int = RECORD_VERSION

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> StudyRecord:
        version = int(attrs.get(VERSION_KEY, RECORD_VERSION))
        if version > RECORD_VERSION:
            raise InputError(f"--study: recorded by a newer dualseg (study record version {version}, "
                             f"this one reads up to {RECORD_VERSION}); update dualseg")
        known = {f.name for f in fields(cls)} - {"allocations", VERSION_KEY}
        values: dict[str, Any] = {k: attrs[k] for k in known if attrs.get(k) is not None}
        values["arrays"] = [str(a) for a in values.get("arrays", [])]
        values["trials"] = int(values.get("trials", 0))
        values["resubmits"] = int(values.get("resubmits", 0))
        if "final" in values:
            values["final"] = FinalPlan.from_attr(values["final"])
        allocations = {k: float(v) for k, v in attrs.items() if k.startswith(ALLOC_PREFIX)}
        return cls(**values, allocations=allocations, record_version=version)

    @classmethod
    def read(cls, study: optuna.Study) -> StudyRecord:
        return cls.from_attrs(study.user_attrs)

    def launch_attrs(self) -> dict[str, Any]:
        """The attributes the launcher writes when it creates or resumes the study."""
        return {"config": self.config, "trials": self.trials, "scratch": self.scratch, "objective": self.objective,
                "code_version": self.code_version, "incarnation": self.incarnation, "launch": self.launch,
                **({"final": asdict(self.final)} if self.final is not None else {}),
                VERSION_KEY: RECORD_VERSION if self.final is not None else PLAIN_RECORD_VERSION}

    @property
    def world_size(self) -> int:
        """Ranks of one worker job, as launched."""
        return int(self.launch.get("nodes", 1)) * max(1, int(self.launch.get("gpus_per_node", 0)))


def allocation_key(label: str, restart: int) -> str:
    return f"{ALLOC_PREFIX}{label}:{restart}"


@dataclass
class TrialRecord:
    """A trial's own attributes (``trial.user_attrs``) that dualseg writes, typed.

    ``job_id`` is the array task that trains it, ``requeued_job`` the task that will continue it once
    SLURM starts it again (kept alive meanwhile); the rest is written when the trial ends.
    """

    job_id: str | None = None
    requeued_job: str | None = None
    error: str | None = None
    fatal: bool | None = None
    best_epoch: int | None = None
    monitor: str | None = None
    epochs_run: int | None = None
    stopped: str | None = None
    run_dir: str | None = None
    data_root: str | None = None  # the tiles it trained on (the study's config: --set overrides included)
    busy_s: float = 0.0
    member: int | None = None  # a final study's trial: its index in the study's FinalPlan.members
    retry_of: int | None = None  # the failed trial this one retries (Optuna's system attribute)

    @classmethod
    def of(cls, trial: optuna.trial.FrozenTrial) -> TrialRecord:
        known = {f.name for f in fields(cls)} - {"retry_of"}
        values = {k: v for k, v in trial.user_attrs.items() if k in known and v is not None}
        retry = trial.system_attrs.get(RETRY_OF)
        return cls(**values, retry_of=None if retry is None else int(retry))

    @property
    def job(self) -> str | None:
        """The SLURM job that owns the trial now: the requeued one if it was requeued."""
        return self.requeued_job or self.job_id


# Keys other modules write by name (trial attributes set one at a time during a run).
JOB_ID = "job_id"
REQUEUED_JOB = "requeued_job"
MEMBER = "member"  # kept across retries (Optuna's retry copies user attributes; not a per-run key)
for _key in (JOB_ID, REQUEUED_JOB, MEMBER):
    assert _key in {f.name for f in fields(TrialRecord)}


@dataclass
class TrialOutcome:
    """What a worker records when a trial ends (complete, pruned or failed)."""

    best_epoch: int | None = None
    monitor: str | None = None
    epochs_run: int | None = None
    stopped: str | None = None
    run_dir: str | None = None
    data_root: str | None = None
    busy_s: float | None = None
    error: str | None = None
    fatal: bool | None = None

    def attrs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
