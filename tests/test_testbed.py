"""Smoke tests proving the test bed is real: SLURM runs multi-node torch.distributed job arrays,
PostgreSQL takes concurrent Optuna writes from SLURM jobs with password auth, dependencies fire,
and up.sh/down.sh bring a bed up, fail loudly, and leave nothing behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from tests.conftest import service_missing

REPO = Path(__file__).resolve().parents[1]
UP = REPO / "tests" / "cluster" / "up.sh"
DOWN = REPO / "tests" / "cluster" / "down.sh"

# Functions submitted below must reach the jobs by value: the job's python cannot import this file.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _barrier(folder: str, name: str, expected: int, timeout: float = 90.0) -> None:
    """File barrier between separate SLURM jobs: proves they were running at the same time."""
    Path(folder, name).touch()
    deadline = time.monotonic() + timeout
    while len(os.listdir(folder)) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {sorted(os.listdir(folder))} of {expected} jobs reached the barrier")
        time.sleep(0.1)


def _allreduce_task(barrier_dir: str) -> dict[str, Any]:
    """One task of a 2-node job: init gloo from the SLURM environment and all-reduce rank+1."""
    import datetime

    import submitit
    import torch
    import torch.distributed as dist

    dist_env = submitit.helpers.TorchDistributedEnvironment().export()
    job_env = submitit.JobEnvironment()
    _barrier(barrier_dir, f"{job_env.job_id}-{dist_env.rank}", expected=4)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    try:
        value = torch.tensor([float(dist.get_rank() + 1)])
        dist.all_reduce(value)
        return {
            "job_id": job_env.job_id,
            "rank": dist.get_rank(),
            "world_size": dist.get_world_size(),
            "node": os.environ["SLURMD_NODENAME"],
            "sum": value.item(),
            "master": f"{dist_env.master_addr}:{dist_env.master_port}",
        }
    finally:
        dist.destroy_process_group()


def _optuna_job(study_name: str, barrier_dir: str, n_trials: int) -> str:
    """Write ``n_trials`` trials into the shared PostgreSQL study, concurrently with another job."""
    import optuna

    job_id = os.environ["SLURM_JOB_ID"]
    _barrier(barrier_dir, job_id, expected=2)
    study = optuna.load_study(study_name=study_name, storage=os.environ["DUALSEG_SMOKE_PG_URL"])

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -1.0, 1.0)
        trial.set_user_attr("slurm_job_id", job_id)
        return x * x

    study.optimize(objective, n_trials=n_trials)
    return job_id


def _executor(folder: Path, slurm_env: dict[str, Any], **params: Any) -> Any:
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(
        slurm_partition=slurm_env["partition"], timeout_min=5, cpus_per_task=1, name="testbed-smoke", **params
    )
    return executor


@pytest.mark.slurm
@pytest.mark.whole_bed
@pytest.mark.timeout(900)  # may first wait for another worker's test on the bed
def test_submitit_array_of_two_node_torch_distributed_jobs(slurm_env, slurm_wait, tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    executor = _executor(tmp_path / "submitit", slurm_env, nodes=2, tasks_per_node=1)
    jobs = executor.map_array(_allreduce_task, [str(barrier)] * 2)
    assert len(jobs) == 2 and all("_" in j.job_id for j in jobs)  # one array, two elements
    slurm_wait(jobs, timeout=150)
    for job in jobs:
        results = job.results()
        assert [r["rank"] for r in results] == [0, 1]
        assert all(r["world_size"] == 2 and r["sum"] == 3.0 for r in results)  # 1 + 2 over gloo
        assert {r["node"] for r in results} == {"n1", "n2"}  # one task on each SLURM node
        assert results[0]["master"] == results[1]["master"] and results[0]["master"].startswith("n1:")
    # the two array elements rendezvoused separately (ports derive from the job id)
    assert jobs[0].results()[0]["master"] != jobs[1].results()[0]["master"]


@pytest.mark.slurm
@pytest.mark.postgres
@pytest.mark.whole_bed
@pytest.mark.timeout(900)  # may first wait for another worker's test on the bed
def test_two_slurm_jobs_write_one_postgres_optuna_study(slurm_env, slurm_wait, pg_db_url, tmp_path, monkeypatch):
    import optuna

    # The URL (with its password) reaches the jobs through the environment, not argv or pickles.
    monkeypatch.setenv("DUALSEG_SMOKE_PG_URL", pg_db_url)
    study = optuna.create_study(study_name="smoke", storage=pg_db_url)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    executor = _executor(tmp_path / "submitit", slurm_env, nodes=1, tasks_per_node=1)
    n = 4
    jobs = [executor.submit(_optuna_job, "smoke", str(barrier), n) for _ in range(2)]
    slurm_wait(jobs, timeout=120)
    assert sorted(j.result() for j in jobs) == sorted(j.job_id for j in jobs)

    trials = optuna.load_study(study_name="smoke", storage=pg_db_url).get_trials(deepcopy=False)
    assert len(trials) == 2 * n
    assert sorted(t.number for t in trials) == list(range(2 * n))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    by_job = {j.job_id: sum(t.user_attrs["slurm_job_id"] == j.job_id for t in trials) for j in jobs}
    assert by_job == {j.job_id: n for j in jobs}
    assert study.best_value == min(t.value for t in trials)


@pytest.mark.slurm
def test_dependent_job_starts_after_array_finishes(slurm_env, tmp_path):
    def sbatch(*args: str) -> str:
        out = subprocess.run(["sbatch", "--parsable", "-p", slurm_env["partition"], "-o", "/dev/null", *args],
                             capture_output=True, text=True, check=True, timeout=30).stdout
        return out.strip().split(";")[0]

    array_id = sbatch("--array=0-1", "--wrap", f"sleep 1; date +%s.%N > {tmp_path}/end_$SLURM_ARRAY_TASK_ID")
    sbatch(f"--dependency=afterany:{array_id}", "--wrap", f"date +%s.%N > {tmp_path}/dependent.tmp; "
           f"mv {tmp_path}/dependent.tmp {tmp_path}/dependent")
    deadline = time.monotonic() + 60
    while not (tmp_path / "dependent").exists():
        if time.monotonic() > deadline:
            subprocess.run(["scancel", array_id], check=False)
            pytest.fail(f"dependent job did not run within 60s of submission (array {array_id})")
        time.sleep(0.2)
    ends = [float((tmp_path / f"end_{i}").read_text()) for i in (0, 1)]
    start = float((tmp_path / "dependent").read_text())
    assert start >= max(ends)
    print(f"dependency latency: {start - max(ends):.1f}s after the array's last element")


@pytest.mark.postgres
def test_postgres_requires_the_password_over_scram(pg_url, pg_db_url):
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    url = make_url(pg_url)
    assert url.host == "127.0.0.1" and url.password
    for bad in (url.set(password="wrong-" + url.password), url.set(password="")):
        engine = sa.create_engine(bad, poolclass=sa.pool.NullPool)
        with pytest.raises(sa.exc.OperationalError, match="password"):
            engine.connect()
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        assert conn.execute(sa.text("show password_encryption")).scalar() == "scram-sha-256"
        assert conn.execute(sa.text("show listen_addresses")).scalar() == "127.0.0.1"
        assert conn.execute(sa.text("select rolsuper from pg_roles where rolname = current_user")).scalar() is False
    # pg_db_url is a separate, empty database
    fresh = sa.create_engine(pg_db_url, poolclass=sa.pool.NullPool)
    with fresh.connect() as conn:
        assert conn.execute(sa.text("select current_database()")).scalar() == make_url(pg_db_url).database
        assert conn.execute(sa.text("select count(*) from pg_tables where schemaname = 'public'")).scalar() == 0
    engine.dispose()
    fresh.dispose()


@pytest.mark.slurm
def test_cluster_is_configured_for_the_hpc_layer(slurm_env):
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    config = dict(line.split("=", 1) for line in out.splitlines() if " = " in line)
    config = {k.strip(): v.strip() for k, v in config.items()}
    assert config["JobRequeue"] == "1"
    assert config["AuthType"] == "auth/munge"
    assert config["SLURM_CONF"] == slurm_env["SLURM_CONF"]
    nodes = subprocess.run(["sinfo", "-h", "-N", "-p", slurm_env["partition"], "-o", "%N %c"],
                           capture_output=True, text=True, check=True).stdout.split("\n")
    cpus = dict(line.split() for line in nodes if line.strip())
    assert set(cpus) == {"n1", "n2"} and all(int(c) >= 2 for c in cpus.values())


def test_up_is_idempotent_and_rejects_unknown_options(slurm_env, pg_url):
    up = subprocess.run(["bash", str(UP)], capture_output=True, text=True, timeout=60)
    assert up.returncode == 0 and "already up" in up.stderr
    check = subprocess.run(["bash", str(UP), "--check"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0
    bad = subprocess.run(["bash", str(UP), "--bogus"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert bad.stderr.strip() == "testbed: error: unknown option '--bogus' (use --check or no argument)"


@pytest.fixture()
def short_tmp():
    """A short temp dir: unix socket paths (munge, postgres) must stay under ~100 characters."""
    path = Path(tempfile.mkdtemp(prefix="dstb-", dir="/tmp"))
    path.chmod(0o755)  # munged requires every parent of its socket to be searchable by all
    yield path
    # whatever a failed test left running there goes first, then the files
    subprocess.run(["bash", str(DOWN)], env={**os.environ, "DUALSEG_TESTBED_DIR": str(path / "bed")},
                   capture_output=True, timeout=120)
    shutil.rmtree(path, ignore_errors=True)


def _bed_processes(bed_dir: Path) -> list[str]:
    """Command lines of processes that belong to the bed in ``bed_dir`` (daemons and jobs)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if str(bed_dir) in cmdline or f"SLURM_CONF={bed_dir}/".encode() in environ:
            found.append(f"{proc.name}: {cmdline}")
    return found


