"""Reading model files: slim exports and training checkpoints, damaged or foreign files named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dualseg.config import ModelConfig
from dualseg.errors import InputError
from dualseg.infer.checkpoint import save_checkpoint
from dualseg.infer.modelfile import load_exported
from dualseg.io import atomic_torch_save
from dualseg.model import build_model


def test_damaged_or_foreign_model_files_are_named(tmp_path: Path) -> None:
    p = tmp_path / "x.pth"
    torch.save({"weights": torch.zeros(2)}, p)
    with pytest.raises(InputError, match="neither a dualseg model nor a training checkpoint"):
        load_exported(p)
    torch.save({"format": "dualseg-model", "version": 1, "model": {}}, p)
    with pytest.raises(InputError, match="damaged dualseg model"):
        load_exported(p)
    with pytest.raises(InputError, match="file not found"):
        load_exported(tmp_path / "none.pth")


def test_a_damaged_checkpoint_or_truncated_model_is_refused_not_mapped(tmp_path: Path) -> None:
    """A flipped byte in a ``best.pt`` fails its CRC (plain torch.load would map with wrong weights)."""
    net = build_model(ModelConfig(levels=2, base_width=8, n_heads=2, d_k=4), 2, 3, 3)
    best = save_checkpoint({"model": net.state_dict(), "epoch": 1}, tmp_path / "best.pt")
    data = bytearray(best.read_bytes())
    data[len(data) // 2] ^= 0xFF
    best.write_bytes(bytes(data))
    assert torch.load(best, weights_only=True)["epoch"] == 1  # torch alone does not notice
    with pytest.raises(InputError, match=rf"^--model: cannot load {best}: not a dualseg checkpoint "
                                         r"\(truncated or corrupt\)$"):
        load_exported(best)
    slim = atomic_torch_save({"format": "dualseg-model", "version": 1, "model": net.state_dict()},
                             tmp_path / "m.pth")
    slim.write_bytes(slim.read_bytes()[:-7])
    with pytest.raises(InputError, match=rf"^--model: cannot load {slim}: not a dualseg checkpoint"):
        load_exported(slim)
