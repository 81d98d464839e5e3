"""Surviving a database outage: recognise connection loss, back off, log the outage once.

Optuna wraps every SQLAlchemy error in ``StorageInternalError`` (the ``OperationalError`` is its
``__cause__``), so an error is classified by walking its cause/context chain, never by its own type.
A retried call waits with bounded exponential backoff and jitter until ``budget_s`` (``hpc.db_outage_s``)
has passed since the outage began; the process logs one line when an outage starts and one when it
ends (with its duration), whichever thread or call noticed it — never the password or the URL.

:class:`RetryingStorage` puts every Optuna storage call of a worker or of the evaluation job behind
that rule, so ``ask``, ``suggest``, ``report``, ``should_prune``, ``tell``, attributes, heartbeats
and counts all survive a restart. Retries are made idempotent where a lost reply could repeat a
committed write: a state change that already happened is accepted as success.
"""

from __future__ import annotations

import abc
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
import sqlalchemy
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import TrialState

from dualseg.errors import cause_chain

T = TypeVar("T")
log = logging.getLogger("hpc.storage")

# By SQLSTATE, what the server says in any language: connection exceptions (class 08), shutdown and crash
# recovery (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now: starting up or in
# recovery), too many connections, a read-only transaction (a failover left us on a standby), and
# serialization failures/deadlocks (the transaction may simply run again).
TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300", "25006", "40001", "40P01"})
PERMANENT_SQLSTATES = frozenset({"28000", "28P01", "3D000", "42501"})  # auth, unknown database, privilege
# Without a SQLSTATE (libpq failed before or without a server reply: refused, DNS, reset, a server in
# recovery at connect time) the driver's error is connection-level; these English words still make a
# wrong password or a missing database fail fast where the server speaks English.
_PERMANENT = ("password authentication failed", "authentication failed", "does not exist", "pg_hba.conf",
              "permission denied", "no password supplied")
# Transient: server restarting/shutting down, connection refused/reset, too many clients.
_TRANSIENT = ("server closed the connection", "connection refused", "could not connect", "terminating connection",
              "the database system is starting up", "the database system is shutting down", "connection reset",
              "timeout expired", "too many clients", "remaining connection slots", "ssl syscall", "eof detected",
              "connection already closed", "connection is closed", "could not receive data", "could not send data",
              "server conn crashed", "database is locked", "cannot connect now", "no route to host",
              "network is unreachable", "broken pipe", "connection timed out", "in recovery mode",
              "not yet accepting connections", "not accepting connections")


def sqlstate(exc: BaseException) -> str | None:
    """The server's SQLSTATE of a driver error (psycopg2 ``pgcode``, psycopg 3 ``sqlstate``), if any."""
    code = getattr(exc, "pgcode", None) or getattr(exc, "sqlstate", None)
    return code if isinstance(code, str) and len(code) == 5 else None


def _is_driver_error(e: BaseException) -> bool:
    kind = type(e)
    return kind.__module__.split(".")[0] in ("psycopg2", "psycopg") and any(
        c.__name__ in ("OperationalError", "InterfaceError") for c in kind.__mro__)


