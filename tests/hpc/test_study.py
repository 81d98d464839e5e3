"""Storage URLs, secrets, engine settings, create-once and the ask lock (SQLite and real PostgreSQL)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from dualseg.errors import InputError
from hpc import study as st


def test_password_split_mask_scrub() -> None:
    public, pw = st.split_password("postgresql+psycopg2://me:s3cr3t@db.example:5432/optuna")
    assert pw == "s3cr3t" and "s3cr3t" not in public and make_url(public).username == "me"
    assert "s3cr3t" not in st.mask_url("postgresql://me:s3cr3t@h/db") and "***" in st.mask_url("postgresql://me:s3cr3t@h/db")
    assert st.scrub("bad s3cr3t here", "s3cr3t") == "bad *** here"


def test_bad_urls_do_not_echo_themselves() -> None:
    with pytest.raises(InputError, match="not a valid database URL") as e:
        st.parse_url("::s3cr3t::")
    assert "s3cr3t" not in str(e.value)
    with pytest.raises(InputError, match="unsupported database 'mysql'"):
        st.parse_url("mysql://u:p@h/db")


def test_postgres_driver_is_pinned_and_pool_is_small() -> None:
    assert st.normalize_url("postgresql://u@h/db").startswith("postgresql+psycopg2://")
    kw = st.engine_kwargs("postgresql+psycopg2://u@h/db", pool_size=2)
    assert kw["pool_pre_ping"] is True and kw["pool_size"] + kw["max_overflow"] <= 3
    assert kw["connect_args"]["connect_timeout"] > 0


def test_sqlite_create_once_and_direction_guard(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = st.open_storage(url, create_tables=True)
    a = st.create_or_load_study(storage, "s", "minimize", {"trials": 3})
    b = st.create_or_load_study(storage, "s", "minimize", {"trials": 5})
    assert a._study_id == b._study_id and b.user_attrs["trials"] == 5
    with pytest.raises(InputError, match="exists and minimizes"):
        st.create_or_load_study(storage, "s", "maximize")
    with pytest.raises(InputError, match="no study named 'other'"):
        st.load_study(storage, "other")


def _holds_lock_exclusively(storage, name: str) -> bool:
    """While one thread holds ask_lock, a second must wait for it."""
    order: list[str] = []
    inside = threading.Event()

    def first() -> None:
        with st.ask_lock(storage, name):
            inside.set()
            time.sleep(0.5)
            order.append("first-out")

    def second() -> None:
        inside.wait(5)
        with st.ask_lock(storage, name):
            order.append("second-in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return order == ["first-out", "second-in"]


def test_sqlite_ask_lock_is_exclusive(tmp_path: Path) -> None:
    storage = st.open_storage(f"sqlite:///{tmp_path / 'study.db'}", create_tables=True)
    assert _holds_lock_exclusively(storage, "s")


@pytest.mark.postgres
def test_postgres_ask_lock_is_exclusive_and_released(pg_db_url: str) -> None:
    storage = st.open_storage(pg_db_url, create_tables=True)
    assert _holds_lock_exclusively(storage, "s")
    engine = sa.create_engine(st.normalize_url(pg_db_url), poolclass=sa.pool.NullPool)
    with engine.connect() as conn:  # released: another session can take it at once
        assert conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": st._lock_key("s")}).scalar()
    engine.dispose()
    storage.engine.dispose()


@pytest.mark.postgres
def test_wrong_password_is_one_clear_line_without_the_password(pg_db_url: str) -> None:
    url = make_url(pg_db_url)._replace(password="Wr0ngPassw0rd").render_as_string(hide_password=False)
    t0 = time.monotonic()
    with pytest.raises(InputError) as e:
        st.open_storage(url, retries=3)
    msg = str(e.value)
    assert "password authentication failed" in msg and "Wr0ngPassw0rd" not in msg and "\n" not in msg
    assert time.monotonic() - t0 < 10, "a wrong password is not transient and must not be retried"


@pytest.mark.postgres
def test_unreachable_storage_names_the_host(pg_db_url: str) -> None:
    url = make_url(pg_db_url)._replace(port=1).render_as_string(hide_password=False)
    with pytest.raises(InputError, match=r"127\.0\.0\.1:1/.*cannot connect.*refused") as e:
        st.open_storage(url)
    assert make_url(pg_db_url).password not in str(e.value)


@pytest.mark.postgres
def test_connection_loss_is_retried_with_pre_ping(pg_db_url: str) -> None:
    """Kill our own server-side session: the pool's pre-ping replaces the dead connection."""
    storage = st.open_storage(pg_db_url, create_tables=True)
    study = st.create_or_load_study(storage, "s", "minimize")
    with storage.engine.connect() as conn:
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    admin = sa.create_engine(st.normalize_url(pg_db_url), poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
    admin.dispose()
    assert st.with_retries(lambda: len(study.get_trials()), "count", retries=2) == 0
    storage.engine.dispose()
