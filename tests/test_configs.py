"""Every shipped config loads strictly, its hpc section parses, and its model fits its patch size."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualseg.config import load_config
from dualseg.model import check_patch_size, validate_model_config
from hpc.config import parse_hpc

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_are_configs() -> None:
    assert {p.name for p in CONFIGS} >= {"default.yaml", "tiny.yaml", "pastis.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_valid(path: Path) -> None:
    cfg = load_config(path)
    hpc = parse_hpc(cfg, {})
    validate_model_config(cfg.model)
    check_patch_size(cfg.model, cfg.data.patch_size)
    assert hpc.trials >= 1 and hpc.search, path.name
    # the largest searched depth must still fit the patch
    levels = hpc.search.get("model.levels")
    if levels:
        deepest = levels.get("high") or max(levels.get("choices", [cfg.model.levels]))
        assert cfg.data.patch_size % 2 ** (deepest - 1) == 0, path.name
