"""Shared test fixtures: the real PostgreSQL and two-node SLURM test bed (tests/cluster/up.sh).

The services are never mocked. The fixtures find the bed through environment variables (set by
``source $DUALSEG_TESTBED_DIR/env``) or, failing that, by reading that env file, and then prove
that the service answers (``sinfo`` shows both nodes, PostgreSQL answers ``select 1`` with the
password). When it does not, a test *fails* under ``CI=true`` (a broken bed must never turn into a
green run) and is skipped with the reason locally.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    from dualseg.config import Config

# Thread defaults before torch/numpy are imported by test modules: the machine has 2 cores shared
# by many test processes and SLURM jobs, and tiny tensors gain nothing from threads.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

DEFAULT_TESTBED_DIR = "/tmp/dualseg-testbed"
UP_HINT = "start it with: bash tests/cluster/up.sh"
# scontrol states after which a job will not write its result any more (REQUEUED/PENDING will).
_FINAL_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
    "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slurm: needs the real SLURM test bed (tests/cluster/up.sh)")
    config.addinivalue_line("markers", "postgres: needs the real PostgreSQL test bed")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line("markers", "whole_bed: needs every CPU of the SLURM bed (jobs that must run together)")


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Every test runs torch on one thread (also when the caller exported a larger
    OMP_NUM_THREADS), and a test that changes the count cannot leak it into the next one.
    Torch is not imported here for tests that never use it (it is slow to import)."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def in_ci() -> bool:
    """True under CI (``CI=true``/``1``/``yes``), where a missing service is a failure."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def service_missing(reason: str, kind: str = "test bed") -> NoReturn:
    """Fail in CI, skip locally: the one policy for every test that needs the bed (or a tool of the test extra,
    ``kind="test extra"``, which CI installs)."""
    if in_ci():
        need = "services are required" if kind == "test bed" else "the test extra is required"
        pytest.fail(f"{kind}: {reason} (CI=true: {need})", pytrace=False)
    pytest.skip(f"{kind}: {reason}; {UP_HINT if kind == 'test bed' else 'pip install -e .[test]'}")


def testbed_dir() -> Path:
    return Path(os.environ.get("DUALSEG_TESTBED_DIR", DEFAULT_TESTBED_DIR))


def _env_file() -> dict[str, str]:
    env: dict[str, str] = {}
    try:
        text = (testbed_dir() / "env").read_text()
    except OSError:
        return env
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, value = words[1].split("=", 1)
            env[key] = value
    return env