@pytest.mark.slow
def test_second_bed_comes_up_and_goes_down_without_leftovers(short_tmp):
    if os.geteuid() != 0:
        service_missing("up.sh needs root")
    bed = short_tmp / "bed"
    env = {**os.environ, "DUALSEG_TESTBED_DIR": str(bed), "DUALSEG_TESTBED_PARTITION": "second"}
    env.pop("SLURM_CONF", None)
    try:
        up = subprocess.run(["bash", str(UP)], env=env, capture_output=True, text=True, timeout=120)
        assert up.returncode == 0, up.stderr
        text = (bed / "env").read_text()
        assert oct((bed / "env").stat().st_mode & 0o777) == "0o600"
        assert f"SLURM_CONF={bed}/slurm/slurm.conf" in text and "DUALSEG_TEST_PARTITION=second" in text
        job = textwrap.dedent(f"""
            source {bed}/env
            srun -N2 -n2 -p second --label printenv SLURMD_NODENAME | sort
            PGPASSWORD=$DUALSEG_TEST_PG_PASSWORD psql -X -w -h 127.0.0.1 -p $DUALSEG_TEST_PG_PORT \
              -U dualseg -d dualseg_test -tAc 'select 40 + 2'
            """)
        out = subprocess.run(["bash", "-c", job], env=env, capture_output=True, text=True, timeout=60)
        assert out.stdout.split() == ["0:", "n1", "1:", "n2", "42"], out.stderr
        assert _bed_processes(bed)  # daemons are running
        # a job still running at teardown is killed too
        subprocess.run(["bash", "-c", f"source {bed}/env; sbatch -N2 -o /dev/null --wrap 'srun sleep 600'"],
                       env=env, check=True, capture_output=True, timeout=30)
        time.sleep(1.5)
    finally:
        down = subprocess.run(["bash", str(DOWN)], env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert not bed.exists()
    assert _bed_processes(bed) == []
    again = subprocess.run(["bash", str(DOWN)], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "nothing to tear down" in again.stderr


@pytest.mark.slow
def test_down_stops_a_bed_whose_directory_was_deleted(short_tmp):
    if os.geteuid() != 0:
        service_missing("up.sh needs root")
    bed = short_tmp / "bed"
    env = {**os.environ, "DUALSEG_TESTBED_DIR": str(bed)}
    up = subprocess.run(["bash", str(UP)], env=env, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    running = _bed_processes(bed)
    assert len(running) >= 5, running  # munged, postgres, slurmctld, 2 x slurmd
    shutil.rmtree(bed)  # pid files gone, daemons still running
    down = subprocess.run(["bash", str(DOWN)], env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0 and "was already deleted" in down.stderr, down.stderr
    assert _bed_processes(bed) == []


@pytest.mark.slow
def test_failed_bring_up_reports_logs_and_cleans_up(short_tmp):
    if os.geteuid() != 0:
        service_missing("up.sh needs root")
    bed = short_tmp / "bed"
    # An unknown slurm.conf key makes slurmctld refuse to start, after munged and postgres are up.
    env = {**os.environ, "DUALSEG_TESTBED_DIR": str(bed), "DUALSEG_TESTBED_SLURM_EXTRA": "NoSuchOption=1",
           "DUALSEG_TESTBED_TIMEOUT": "15"}
    up = subprocess.run(["bash", str(UP)], env=env, capture_output=True, text=True, timeout=120)
    assert up.returncode == 1
    first_error = next(line for line in up.stderr.splitlines() if line.startswith("testbed: error:"))
    assert first_error.startswith("testbed: error: slurmctld failed to start"), up.stderr
    assert "NoSuchOption" in up.stderr  # the daemon's own complaint, from its log tail
    assert "log tails follow" in up.stderr and "slurmctld.log" in up.stderr
    assert _bed_processes(bed) == []
    assert sorted(p.name for p in bed.iterdir()) == ["log"]  # logs kept for diagnosis, nothing else
    subprocess.run(["bash", str(DOWN)], env=env, capture_output=True, timeout=60)


@pytest.mark.parametrize("var, value", [("DUALSEG_TESTBED_PARTITION", "bad name"), ("DUALSEG_TESTBED_CPUS", "0")])
def test_up_rejects_bad_settings_before_starting_anything(short_tmp, var, value):
    bed = short_tmp / "bed"
    up = subprocess.run(["bash", str(UP)], env={**os.environ, "DUALSEG_TESTBED_DIR": str(bed), var: value},
                        capture_output=True, text=True, timeout=60)
    assert up.returncode == 1
    assert up.stderr.strip() == f"testbed: error: {var}='{value}' is not a " + (
        "valid partition name" if "PARTITION" in var else "positive integer")
    assert not bed.exists()


_PROBE = """
import pytest

def test_needs_slurm(slurm_env):
    pass

@pytest.mark.postgres
def test_needs_pg():  # the marker alone brings the service check
    pass
"""


def _probe(tmp_path: Path, env_update: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the two-fixture probe in a child pytest that loads tests/conftest.py as a plugin."""
    (tmp_path / "test_probe.py").write_text(_PROBE)
    env = {k: v for k, v in os.environ.items()
           if k not in {"SLURM_CONF", "DUALSEG_TEST_PG_URL", "DUALSEG_TEST_PARTITION", "DUALSEG_TEST_NODES", "CI"}}
    env.update(PYTHONPATH=str(REPO / "tests"), **env_update)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider", "-rfsE",
         "--rootdir", str(tmp_path), "test_probe.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("ci, expected", [("true", "2 errors"), ("", "2 skipped")])
def test_missing_bed_fails_in_ci_and_skips_locally(tmp_path, ci, expected):
    proc = _probe(tmp_path, {"CI": ci, "DUALSEG_TESTBED_DIR": str(tmp_path / "no-bed")})
    assert expected in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == (1 if ci else 0)
    assert ("services are required" in proc.stdout) == bool(ci)


@pytest.mark.slurm
@pytest.mark.postgres
def test_stale_environment_falls_back_to_the_env_file_and_never_prints_the_password(
        slurm_env, pg_url, tmp_path):
    from sqlalchemy.engine import make_url

    stale = make_url(pg_url).set(password="stale-secret-4711").render_as_string(hide_password=False)
    # a shell that sourced the env file before a restart: old password, old SLURM_CONF
    proc = _probe(tmp_path, {"DUALSEG_TEST_PG_URL": stale, "SLURM_CONF": "/nonexistent/slurm.conf",
                             "DUALSEG_TESTBED_DIR": slurm_env["dir"]})
    assert "2 passed" in proc.stdout, proc.stdout + proc.stderr
    # no env file to fall back to: the skip reason names the failure but not the password
    proc = _probe(tmp_path, {"DUALSEG_TEST_PG_URL": stale, "DUALSEG_TESTBED_DIR": str(tmp_path / "no-bed")})
    assert "password authentication failed" in proc.stdout, proc.stdout
    assert "stale-secret-4711" not in proc.stdout + proc.stderr
