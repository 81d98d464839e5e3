"""The worker's counting, retry and requeue rules, on real storages and the real SLURM test bed.

The first tests race several OS processes through the real Coordinator (the ask lock, the counting,
Optuna's heartbeat + retry callback) on SQLite and PostgreSQL, with a short sleep standing in for
training so the race window is exercised many times in a few seconds. The SLURM tests then run the
whole path: 2-node gloo DDP trials that are requeued by USR2 or lose a rank to SIGKILL.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from hpc.storage import StorageURL, create_or_load_study, open_database

# ---------------------------------------------------------------- the real test bed: SLURM + PostgreSQL


def _launch(hpc_tools: SimpleNamespace, tiny_args: list[str], pg_db_url: str, *extra: str) -> tuple[str, Path]:
    r = hpc_tools.run_cli("launch.py", *tiny_args, "--nodes", "2", "--partition", os.environ["DUALSEG_TEST_PARTITION"],
                          "--time", "10", "--no-eval", *extra, env={"DUALSEG_STORAGE": pg_db_url}, timeout=120)
    assert r.returncode == 0, r.stderr
    array, _ = hpc_tools.job_ids_from(r.stdout)
    scratch = Path(tiny_args[tiny_args.index("--scratch") + 1])
    return array, scratch


def _wait_for_line(path: Path, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        time.sleep(0.5)
    pytest.fail(f"{needle!r} did not appear in {path} within {timeout}s")


def _rank_pid(array_task: str, rank: int) -> int:
    """PID of one rank of a running array task (all ranks run on this host in the test bed)."""
    job, task = array_task.split("_")
    for proc in Path("/proc").iterdir():
        try:
            env = dict(kv.split("=", 1) for kv in (proc / "environ").read_text().split("\0") if "=" in kv)
            cmd = (proc / "cmdline").read_text()
        except (OSError, ValueError):
            continue
        if (env.get("SLURM_ARRAY_JOB_ID") == job and env.get("SLURM_ARRAY_TASK_ID") == task
                and env.get("SLURM_PROCID") == str(rank) and "submitit.core._submit" in cmd):
            return int(proc.name)
    pytest.fail(f"no rank {rank} process of {array_task}")


def _epochs(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


@pytest.mark.slurm
@pytest.mark.postgres
def test_usr2_requeues_and_the_same_trial_resumes(slurm_env, pg_db_url, hpc_tools, tiny_args) -> None:
    """USR2 (what SLURM sends at the time limit / on preemption) -> save, requeue, same trial continues.

    A second array task keeps polling the study meanwhile (grace_period 12 s < the time the requeued
    job waits in the queue): it must not declare the requeued trial dead and retry it.
    """
    array, scratch = _launch(hpc_tools, tiny_args, pg_db_url, "--trials", "2", "--workers", "2", "--study", "rq",
                             "--set", "train.epochs=5", "--set", "data.samples_per_tile=8")
    log0 = scratch / "rq" / "logs" / f"{array}_0_0_log.out"
    _wait_for_line(log0, "epoch 0:", 120)
    subprocess.run(["scancel", "-s", "USR2", f"{array}_0"], check=True, timeout=30)
    _wait_for_line(log0, "Requeued job", 60)
    hpc_tools.wait_gone([array], timeout=240)
    text = log0.read_text()
    number = int(re.search(r"hpc\.worker: trial (\d+) \(new\)", text).group(1))
    trials = optuna.load_study(study_name="rq", storage=pg_db_url).trials
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE"], [(t.number, t.state.name) for t in trials]
    assert f"trial {number} (resumed)" in text and "resumed from" in text
    assert text.count("epoch 0:") == 1, "epoch 0 was re-run after the requeue"
    assert _epochs(scratch / "rq" / f"trial-{number}") == [0, 1, 2, 3, 4]
    assert not trials[number].user_attrs.get("requeued_job")


@pytest.mark.slurm
@pytest.mark.postgres
def test_sigkill_of_a_rank_retries_the_trial_and_the_count_is_exact(slurm_env, pg_db_url, hpc_tools, tiny_args) -> None:
    array, scratch = _launch(hpc_tools, tiny_args, pg_db_url, "--trials", "3", "--workers", "2", "--study", "sk",
                             "--set", "train.epochs=3", "--set", "data.samples_per_tile=6")
    log0 = scratch / "sk" / "logs" / f"{array}_0_0_log.out"
    _wait_for_line(log0, "epoch 0:", 120)
    os.kill(_rank_pid(f"{array}_0", 1), signal.SIGKILL)
    hpc_tools.wait_gone([array], timeout=240)
    study = optuna.load_study(study_name="sk", storage=pg_db_url)
    states = [t.state.name for t in study.trials]
    assert _finished(study) == 3 and "RUNNING" not in states and "WAITING" not in states, states
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(failed) == 1
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == failed[0].number)
    assert retry.state.name == "COMPLETE"
    logs = "".join(p.read_text() for p in (scratch / "sk" / "logs").glob(f"{array}_*_0_log.out"))
    assert f"trial {retry.number} resumes from the checkpoint of failed trial {failed[0].number}" in logs
    # the retry continued where the killed trial stopped instead of starting at epoch 0
    assert re.search(rf"trial {retry.number} epoch -\] INFO dualseg\.train\.trainer: resumed from "
                     rf"\S*trial-{retry.number}/last\.pt at epoch [1-9]", logs), logs[-3000:]
    assert _epochs(scratch / "sk" / f"trial-{retry.number}") == [0, 1, 2]


@pytest.mark.slurm
@pytest.mark.postgres
def test_pickle_free_train_sbatch(slurm_env, pg_db_url, hpc_tools, tiny_args, tmp_path) -> None:
    """`launch.py --prepare-only` + `sbatch sbatch/train.sbatch`: python -m hpc.worker under srun, 2 nodes."""
    r = hpc_tools.run_cli("launch.py", *tiny_args, "--study", "plain", "--trials", "2", "--prepare-only",
                          "--executor", "slurm", env={"DUALSEG_STORAGE": pg_db_url})
    assert r.returncode == 0, r.stderr
    logdir = tmp_path / "plain-logs"
    logdir.mkdir()
    out = subprocess.run(["sbatch", "--parsable", "--array=0-1", "--nodes=2", f"--partition={slurm_env['partition']}",
                          f"--chdir={logdir}", str(hpc_tools.repo / "sbatch" / "train.sbatch")],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "DUALSEG_STORAGE": pg_db_url, "DUALSEG_STUDY": "plain",
                              "DUALSEG_REPO": str(hpc_tools.repo), "DUALSEG_PYTHON": sys.executable})
    assert out.returncode == 0, out.stderr
    array = out.stdout.strip().split(";")[0]
    hpc_tools.wait_gone([array], timeout=180)
    study = optuna.load_study(study_name="plain", storage=pg_db_url)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert (tmp_path / "scratch" / "plain" / "trial-1" / "best.pt").exists()
    text = "".join(p.read_text() for p in logdir.glob(f"{array}_*_1_log.out"))
    assert "[rank 1/2 node n" in text  # rank 1 of the 2-node job trained too



@pytest.mark.slurm
@pytest.mark.postgres
def test_real_time_limit_requeues_and_the_same_trial_resumes(slurm_env, pg_db_url, hpc_tools, tiny_args) -> None:
    """Nobody but SLURM interrupts: ``--time 1`` and ``hpc.signal_delay_s=15``.

    slurmctld checks limits on a fixed ~30 s cycle and sends the ``--signal`` warning up to one
    cycle *early*, so USR2 comes 15-45 s into an allocation (with a delay >= 30 s it would come at
    the first check after the start, often before training begins), 15-45 s before the limit and
    at least ~15 s before the time-limit kill. The trial needs more than one allocation (slow
    epochs from more samples per tile, not sleeps), so it must be continued across requeues: the
    same trial number, finished epochs never re-run. Requeue counts depend on load and on the
    phase of SLURM's cycle; only progress across requeues is asserted.
    """
    epochs = 16
    array, scratch = _launch(hpc_tools, tiny_args, pg_db_url, "--trials", "1", "--workers", "1", "--nodes", "1",
                             "--study", "tl", "--time", "1", "--set", "hpc.signal_delay_s=15",
                             "--set", f"train.epochs={epochs}", "--set", "train.patience=100",
                             "--set", "data.samples_per_tile=128")
    hpc_tools.wait_gone([array], timeout=300)
    logs = sorted((scratch / "tl" / "logs").glob(f"{array}_*log.out"))  # one task: no array index
    assert len(logs) == 1, logs
    text = logs[0].read_text()
    trials = optuna.load_study(study_name="tl", storage=pg_db_url).trials
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE")], [(t.number, t.state.name) for t in trials]
    assert trials[0].user_attrs["stopped"] == "completed", trials[0].user_attrs
    # SLURM's own signal (the test never signals the job), each followed by submitit's requeue
    assert "Job has timed out" in text, text[-3000:]
    requeued = set(re.findall(r"Requeued job \S+ \((\d+) remaining timeouts\)", text))  # lines are logged twice
    assert "received USR2" in text and len(requeued) >= 1, text[-3000:]
    record = subprocess.run(["scontrol", "show", "job", array], capture_output=True, text=True, timeout=30,
                            check=True).stdout
    assert "TimeLimit=00:01:00" in record and re.search(rf"\bRestarts={len(requeued)}\b", record), record
    # the same trial went on after every requeue that interrupted it (a USR2 that lands after the
    # trial finished requeues a job that only finds the study done)
    assert text.count("trial 0 (new)") == 1, text[-3000:]
    resumes = [int(e) for e in re.findall(r"resumed from \S*trial-0/last\.pt at epoch (\d+)", text)]
    assert len(resumes) >= 1 and text.count("trial 0 (resumed)") == len(resumes), text[-3000:]
    assert max(resumes) > 0 and resumes == sorted(resumes), resumes  # progress across requeues
    for epoch in range(epochs):  # every epoch trained (and logged) exactly once
        assert text.count(f"epoch {epoch}: train_loss") == 1, (epoch, text[-3000:])
    assert _epochs(scratch / "tl" / "trial-0") == list(range(epochs))
