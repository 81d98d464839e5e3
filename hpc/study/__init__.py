"""The study: what it records, how its trials are counted, failed, kept alive, and the counting rule.

One concept a module, like Optuna's ``storages/``: :mod:`.record` (the typed study and trial records),
:mod:`.counts` (trials by state, the best trial), :mod:`.decide` (the pure counting rule),
:mod:`.schema` (our SQL over Optuna's private schema — the only module that touches it),
:mod:`.fail` (failing and re-queueing trials whose workers are gone), :mod:`.heartbeat`,
:mod:`.access` (open a study, change its record under the lock).
"""

from hpc.study.access import OpenStudy, open_study, update_record
from hpc.study.counts import Counts, best, ranked
from hpc.study.decide import Decision, decide
from hpc.study.fail import fail_trials, hand_back, retry_callback
from hpc.study.heartbeat import Heartbeat, NullHeartbeat
from hpc.study.record import (
    JOB_ID,
    MEMBER,
    RECORD_VERSION,
    REQUEUED_JOB,
    RETRY_OF,
    FinalMember,
    FinalPlan,
    StudyRecord,
    TrialOutcome,
    TrialRecord,
    allocation_key,
)

__all__ = [
    "JOB_ID", "MEMBER", "RECORD_VERSION", "FinalMember", "FinalPlan",
    "REQUEUED_JOB", "RETRY_OF", "Counts", "Decision", "Heartbeat", "NullHeartbeat",
    "OpenStudy", "StudyRecord", "TrialOutcome", "TrialRecord", "allocation_key", "best", "decide", "fail_trials",
    "hand_back", "open_study", "ranked", "retry_callback", "update_record",
]
