"""Checkpoints: atomic save, weights_only load, RNG round trip, named shape mismatch."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from dualseg.config import ModelConfig
from dualseg.errors import InputError, TrainingError
from dualseg.model import build_model
from dualseg.train.checkpoint import capture_rng, load_checkpoint, load_model_state, restore_rng, save_checkpoint


class _Evil:
    """A pickled object: what weights_only loading must refuse."""


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


def test_shape_mismatch_names_parameter(tmp_path: Path) -> None:
    save_checkpoint({"model": _model(8).state_dict()}, tmp_path / "small.pt")
    bigger = _model(16)
    with pytest.raises(TrainingError, match=r"parameter \S+ has shape .* in the checkpoint but .* in the model"):
        load_model_state(bigger, load_checkpoint(tmp_path / "small.pt")["model"], source="checkpoint small.pt")


def test_missing_and_unexpected_keys_named() -> None:
    model = _model(8)
    sd = model.state_dict()
    name = next(iter(sd))
    partial = {k: v for k, v in sd.items() if k != name}
    with pytest.raises(TrainingError, match=f"parameter {name} missing"):
        load_model_state(model, partial)
    with pytest.raises(TrainingError, match="parameter extra.weight is not in this model"):
        load_model_state(model, {**sd, "extra.weight": torch.zeros(1)})


def test_missing_corrupt_and_pickled_files_rejected(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="cannot load"):
        load_checkpoint(tmp_path / "bad.pt")

    torch.save({"model": {}, "obj": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(TrainingError, match="cannot load"):  # weights_only refuses arbitrary pickles
        load_checkpoint(tmp_path / "evil.pt")
