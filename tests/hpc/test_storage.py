"""hpc.storage: the parsed URL and its secrets, outage retries, engine settings, create-once, the lock.

Connection loss is produced for real: our own server-side sessions are terminated with
``pg_terminate_backend`` (whole-server restarts and outages run in tests/faults).
"""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from dualseg.errors import InputError
from hpc.storage import (
    LockTimeout,
    RetryingStorage,
    StorageURL,
    call,
    connection_budget,
    create_or_load_study,
    critical_section,
    engine_kwargs,
    is_connection_error,
    open_database,
    resolve_storage,
    write_passfile,
)


def test_url_forms_never_leak_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    u = StorageURL.parse("postgresql://me:s3cr3t@db.example:5432/optuna")
    assert u.url.drivername == "postgresql+psycopg2" and u.password == "s3cr3t" and u.password_source == "url"
    assert "s3cr3t" not in u.public and make_url(u.public).username == "me"
    assert "s3cr3t" not in u.masked + repr(u) + str(u) and "***" in u.masked
    assert u.scrub("bad s3cr3t here") == "bad *** here"
    assert u.passfile_line() == "db.example:5432:optuna:me:s3cr3t\n"
    monkeypatch.setenv("PGPASSWORD", "fr0mEnv")
    v = StorageURL.parse("postgresql://me@h/db")
    assert v.password_source == "PGPASSWORD" and v.password == "fr0mEnv" and v.scrub("x fr0mEnv") == "x ***"
    monkeypatch.delenv("PGPASSWORD")
    assert StorageURL.parse("postgresql://me@h/db").password_source == "passfile"


def test_bad_urls_do_not_echo_themselves() -> None:
    with pytest.raises(InputError, match="not a valid database URL") as e:
        StorageURL.parse("::s3cr3t::")
    assert "s3cr3t" not in str(e.value)
    with pytest.raises(InputError, match="unsupported database 'mysql'"):
        StorageURL.parse("mysql://u:p@h/db")


