"""Quickstart-size synthetic tiles (configs/default.yaml's generator), one trained model per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import zarr

from dualseg.config import Config, apply_overrides, load_config
from dualseg.data import generate
from dualseg.data.write import consolidate
from dualseg.train import fit
from dualseg.train.export import export_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def quick_cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The Quickstart config (its data: 12 tiles of 64x64, 4 classes), 1 epoch on the CPU."""
    root = tmp_path_factory.mktemp("quick")
    cfg = load_config(REPO / "configs" / "default.yaml")
    assert cfg.data.synthetic is not None
    generate(root / "tiles", cfg.data.synthetic)
    return apply_overrides(cfg, {"data.root": str(root / "tiles"), "train.epochs": 1, "train.device": "cpu",
                                 "train.scratch": str(root / "scratch"), "train.run_name": "quick"})


@pytest.fixture(scope="session")
def trained(quick_cfg: Config, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``best`` (training checkpoint) and ``slim`` (exported model) of a 1-epoch Quickstart run."""
    torch.set_num_threads(1)
    res = fit(quick_cfg)
    slim = export_model(res.run_dir / "best.pt", None, tmp_path_factory.mktemp("model") / "best_model.pth")
    return {"best": res.run_dir / "best.pt", "slim": slim}


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
