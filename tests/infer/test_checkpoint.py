"""Checkpoint files: atomic rotating save, CRC-checked weights_only load, named shape mismatch."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

from dualseg.config import ModelConfig
from dualseg.errors import InputError, TrainingError
from dualseg.infer.checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint
from dualseg.model import build_model


class _Evil:
    """A pickled object: what weights_only loading must refuse."""


def _model(width: int) -> torch.nn.Module:
    cfg = ModelConfig(levels=2, base_width=width, n_heads=2, d_k=4)
    return build_model(cfg, s1_channels=2, s2_channels=3, num_classes=3)


def _state(epoch: int) -> dict:
    """A minimal state with an epoch to tell files apart."""
    return {"model": {}, "epoch": epoch}


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
    with pytest.raises(CheckpointError, match=f"^checkpoint: not a dualseg checkpoint .truncated or corrupt.: "
                                              f"{tmp_path}/bad.pt$"):
        load_checkpoint(tmp_path / "bad.pt")

    torch.save({"model": {}, "obj": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="pickled objects that weights_only loading refuses"):
        load_checkpoint(tmp_path / "evil.pt")
    torch.save([1, 2], tmp_path / "list.pt")  # a valid torch file, but not ours
    with pytest.raises(CheckpointError, match="not a dualseg checkpoint"):
        load_checkpoint(tmp_path / "list.pt")
    assert issubclass(CheckpointError, TrainingError)  # exit code 1, a trial failure


@pytest.mark.parametrize("cut", [0.0, 0.3, 0.97, -1])
def test_truncated_checkpoint_is_one_line(tmp_path: Path, cut: float) -> None:
    path = save_checkpoint({"model": _model(8).state_dict(), "epoch": 1}, tmp_path / "last.pt")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)] if cut >= 0 else data[:-1])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"checkpoint: not a dualseg checkpoint (truncated or corrupt): {path}"


def test_damage_inside_the_archive_fails_the_crc(tmp_path: Path) -> None:
    """torch's zip reader checks no CRC: a flipped byte in a tensor would load silently without ours."""
    model = _model(8)
    path = save_checkpoint({"model": model.state_dict()}, tmp_path / "last.pt")
    assert zipfile.ZipFile(path).comment.startswith(b"dualseg-crc32:")  # still a valid zip
    assert torch.load(path, weights_only=True)["model"].keys() == model.state_dict().keys()  # plain torch reads it
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_rotation_keeps_the_previous_state(tmp_path: Path) -> None:
    last, prev = tmp_path / "last.pt", tmp_path / "last.prev.pt"
    save_checkpoint(_state(1), last, previous=prev)
    assert not prev.exists()  # nothing to keep yet
    save_checkpoint(_state(2), last, previous=prev)
    save_checkpoint(_state(3), last, previous=prev)
    assert load_checkpoint(last)["epoch"] == 3 and load_checkpoint(prev)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.prev.pt", "last.pt"]  # no temp litter