def test_one_default_chain(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DUALSEG_STORAGE", "postgresql://env@h/db")
    assert resolve_storage("postgresql://cli@h/db", "postgresql://cfg@h/db", None).url.username == "cli"
    assert resolve_storage(None, "postgresql://cfg@h/db", None).url.username == "cfg"
    assert resolve_storage(None, None, tmp_path / "s.db").url.username == "env"
    monkeypatch.delenv("DUALSEG_STORAGE")
    assert resolve_storage(None, None, tmp_path / "s.db").sqlite_path == tmp_path / "s.db"
    assert resolve_storage(None, None, None) is None


def test_passfile_is_0600_from_the_start(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = write_passfile(StorageURL.parse("postgresql://me:p%3Aw@h:5433/db"), tmp_path / "study" / ".pgpass")
    finally:
        os.umask(old)
    assert path is not None and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "h:5433:db:me:p\\:w\n"
    no_password = StorageURL.parse("postgresql://me@h/db")
    assert write_passfile(no_password, tmp_path / "x") is None or "PGPASSWORD" in os.environ


def test_engine_settings_hold_no_idle_connections() -> None:
    kw = engine_kwargs(StorageURL.parse("postgresql://u@h/db"))
    assert kw["poolclass"] is sa.pool.NullPool
    args = kw["connect_args"]
    assert args["keepalives"] == 1 and args["keepalives_idle"] <= 60 and args["connect_timeout"] > 0
    assert "idle_in_transaction_session_timeout" in args["options"]
    assert connection_budget(8) == 18


def test_connection_errors_are_recognised_through_optunas_wrapper() -> None:
    op = sa.exc.OperationalError("select 1", {}, Exception("server closed the connection unexpectedly"))
    try:
        try:
            raise op
        except sa.exc.OperationalError as e:
            raise optuna.exceptions.StorageInternalError("wrapped") from e
    except optuna.exceptions.StorageInternalError as wrapped:
        assert is_connection_error(wrapped)
    bad_pw = sa.exc.OperationalError("c", {}, Exception('FATAL:  password authentication failed for user "x"'))
    assert not is_connection_error(bad_pw)
    assert not is_connection_error(ValueError("server closed the connection"))


@pytest.mark.postgres
def test_server_errors_are_classified_by_sqlstate_in_utc_sessions(pg_db_url: str) -> None:
    """Real server errors: a read-only transaction (failover onto a standby) is waited out, a missing table
    is not; a session killed by the server is; every session runs in UTC and insists on read-write."""
    from hpc.storage.retry import sqlstate

    url = StorageURL.parse(pg_db_url)
    engine = sa.create_engine(url.connect, **engine_kwargs(url))
    with engine.connect() as c:
        assert c.execute(sa.text("SHOW timezone")).scalar() == "UTC"
    assert engine_kwargs(url)["connect_args"]["target_session_attrs"] == "read-write"

    def error(*statements: str) -> BaseException:
        try:
            with engine.connect() as c:
                for stmt in statements:
                    c.execute(sa.text(stmt))
        except sa.exc.DBAPIError as exc:
            return exc
        raise AssertionError(f"no error from {statements}")

    read_only = error("SET default_transaction_read_only = on", "COMMIT", "CREATE TABLE zz (x int)")
    assert sqlstate(read_only.orig) == "25006" and is_connection_error(read_only)  # type: ignore[attr-defined]
    missing = error("SELECT * FROM no_such_table")
    assert sqlstate(missing.orig) == "42P01" and not is_connection_error(missing)  # type: ignore[attr-defined]
    assert is_connection_error(error("SELECT pg_terminate_backend(pg_backend_pid())"))
    engine.dispose()


def test_a_connect_during_crash_recovery_is_waited_out() -> None:
    """The chain measured while a backend's ``kill -9`` makes the server recover: Optuna's commit error, from
    SQLAlchemy's ``OperationalError``, from libpq's connect failure, which carries no SQLSTATE."""
    import psycopg2

    libpq = psycopg2.OperationalError('connection to server at "127.0.0.1", port 5432 failed: '
                                      "FATAL:  the database system is in recovery mode")
    assert getattr(libpq, "pgcode", None) is None
    try:
        try:
            raise sa.exc.OperationalError(None, None, libpq)
        except sa.exc.OperationalError as e:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from e
    except optuna.exceptions.StorageInternalError as wrapped:
        assert is_connection_error(wrapped)
    assert is_connection_error(sa.exc.OperationalError(None, None, Exception("FATAL: the database system is in "
                                                                               "recovery mode")))


def test_sqlstates_decide_over_message_text() -> None:
    """A server speaking another language: the SQLSTATE decides, the words do not."""

    class Recovery(Exception):
        pgcode = "57P03"

    class BadPassword(Exception):
        pgcode = "28P01"

    class Serialization(Exception):
        sqlstate = "40001"

    german = Recovery("das Datenbanksystem ist im Wiederherstellungsmodus")
    assert is_connection_error(sa.exc.OperationalError("c", {}, german))
    assert is_connection_error(sa.exc.OperationalError("c", {}, Serialization("could not serialize access")))
    assert not is_connection_error(sa.exc.OperationalError("c", {}, BadPassword("server closed the connection")))


def test_call_waits_out_an_outage_within_the_budget_and_gives_up_after() -> None:
    attempts = []

    def flaky() -> str:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise sa.exc.OperationalError("x", {}, Exception("could not connect to server: Connection refused"))
        return "ok"

    assert call(flaky, "test", budget_s=30, base_delay=0.05) == "ok" and len(attempts) == 3

    def dead() -> None:
        raise sa.exc.OperationalError("x", {}, Exception("connection refused"))

    t0 = time.monotonic()
    with pytest.raises(optuna.exceptions.StorageInternalError, match="unreachable for"):
        call(dead, "test", budget_s=0.5, base_delay=0.05)
    assert time.monotonic() - t0 < 5


def test_sqlite_create_once_and_direction_guard(tmp_path: Path) -> None:
    db = open_database(StorageURL.parse(f"sqlite:///{tmp_path / 'study.db'}"), create_tables=True)
    a = create_or_load_study(db, "s", "minimize", {"trials": 3})
    b = create_or_load_study(db, "s", "minimize", {"trials": 5})
    assert a._study_id == b._study_id and b.user_attrs["trials"] == 5
    assert isinstance(a._storage, RetryingStorage)
    with pytest.raises(InputError, match="exists and minimizes"):
        create_or_load_study(db, "s", "maximize")
    with pytest.raises(InputError, match="no study named 'other'"):
        db.load_study("other")


def _exclusive(db, url: StorageURL, name: str) -> bool:
    order: list[str] = []
    inside = threading.Event()

    def first() -> None:
        with critical_section(db.engine, url, name):
            inside.set()
            time.sleep(0.5)
            order.append("first-out")

    def second() -> None:
        inside.wait(5)
        with critical_section(db.engine, url, name):
            order.append("second-in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return order == ["first-out", "second-in"]


def test_sqlite_critical_section_is_exclusive(tmp_path: Path) -> None:
    url = StorageURL.parse(f"sqlite:///{tmp_path / 'study.db'}")
    assert _exclusive(open_database(url, create_tables=True), url, "s")


@pytest.mark.postgres
def test_postgres_lock_is_exclusive_bounded_and_released(pg_db_url: str) -> None:
    url = StorageURL.parse(pg_db_url)
    db = open_database(url, create_tables=True)
    assert _exclusive(db, url, "s")
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with critical_section(db.engine, url, "s"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(5)
    t0 = time.monotonic()
    with pytest.raises(LockTimeout):  # a bounded wait, never forever
        with critical_section(db.engine, url, "s", timeout_s=0.5):
            pass
    assert time.monotonic() - t0 < 3
    release.set()
    t.join(10)
    with critical_section(db.engine, url, "s", timeout_s=1):  # released at commit
        pass
    db.close()


@pytest.mark.postgres
def test_wrong_password_is_one_clear_line_without_the_password(pg_db_url: str) -> None:
    url = make_url(pg_db_url)._replace(password="Wr0ngPassw0rd").render_as_string(hide_password=False)
    t0 = time.monotonic()
    with pytest.raises(InputError) as e:
        open_database(StorageURL.parse(url), budget_s=30)
    msg = str(e.value)
    assert "password authentication failed" in msg and "Wr0ngPassw0rd" not in msg and "\n" not in msg
    assert time.monotonic() - t0 < 10, "a wrong password is not transient and must not be retried"


@pytest.mark.postgres
def test_unreachable_storage_names_the_host(pg_db_url: str) -> None:
    url = make_url(pg_db_url)._replace(port=1).render_as_string(hide_password=False)
    with pytest.raises(InputError, match=r"127\.0\.0\.1:1/.*unreachable.*refused") as e:
        open_database(StorageURL.parse(url))
    assert make_url(pg_db_url).password not in str(e.value)


@pytest.mark.postgres
def test_killed_sessions_are_retried_through_optuna(pg_db_url: str) -> None:
    """Terminate every session of our database while a study is used: the calls still succeed."""
    url = StorageURL.parse(pg_db_url)
    db = open_database(url, create_tables=True, budget_s=30)
    study = create_or_load_study(db, "s", "minimize")
    stop = threading.Event()
    kills: list[int] = []
    name = make_url(pg_db_url).database

    def killer() -> None:
        admin = sa.create_engine(url.connect, poolclass=sa.pool.NullPool)
        while not stop.is_set():
            with admin.connect() as conn:
                conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d "
                                     "AND pid <> pg_backend_pid() AND application_name = 'dualseg'"), {"d": name})
                kills.append(1)
            time.sleep(0.15)
        admin.dispose()

    t = threading.Thread(target=killer)
    t.start()
    try:
        for i in range(8):
            trial = study.ask()
            study.tell(trial, float(i))
    finally:
        stop.set()
        t.join(10)
    assert sum(t.state.name == "COMPLETE" for t in study.get_trials()) == 8 and len(kills) > 3
    db.close()


def test_a_job_takes_the_password_of_a_matching_exported_url_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from hpc.storage import job_storage

    monkeypatch.setenv("DUALSEG_STORAGE", "postgresql://me:s3cr3t@db:5432/optuna")
    assert job_storage("postgresql+psycopg2://me@db:5432/optuna").password == "s3cr3t"
    assert job_storage("postgresql+psycopg2://me@other:5432/optuna").password is None  # another database
    monkeypatch.setenv("DUALSEG_STORAGE", "postgresql://me@db:5432/optuna")
    assert job_storage("postgresql+psycopg2://me@db:5432/optuna").password is None  # libpq's passfile then
