"""The shared Optuna study: storage URLs, secrets, engine settings, create-once, the ask lock.

One PostgreSQL database is shared by every rank-0 process of every array task, and clusters cap
connections, so each job opens a small pre-pinged pool and retries connection loss with backoff.
The schema is created exactly once, on the login node (:func:`create_or_load_study`); jobs open the
storage with ``skip_table_creation`` so N jobs starting together never race DDL. The password is
never passed around: URLs handed to jobs have it stripped and libpq reads it from ``PGPASSWORD``
(exported into the job environment, never into a script) or ``~/.pgpass``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import logging
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy
from sqlalchemy.engine import URL, make_url

from dualseg.errors import InputError

T = TypeVar("T")
log = logging.getLogger("hpc.study")

STORAGE_ENV = "DUALSEG_STORAGE"
PASSWORD_ENV = "PGPASSWORD"  # read by libpq itself: the password never enters a URL we pass on

# Optuna's heartbeat/retry API is marked experimental; the warning would be printed by every rank.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# We run Optuna's heartbeat ourselves around ask/tell (hpc.worker.Heartbeat), not via optimize().
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


def parse_url(url: str, what: str = "--storage") -> URL:
    """Parse an SQLAlchemy URL or raise an :class:`InputError` that does not echo the URL."""
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - sqlalchemy raises ArgumentError with the raw URL inside
        raise InputError(f"{what}: not a valid database URL (expected e.g. postgresql://user@host/db)") from None
    if parsed.get_backend_name() not in ("postgresql", "sqlite"):
        raise InputError(f"{what}: unsupported database {parsed.get_backend_name()!r} (use postgresql or sqlite)")
    return parsed


def normalize_url(url: str) -> str:
    """Pin the PostgreSQL driver: SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3, we ship psycopg2."""
    parsed = parse_url(url)
    if parsed.drivername == "postgresql":
        try:
            import psycopg  # noqa: F401
        except ImportError:
            parsed = parsed._replace(drivername="postgresql+psycopg2")
    return parsed.render_as_string(hide_password=False)


def mask_url(url: str | URL) -> str:
    """The URL as it may be printed: password replaced by ``***``."""
    parsed = url if isinstance(url, URL) else make_url(url)
    return parsed.render_as_string(hide_password=True)


def split_password(url: str) -> tuple[str, str | None]:
    """``(url without password, password)``: the first goes into jobs, the second into the environment."""
    parsed = parse_url(url)
    return parsed._replace(password=None).render_as_string(hide_password=False), parsed.password


def scrub(text: str, *secrets: str | None) -> str:
    """Remove every secret from ``text`` (for error messages from drivers)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def engine_kwargs(url: str, pool_size: int = 3) -> dict[str, Any]:
    """SQLAlchemy engine settings: pre-ping, a small bounded pool, connect timeout for PostgreSQL."""
    if parse_url(url).get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": 60}}
    return {
        "pool_pre_ping": True,
        "pool_size": max(2, pool_size),  # Optuna's schema check nests two connections
        "max_overflow": 1,
        "pool_timeout": 60,
        "pool_recycle": 1800,
        "connect_args": {"connect_timeout": 10, "application_name": "dualseg"},
    }


_PERMANENT = ("authentication", "password", "does not exist", "pg_hba.conf", "permission denied")


def _is_connection_error(exc: BaseException) -> bool:
    """Transient connection trouble worth retrying (not a wrong password or database name)."""
    if any(word in str(getattr(exc, "orig", exc)).lower() for word in _PERMANENT):
        return False
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        return bool(exc.connection_invalidated) or isinstance(
            exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)
        )
    return isinstance(exc, (sqlalchemy.exc.TimeoutError, ConnectionError))


