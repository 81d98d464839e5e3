"""Unlabelled copies of tiles; the trained Quickstart model (``quick_cfg``, ``trained``) is in tests/conftest.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import zarr

from dualseg.data.write import consolidate


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def strip_labels(src_root: Path, names: list[str], dst_root: Path) -> Path:
    """Copies of tiles ``names`` without their ``labels`` array (what new, unlabelled tiles look like)."""
    dst_root.mkdir(parents=True, exist_ok=True)
    for n in names:
        dst = dst_root / f"{n}.zarr"
        shutil.copytree(src_root / f"{n}.zarr", dst)
        shutil.rmtree(dst / "labels")
        consolidate(dst)
        assert "labels" not in zarr.open_group(str(dst), mode="r")
    return dst_root


@pytest.fixture
def unlabelled() -> object:
    return strip_labels
