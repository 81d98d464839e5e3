"""Atomic writes leave either the old file or the new one, never a partial file or temp litter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dualseg.errors import InputError
from dualseg.io import atomic_copy, atomic_torch_save, atomic_write_bytes, atomic_write_text, read_json


def test_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.json"]


def test_failed_write_keeps_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("dualseg.io.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_torch_save_round_trip_weights_only(tmp_path: Path) -> None:
    obj = {"w": torch.arange(6.0).reshape(2, 3), "epoch": 3}
    atomic_torch_save(obj, tmp_path / "c.pt")
    back = torch.load(tmp_path / "c.pt", weights_only=True)
    assert back["epoch"] == 3 and torch.equal(back["w"], obj["w"])


def test_read_json(tmp_path: Path) -> None:
    good = tmp_path / "a.json"
    good.write_text('{"train": ["t1"]}')
    assert read_json(good, "splits") == {"train": ["t1"]}
    with pytest.raises(InputError, match=r"^splits: file not found: .*nope\.json$"):
        read_json(tmp_path / "nope.json", "splits")
    bad = tmp_path / "b.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match=r"^pastis: .*b\.json: not valid JSON"):
        read_json(bad, "pastis")


def test_atomic_copy(tmp_path: Path) -> None:
    src = tmp_path / "a.pt"
    src.write_bytes(b"x" * (3 << 20))
    dst = atomic_copy(src, tmp_path / "out" / "b.pt")
    assert dst.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dst.parent.iterdir()) == ["b.pt"]
    with pytest.raises(FileNotFoundError):
        atomic_copy(tmp_path / "missing.pt", tmp_path / "out" / "c.pt")
    assert sorted(p.name for p in dst.parent.iterdir()) == ["b.pt"]
