"""Format versions 1 and 2 of the same tiles train and evaluate to the same metrics (within the
quantisation error: 5e-5 reflectance, 0.005 dB), on the CPU."""

from __future__ import annotations

import json
import math

import numpy as np

from dualseg.config import Config, SyntheticConfig, from_dict
from dualseg.data.synthetic import make_tile
from dualseg.data.write import write_tile
from dualseg.train.evaluate import evaluate_checkpoint
from dualseg.train.trainer import fit

TINY = SyntheticConfig(tiles=6, size=32, classes=3, s1_dates=6, s2_dates=5, parcel_size=6)


def _cfg(root, scratch) -> Config:
    return from_dict(Config, {
        "data": {"root": str(root), "patch_size": 16, "samples_per_tile": 4, "cache_mb": 64},
        "model": {"levels": 2, "base_width": 8, "n_heads": 2, "d_k": 4, "dropout": 0.0},
        "train": {"epochs": 2, "batch_size": 4, "lr": 3e-3, "warmup_epochs": 1, "scratch": str(scratch),
                  "device": "cpu", "log_every": 1, "run_name": "fmt"},
    })


def test_v1_and_v2_copies_give_the_same_metrics(tmp_path):
    names = [f"tile_{i:03d}" for i in range(TINY.tiles)]
    for v in (1, 2):
        for i, name in enumerate(names):
            write_tile(tmp_path / f"v{v}" / f"{name}.zarr", make_tile(TINY, i), version=v)
        (tmp_path / f"v{v}" / "splits.json").write_text(
            json.dumps({"train": names[:4], "val": names[4:5], "test": names[5:]}))
    res = {v: fit(_cfg(tmp_path / f"v{v}", tmp_path / f"s{v}")) for v in (1, 2)}
    # training: the input differences (<= 5e-5 relative) grow through the optimiser's steps, so
    # the runs agree closely but not to the input's precision (measured: val_loss 0.3 % apart)
    for h1, h2 in zip(res[1].history, res[2].history, strict=True):
        assert math.isclose(h1["train_loss"], h2["train_loss"], rel_tol=2e-2), (h1, h2)
        assert math.isclose(h1["val_loss"], h2["val_loss"], rel_tol=2e-2), (h1, h2)
        assert abs(h1["val_miou"] - h2["val_miou"]) <= 3e-2, (h1, h2)
    # evaluation and maps: one checkpoint scores both copies the same (the direct effect of quantisation)
    ckpt = res[1].run_dir / "best.pt"
    ev = {v: evaluate_checkpoint(ckpt, _cfg(tmp_path / f"v{v}", tmp_path / f"s{v}")) for v in (1, 2)}
    assert math.isclose(ev[1]["loss"], ev[2]["loss"], rel_tol=1e-3), (ev[1]["loss"], ev[2]["loss"])
    assert abs(ev[1]["miou"] - ev[2]["miou"]) <= 5e-3, (ev[1]["miou"], ev[2]["miou"])
    cm1, cm2 = np.asarray(ev[1]["confusion_matrix"]), np.asarray(ev[2]["confusion_matrix"])
    assert np.abs(cm1 - cm2).sum() <= 0.005 * cm1.sum()  # at most 0.5 % of the pixels change class
