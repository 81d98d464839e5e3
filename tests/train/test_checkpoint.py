"""Resume states: a training state round trip, RNG round trip, the newest loadable state after a kill.

The file format itself is tested in tests/infer/test_checkpoint.py.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from dualseg.config import ModelConfig
from dualseg.model import build_model
from dualseg.train.checkpoint import (
    CheckpointError,
    capture_rng,
    load_checkpoint,
    load_model_state,
    load_newest,
    restore_rng,
    save_checkpoint,
)


def _model(width: int) -> torch.nn.Module:
    cfg = ModelConfig(levels=2, base_width=width, n_heads=2, d_k=4)
    return build_model(cfg, s1_channels=2, s2_channels=3, num_classes=3)


def test_save_load_weights_only_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _model(8)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": [capture_rng()],
             "history": [{"epoch": 0, "val_iou": [0.5, None]}], "best": float("inf")}
    path = save_checkpoint(state, tmp_path / "last.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp litter
    loaded = load_checkpoint(path)
    other = _model(8)
    load_model_state(other, loaded["model"])
    for (n, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), n
    assert loaded["history"][0]["val_iou"] == [0.5, None]


def test_rng_restore_reproduces_streams(tmp_path: Path) -> None:
    save_checkpoint({"model": {}, "rng": capture_rng()}, tmp_path / "c.pt")
    first = (torch.rand(3), np.random.rand(2), random.random())
    restore_rng(load_checkpoint(tmp_path / "c.pt")["rng"])
    second = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1]) and first[2] == second[2]


def _state(epoch: int) -> dict:
    """A minimal resumable training state (every key a resume reads)."""
    return {"model": {}, "optimizer": {}, "scheduler": {}, "epoch": epoch, "step": 0, "train_loss_sum": 0.0,
            "early_stopping": {}, "history": []}


def test_interrupted_save_leaves_both_states(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill (here: KeyboardInterrupt, as a second signal's handler may raise) mid-write or between renames."""
    last, prev = tmp_path / "last.pt", tmp_path / "last.prev.pt"
    save_checkpoint(_state(1), last, previous=prev)
    save_checkpoint(_state(2), last, previous=prev)
    real_fsync = os.fsync

    def killed_fsync(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", killed_fsync)  # dies while the new file is being made durable
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_state(3), last, previous=prev)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert load_checkpoint(last)["epoch"] == 2 and load_checkpoint(prev)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.prev.pt", "last.pt"]

    real_replace = os.replace
    calls: list[str] = []

    def killed_between(src: str, dst: str) -> None:
        calls.append(str(dst))
        if Path(dst) == last:
            raise KeyboardInterrupt  # last.pt already moved to last.prev.pt, new one not yet in place
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_between)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_state(3), last, previous=prev)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not last.exists() and load_checkpoint(prev)["epoch"] == 2  # the newest complete state survives
    path, state, skipped = load_newest([last, prev, tmp_path / "best.pt"])
    assert path == prev and state is not None and state["epoch"] == 2 and skipped == ["last.pt (missing)"]


def test_load_newest_falls_back_to_the_most_advanced_loadable(tmp_path: Path) -> None:
    last, prev, best = (tmp_path / n for n in ("last.pt", "last.prev.pt", "best.pt"))
    paths = [last, prev, best]
    assert load_newest(paths) == (None, None, [])  # nothing there: a fresh start
    save_checkpoint(_state(2), prev)
    save_checkpoint(_state(3), best)  # best.pt written with the (damaged) last.pt's epoch: newer than prev
    last.write_bytes(b"PK\x03\x04garbage")
    path, state, skipped = load_newest(paths)
    assert path == best and state is not None and state["epoch"] == 3
    assert skipped == ["last.pt (not a dualseg checkpoint (truncated or corrupt))", "last.prev.pt (older)"]
    save_checkpoint(_state(1), best)
    assert load_newest(paths)[0] == prev
    best.write_bytes(b"")
    prev.write_bytes(save_checkpoint(_state(2), prev).read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"^checkpoint: no loadable checkpoint \(last.pt \(not a dualseg "
                                              r"checkpoint .*\); last.prev.pt \(.*\); best.pt \(.*\)\): "):
        load_newest(paths)