def is_connection_error(exc: BaseException) -> bool:
    """True for connection loss worth waiting out (anywhere in the cause chain), False for e.g. a bad password.

    The SQLSTATE decides when the server sent one; the message text only where none exists.
    """
    chain = list(cause_chain(exc))
    codes = {c for e in chain if (c := sqlstate(e)) is not None}
    if codes:
        return not codes & PERMANENT_SQLSTATES and any(c[:2] == "08" or c in TRANSIENT_SQLSTATES for c in codes)
    text = " ".join(str(e).lower() for e in chain)
    if any(word in text for word in _PERMANENT):
        return False
    # the driver's own error decides before SQLAlchemy's wrapper around it (which comes first in the chain):
    # a psycopg2 OperationalError without a SQLSTATE is libpq failing to connect or to talk (refused, DNS,
    # reset, "the database system is in recovery mode" while the server restarts after a crash)
    if any(_is_driver_error(e) for e in chain):
        return True
    for e in chain:
        if isinstance(e, sqlalchemy.exc.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, (sqlalchemy.exc.DisconnectionError, sqlalchemy.exc.TimeoutError, ConnectionError)):
            return True
        if isinstance(e, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return any(word in text for word in _TRANSIENT)
    return False


class DatabaseUnavailable(optuna.exceptions.StorageInternalError):
    """The database stayed unreachable for longer than the outage budget."""


class Outage:
    """Process-wide outage state: one "lost" and one "back" line per outage, whoever notices."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.since: float | None = None
        self.ended: float | None = None
        self.count = 0

    def failed(self, what: str, exc: BaseException, budget_s: float) -> float:
        """Record a failed call; returns seconds the outage has lasted."""
        with self._lock:
            now = time.monotonic()
            if self.since is None:
                self.since = now
                self.count += 1
                db_error = next((e for e in cause_chain(exc) if isinstance(e, sqlalchemy.exc.SQLAlchemyError)), exc)
                kind = type(db_error).__name__
                log.warning("database outage: connection lost during %s (%s); retrying for up to %.0f s",
                            what, kind, budget_s)
            return now - self.since

    def recovered(self) -> None:
        with self._lock:
            if self.since is not None:
                log.warning("database outage over after %.1f s", time.monotonic() - self.since)
                self.since, self.ended = None, time.monotonic()

    def recent(self, within_s: float) -> bool:
        """An outage is going on or ended less than ``within_s`` ago (heartbeats could not get through)."""
        with self._lock:
            return self.since is not None or (self.ended is not None and time.monotonic() - self.ended < within_s)


OUTAGE = Outage()


def call(fn: Callable[[], T], what: str, budget_s: float, *, base_delay: float = 0.5, max_delay: float = 15.0,
         on_retry: Callable[[], None] | None = None) -> T:
    """Run ``fn``; while the database is unreachable retry with backoff + jitter, up to ``budget_s`` of outage."""
    attempt = 0
    while True:
        try:
            result = fn()
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            lasted = OUTAGE.failed(what, exc, budget_s)
            if lasted >= budget_s:
                raise DatabaseUnavailable(f"database unreachable for {lasted:.0f} s during {what} "
                                          f"(hpc.db_outage_s={budget_s:.0f})") from None
            delay = min(max_delay, base_delay * 2 ** min(attempt, 10)) * (0.5 + random.random())
            time.sleep(min(delay, max(0.1, budget_s - lasted)))
            attempt += 1
            if on_retry is not None:
                on_retry()
            continue
        OUTAGE.recovered()
        return result


# The BaseStorage/BaseHeartbeat methods a study calls; every one goes through `call`.
_METHODS = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name",
    "get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
    "get_all_studies", "create_new_trial", "set_trial_param", "get_trial_id_from_study_id_trial_number",
    "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
    "get_trial", "get_all_trials", "get_n_trials", "get_best_trial", "get_trial_params", "get_trial_user_attrs",
    "get_trial_system_attrs", "get_trial_number_from_id", "get_trial_param", "check_trial_is_updatable",
    "record_heartbeat", "_get_stale_trial_ids",
)


class RetryingStorage(BaseStorage, BaseHeartbeat):
    """Every storage call retried across connection loss (see module doc); the rest delegated as is."""

    def __init__(self, inner: BaseStorage, budget_s: float) -> None:
        self._inner, self.budget_s = inner, budget_s

    @property
    def inner(self) -> BaseStorage:
        return self._inner

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return call(lambda: getattr(self._inner, name)(*args, **kwargs), name.strip("_").replace("_", " "),
                    self.budget_s)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        """Idempotent: a retry after a commit whose reply was lost finds the state already set."""
        retried = False

        def go() -> bool:
            try:
                return bool(self._inner.set_trial_state_values(trial_id, state, values))
            except optuna.exceptions.UpdateFinishedTrialError:
                if retried and self._inner.get_trial(trial_id).state == state:
                    return True
                raise

        def mark() -> None:
            nonlocal retried
            retried = True

        return call(go, "set trial state", self.budget_s, on_retry=mark)

    def get_heartbeat_interval(self) -> int | None:
        inner = self._inner
        return inner.get_heartbeat_interval() if isinstance(inner, BaseHeartbeat) else None

    def get_heartbeat_stale_trial_callback(self) -> Any:
        inner = self._inner
        return inner.get_heartbeat_stale_trial_callback() if isinstance(inner, BaseHeartbeat) else None

    def remove_session(self) -> None:
        self._inner.remove_session()

    def __getattr__(self, name: str) -> Any:  # engine, url, scoped_session ... of the wrapped RDBStorage
        return getattr(self._inner, name)


def _delegate(name: str) -> Callable[..., Any]:
    def method(self: RetryingStorage, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, *args, **kwargs)

    method.__name__ = name
    return method


for _name in _METHODS:
    setattr(RetryingStorage, _name, _delegate(_name))
abc.update_abstractmethods(RetryingStorage)  # type: ignore[type-abstract]  # the methods were generated just above
