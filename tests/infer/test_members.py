"""Ensemble members: which model files, whether they agree, and the uncertainty of a mean probability."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from dualseg.config import ModelConfig
from dualseg.errors import InputError
from dualseg.infer.members import check_members, ensemble_map, model_paths, uncertainty
from dualseg.infer.modelfile import ModelFile


def _model(source: str, **changes: object) -> ModelFile:
    m = ModelFile(weights={}, model=ModelConfig(), s1_bands=["VV", "VH"], s2_bands=["B02", "B03"],
                  mean={"s1": np.zeros(2), "s2": np.ones(2)}, std={"s1": np.ones(2), "s2": np.ones(2)},
                  class_names=["a", "b", "c"], ignore_index=255, source=source)
    return dataclasses.replace(m, **changes)  # type: ignore[arg-type]


def test_model_paths_expand_folders_and_drop_repeats(tmp_path: Path) -> None:
    (tmp_path / "final").mkdir()
    for n in ("s1.pth", "s0.pt", "notes.txt"):
        (tmp_path / "final" / n).write_bytes(b"x")
    one = tmp_path / "one.pth"
    assert model_paths([one, tmp_path / "final", one]) == [one, tmp_path / "final" / "s0.pt",
                                                          tmp_path / "final" / "s1.pth"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"--model: folder .*/empty holds no \*.pth / \*.pt model"):
        model_paths([tmp_path / "empty"])


@pytest.mark.parametrize(("changes", "message"), [
    ({"s2_bands": ["B02", "B04"]}, "it has bands s1=['VV', 'VH'] s2=['B02', 'B04']"),
    ({"class_names": ["a", "b", "x"]}, "it has classes ['a', 'b', 'x'] ignore 255"),
    ({"ignore_index": 0}, "it has classes ['a', 'b', 'c'] ignore 0"),
    ({"mean": {"s1": np.zeros(2), "s2": np.full(2, 1.1)}}, "it has normalisation (s2 band mean"),
    ({"date_encoding": "month"}, "it has date encoding 'month'"),
    ({"model": ModelConfig(streams="s2")}, "it has streams 's2'"),
])
def test_members_that_differ_are_named(changes: dict[str, object], message: str) -> None:
    check_members([_model("a.pth"), _model("b.pth", patch_size=64, max_t=12)])  # own windows: fine
    with pytest.raises(InputError) as err:
        check_members([_model("a.pth"), _model("b.pth"), _model("c.pth", **changes)])
    assert str(err.value).startswith(f"--model: c.pth does not match a.pth: {message}")


def test_uncertainty_is_normalised_entropy() -> None:
    k = 4
    probs = torch.zeros(k, 1, 3)
    probs[:, 0, 0] = 1 / k  # uniform: 1
    probs[2, 0, 1] = 1.0  # certain: 0
    probs[:, 0, 2] = torch.tensor([0.5, 0.5, 0.0, 0.0])  # two classes: log 2 / log 4
    has = np.array([[True, True, True]])
    np.testing.assert_allclose(uncertainty(probs, has)[0], [1.0, 0.0, 0.5], atol=1e-6)
    has[0, 1] = False
    classes, conf, _, u = ensemble_map(probs, has, 255)
    assert classes[0, 1] == 255 and conf[0, 1] == 0 and np.isnan(u[0, 1]) and u.dtype == np.float32
