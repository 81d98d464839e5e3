"""Fault suite, faults as real clusters combine them: signals on later trials, real preemption with a
GraceTime, PostgreSQL crash recovery, a full scratch, two arrays healed at once, ``squeue`` failing
during a requeue, the evaluation job killed, one rank of a 2-node trial running out of memory.

Every fault is real (``scancel -s``, ``scontrol requeue``, a ``high`` partition job preempting a
``low`` one, ``kill -9`` of a PostgreSQL backend, a full tmpfs, a failing ``squeue`` on the jobs'
``PATH``, an address-space limit on one rank) and every scenario ends with
:func:`tests.faults.conftest.assert_exact` (exact count, nothing RUNNING, each epoch once, results
written, no job of the study left in the queue). Waits are bounded: a hang fails in minutes, with the
trial states and the log tails.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest

from hpc.storage import StorageURL
from hpc.study import StudyRecord

pytestmark = [pytest.mark.slurm, pytest.mark.postgres]
REPO = Path(__file__).resolve().parents[2]
SLOW = ["--set", "data.samples_per_tile=24"]  # a few seconds per epoch: faults land mid-trial
BASE = ["--time", "10", "--set", "train.epochs=3", *SLOW]


def _finish(s, timeout: float, what: str) -> None:
    """Wait until no job of the study is queued; past ``timeout`` cancel them and fail with what was left."""
    deadline = time.monotonic() + timeout
    while s.jobs():
        if time.monotonic() > deadline:
            states = [(t.number, t.state.name) for t in s.trials()]
            tails = "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-6:])
                              for p in sorted(s.logdir.glob("*_log.out")))
            left = s.jobs()
            s.cancel()
            pytest.fail(f"{what}: after {timeout:.0f} s jobs {left} were still queued (cancelled); "
                        f"trials {states}\n{tails}", pytrace=False)
        time.sleep(2)


def _job_pids(job_id: str, needle: str, procid: int | None = None) -> list[int]:
    """Processes of this bed's job ``job_id`` (``<array>_<task>`` too) whose command line holds ``needle``."""
    conf = os.environ["SLURM_CONF"]
    job, _, task = job_id.partition("_")
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = dict(kv.split("=", 1) for kv in (proc / "environ").read_text().split("\0") if "=" in kv)
            cmd = (proc / "cmdline").read_text()
        except (OSError, ValueError):
            continue
        ids = (env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")) if task else (env.get("SLURM_JOB_ID"),
                                                                                           None)
        if (env.get("SLURM_CONF") == conf and ids == (job, task or None) and needle in cmd
                and (procid is None or env.get("SLURM_PROCID") == str(procid))):
            found.append(int(proc.name))
    return found


