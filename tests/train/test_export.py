"""The slim model: weights-only loadable, ~the weights' size, same predictions as the checkpoint."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dualseg.config import Config, ModelConfig
from dualseg.data.tile import open_tile, tile_path
from dualseg.infer import load_input, spec_of, tile_logits
from dualseg.train import fit
from dualseg.train.export import export_model, load_exported, weight_bytes


def test_slim_model_is_within_10_percent_of_the_weights(make_cfg: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_cfg(run_name="big", epochs=1)
    cfg.model = ModelConfig()  # the default architecture (1.2 M parameters), not the tests' tiny one
    res = fit(cfg)
    full = res.run_dir / "best.pt"
    out = export_model(full, None, tmp_path / "best_model.pth")
    m = load_exported(out)
    size, weights = out.stat().st_size, weight_bytes(m)
    assert weights > 4_000_000 and size <= 1.10 * weights
    assert full.stat().st_size > 2.5 * weights  # the checkpoint's optimizer moments are gone
    raw = torch.load(out, weights_only=True)
    assert "optimizer" not in raw and "rng" not in raw
    assert raw["bands"] == {"s1": cfg.data.s1_bands, "s2": cfg.data.s2_bands}
    assert raw["class_names"] == open_tile(tile_path(cfg.data.root, "tile_000")).class_names
    assert raw["ignore_index"] == 255
    assert raw["date_encoding"] == "doy" and raw["patch_size"] == 16 and raw["code_version"]
    assert raw["model_config"]["base_width"] == 32
    assert set(raw["stats"]["mean"]) == {"s1", "s2"} and raw["stats"]["std"]["s2"].dtype == torch.float64


def test_slim_model_reproduces_the_checkpoint_exactly(make_cfg: Callable[..., Config], tiny_root: Path,
                                                     tmp_path: Path) -> None:
    res = fit(make_cfg(run_name="exp", epochs=1))
    full = load_exported(res.run_dir / "best.pt")  # a training checkpoint also loads, converted
    slim = load_exported(export_model(res.run_dir / "best.pt", None, tmp_path / "m.pth"))
    for k in ("s1", "s2"):
        np.testing.assert_array_equal(slim.mean[k], full.mean[k])
        np.testing.assert_array_equal(slim.std[k], full.std[k])
    assert (slim.class_names, slim.patch_size, slim.model) == (full.class_names, full.patch_size, full.model)
    name = json.loads((tiny_root / "splits.json").read_text())["test"][0]
    info = open_tile(tile_path(tiny_root, name))
    outs = []
    for m in (full, slim):
        inp = load_input(info, spec_of(m))
        outs.append(tile_logits(m.build(), inp, spec_of(m), patch=m.patch_size, overlap=0.25, amp=False))
    assert torch.equal(outs[0], outs[1])
