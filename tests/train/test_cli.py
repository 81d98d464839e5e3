"""``python -m dualseg.train``: exit 0 / 1 (TrainingError) / 2 (InputError), one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from dualseg.config import Config, to_dict
from dualseg.train.__main__ import parse_override


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DUALSEG_PROGRESS": "0"}
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.run([sys.executable, "-m", "dualseg.train", *args], capture_output=True, text=True,
                          env=env, timeout=240)


@pytest.fixture
def config_file(make_cfg: Callable[..., Config], tmp_path: Path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(to_dict(make_cfg(epochs=1))))
    return p


def test_parse_override() -> None:
    assert parse_override("train.lr=1e-3") == ("train.lr", 1e-3)
    assert parse_override("train.epochs=3") == ("train.epochs", 3)
    assert parse_override("model.streams=s2") == ("model.streams", "s2")
    assert parse_override("data.train_tiles=[a, b]") == ("data.train_tiles", ["a", "b"])


def test_cli_trains_then_evaluates(config_file: Path, tmp_path: Path) -> None:
    r = _run("--config", str(config_file), "--set", "train.run_name=cli")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["stopped"] == "completed" and out["epochs_run"] == 1
    assert "[rank 0/1 node" in r.stderr
    e = _run("--evaluate", str(Path(out["run_dir"]) / "best.pt"), "--split", "val")
    assert e.returncode == 0, e.stderr[-2000:]
    assert 0 <= json.loads(e.stdout)["miou"] <= 1


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--set", "train.learning_rate=1"], 2, "error: config: unknown key train.learning_rate"),
        (["--set", "train.epochs=many"], 2, "error: config: train.epochs: expected int"),
        (["--set", "train.scratch=/dev/null/x"], 2, "error: scratch: run directory /dev/null/x/run is not writable"),
        (["--set", "train.lr=1e30", "--set", "train.log_every=50"], 1, "error: training: non-finite loss"),
    ],
)
def test_cli_exit_codes(config_file: Path, args: list[str], code: int, message: str) -> None:
    r = _run("--config", str(config_file), *args)
    assert r.returncode == code, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(message), last
    assert "Traceback" not in r.stderr


def test_cli_missing_config_and_checkpoint(tmp_path: Path) -> None:
    r = _run("--config", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "error: config: file not found" in r.stderr
    r = _run("--evaluate", str(tmp_path / "nope.pt"))
    assert r.returncode == 2 and "error: checkpoint: file not found" in r.stderr
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04" + b"\0" * 64)  # a truncated checkpoint
    r = _run("--evaluate", str(tmp_path / "cut.pt"))  # the file the user named is bad input: exit 2, as --help says
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: --evaluate: cannot load {tmp_path / 'cut.pt'}: not a dualseg checkpoint (truncated or corrupt)"]