def _squeue_state(job: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def _scontrol(*args: str) -> None:
    subprocess.run(["scontrol", *args], check=True, timeout=30, capture_output=True)


def _trial_at(text: str, needle: str) -> int:
    """The trial a log line names in its context (``[rank 0/1 node n1 trial 3 epoch 1]``)."""
    line = next(line for line in text.splitlines() if needle in line)
    m = re.search(r" trial (\d+) epoch ", line)
    assert m, line
    return int(m.group(1))


def _record(s) -> StudyRecord:
    return StudyRecord.read(optuna.load_study(study_name=s.study, storage=s.url))


# ---- 1. USR2 on trial 0, then SIGTERM + requeue on trial 1 -------------------------------------------


@pytest.mark.timeout(480)
def test_usr2_then_sigterm_with_requeue_on_a_later_trial_continues_that_trial(slurm_env, pg_db_url, tiny_args,
                                                                               faults) -> None:
    """USR2 while trial 0 trains (submitit's checkpoint + requeue), then SIGTERM + ``scontrol requeue`` (what
    preemption does) while trial 1 trains: the requeued job must continue trial 1 — not trial 0 of the
    earlier checkpoint pickle, not a new trial."""
    s = faults.launch(tiny_args, pg_db_url, "cmp-sigs", "--workers", "1", "--trials", "3", *BASE)
    log = s.log(None)
    s.wait_line(log, "epoch 0:", 150)
    subprocess.run(["scancel", "-s", "USR2", s.array], check=True, timeout=30)
    s.wait_line(log, "trial 0 (resumed)", 150)
    faults.wait_for(lambda: re.search(r"trial 1 \(new\)[\s\S]*epoch 0:", log.read_text(errors="replace")), 240,
                    "trial 1 training its first epoch")
    subprocess.run(["scancel", "-s", "TERM", s.array], check=True, timeout=30)
    _scontrol("requeue", s.array)
    _finish(s, 240, "after SIGTERM + requeue during trial 1 the study did not finish (trial 1 left RUNNING?)")
    text = log.read_text(errors="replace")
    trials = faults.exact(s, 3, epochs=3)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3, [(t.number, t.state.name) for t in trials]
    victim = _trial_at(text, "received SIGTERM")
    assert victim >= 1 and text.count("(new)") == 3, text[-3000:]
    assert f"trial {victim} (resumed)" in text, text[-3000:]


# ---- 2. real preemption: PreemptMode=REQUEUE with a GraceTime --------------------------------------


def _preemption_partitions() -> None:
    from tests.conftest import service_missing

    have = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30).stdout.split()
    if not {"low", "high"} <= {p.rstrip("*") for p in have}:
        service_missing("the bed has no partitions low/high (it was started from an older tests/cluster/"
                        "slurm.conf.in); restart it: bash tests/cluster/down.sh && bash tests/cluster/up.sh")


@pytest.mark.timeout(480)
def test_real_preemption_with_grace_time_requeues_the_task_and_it_continues_its_trial(slurm_env, pg_db_url,
                                                                                       tiny_args, faults) -> None:
    """A ``high`` job takes node n3 from the search running on ``low`` (``PreemptMode=REQUEUE``,
    ``GraceTime=15``). SLURM 22.05 sends the job's *steps* SIGTERM at once and requeues the job only when
    the grace time ends; a worker that saves and exits before that ends its job (COMPLETED, not requeued:
    ``_job_complete: JobId=N WEXITSTATUS 0``). The task must stay in the array and continue its trial."""
    _preemption_partitions()
    s = faults.launch(tiny_args, pg_db_url, "cmp-preempt", "--workers", "1", "--trials", "3", "--partition", "low",
                      *BASE)
    log = s.log(None)
    s.wait_line(log, "epoch 0:", 150)
    high = subprocess.run(["sbatch", "--parsable", "-p", "high", "-N1", "--exclusive", "-o", "/dev/null",
                           "--job-name", "cmp-preempt-high", "--wrap", "sleep 20"],
                          capture_output=True, text=True, check=True, timeout=30).stdout.strip().split(";")[0]
    try:
        s.wait_line(log, "received SIGTERM", 60)
        faults.wait_for(lambda: _squeue_state(high) in ("RUNNING", ""), 120, "the high-tier job to start")
        state = _squeue_state(s.array)
        assert state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "RUNNING", "COMPLETING"), (
            f"the preempted task left the queue (squeue: {state or 'gone'}); slurmctld.log: "
            + _ctld_lines(s.array))
        _finish(s, 300, "after preemption the study did not finish")
    finally:
        subprocess.run(["scancel", high], capture_output=True, timeout=30)
    text = log.read_text(errors="replace")
    trials = faults.exact(s, 3, epochs=3)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3, [(t.number, t.state.name) for t in trials]
    assert "no worker left: resubmitted" not in s.text(), "the evaluation job had to resubmit workers"
    victim = _trial_at(text, "received SIGTERM")
    assert f"trial {victim} (resumed)" in text and text.count("(new)") == 3, text[-3000:]


