"""Fault suite, job side: real signals, killed ranks, requeues, a node going down, failing trials,
damaged checkpoints, a real time limit, a one-CPU partition — on the real two-node SLURM bed.

Every scenario ends with the invariant a user cares about (:func:`tests.faults.conftest.assert_exact`):
exactly the requested number of finished trials, nothing left RUNNING, each epoch of each trial
trained once (the affected trial resumed, not restarted), and ``results.json`` written when the
evaluation job was submitted. Signals are real (``scancel -s``, ``kill -9`` of a rank's pid,
``scontrol requeue``/``update``), never mocked.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.postgres]
SLOW = ["--set", "data.samples_per_tile=24"]  # a few seconds per epoch: faults land mid-trial


def _rank_pid(array_task: str, rank: int) -> int:
    """PID of one rank of a running array task (all ranks run on this host in the test bed)."""
    job, _, task = array_task.partition("_")
    for proc in Path("/proc").iterdir():
        try:
            env = dict(kv.split("=", 1) for kv in (proc / "environ").read_text().split("\0") if "=" in kv)
            cmd = (proc / "cmdline").read_text()
        except (OSError, ValueError):
            continue
        ids = ((env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")) if task
               else (env.get("SLURM_JOB_ID"), None))
        if ids == (job, task or None) and env.get("SLURM_PROCID") == str(rank) and "submitit.core._submit" in cmd:
            return int(proc.name)
    pytest.fail(f"no rank {rank} process of {array_task}")


def _scontrol(*args: str) -> None:
    subprocess.run(["scontrol", *args], check=True, timeout=30, capture_output=True)


def _trial_of(text: str) -> int:
    return int(re.findall(r"hpc\.worker: trial (\d+) \((?:new|retry|handed back)\)", text)[-1])


def test_sigkill_of_rank_0_and_rank_1_then_every_worker_is_gone(slurm_env, pg_db_url, tiny_args, faults) -> None:
    """Task 0 loses rank 1, task 1 loses rank 0: both jobs die; the evaluation job heals the study."""
    s = faults.launch(tiny_args, pg_db_url, "kill", "--nodes", "2", "--trials", "3", "--workers", "2", "--time", "10",
                      "--set", "train.epochs=3", *SLOW)
    for task, rank in ((0, 1), (1, 0)):
        s.wait_line(s.log(task), "epoch 0:", 150)
        os.kill(_rank_pid(f"{s.array}_{task}", rank), signal.SIGKILL)
    s.wait_done(timeout=420)
    trials = faults.exact(s, 3, epochs=3)
    text = s.text()
    assert "no worker left: resubmitted" in text, text[-3000:]
    retried = [t for t in trials if t.system_attrs.get("failed_trial") is not None and t.state.name == "COMPLETE"]
    assert len(retried) >= 1
    for t in retried:  # the retry continued where the killed trial stopped
        assert re.search(rf"trial-{t.number}/last\.pt at epoch [1-9]|trial {t.number} resumes from", text), text[-3000:]


def test_scancel_of_a_task_asks_nothing_new_and_its_trial_resumes(slurm_env, pg_db_url, tiny_args, faults) -> None:
    """``scancel`` one task mid-trial: it saves, asks nothing, and the other task continues its trial.
    Then ``scancel`` the whole array: the evaluation job fails what was running and resubmits workers."""
    s = faults.launch(tiny_args, pg_db_url, "cancel", "--trials", "3", "--workers", "2", "--time", "10",
                      "--set", "train.epochs=3", "--set", "hpc.grace_period=8", *SLOW)
    s.wait_line(s.log(0), "epoch 0:", 150)
    victim = _trial_of(s.log(0).read_text())
    subprocess.run(["scancel", f"{s.array}_0"], check=True, timeout=30)
    s.wait_line(s.log(0), "stopping after SIGTERM", 60)
    time.sleep(3)
    tail = s.log(0).read_text().split("stopping after SIGTERM")[1]
    assert "(new)" not in tail, "a cancelled job started a new trial"
    s.wait_line(s.log(1), f"resumes from the checkpoint of failed trial {victim}", 200)
    subprocess.run(["scancel", s.array], check=True, timeout=30)  # now every worker is gone
    s.wait_done(timeout=480)
    faults.exact(s, 3, epochs=3)
    assert "no worker left: resubmitted" in s.text()


def test_preemption_requeue_resumes_the_same_trial_mid_epoch(slurm_env, pg_db_url, tiny_args, faults) -> None:
    """``scontrol requeue`` does what ``PreemptMode=REQUEUE`` does: SIGTERM, KillWait, SIGKILL, requeue."""
    s = faults.launch(tiny_args, pg_db_url, "preempt", "--trials", "1", "--workers", "1", "--time", "10",
                      "--set", "train.epochs=3", *SLOW)
    s.wait_line(s.log(None), "epoch 0:", 150)
    _scontrol("requeue", s.array)
    s.wait_done(timeout=300)
    text = s.log(None).read_text()
    trials = faults.exact(s, 1, epochs=3)
    assert [t.state.name for t in trials] == ["COMPLETE"], "the preempted trial was continued, not retried"
    assert "received SIGTERM" in text, text[-3000:]
    assert re.search(r"interrupted during \w+ \(epoch \d+ step [1-9]", text), text[-3000:]
    assert text.count("trial 0 (new)") == 1 and "trial 0 (resumed)" in text, text[-3000:]


@pytest.mark.timeout(600 + 720)  # its own 600 s, after waiting for the other worker's scenario (at most 720 s)
@pytest.mark.whole_bed  # a DOWN node requeues every job on it: another scenario's job too (CI saw it)
def test_node_down_mid_job_requeues_and_the_trial_continues(slurm_env, pg_db_url, tiny_args, faults) -> None:
    s = faults.launch(tiny_args, pg_db_url, "down", "--trials", "1", "--workers", "1", "--time", "10",
                      "--set", "train.epochs=3", *SLOW)
    s.wait_line(s.log(None), "epoch 0:", 150)
    node = subprocess.run(["squeue", "-h", "-j", s.array, "-o", "%N"], capture_output=True, text=True,
                          timeout=30).stdout.strip()
    assert node in ("n1", "n2"), node
    _scontrol("update", f"nodename={node}", "state=down", "reason=dualseg-fault-test")
    try:
        faults.wait_for(lambda: "stopping after SIGTERM" in s.log(None).read_text(), 60, "the job to stop")
    finally:  # (the bed's ReturnToService may already have brought it back)
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], timeout=30, capture_output=True)
    s.wait_done(timeout=300)
    trials = faults.exact(s, 1, epochs=3)
    assert [t.state.name for t in trials] == ["COMPLETE"]
    assert "trial 0 (resumed)" in s.log(None).read_text()


def _usr2(array: str) -> None:
    """``scancel -s USR2``: SLURM refuses a signal while the job is down for a requeue and scancel retries it
    every few seconds until the job runs again; the job may finish before a retry lands (scancel then exits
    with ESLURM_ALREADY_DONE, or says "Invalid job id" once it is purged), no failure of the scenario."""
    r = subprocess.run(["scancel", "-s", "USR2", array], capture_output=True, text=True, timeout=180)
    # 229: ESLURM_ALREADY_DONE (2021) as an exit status, which scancel returns without a word
    assert r.returncode in (0, 2021 % 256) or "Invalid job id" in r.stderr, (r.returncode, r.stderr)


def test_usr2_during_startup_and_twice_in_a_row(slurm_env, pg_db_url, tiny_args, faults) -> None:
    s = faults.launch(tiny_args, pg_db_url, "usr2", "--trials", "1", "--workers", "1", "--time", "10",
                      "--set", "train.epochs=4", *SLOW)
    s.wait_line(s.log(None), "trial 0 (new)", 120)
    subprocess.run(["scancel", "-s", "USR2", s.array], check=True, timeout=30)  # during start-up: data, statistics
    faults.wait_for(lambda: s.log(None).read_text().count("Requeued job") >= 1, 120, "the first requeue")
    s.wait_line(s.log(None), "epoch 1:", 200)
    for _ in range(2):  # twice in a row, mid-epoch
        _usr2(s.array)
        time.sleep(0.3)
    # once more while the job is down for its requeue: SLURM refuses it ("try again later"), scancel retries
    # it and delivers it to the requeued job's tasks just after they start, before any handler is set
    faults.wait_for(lambda: s.log(None).read_text().count("hpc.worker: requeueing") >= 2, 120, "the second requeue")
    _usr2(s.array)
    s.wait_done(timeout=300)
    text = s.log(None).read_text()
    trials = faults.exact(s, 1, epochs=4)
    assert [t.state.name for t in trials] == ["COMPLETE"] and text.count("(new)") == 1, text[-3000:]
    assert "trial 0 (resumed)" in text


def test_out_of_memory_fails_that_trial_and_the_job_goes_on(slurm_env, pg_db_url, tiny_args, faults) -> None:
    """``ulimit -v`` through ``hpc.setup`` and a search space with a too-large width (trial 0 draws it)."""
    s = faults.launch(tiny_args, pg_db_url, "oom", "--trials", "2", "--workers", "1", "--time", "10", "--no-eval",
                      "--set", "hpc.setup=[ulimit -v 3000000]", "--set", "hpc.seed=4",
                      "--set", "hpc.search={model.base_width: {type: categorical, choices: [8, 2048]}}")
    s.wait_done(timeout=300)
    trials = faults.exact(s, 2)
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and failed[0].params["model.base_width"] == 2048
    assert "out of memory" in failed[0].user_attrs["error"]
    text = s.log(None).read_text()
    assert "ran out of memory with {'model.base_width': 2048}" in text
    assert "Exiting after successful completion" in text, "the job must survive its trial's OOM"


def test_truncated_last_checkpoint_while_queued_continues_from_the_previous_state(slurm_env, pg_db_url, tiny_args,
                                                                                 faults) -> None:
    s = faults.launch(tiny_args, pg_db_url, "trunc", "--trials", "1", "--workers", "1", "--time", "10", "--no-eval",
                      "--set", "train.epochs=4", *SLOW)
    s.wait_line(s.log(None), "epoch 1:", 200)
    _scontrol("hold", s.array)  # keep it in the queue once requeued
    subprocess.run(["scancel", "-s", "USR2", s.array], check=True, timeout=30)
    faults.wait_for(lambda: "Requeued job" in s.log(None).read_text(), 120, "the requeue")
    last = s.study_dir / "trial-0" / "last.pt"
    faults.wait_for(lambda: subprocess.run(["squeue", "-h", "-j", s.array, "-o", "%T"], capture_output=True,
                                           text=True).stdout.strip() == "PENDING", 60, "the job to wait in the queue")
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3])  # damaged while the job waits
    _scontrol("release", s.array)
    s.wait_done(timeout=300)
    trials = faults.exact(s, 1, epochs=4)
    text = s.log(None).read_text()
    assert [t.state.name for t in trials] == ["COMPLETE"] and text.count("(new)") == 1, text[-3000:]
    assert "trial 0 (resumed)" in text, text[-3000:]
    assert re.search(r"skipped last\.pt \(not a dualseg checkpoint \(truncated or corrupt\)\)"
                     r".*resuming from \S*last\.prev\.pt", text), text[-3000:]


def test_real_time_limit_with_the_evaluation_job(slurm_env, pg_db_url, tiny_args, faults) -> None:
    """Nobody but SLURM interrupts (``--time 1``, ``hpc.signal_delay_s=15``); the evaluation job runs after the
    last requeue. slurmctld checks limits every ~30 s, so USR2 comes 15-45 s before the limit."""
    epochs = 14
    s = faults.launch(tiny_args, pg_db_url, "tl", "--trials", "1", "--workers", "1", "--time", "1",
                      "--set", "hpc.signal_delay_s=15", "--set", f"train.epochs={epochs}",
                      "--set", "train.patience=100", "--set", "data.samples_per_tile=128")
    s.wait_done(timeout=420)
    text = s.log(None).read_text()
    trials = faults.exact(s, 1, epochs=epochs)
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE")]
    assert "Job has timed out" in text and "received SIGUSR2" in text, text[-3000:]
    assert text.count("trial 0 (new)") == 1 and "trial 0 (resumed)" in text
    for epoch in range(epochs):  # every epoch trained (and logged) exactly once
        assert text.count(f"epoch {epoch}: train_loss") == 1, (epoch, text[-3000:])
    assert (s.study_dir / "results" / "results.json").exists()


def test_one_cpu_partition_without_cpus_per_task(slurm_env, pg_db_url, tiny_args, faults) -> None:
    """A partition that offers 1 CPU per node: the evaluation job is derived to fit, checked before submitting."""
    s = faults.launch([a if a != os.environ["DUALSEG_TEST_PARTITION"] else "one" for a in tiny_args], pg_db_url,
                      "onecpu", "--trials", "1", "--workers", "1", "--time", "10", "--partition", "one",
                      "--set", "train.epochs=1")
    s.wait_done(timeout=240)
    faults.exact(s, 1)
    script = next(s.logdir.glob("eval-*.sbatch")).read_text()
    assert "#SBATCH --cpus-per-task=1" in script and "#SBATCH --partition=one" in script


def test_sigkill_of_a_refit_final_runs_rank_heals_and_keeps_the_exact_count(slurm_env, pg_db_url, tiny_args,
                                                                            faults) -> None:
    """hpc.final with refit train+val (no validation split, a fixed epoch count): a rank of the final runs'
    job is killed mid-trial; the final study's evaluation job heals it like any search (resubmits, the killed
    member's retry resumes), exactly 2 members finish, each epoch once, never validated; results.json."""
    import json

    import optuna

    from hpc.study import StudyRecord, TrialRecord

    s = faults.launch(tiny_args, pg_db_url, "fkill", "--nodes", "2", "--trials", "1", "--workers", "1",
                      "--time", "10", "--set", "train.epochs=3", *SLOW,
                      "--set", "hpc.final={seeds: 2, refit: train+val, epochs: 3}")

    def final_arrays() -> list[str]:
        try:
            return StudyRecord.read(optuna.load_study(study_name="fkill/final", storage=pg_db_url)).arrays
        except KeyError:
            return []

    faults.wait_for(lambda: bool(final_arrays()), 300, "the final runs' array")
    final = faults.follow(s, "fkill/final", final_arrays()[0])
    final.wait_line(final.log(None), "epoch 0:", 200)
    os.kill(_rank_pid(final.array, 1), signal.SIGKILL)
    s.wait_done(timeout=600)
    trials = faults.exact(final, 2, epochs=3)
    assert sorted(TrialRecord.of(t).member for t in trials if t.state.name == "COMPLETE") == [0, 1]
    record = StudyRecord.read(optuna.load_study(study_name="fkill/final", storage=pg_db_url))
    assert len(record.arrays) >= 2 and record.objective == "train_loss"
    retried = [t for t in trials if t.system_attrs.get("failed_trial") is not None and t.state.name == "COMPLETE"]
    assert retried, [(t.number, t.state.name) for t in trials]
    for t in trials:
        if t.state.name == "COMPLETE":
            rows = (final.study_dir / f"trial-{t.number}" / "metrics.jsonl").read_text().splitlines()
            assert not any(k.startswith("val_") for row in rows for k in json.loads(row)), rows  # never validated
    section = json.loads((s.study_dir / "results" / "results.json").read_text())["final"]
    assert section["complete"] == 2 and section["summary"]["ensemble"] is not None
    faults.exact(s, 1)