def with_retries(fn: Callable[[], T], what: str, retries: int = 5, base_delay: float = 1.0) -> T:
    """Run ``fn``; on a lost/refused database connection retry with exponential backoff and jitter."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001
            if not _is_connection_error(exc) or attempt == retries:
                raise
            delay = min(base_delay * 2**attempt, 60.0) * (0.5 + random.random())
            log.warning("%s: database connection problem (%s); retry %d/%d in %.1fs",
                        what, type(exc).__name__, attempt + 1, retries, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _driver_message(exc: BaseException, password: str | None) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = [ln.strip() for ln in str(orig).splitlines() if ln.strip()]
    msg = next((ln for ln in lines if "FATAL" in ln or "failed" in ln or "refused" in ln), lines[0] if lines else "")
    return scrub(msg, password)


def open_storage(
    url: str,
    *,
    create_tables: bool = False,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int | None = None,
    pool_size: int = 2,
    retries: int = 0,
) -> optuna.storages.RDBStorage:
    """Open the RDB storage (with heartbeat + retry-on-stale callback when an interval is given).

    ``create_tables`` is only ever true on the login node. Connection failures become an
    :class:`InputError` naming the masked URL and the driver's reason, never the password.
    """
    url = normalize_url(url)
    parsed = parse_url(url)
    callback = None
    if heartbeat_interval is not None:
        callback = optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=max_retry, inherit_intermediate_values=True
        )

    def connect() -> optuna.storages.RDBStorage:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs(url, pool_size),
            skip_table_creation=not create_tables,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=callback,
        )

    try:
        if create_tables:  # fail fast on the login node: a wrong password is not transient
            return connect()
        return with_retries(connect, "open storage", retries)
    except ImportError:
        raise InputError(f"storage {mask_url(parsed)}: no driver for {parsed.drivername!r} installed") from None
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
        cause = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ else exc
        reason = _driver_message(cause, parsed.password or os.environ.get(PASSWORD_ENV))
        raise InputError(f"storage {mask_url(parsed)}: cannot connect: {reason}") from None


def direction_for(objective: str) -> str:
    from hpc.config import OBJECTIVES

    return OBJECTIVES[objective]


def create_or_load_study(
    storage: optuna.storages.RDBStorage, name: str, direction: str, attrs: dict[str, Any] | None = None
) -> optuna.Study:
    """Create the study once (login node) or resume it, refusing a changed optimisation direction."""
    try:
        existing = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        existing = None
    if existing is not None:
        have = existing.direction.name.lower()
        if have != direction:
            raise InputError(f"--study: {name!r} exists and {have}s; this config would {direction} (use another --study)")
        study = existing
    else:
        study = optuna.create_study(study_name=name, storage=storage, direction=direction, load_if_exists=True)
    for key, value in (attrs or {}).items():
        study.set_user_attr(key, value)
    return study


def load_study(storage: optuna.storages.RDBStorage, name: str, sampler: Any = None, pruner: Any = None) -> optuna.Study:
    """Load an existing study (jobs never create one)."""
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        raise InputError(f"--study: no study named {name!r} in storage {mask_url(storage.url)}") from None


def _lock_key(study_name: str) -> int:
    return int.from_bytes(hashlib.sha1(f"dualseg-ask:{study_name}".encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def ask_lock(storage: optuna.storages.RDBStorage, study_name: str) -> Iterator[None]:
    """Serialise "count trials, then ask" across all workers of a study.

    PostgreSQL: a session advisory lock (released by the server if the holder dies, so a
    SIGKILLed job never blocks the others). SQLite: ``flock`` on a file next to the database.
    """
    url = storage.engine.url
    if url.get_backend_name() == "postgresql":
        key = _lock_key(study_name)
        with storage.engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        return
    db = url.database
    lock_path = Path(db + ".lock") if db and db != ":memory:" else None
    if lock_path is None:
        yield
        return
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def count_states(study: optuna.Study) -> dict[str, int]:
    """Number of trials per state name (``COMPLETE``, ``PRUNED``, ``RUNNING``, ``WAITING``, ``FAIL``)."""
    counts = {s.name: 0 for s in optuna.trial.TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] += 1
    return counts


def finished(counts: dict[str, int]) -> int:
    return counts["COMPLETE"] + counts["PRUNED"]


def parse_url_password(url: str | None) -> str | None:
    """The password inside ``url`` (or None, also for unparsable URLs): used to scrub messages."""
    if not url:
        return None
    try:
        return make_url(url).password
    except Exception:  # noqa: BLE001
        return None


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """``--study``/``--storage`` with the environment defaults every hpc entry point shares."""
    parser.add_argument("--study", default=os.environ.get("DUALSEG_STUDY"), help="study name (default $DUALSEG_STUDY)")
    parser.add_argument("--storage", default=os.environ.get("DUALSEG_STORAGE_URL") or os.environ.get(STORAGE_ENV),
                        help="study database URL (default $DUALSEG_STORAGE_URL, $DUALSEG_STORAGE)")


def check_study_arguments(args: argparse.Namespace) -> None:
    """Both given and the URL well-formed, else one ``InputError`` naming the option."""
    if not args.study:
        raise InputError("--study: not given and $DUALSEG_STUDY is not set")
    if not args.storage:
        raise InputError("--storage: not given and $DUALSEG_STORAGE is not set")
    parse_url(args.storage)