def _ctld_lines(job: str) -> str:
    path = Path(os.environ["SLURM_CONF"]).parent.parent / "log" / "slurmctld.log"
    try:
        return " | ".join(line for line in path.read_text(errors="replace").splitlines() if f"JobId={job}" in line)
    except OSError:
        return "(no slurmctld.log)"


# ---- 3. PostgreSQL crash recovery (SIGKILL of a backend), three times ---------------------------------


@pytest.mark.timeout(480)
def test_postgres_backend_sigkilled_three_times_mid_search(slurm_env, private_pg, tiny_args, faults) -> None:
    """``kill -9`` of a backend makes the postmaster end every backend and recover ("the database system is
    in recovery mode" for a moment): every connection of every worker is cut at once, three times.
    ``synchronous_commit`` is on, as on every real server: the bed's throwaway ``off`` acknowledges commits
    that a crash then loses (trials vanish: ``KeyError: 'Record does not exist.'``)."""
    private_pg.sql("ALTER SYSTEM SET synchronous_commit = on;\nSELECT pg_reload_conf();")
    s = faults.launch(tiny_args, private_pg.url, "cmp-pgkill", "--workers", "2", "--trials", "3", *BASE)
    s.wait_line(s.log(0), "epoch 0:", 150)
    for _ in range(3):
        private_pg.crash_backend()
        time.sleep(3)
    _finish(s, 300, "after three PostgreSQL crash recoveries the study did not finish")
    trials = faults.exact(s, 3, epochs=3)
    assert not [t.number for t in trials if t.state.name == "FAIL"], [(t.number, t.state.name) for t in trials]
    assert private_pg.log.read_text(errors="replace").count("all server processes terminated; reinitializing") == 3
    for task in (0, 1):
        text = s.log(task).read_text(errors="replace")
        assert "Exiting after successful completion" in text and "Traceback" not in text, (task, text[-3000:])
    assert "no worker left: resubmitted" not in s.text()


# ---- 4. scratch full for a minute ----------------------------------------------------------------------


def _fill(path: Path) -> int:
    """Write zeros to ``path`` until the file system is full; returns the bytes written."""
    chunk, written = b"\0" * (1 << 20), 0
    with open(path, "wb", buffering=0) as fh:
        while True:
            try:
                written += fh.write(chunk) or 0
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                return written


@pytest.mark.timeout(480)
def test_scratch_full_for_a_minute_mid_search(slurm_env, pg_db_url, tiny_args, faults) -> None:
    """The study's scratch is a 48 MB tmpfs; a ballast file fills it while trials train and is deleted 60 s
    later. No trial may fail for ENOSPC: workers wait for space and go on."""
    if os.geteuid() != 0:
        from tests.conftest import service_missing

        service_missing("mounting a tmpfs for the full scratch needs root")  # fails under CI=true
    scratch = Path(tiny_args[tiny_args.index("--scratch") + 1])
    scratch.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=755", "tmpfs", str(scratch)], check=True, timeout=30)
    s = None
    try:
        s = faults.launch(tiny_args, pg_db_url, "cmp-full", "--workers", "2", "--trials", "3", *BASE)
        s.wait_line(s.log(0), "epoch 0:", 150)
        ballast = scratch / "ballast"
        assert _fill(ballast) > 0
        time.sleep(60)
        ballast.unlink()
        _finish(s, 300, "after the scratch was full for 60 s the study did not finish")
        trials = faults.exact(s, 3, epochs=3)
        failed = [(t.number, t.user_attrs.get("error")) for t in trials if t.state.name == "FAIL"]
        assert not failed, f"trials failed while the scratch was full: {failed}"
        assert "no worker left: resubmitted" not in s.text(), "workers died while the scratch was full"
    finally:
        if s is not None:
            s.cancel()
            faults.wait_for(lambda: not s.jobs(), 60, "the study's jobs to leave before unmounting")
            shutil.copytree(s.logdir, scratch.parent / "logs-of-the-full-scratch", dirs_exist_ok=True)  # diagnosis
        subprocess.run(["umount", "-l", str(scratch)], capture_output=True, timeout=30)


