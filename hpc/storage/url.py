"""One parsed storage URL, made once at the CLI edge, and where its password comes from.

Every entry point turns ``--storage`` / ``hpc.storage`` / ``$DUALSEG_STORAGE`` (or the local default)
into a :class:`StorageURL` exactly once; from then on code asks it for the form it needs: ``connect``
(may hold the password, used in memory only), ``public`` (no password: jobs, printed commands,
results) or ``masked`` (``***``: logs and errors). Jobs never receive a password: they get the public
URL plus ``PGPASSFILE`` pointing at a mode-0600 passfile (libpq reads it), because a ``PGPASSWORD``
exported into sbatch is stored by slurmctld and, on many sites, by accounting.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy.engine import URL, make_url

from dualseg.errors import InputError

STORAGE_ENV = "DUALSEG_STORAGE"
PASSWORD_ENV = "PGPASSWORD"  # read by libpq itself
PASSFILE_ENV = "PGPASSFILE"  # read by libpq itself

PasswordSource = Literal["url", "PGPASSWORD", "passfile", "none"]


@dataclass(frozen=True)
class StorageURL:
    """A validated SQLAlchemy URL with the PostgreSQL driver pinned; ``repr`` never shows the password."""

    url: URL
    password_source: PasswordSource = "none"

    @classmethod
    def parse(cls, raw: str, what: str = "--storage") -> StorageURL:
        """Parse ``raw`` or raise one :class:`InputError` that does not echo it (it may hold a password)."""
        try:
            url = make_url(raw)
        except Exception:  # noqa: BLE001 - sqlalchemy's ArgumentError quotes the raw URL
            raise InputError(f"{what}: not a valid database URL (expected e.g. postgresql://user@host/db)") from None
        backend = url.get_backend_name()
        if backend not in ("postgresql", "sqlite"):
            raise InputError(f"{what}: unsupported database {backend!r} (use postgresql or sqlite)")
        if url.drivername == "postgresql":  # SQLAlchemy 2.1 maps it to psycopg 3; we ship psycopg2
            url = url._replace(drivername="postgresql+psycopg2")
        db = url.database
        if backend == "sqlite" and db and db != ":memory:" and not Path(db).is_absolute() \
                and not Path(db).parent.resolve().is_dir():
            # sqlite:///tmp/x/s.db is ./tmp/x/s.db: three slashes mean a relative path (four: absolute)
            raise InputError(f"{what}: SQLite path {db} is relative to this folder and {Path(db).parent} does not "
                             f"exist here; an absolute path takes four slashes: sqlite:////{db}")
        if backend == "sqlite":
            source: PasswordSource = "none"
        elif url.password:
            source = "url"
        elif os.environ.get(PASSWORD_ENV):
            source = "PGPASSWORD"
        else:
            source = "passfile"
        return cls(url, source)

    def __repr__(self) -> str:
        return f"StorageURL({self.masked})"

    __str__ = __repr__

    @property
    def backend(self) -> str:
        return self.url.get_backend_name()

    @property
    def is_sqlite(self) -> bool:
        return self.backend == "sqlite"

    @property
    def password(self) -> str | None:
        """The password known to this process (URL or ``$PGPASSWORD``); None when libpq finds it itself."""
        if self.url.password:
            return str(self.url.password)
        if self.password_source == "PGPASSWORD":
            return os.environ.get(PASSWORD_ENV)
        return None

    @property
    def connect(self) -> str:
        """What to hand to SQLAlchemy in this process (may contain the password: never print it)."""
        return self.url.render_as_string(hide_password=False)

    @property
    def public(self) -> str:
        """Without password: safe for jobs, printed commands and results."""
        return self.url._replace(password=None).render_as_string(hide_password=False)

    @property
    def masked(self) -> str:
        return self.url.render_as_string(hide_password=True)

    @property
    def sqlite_path(self) -> Path | None:
        db = self.url.database
        return Path(db) if self.is_sqlite and db and db != ":memory:" else None

    def scrub(self, text: str) -> str:
        """``text`` with every password this process knows replaced by ``***``."""
        for secret in (self.password, os.environ.get(PASSWORD_ENV)):
            if secret:
                text = text.replace(secret, "***")
        return text

    def passfile_line(self) -> str:
        """A libpq passfile entry for this URL (``host:port:db:user:password``, ``:`` and ``\\`` escaped)."""
        def esc(value: object) -> str:
            return str(value).replace("\\", "\\\\").replace(":", "\\:")

        u = self.url
        fields = [u.host or "localhost", u.port or 5432, u.database or "*", u.username or "*", self.password or ""]
        return ":".join(esc(f) for f in fields) + "\n"


def resolve_storage(cli: str | None, configured: str | None, local_default: Path | None) -> StorageURL | None:
    """The one default chain: ``--storage``, then ``hpc.storage``, ``$DUALSEG_STORAGE``, then the local SQLite
    file (``local_default``, when given). None when nothing applies."""
    raw = cli or configured or os.environ.get(STORAGE_ENV)
    if raw:
        return StorageURL.parse(raw)
    if local_default is not None:
        return StorageURL.parse(f"sqlite:///{local_default}")
    return None


def study_storage(cli: str | None, local_default: Path) -> StorageURL:
    """The database of an existing study for the tools that read one (status, report): the default chain
    of :func:`resolve_storage`, and one line naming what is wrong when its SQLite file does not exist
    (SQLite would create an empty one): the given URL's file, or the local default's when none was given."""
    given = cli or os.environ.get(STORAGE_ENV)
    url = resolve_storage(cli, None, local_default)
    assert url is not None
    path = url.sqlite_path
    if path is not None and not path.is_file():
        if given:
            source = "--storage" if cli else f"${STORAGE_ENV}"
            raise InputError(f"{source}: SQLite file {path} does not exist (no study there)")
        raise InputError(f"--storage: not given, ${STORAGE_ENV} unset and no local study at {path} "
                         "(pass --storage or --scratch)")
    return url


def job_storage(public: str) -> StorageURL:
    """The URL a job connects with: the public one it was given, plus the password of ``$DUALSEG_STORAGE``
    when that names the same database (a user who exported the full URL; it stays in memory). Otherwise
    libpq finds the password itself (``PGPASSFILE``, ``~/.pgpass``)."""
    url = StorageURL.parse(public)
    raw = os.environ.get(STORAGE_ENV)
    if url.password or not raw:
        return url
    try:
        env = StorageURL.parse(raw, f"${STORAGE_ENV}")
    except InputError:
        return url
    if env.password and env.url._replace(password=None) == url.url._replace(password=None):
        return env
    return url


def write_passfile(storage: StorageURL, path: Path) -> Path | None:
    """Write a mode-0600 libpq passfile for jobs when this process knows the password (else None).

    Created with ``O_EXCL`` under a 0600 mode from the start (never readable by the group, not even
    briefly), then renamed into place.
    """
    password = storage.password
    if storage.is_sqlite or not password:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, storage.passfile_line().encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path
