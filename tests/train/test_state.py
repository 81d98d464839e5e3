"""Run-state helpers: config checks, config diffs on resume, per-epoch seeds, checkpoint-safe values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualseg.config import Config
from dualseg.errors import InputError
from dualseg.train.state import check_train_config, config_changes, epoch_seed, plain


def test_check_train_config_names_option() -> None:
    cfg = Config()
    cfg.train.lr = 0.0
    with pytest.raises(InputError, match="train.lr must be > 0"):
        check_train_config(cfg)


def test_config_changes_ignores_paths() -> None:
    old = {"train": {"lr": 1e-3, "scratch": "/a", "run_name": "x"}, "model": {"levels": 3}, "hpc": {"k": 1}}
    new = {"train": {"lr": 3e-3, "scratch": "/b", "run_name": "y"}, "model": {"levels": 3}, "hpc": {"k": 2}}
    assert config_changes(old, new) == ["train.lr: 0.001 -> 0.003"]


def test_epoch_seed_depends_on_rank_and_epoch() -> None:
    epoch_seed(0, 0, 1)
    a = torch.rand(2)
    epoch_seed(0, 0, 1)
    assert torch.equal(a, torch.rand(2))
    epoch_seed(0, 1, 1)
    assert not torch.equal(a, torch.rand(2))


def test_plain_converts_numpy_and_rejects_objects() -> None:
    out = plain({"mean": {"s1": np.array([1.0, 2.0])}, "n": np.int64(3), "t": (1, 2)})
    assert torch.equal(out["mean"]["s1"], torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert out["n"] == 3 and out["t"] == [1, 2]
    with pytest.raises(TypeError):
        plain({"x": object()})