# ---- 5. one study, two launches, both arrays cancelled at once ---------------------------------------


@pytest.mark.timeout(480 + 720)  # its own 480 s, after waiting for the other worker's scenario (at most 720 s)
@pytest.mark.whole_bed  # both arrays must train at once: another scenario's jobs holding CPUs would starve one
def test_same_study_launched_twice_both_arrays_cancelled_at_once_resubmits_once(slurm_env, pg_db_url, tiny_args,
                                                                               faults) -> None:
    """Two launches of one study (two arrays, two evaluation jobs); ``scancel`` of both arrays in one call:
    both evaluation jobs heal at the same moment. Exactly one resubmission, every array recorded once."""
    args = ("--workers", "1", "--trials", "3", *BASE)
    s1 = faults.launch(tiny_args, pg_db_url, "cmp-twice", *args)
    s2 = faults.launch(tiny_args, pg_db_url, "cmp-twice", *args)
    s1.wait_line(s1.log(None), "epoch 0:", 150)
    s2.wait_line(s2.log(None), "epoch 0:", 150)
    subprocess.run(["scancel", s1.array, s2.array], check=True, timeout=30)
    _finish(s1, 300, "after both arrays were cancelled the study did not finish")
    faults.exact(s1, 3, epochs=3)
    record = _record(s1)
    text = s1.text()
    assert record.resubmits == 1, (record.resubmits, record.arrays, re.findall(r".*no worker left.*", text))
    assert record.arrays[:2] == [s1.array, s2.array] and len(record.arrays) == len(set(record.arrays)) == 3, \
        record.arrays
    assert text.count("no worker left: resubmitted") == 1, re.findall(r".*no worker left.*", text)


# ---- 6. squeue failing for a minute while one task is requeued and held --------------------------------


@pytest.mark.timeout(720)
def test_squeue_failing_while_a_task_is_requeued_fails_nothing(slurm_env, pg_db_url, tiny_args, tmp_path,
                                                               faults) -> None:
    """The jobs' ``squeue`` (a wrapper first on their ``PATH``, through ``hpc.setup``) exits 1 for ~60 s; task 0
    is requeued and held in the queue meanwhile. Task 1 asks in that window and cannot see task 0: its trial
    must not be failed (its job lives), task 0 must continue it, nothing trained twice."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "squeue"
    s = faults.launch(tiny_args, pg_db_url, "cmp-squeue", "--workers", "2", "--trials", "3", *BASE,
                      "--set", f'hpc.setup=["export PATH={bin_dir}:$PATH"]')
    s.wait_line(s.log(0), "epoch 0:", 300)  # a task may queue behind another scenario's jobs on the bed
    s.wait_line(s.log(1), "epoch 0:", 300)
    wrapper.write_text("#!/bin/sh\necho 'squeue: error: Unable to contact slurm controller (connect failure)' >&2\n"
                       "exit 1\n")
    wrapper.chmod(0o755)
    try:
        _scontrol("requeuehold", f"{s.array}_0")
        time.sleep(60)
    finally:
        wrapper.unlink()
        _scontrol("release", f"{s.array}_0")
    _finish(s, 300, "after squeue failed during a requeue the study did not finish")
    trials = faults.exact(s, 3, epochs=3)
    failed = [(t.number, t.user_attrs.get("error")) for t in trials if t.state.name == "FAIL"]
    assert not failed, f"a trial whose job was requeued (and alive) was failed while squeue failed: {failed}"
    text = s.log(0).read_text(errors="replace")
    assert re.search(r"trial \d+ \(resumed\)", text), text[-3000:]


# ---- 7. the evaluation job killed --------------------------------------------------------------------


@pytest.mark.timeout(360)
def test_killed_evaluation_job_and_the_documented_rerun(slurm_env, pg_db_url, tiny_args, faults) -> None:
    """``kill -9`` of the evaluation job's python while it runs: no results. The documented way back
    (docs/hpc.md, "To (re-)run the evaluation by hand") is ``sbatch sbatch/eval.sbatch``: it writes them."""
    s = faults.launch(tiny_args, pg_db_url, "cmp-evalkill", "--workers", "1", "--trials", "1", "--time", "10",
                      "--set", "train.epochs=1")
    assert s.eval_id
    pids: list[int] = []
    faults.wait_for(lambda: pids.extend(_job_pids(s.eval_id, "hpc.evaluate")) or pids, 240,
                    "the evaluation job's python to start")
    os.kill(pids[0], signal.SIGKILL)
    _finish(s, 60, "the killed evaluation job did not leave the queue")
    results = s.study_dir / "results" / "results.json"
    assert not results.exists(), "the evaluation finished before it could be killed: nothing was tested"
    env = {**os.environ, "PGPASSFILE": str(s.study_dir / ".pgpass")}  # the launcher's passfile: no password in argv
    public = StorageURL.parse(s.url).public
    rerun = subprocess.run(["sbatch", "--parsable", f"--job-name=dualseg-eval-{s.study}",
                            f"--output={s.logdir}/%j_0_log.out", f"--export=ALL,DUALSEG_STUDY={s.study},"
                            f"DUALSEG_STORAGE_URL={public}", "sbatch/eval.sbatch"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    assert rerun.returncode == 0, rerun.stderr
    _finish(s, 180, "the evaluation job submitted by hand did not finish")
    faults.exact(s, 1)
    assert results.exists()


# ---- 8. one rank of a 2-node trial runs out of memory --------------------------------------------------

RANK1_LIMIT = """\
# Test fault: an address-space limit on rank 1 of the job's step only (as a smaller node would have).
import os
import resource

