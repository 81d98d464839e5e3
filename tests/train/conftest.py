"""Tiny real synthetic tiles (generated once per session) and small configs to train on them."""

from __future__ import annotations

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
