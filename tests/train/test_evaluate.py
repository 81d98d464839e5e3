"""evaluate_checkpoint reproduces validation numbers and scores the test split."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from dualseg.config import Config
from dualseg.errors import InputError, TrainingError
from dualseg.train import evaluate_checkpoint, fit


def test_evaluate_matches_val_and_scores_test(make_cfg: Callable[..., Config]) -> None:
    res = fit(make_cfg(run_name="ev", epochs=2))
    best = res.run_dir / "best.pt"
    val = evaluate_checkpoint(best, split="val", overlap=0.0)  # 48-px tiles, 16-px windows: the val grid
    assert val["loss"] == pytest.approx(res.best_metrics["val_loss"], rel=1e-6)
    assert val["miou"] == pytest.approx(res.best_metrics["val_miou"])
    assert val["confusion_matrix"] == res.best_metrics["val_confusion_matrix"]
    test = evaluate_checkpoint(best)  # default split: test, config from the checkpoint
    assert test["split"] == "test" and 0 <= test["oa"] <= 1
    assert len(test["iou"]) == len(test["class_names"]) == 4
    assert set(test["majority_baseline"]) == {"oa", "miou"}
    with pytest.raises(InputError, match="split must be"):
        evaluate_checkpoint(best, split="holdout")


def test_evaluate_rejects_other_model_shape(make_cfg: Callable[..., Config]) -> None:
    res = fit(make_cfg(run_name="ev2", epochs=1))
    cfg = make_cfg(run_name="ev2")
    cfg.model.base_width = 16
    with pytest.raises(TrainingError, match=r"parameter \S+ has shape"):
        evaluate_checkpoint(res.run_dir / "last.pt", cfg, split="val")


def test_evaluate_refuses_changed_training_data(make_cfg: Callable[..., Config], tiny_root: Path) -> None:
    res = fit(make_cfg(run_name="ev3", epochs=1))
    train = json.loads((tiny_root / "splits.json").read_text())["train"]
    cfg = make_cfg(run_name="ev3")
    cfg.data.train_tiles = train[:1]  # different train tiles -> different normalisation
    with pytest.raises(InputError, match="band statistics of s1 differ"):
        evaluate_checkpoint(res.run_dir / "best.pt", cfg, split="val")
