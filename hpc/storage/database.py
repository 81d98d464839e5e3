"""Opening the study database: engine settings, the connection budget, create-once, load.

Connection budget: jobs open the database with ``NullPool`` — a connection exists only while a call
runs and is closed right after — so a job holds at most one connection for its main thread plus one
for its heartbeat thread, and none while it trains. PostgreSQL connections carry TCP keepalives (a
dead node is noticed in about a minute, not two hours) and ``idle_in_transaction_session_timeout``
(a frozen process can never sit on a lock inside a transaction). The schema is created exactly once,
on the login node (``create_tables=True``); jobs pass ``skip_table_creation`` so N jobs starting
together never race DDL.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage

from dualseg.errors import InputError
from hpc.storage.retry import RetryingStorage, call, is_connection_error
from hpc.storage.url import StorageURL

log = logging.getLogger("hpc.storage")

# Optuna's heartbeat/retry API is marked experimental; the warning would be printed by every rank.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# We run Optuna's heartbeat ourselves around ask/tell (hpc.trials.Heartbeat), not via optimize().
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")

CONNECTIONS_PER_JOB = 2  # main thread + heartbeat thread, NullPool (see module doc)
IDLE_IN_TRANSACTION_MS = 60_000


def connection_budget(workers: int) -> int:
    """Peak PostgreSQL connections of a search: 2 per array task + the evaluation job + the launcher."""
    return CONNECTIONS_PER_JOB * workers + 2


def engine_kwargs(storage: StorageURL) -> dict[str, Any]:
    """NullPool (no idle connections), bounded connect time, keepalives, no idling inside a transaction."""
    if storage.is_sqlite:
        return {"poolclass": sqlalchemy.pool.NullPool, "connect_args": {"timeout": 60}}
    return {
        "poolclass": sqlalchemy.pool.NullPool,
        "connect_args": {
            "connect_timeout": 10, "application_name": "dualseg",
            "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
            # UTC sessions: Optuna stores heartbeats as now() in the session's zone, and a zone with daylight
            # saving would make every trial look stale (or immortal) for an hour at the change.
            "options": f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS} -c timezone=UTC",
            "target_session_attrs": "read-write",  # after a failover a floating IP may point at a standby
        },
    }


@dataclass
class Database:
    """The opened study database: ``rdb`` for our own SQL, ``storage`` (retrying, cached) for Optuna."""

    url: StorageURL
    rdb: RDBStorage
    storage: RetryingStorage
    budget_s: float

    @property
    def engine(self) -> sqlalchemy.engine.Engine:
        return self.rdb.engine

    def load_study(self, name: str, sampler: Any = None, pruner: Any = None) -> optuna.Study:
        """An existing study (jobs never create one)."""
        try:
            return call(lambda: optuna.load_study(study_name=name, storage=self.storage, sampler=sampler,
                                                  pruner=pruner), "load study", self.budget_s)
        except KeyError:
            raise InputError(f"--study: no study named {name!r} in storage {self.url.masked}") from None

    def close(self) -> None:
        self.rdb.engine.dispose()


def _driver_message(exc: BaseException, storage: StorageURL) -> str:
    orig = exc
    while orig.__cause__ is not None or getattr(orig, "orig", None) is not None:
        orig = getattr(orig, "orig", None) or orig.__cause__  # type: ignore[assignment]  # chain walk
    lines = [ln.strip() for ln in str(orig).splitlines() if ln.strip()]
    msg = next((ln for ln in lines if "FATAL" in ln or "failed" in ln or "refused" in ln), lines[0] if lines else "")
    return storage.scrub(msg)


def open_database(
    storage: StorageURL,
    *,
    create_tables: bool = False,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int | None = None,
    budget_s: float = 0.0,
) -> Database:
    """Open the study database, waiting out an outage for up to ``budget_s`` (login node: fail fast).

    With ``heartbeat_interval``, Optuna's heartbeat is on and stale trials are re-queued by
    ``RetryHeartbeatStaleTrialCallback`` with their parameters and intermediate values. Connection
    failures become one :class:`InputError` naming the masked URL and the driver's reason.
    """
    callback = None
    if heartbeat_interval is not None:
        callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry,
                                                                    inherit_intermediate_values=True)

    def connect() -> RDBStorage:
        return RDBStorage(storage.connect, engine_kwargs=engine_kwargs(storage), skip_table_creation=not create_tables,
                          heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                          heartbeat_stale_trial_callback=callback)

    try:
        rdb = call(connect, "open storage", budget_s) if budget_s > 0 else connect()
    except ImportError:
        raise InputError(f"storage {storage.masked}: no driver for {storage.url.drivername!r} installed") from None
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
        what = "unreachable" if is_connection_error(exc) else "cannot connect"
        raise InputError(f"storage {storage.masked}: {what}: {_driver_message(exc, storage)}") from None
    retrying = RetryingStorage(_CachedStorage(rdb), budget_s)  # type: ignore[abstract]  # methods generated in .retry
    return Database(storage, rdb, retrying, budget_s)


def create_or_load_study(db: Database, name: str, direction: str, attrs: dict[str, Any] | None = None) -> optuna.Study:
    """Create the study once (login node) or resume it, refusing a changed optimisation direction."""
    try:
        existing: optuna.Study | None = optuna.load_study(study_name=name, storage=db.storage)
    except KeyError:
        existing = None
    if existing is not None:
        have = existing.direction.name.lower()
        if have != direction:
            raise InputError(f"--study: {name!r} exists and {have}s; this config would {direction} "
                             "(use another --study)")
        study = existing
    else:  # without Optuna's "[I ...] A new study created" line on stderr: the callers say what they made
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            study = optuna.create_study(study_name=name, storage=db.storage, load_if_exists=True,
                                        direction=optuna.study.StudyDirection[direction.upper()])
        finally:
            optuna.logging.set_verbosity(verbosity)
    for key, value in (attrs or {}).items():
        study.set_user_attr(key, value)
    return study


def check_server(storage: StorageURL, workers: int) -> None:
    """PostgreSQL, without writing anything (``--dry-run``): the server answers with these credentials, and it
    (``max_connections`` less the superuser reserve) and the role's ``CONNECTION LIMIT`` allow the search's
    peak connections; otherwise workers fail with "too many clients" hours later. One error line each."""
    if storage.is_sqlite:
        return
    engine = sqlalchemy.create_engine(storage.connect, **engine_kwargs(storage))
    try:
        _check_budget(engine, storage, workers)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        what = "unreachable" if is_connection_error(exc) else "cannot connect"
        raise InputError(f"storage {storage.masked}: {what}: {_driver_message(exc, storage)}") from None
    finally:
        engine.dispose()


def _check_budget(engine: sqlalchemy.engine.Engine, storage: StorageURL, workers: int) -> None:
    need = connection_budget(workers)
    with engine.connect() as c:
        server = int(c.execute(sqlalchemy.text("SHOW max_connections")).scalar_one())
        reserved = int(c.execute(sqlalchemy.text("SHOW superuser_reserved_connections")).scalar_one())
        role = c.execute(sqlalchemy.text("SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user")).scalar()
    limits = [(server - reserved, f"max_connections {server} - {reserved} reserved")]
    if role is not None and int(role) >= 0:
        limits.append((int(role), f"the role's CONNECTION LIMIT {int(role)}"))
    for allowed, what in limits:
        if need > allowed:
            raise InputError(f"--workers: {workers} worker(s) need up to {need} database connections (2 per worker "
                             f"+ 2), but {storage.masked} allows {allowed} ({what}); lower --workers or raise it")