def testbed_env() -> dict[str, str]:
    """Bed settings: the ``$DIR/env`` file overlaid by the same names already in ``os.environ``."""
    env = _env_file()
    for key in ("SLURM_CONF", "DUALSEG_TEST_PARTITION", "DUALSEG_TEST_NODES", "DUALSEG_TEST_PG_URL"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    return env


def _candidates(key: str) -> list[str]:
    """Values to try for ``key``: the environment's first, then the env file's (a shell that sourced
    the file before the bed was restarted holds a stale port and password)."""
    values = [os.environ.get(key, ""), _env_file().get(key, "")]
    return [v for i, v in enumerate(values) if v and v not in values[:i]]


def _run(cmd: Sequence[str], env: dict[str, str] | None = None, timeout: float = 20) -> str:
    proc = subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return proc.stdout


@pytest.fixture(scope="session")
def slurm_env() -> dict[str, Any]:
    """The SLURM cluster: ``{"SLURM_CONF", "partition", "nodes", "dir"}``.

    Also sets ``os.environ["SLURM_CONF"]`` so sbatch/squeue/scontrol and submitit (and, through
    sbatch's default ``--export=ALL``, the jobs) use this cluster.
    """
    env = testbed_env()
    confs = [c for c in _candidates("SLURM_CONF") if Path(c).is_file()]
    if not confs:
        service_missing(f"no SLURM test bed (SLURM_CONF unset or missing; looked in {testbed_dir()}/env)")
    partition = env.get("DUALSEG_TEST_PARTITION", "debug")
    nodes = [n for n in env.get("DUALSEG_TEST_NODES", "n1,n2").split(",") if n]
    problems = []
    for conf in confs:
        try:
            out = _run(["sinfo", "-h", "-N", "-p", partition, "-o", "%N %T"], env={"SLURM_CONF": conf})
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            problems.append(f"SLURM ({conf}) does not answer: {exc}")
            continue
        states = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
        bad = {n: states.get(n, "absent") for n in nodes if states.get(n, "absent")
               not in {"idle", "mixed", "allocated", "completing"}}
        if bad:
            problems.append(f"SLURM nodes not usable: {bad} (see {testbed_dir()}/log/slurmd-*.log)")
            continue
        break
    else:
        service_missing("; ".join(problems))
    os.environ["SLURM_CONF"] = conf
    os.environ["DUALSEG_TEST_PARTITION"] = partition
    return {"SLURM_CONF": conf, "partition": partition, "nodes": nodes, "dir": str(testbed_dir())}


@pytest.fixture(scope="session")
def pg_url() -> str:
    """SQLAlchemy URL (``postgresql+psycopg2://user:password@127.0.0.1:port/db``) of the bed's DB.

    Also exported as ``os.environ["DUALSEG_TEST_PG_URL"]`` so SLURM jobs inherit it.
    """
    urls = _candidates("DUALSEG_TEST_PG_URL")
    if not urls:
        service_missing(f"no PostgreSQL test bed (DUALSEG_TEST_PG_URL unset; looked in {testbed_dir()}/env)")
    problems = []
    for url in urls:
        try:
            _select_one(url)
            break
        except Exception as exc:  # noqa: BLE001 - any driver error means "not usable"
            first = _mask(str(exc), url).strip().splitlines()[0] if str(exc).strip() else ""
            problems.append(f"PostgreSQL does not answer: {type(exc).__name__}: {first}")
    else:
        service_missing("; ".join(problems))
    os.environ["DUALSEG_TEST_PG_URL"] = url
    return url


def _mask(text: str, url: str) -> str:
    from sqlalchemy.engine import make_url

    password = make_url(url).password
    return text.replace(password, "***") if password else text


def _select_one(url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            if conn.execute(sa.text("select 1")).scalar() != 1:
                raise RuntimeError("select 1 did not return 1")
    finally:
        engine.dispose()


@pytest.fixture()
def pg_db_url(pg_url: str) -> Iterator[str]:
    """URL of a fresh, empty database for one test, dropped afterwards (isolation between tests)."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(pg_url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture(autouse=True)
def _services_of_markers(request: pytest.FixtureRequest) -> None:
    """A test marked ``slurm``/``postgres`` gets the service check even without the fixture."""
    if request.node.get_closest_marker("slurm") is not None:
        request.getfixturevalue("slurm_env")
    if request.node.get_closest_marker("postgres") is not None:
        request.getfixturevalue("pg_url")


@pytest.fixture(autouse=True)
def _bed_capacity(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests on the SLURM bed share its CPUs; one marked ``whole_bed`` has them to itself.

    A test whose jobs must run at the same time (a barrier between them) cannot start them while
    another xdist worker's job holds a node's CPUs: CI saw one array element wait for a CPU until
    the other's barrier timed out. A shared/exclusive flock on a file of the bed orders them.
    """
    exclusive = request.node.get_closest_marker("whole_bed") is not None
    if "slurm_env" not in request.fixturenames and not exclusive:
        yield
        return
    import fcntl

    folder = testbed_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "capacity.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _job_state(job_id: str) -> str:
    try:
        out = _run(["scontrol", "show", "job", "-o", job_id], timeout=15)
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        return "UNKNOWN"
    for word in out.split():
        if word.startswith("JobState="):
            return word.split("=", 1)[1]
    return "UNKNOWN"


def _has_result(job: Any) -> bool:
    return all(job.task(i).paths.result_pickle.exists() for i in range(job.num_tasks))


def wait_for_jobs(jobs: Sequence[Any], timeout: float = 120.0, poll: float = 0.5) -> None:
    """Wait until every submitit job wrote its result, failing fast with the job's stderr tail.

    There is no sacct on the bed (no slurmdbd), so submitit's own ``job.result()`` cannot tell a
    job that died without a result from one still running and would wait forever. This asks
    ``scontrol`` instead, gives a finished job a few seconds for its result file to appear, and on
    timeout cancels the jobs so they do not keep the shared cluster busy.
    """
    deadline = time.monotonic() + timeout
    final_since: dict[str, float] = {}
    pending = list(jobs)
    while pending:
        still = []
        for job in pending:
            if _has_result(job):
                continue
            state = _job_state(job.job_id)
            if state.split()[0] in _FINAL_STATES:
                first = final_since.setdefault(job.job_id, time.monotonic())
                if time.monotonic() - first > 5:
                    err = (job.stderr() or "")[-3000:]
                    pytest.fail(f"SLURM job {job.job_id} ended {state} without a result; stderr tail:\n{err}")
            still.append(job)
        pending = still
        if not pending:
            break
        if time.monotonic() > deadline:
            ids = [j.job_id for j in pending]
            states = {i: _job_state(i) for i in ids}
            subprocess.run(["scancel", *{i.split("_")[0] for i in ids}], capture_output=True, timeout=15)
            err = "\n".join((j.stderr() or "")[-1500:] for j in pending)
            pytest.fail(f"SLURM jobs not done after {timeout:.0f}s: {states} (cancelled); stderr tails:\n{err}")
        time.sleep(poll)


@pytest.fixture()
def slurm_wait(slurm_env: dict[str, Any]) -> Callable[..., None]:
    """``slurm_wait(jobs, timeout=120)``: see :func:`wait_for_jobs`."""
    return wait_for_jobs


# ---- one trained Quickstart model per session (tests/infer and tests/predict) -----------------
# Imports are inside the fixtures: tests that never use them do not pay for torch or the trainer.


@pytest.fixture(scope="session")
def quick_cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The Quickstart config (its data: 12 tiles of 64x64, 4 classes), 1 epoch on the CPU."""
    from dualseg.config import apply_overrides, load_config
    from dualseg.data import generate

    root = tmp_path_factory.mktemp("quick")
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "default.yaml")
    assert cfg.data.synthetic is not None
    generate(root / "tiles", cfg.data.synthetic)
    return apply_overrides(cfg, {"data.root": str(root / "tiles"), "train.epochs": 1, "train.device": "cpu",
                                 "train.scratch": str(root / "scratch"), "train.run_name": "quick"})


@pytest.fixture(scope="session")
def trained(quick_cfg: Config, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``best`` (training checkpoint) and ``slim`` (exported model) of a 1-epoch Quickstart run."""
    import torch

    from dualseg.train import fit
    from dualseg.train.export import export_model

    torch.set_num_threads(1)
    res = fit(quick_cfg)
    slim = export_model(res.run_dir / "best.pt", None, tmp_path_factory.mktemp("model") / "best_model.pth")
    return {"best": res.run_dir / "best.pt", "slim": slim}
