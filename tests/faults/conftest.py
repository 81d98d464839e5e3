"""The fault-injection bed: a private PostgreSQL server per test that tests may stop, restart and limit.

The shared bed's server (tests/cluster/up.sh) is used by other tests at the same time, so scenarios
that take the database away get their own real server: ``initdb``/``pg_ctl`` as user ``postgres``,
scram password auth over 127.0.0.1, the same settings as the bed. SLURM is the shared two-node bed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import service_missing
from tests.hpc.conftest import hpc_tools, tiny_args, tiny_data  # noqa: F401 - shared fixtures


def _pg_bin() -> Path | None:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "initdb").exists():
            return d
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """A real PostgreSQL server owned by one test: ``url``, ``stop()``, ``start()``, ``restart()``, ``sql()``."""

    def __init__(self, root: Path, bin_dir: Path) -> None:
        self.root, self.bin = root, bin_dir
        self.data, self.run, self.log = root / "data", root / "run", root / "postgres.log"
        self.port = _free_port()
        self.password = secrets.token_hex(12)
        self.user, self.db = "dualseg", "faults"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.db}"

    def _pg(self, *args: str, timeout: float = 60, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["runuser", "-u", "postgres", "--", *args], capture_output=True, text=True,
                              timeout=timeout, input=stdin)

    def init(self) -> None:
        self.root.mkdir(parents=True)
        shutil.chown(self.root, "postgres", "postgres")
        os.chmod(self.root, 0o700)
        r = self._pg(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth-local=peer",
                     "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync")
        assert r.returncode == 0, r.stderr
        self._pg("mkdir", "-p", str(self.run))
        conf = (f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.run}'\n"
                "max_connections = 100\nshared_buffers = 16MB\nfsync = off\nsynchronous_commit = off\n"
                "full_page_writes = off\n")
        self._pg("sh", "-c", f"cat >> {self.data}/postgresql.conf", stdin=conf)
        self._pg("sh", "-c", f"cat > {self.data}/pg_hba.conf",
                 stdin="local all postgres peer\nhost all all 127.0.0.1/32 scram-sha-256\n")
        self.start()
        self.sql(f"CREATE ROLE {self.user} LOGIN CREATEDB PASSWORD '{self.password}'; "
                 f"CREATE DATABASE {self.db} OWNER {self.user};")

    def sql(self, statements: str) -> str:
        r = self._pg(str(self.bin / "psql"), "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-h", str(self.run),
                     "-p", str(self.port), "-U", "postgres", "-d", "postgres", stdin=statements)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def start(self) -> None:
        r = self._pg(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
        assert r.returncode == 0, r.stderr + self.log.read_text()[-2000:]

    def stop(self) -> None:
        r = self._pg(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        assert r.returncode == 0, r.stderr

    def restart(self) -> None:
        r = self._pg(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-m", "fast", "-w",
                     "-t", "60", "restart")
        assert r.returncode == 0, r.stderr

    def connections(self, user: str | None = None) -> int:
        who = f"AND usename = '{user or self.user}'"
        return int(self.sql(f"SELECT count(*) FROM pg_stat_activity WHERE datname IS NOT NULL {who};").strip())

    def crash_backend(self, timeout: float = 60) -> int:
        """SIGKILL one backend (a worker's if one connects within 5 s, else a session of ours): the postmaster
        ends every backend, says "the database system is in recovery mode" for a moment and recovers.
        Returns the killed pid once the server accepts connections again."""
        def kill_one(who: str) -> int | None:
            out = self.sql(f"SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND {who};")
            for pid in (int(p) for p in out.split()):
                try:  # a worker's connection lives for one call: it may be gone already
                    if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"postgres:"):
                        os.kill(pid, signal.SIGKILL)
                        return pid
                except (OSError, ProcessLookupError):
                    continue
            return None

        crashes = self.log.read_text(errors="replace").count("all server processes terminated; reinitializing")
        deadline, sleeper = time.monotonic() + 5, None
        killed = kill_one(f"usename = '{self.user}'")
        while killed is None and time.monotonic() < deadline:
            time.sleep(0.05)
            killed = kill_one(f"usename = '{self.user}'")
        if killed is None:
            sleeper = subprocess.Popen(["runuser", "-u", "postgres", "--", str(self.bin / "psql"), "-X", "-q", "-h",
                                        str(self.run), "-p", str(self.port), "-d", "postgres", "-c",
                                        "SELECT pg_sleep(60) AS dualseg_crash"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 30
            while killed is None and time.monotonic() < deadline:
                time.sleep(0.1)
                killed = kill_one("query LIKE '%dualseg_crash%' AND pid <> pg_backend_pid()")
            assert killed is not None, "no backend of the private server to kill"

        def recovered() -> bool:
            text = self.log.read_text(errors="replace")
            done = text.count("all server processes terminated; reinitializing") > crashes
            return done and self._pg(str(self.bin / "pg_isready"), "-h", str(self.run), "-p", str(self.port),
                                     timeout=10).returncode == 0

        wait_for(recovered, timeout, "PostgreSQL crash recovery")
        if sleeper is not None:
            sleeper.wait(timeout=30)
        return killed

    def destroy(self) -> None:
        self._pg(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture()
def private_pg() -> Iterator[PrivatePostgres]:
    bin_dir = _pg_bin()
    if bin_dir is None or shutil.which("runuser") is None or os.geteuid() != 0:
        service_missing("a private PostgreSQL server needs initdb, runuser and root")
    root = Path("/tmp/dualseg-faults") / uuid.uuid4().hex[:10]
    pg = PrivatePostgres(root, bin_dir)
    pg.init()
    try:
        yield pg
    finally:
        pg.destroy()


def wait_for(predicate, timeout: float, what: str, poll: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    pytest.fail(f"{what} did not happen within {timeout:.0f}s")


class Search:
    """A search launched with ``hpc/launch.py`` on the real bed, and what a fault test asks of it."""

    def __init__(self, tools, scratch: Path, study: str, url: str, stdout: str) -> None:
        self.tools, self.scratch, self.study, self.url = tools, scratch, study, url
        self.array, self.eval_id = tools.job_ids_from(stdout)

    @property
    def study_dir(self) -> Path:
        return self.scratch / self.study

    @property
    def logdir(self) -> Path:
        return self.study_dir / "logs"

    def log(self, task: int | None = 0, rank: int = 0) -> Path:
        name = f"{self.array}_{task}_{rank}_log.out" if task is not None else f"{self.array}_{rank}_log.out"
        return self.logdir / name

    def text(self, pattern: str = "*_log.out") -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.logdir.glob(pattern)))

    def wait_line(self, path: Path, needle: str, timeout: float = 120) -> None:
        wait_for(lambda: path.exists() and needle in path.read_text(errors="replace"), timeout,
                 f"{needle!r} in {path.name}")

    def trials(self) -> list:
        import optuna

        return optuna.load_study(study_name=self.study, storage=self.url).get_trials()

    def wait_done(self, timeout: float = 300) -> None:
        """Until no job of this search is queued: the array, the evaluation job and whatever they resubmitted."""
        deadline = time.monotonic() + timeout
        while True:
            ids = sorted(self.tools.jobs_named(f"dualseg-{self.study}")
                         | self.tools.jobs_named(f"dualseg-eval-{self.study}"))
            if not ids:
                return
            self.tools.wait_gone(ids, timeout=max(1.0, deadline - time.monotonic()))

    @property
    def job_names(self) -> tuple[str, str]:
        return f"dualseg-{self.study}", f"dualseg-eval-{self.study}"

    def jobs(self) -> list[str]:
        """``id name`` of every queued job of this study: workers (resubmitted ones too) and evaluation jobs."""
        out = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True, timeout=30).stdout
        return [line for line in out.splitlines() if len(line.split()) == 2 and line.split()[1] in self.job_names]

    def cancel(self) -> None:
        """Cancel every job of this study (a test's teardown: nothing it started outlives it)."""
        for name in self.job_names:
            subprocess.run(["scancel", f"--name={name}"], capture_output=True, timeout=30)

    def epochs(self, number: int) -> list[int]:
        import json

        path = self.study_dir / f"trial-{number}" / "metrics.jsonl"
        return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line]


def launch_search(tools, args: list[str], url: str, study: str, *extra: str) -> Search:
    r = tools.run_cli("launch.py", *args, "--study", study, "--partition", os.environ["DUALSEG_TEST_PARTITION"],
                      "--storage", url, *extra, env={"DUALSEG_STORAGE": ""}, timeout=180)
    assert r.returncode == 0, r.stderr
    scratch = Path(args[args.index("--scratch") + 1])
    return Search(tools, scratch, study, url, r.stdout)


def assert_exact(search: Search, n: int, epochs: int | None = None) -> list:
    """The invariant every scenario proves: exactly ``n`` finished, nothing left running, no epoch twice,
    results written when the evaluation job was submitted, and no job of the study left in the queue."""
    assert not search.jobs(), f"jobs of study {search.study} still queued: {search.jobs()}"
    trials = search.trials()
    states = [(t.number, t.state.name) for t in trials]
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == n, states
    assert not any(t.state.name == "RUNNING" for t in trials), states
    for t in done:
        got = search.epochs(t.number)
        assert got == list(range(len(got))), (t.number, got)  # each epoch once, in order
        if epochs is not None and t.state.name == "COMPLETE" and t.user_attrs.get("stopped") == "completed":
            assert len(got) == epochs, (t.number, got)
    results = search.study_dir / "results" / "results.json"
    if search.eval_id:
        assert results.exists(), "the evaluation job wrote no results.json"
    return trials


@pytest.fixture()
def faults(hpc_tools):  # noqa: F811 - the imported fixture, requested by name
    """``launch``, ``exact``, ``wait_for``; every search launched through it is cancelled at teardown."""
    from types import SimpleNamespace

    launched: list[Search] = []

    def launch(*a, **k) -> Search:
        launched.append(launch_search(hpc_tools, *a, **k))
        return launched[-1]

    def follow(parent: Search, study: str, array: str) -> Search:
        """A study the search started (its final runs, ``<study>/final``) and its array; cancelled at teardown too."""
        launched.append(Search(hpc_tools, parent.scratch, study, parent.url, f"submitted array {array}\n"))
        return launched[-1]

    yield SimpleNamespace(launch=launch, exact=assert_exact, wait_for=wait_for, follow=follow)
    for search in launched:
        search.cancel()
