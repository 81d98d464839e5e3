"""The study-wide critical section: one short transaction that decides and creates the next trial.

PostgreSQL: ``pg_advisory_xact_lock`` inside the transaction, taken with a bounded wait
(``lock_timeout``): released by the server at commit, at rollback or when the connection dies, and a
holder that freezes inside the transaction is cut off by ``idle_in_transaction_session_timeout`` (see
:mod:`hpc.storage.database`). SQLite: ``flock`` on a file beside the database. Nothing slow (sampling,
``squeue``, checkpoint copies) ever runs inside; the time the lock is held is recorded for the benchmark.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import random
import time
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy
from sqlalchemy.orm import Session

from hpc.storage.retry import sqlstate
from hpc.storage.url import StorageURL

LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout expired (the server's words are translated; its code is not)
LOCK_HELD_S: list[float] = []  # one entry per critical section of this process (bench/bench_hpc.py)


class LockTimeout(Exception):
    """The lock was not granted within the bounded wait (another worker holds it): try again."""


def lock_key(study_name: str) -> int:
    return int.from_bytes(hashlib.sha1(f"dualseg-ask:{study_name}".encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def _flock(path: Path, timeout_s: float) -> Iterator[None]:
    with open(path, "a") as fh:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    raise LockTimeout(f"lock {path} busy") from None
                time.sleep(0.005 + random.random() * 0.02)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def critical_section(engine: sqlalchemy.engine.Engine, storage: StorageURL, study_name: str,
                     timeout_s: float = 10.0) -> Iterator[Session]:
    """Yield a session whose transaction holds the study-wide lock; commit on exit (rollback on error)."""
    with Session(engine) as session:
        if storage.is_sqlite:
            db = storage.sqlite_path
            lock = _flock(Path(f"{db}.lock"), timeout_s) if db else contextlib.nullcontext()
            with lock, session.begin():
                t0 = time.monotonic()
                yield session
            LOCK_HELD_S.append(time.monotonic() - t0)
            return
        with session.begin():
            session.execute(sqlalchemy.text(f"SET LOCAL lock_timeout = '{int(timeout_s * 1000)}ms'"))
            try:
                session.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(study_name)})
            except sqlalchemy.exc.OperationalError as exc:
                if exc.orig is not None and sqlstate(exc.orig) == LOCK_NOT_AVAILABLE:
                    raise LockTimeout("study lock busy") from None
                raise
            t0 = time.monotonic()
            yield session
        LOCK_HELD_S.append(time.monotonic() - t0)


@contextlib.contextmanager
def exclusive(engine: sqlalchemy.engine.Engine, storage: StorageURL, name: str, timeout_s: float) -> Iterator[None]:
    """A named lock held for longer work outside any transaction (one healer of a study at a time).

    PostgreSQL: a *session* advisory lock on a connection that stays idle between statements, so
    ``idle_in_transaction_session_timeout`` never cuts it; released on exit or when the connection dies.
    SQLite: ``flock`` on a file beside the database. :class:`LockTimeout` after ``timeout_s``.
    """
    if storage.is_sqlite:
        db = storage.sqlite_path
        with _flock(Path(f"{db}.{lock_key(name) & 0xFFFF:04x}.lock"), timeout_s) if db else contextlib.nullcontext():
            yield
        return
    key = lock_key(name)
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        deadline = time.monotonic() + timeout_s
        while not conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
            if time.monotonic() > deadline:
                raise LockTimeout(f"{name} busy")
            time.sleep(0.5 + random.random())
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
