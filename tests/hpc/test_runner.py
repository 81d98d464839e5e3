"""hpc.runner: the loop's judgement of a failure, and a full scratch that pauses a trial instead of failing it.

The full scratch is real: a small tmpfs mounted as the study's scratch, filled by a ballast file while a
trial trains and freed a few seconds later (root only, as on the bed and in CI).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from dualseg.errors import TrainingError
from hpc.runner import EnvironmentOutage, _fail_trial, _judge
from hpc.trials import Assignment


def test_judgement_of_failures() -> None:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/scratch/s/trial-0/.last.pt.next")
        except OSError as inner:
            raise TrainingError("checkpoint: rank 0 could not write") from inner
    except TrainingError as wrapped:
        assert _judge(wrapped) == "environment"
    assert _judge(OSError(errno.EDQUOT, "Disk quota exceeded")) == "environment"
    assert _judge(OSError(errno.ENOENT, "No such file")) == "trial"  # a vanished file is the trial's
    assert _judge(TrainingError("non-finite loss")) == "trial"
    assert _judge(ImportError("broken install")) == "fatal"


def test_a_failed_trial_logs_what_its_wrapper_hides(caplog: pytest.LogCaptureFixture) -> None:
    try:
        try:
            raise ConnectionError("server closed the connection unexpectedly")
        except ConnectionError as inner:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from inner
    except optuna.exceptions.StorageInternalError as wrapped:
        with caplog.at_level("ERROR", logger="hpc.worker"):
            _fail_trial(None, Assignment("train", 1, 7), wrapped, fatal=False)
    assert "trial 7 failed: StorageInternalError: An exception is raised during the commit." in caplog.text
    assert "because of: ConnectionError: server closed the connection unexpectedly" in caplog.text


def test_environment_outage_backs_off_within_its_budget() -> None:
    outage = EnvironmentOutage(budget_s=5.0)
    delays = [outage.failed() for _ in range(3)]
    assert delays[0] == 2.0 and all(d is not None and 1.0 <= d <= 5.0 for d in delays)
    outage.since = time.monotonic() - 6.0  # the budget is spent
    assert outage.failed() is None and outage.lasted() >= 6.0


@pytest.fixture()
def tmpfs(tmp_path: Path):
    mnt = tmp_path / "scratch"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        from tests.conftest import service_missing

        service_missing(f"cannot mount a tmpfs for the full-scratch test: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_scratch_pauses_the_trial_and_the_search_goes_on(tmpfs: Path, tmp_path: Path, tiny_data: Path,
                                                                 hpc_tools: SimpleNamespace) -> None:
    db = tmp_path / "study.db"  # the database lives elsewhere: only the scratch fills up
    log = tmp_path / "launch.log"
    ballast = tmpfs / "ballast"

    def fill_then_free() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            text = "".join(p.read_text(errors="replace") for p in tmpfs.rglob("*_log.out"))
            if "epoch 0:" in text:
                break
            time.sleep(0.2)
        fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)  # unbuffered: fill up to the last byte
        try:
            for size in (1 << 20, 4096, 1):
                try:
                    while True:
                        os.write(fd, b"\0" * size)
                except OSError:
                    pass
        finally:
            os.close(fd)
        time.sleep(8)
        ballast.unlink()

    filler = threading.Thread(target=fill_then_free, daemon=True)
    filler.start()
    with open(log, "w") as out:
        r = subprocess.run([sys.executable, "hpc/launch.py", "--config", str(hpc_tools.tiny), "--scratch", str(tmpfs),
                            "--storage", f"sqlite:///{db}", "--study", "full", "--trials", "2", "--executor", "local",
                            "--set", f"data.root={tiny_data}", "--set", "train.epochs=4",
                            "--set", "data.samples_per_tile=16", "--set", "hpc.env_outage_s=120"],
                           cwd=hpc_tools.repo, stdout=out, stderr=subprocess.STDOUT, timeout=420)
    filler.join(timeout=5)
    text = log.read_text() + "".join(p.read_text(errors="replace") for p in (tmpfs / "full" / "logs").glob("*"))
    assert r.returncode == 0, text[-3000:]
    assert "the file system's fault, not the trial's" in text and "works again" in text, text[-3000:]
    trials = optuna.load_study(study_name="full", storage=f"sqlite:///{db}").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"], [t.user_attrs for t in trials]
    assert (tmpfs / "full" / "results" / "results.json").is_file()
    shutil.rmtree(tmpfs / "full", ignore_errors=True)


def test_a_job_with_nothing_to_train_gives_its_allocation_back(tmp_path: Path, tiny_data: Path,
                                                               hpc_tools: SimpleNamespace) -> None:
    """Two workers, one trial: the idle one leaves after hpc.max_wait_s instead of polling to the end."""
    db = tmp_path / "s.db"
    r = subprocess.run([sys.executable, "hpc/launch.py", "--config", str(hpc_tools.tiny), "--scratch",
                        str(tmp_path / "scratch"), "--storage", f"sqlite:///{db}", "--study", "idle", "--trials", "1",
                        "--executor", "local",
                        "--workers", "2", "--no-eval", "--set", f"data.root={tiny_data}", "--set", "train.epochs=3",
                        "--set", "data.samples_per_tile=8", "--set", "hpc.max_wait_s=1"],
                       cwd=hpc_tools.repo, capture_output=True, text=True, timeout=300)
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "scratch" / "idle" / "logs").glob("*_log.out"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert logs.count("releasing the allocation") == 1, logs[-3000:]
    trials = optuna.load_study(study_name="idle", storage=f"sqlite:///{db}").trials
    assert [t.state.name for t in trials] == ["COMPLETE"]


def test_a_lost_trial_is_dropped_not_failed() -> None:
    from dualseg.train.failures import PeerFailure
    from hpc.trials import TrialLost

    try:
        try:
            raise TrialLost("trial 3 belongs to another job now")
        except TrialLost as lost:
            raise PeerFailure(0, "TrialLost", "TrialLost: trial 3 belongs to another job now", "trial", False) \
                from lost
    except PeerFailure as agreed:
        assert _judge(agreed) == "lost"
    assert _judge(TrialLost("trial 3 is COMPLETE")) == "lost"