if os.environ.get("SLURM_PROCID") == "1" and os.environ.get("SLURM_STEP_ID", "batch") not in ("batch", "extern"):
    resource.setrlimit(resource.RLIMIT_AS, (3_000_000 * 1024, 3_000_000 * 1024))
"""


@pytest.mark.timeout(480)
def test_out_of_memory_on_rank_1_fails_the_trial_in_seconds_and_the_job_goes_on(slurm_env, pg_db_url, tiny_args,
                                                                                 tmp_path, faults) -> None:
    """A 2-node job whose rank 1 alone has a 3 GB address-space limit (``sitecustomize`` on the jobs'
    ``PYTHONPATH``, through ``hpc.setup``); trial 0 draws ``model.base_width=2048``: rank 1 runs out of
    memory, rank 0 does not. The trial must fail within seconds, not after the collective timeout, with rank
    1's error recorded, and the job must go on with the next trial."""
    hook = tmp_path / "rank1"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(RANK1_LIMIT)
    s = faults.launch(tiny_args, pg_db_url, "cmp-rank1", "--nodes", "2", "--workers", "1", "--trials", "2",
                      "--time", "10", "--set", "hpc.seed=4",
                      "--set", "hpc.search={model.base_width: {type: categorical, choices: [8, 2048]}}",
                      "--set", f'hpc.setup=["export PYTHONPATH={hook}${{PYTHONPATH:+:$PYTHONPATH}}"]')
    _finish(s, 240, "after rank 1 ran out of memory the study did not finish (ranks stuck in a collective?)")
    trials = faults.exact(s, 2)
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert [t.params["model.base_width"] for t in failed] == [2048], [(t.number, t.state.name, t.params)
                                                                     for t in trials]
    t = failed[0]
    took = (t.datetime_complete - t.datetime_start).total_seconds()
    assert took < 120, f"trial {t.number} failed only after {took:.0f} s"
    assert "rank 1" in t.user_attrs.get("error", ""), t.user_attrs
    text = s.log(None, 0).read_text(errors="replace")
    assert "Exiting after successful completion" in text, text[-3000:]
    assert "no worker left: resubmitted" not in s.text()
