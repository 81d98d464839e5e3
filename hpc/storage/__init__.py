"""The study database: one parsed URL and its secrets, retries across outages, engine, the lock.

Cut like Optuna's ``storages/``: :mod:`.url` (parsing, the default chain, passfiles), :mod:`.retry`
(connection-loss recognition, outage budget, the retrying storage), :mod:`.database` (engine
settings, connection budget, create-once), :mod:`.lock` (the study-wide critical section).
"""

from hpc.storage.database import (
    CONNECTIONS_PER_JOB,
    Database,
    check_server,
    connection_budget,
    create_or_load_study,
    engine_kwargs,
    open_database,
)
from hpc.storage.lock import LOCK_HELD_S, LockTimeout, critical_section, exclusive
from hpc.storage.retry import OUTAGE, DatabaseUnavailable, RetryingStorage, call, is_connection_error
from hpc.storage.url import (
    PASSFILE_ENV,
    PASSWORD_ENV,
    STORAGE_ENV,
    StorageURL,
    job_storage,
    resolve_storage,
    study_storage,
    write_passfile,
)

__all__ = [
    "CONNECTIONS_PER_JOB", "LOCK_HELD_S", "OUTAGE", "PASSFILE_ENV", "PASSWORD_ENV", "STORAGE_ENV", "Database",
    "DatabaseUnavailable", "LockTimeout", "RetryingStorage", "StorageURL", "call", "check_server",
    "connection_budget",
    "create_or_load_study", "critical_section", "engine_kwargs", "exclusive", "is_connection_error", "job_storage",
    "open_database", "resolve_storage", "study_storage", "write_passfile",
]
