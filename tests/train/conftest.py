"""Tiny real synthetic tiles (generated once per session) and small configs to train on them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from dualseg.config import Config, SyntheticConfig, from_dict
from dualseg.data import generate

TINY = {"tiles": 8, "size": 48, "classes": 3, "s1_dates": 8, "s2_dates": 6, "parcel_size": 6}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiles")
    generate(root, SyntheticConfig(**TINY))
    return root


def tiny_dict(root: Path, default_scratch: Path, **train: Any) -> dict[str, Any]:
    return {
        "data": {"root": str(root), "patch_size": 16, "samples_per_tile": 4, "cache_mb": 64},
        "model": {"levels": 2, "base_width": 8, "n_heads": 2, "d_k": 4, "dropout": 0.1},
        "train": {"epochs": 4, "batch_size": 4, "lr": 3e-3, "warmup_epochs": 1, "scratch": str(default_scratch),
                  "device": "cpu", "log_every": 1, **train},
    }


@pytest.fixture
def make_cfg(tiny_root: Path, tmp_path: Path) -> Callable[..., Config]:
    """``make_cfg(run_name="a", epochs=2, ...)``: a tiny config with train.* overrides."""

    def make(**train: Any) -> Config:
        return from_dict(Config, tiny_dict(tiny_root, tmp_path / "scratch", **train))

    return make


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def two_ranks() -> Callable[..., list[str]]:
    """``two_ranks(script, *args, timeout=240)``: ``python -c script *args`` as 2 gloo ranks with torchrun's
    variables (``{rank}`` in an argument becomes the rank); asserts both exit 0 and returns their output.
    No rank outlives the call (a hang is killed)."""

    def run(script: str, *args: str, timeout: float = 240) -> list[str]:
        port, procs = _free_port(), []
        for rank in range(2):
            env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                   "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                   "OMP_NUM_THREADS": "1", "DUALSEG_PROGRESS": "0"}
            argv = [a.replace("{rank}", str(rank)) for a in args]
            procs.append(subprocess.Popen([sys.executable, "-c", script, *argv], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
        try:
            logs = [p.communicate(timeout=timeout)[0] for p in procs]
        finally:
            for p in procs:
                p.kill()
        for p, log in zip(procs, logs):
            assert p.returncode == 0, log[-3000:]
        return logs

    return run
