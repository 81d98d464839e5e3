"""Run directory resolution, writability check and metrics.jsonl handling."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualseg.config import Config
from dualseg.errors import InputError
from dualseg.train.rundir import append_metrics, default_run_dir, ensure_writable, read_metrics, rewrite_metrics


def test_scratch_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = Config()
    monkeypatch.delenv("SCRATCH", raising=False)
    assert default_run_dir(cfg) == Path("runs/run")
    monkeypatch.setenv("SCRATCH", str(tmp_path / "s"))
    assert default_run_dir(cfg) == tmp_path / "s" / "run"
    cfg.train.scratch = str(tmp_path / "cfg")
    cfg.train.run_name = "exp1"
    assert default_run_dir(cfg) == tmp_path / "cfg" / "exp1"


def test_unwritable_run_dir_names_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where a directory should be: fails even as root
    with pytest.raises(InputError, match=r"scratch: run directory .*file/run is not writable"):
        ensure_writable(blocker / "run")


def test_metrics_rewrite_and_append(tmp_path: Path) -> None:
    rewrite_metrics(tmp_path, [{"epoch": 0, "val_loss": 1.0}, {"epoch": 1, "val_loss": 0.9}])
    append_metrics(tmp_path, {"epoch": 2, "val_loss": 0.8, "val_iou": [None, 0.5]})
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [0, 1, 2]
    rewrite_metrics(tmp_path, read_metrics(tmp_path)[:1])
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [0]
    with pytest.raises(ValueError):
        append_metrics(tmp_path, {"epoch": 3, "val_loss": float("nan")})


def test_writable_check_creates_nothing(tmp_path: Path) -> None:
    """A run that fails after the check (bad data) must not leave an empty run folder."""
    ensure_writable(tmp_path / "scratch" / "run")
    assert list(tmp_path.iterdir()) == []
    rewrite_metrics(tmp_path / "scratch" / "run", [])  # the run's first file creates the folder
    assert (tmp_path / "scratch" / "run" / "metrics.jsonl").is_file()


def test_has_checkpoint_sees_any_resumable_file(tmp_path: Path) -> None:
    from dualseg.train.rundir import CHECKPOINTS, has_checkpoint

    assert CHECKPOINTS == ("last.pt", "last.prev.pt", "best.pt")
    assert not has_checkpoint(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    assert not has_checkpoint(tmp_path)
    (tmp_path / "last.prev.pt").write_bytes(b"x")  # a kill between the rotation's renames leaves only this
    assert has_checkpoint(tmp_path)


def test_step_seconds_sums_train_and_validation_time(tmp_path: Path) -> None:
    from dualseg.train.rundir import append_metrics, step_seconds

    assert step_seconds(tmp_path) == 0.0
    append_metrics(tmp_path, {"epoch": 0, "train_time_s": 1.5, "val_time_s": 0.25})
    append_metrics(tmp_path, {"epoch": 1, "val_time_s": 0.5})  # a record from before train_time_s
    assert step_seconds(tmp_path) == 2.25
