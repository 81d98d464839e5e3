"""Ensemble members: which model files, whether they agree, their mean probability (each with its own inputs)
and its uncertainty."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from dualseg.config import S1_BANDS, S2_BANDS, ModelConfig, SyntheticConfig
from dualseg.data.synthetic import generate
from dualseg.data.tile import open_tile
from dualseg.errors import InputError
from dualseg.infer import load_input, spec_of, tile_logits
from dualseg.infer.members import check_members, ensemble_map, mean_probs, model_paths, uncertainty
from dualseg.infer.modelfile import ModelFile
from dualseg.model import build_model


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
    ({"model": ModelConfig(streams="s2")}, "it has streams 's2'"),
])
def test_members_that_differ_are_named(changes: dict[str, object], message: str) -> None:
    # own windows, own normalisation and date features (a member trained on other tiles): fine
    check_members([_model("a.pth"), _model("b.pth", patch_size=64, max_t=12, date_encoding="month",
                                           mean={"s1": np.zeros(2), "s2": np.full(2, 1.1)})])
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


S1, S2 = list(S1_BANDS), list(S2_BANDS)


Member = tuple[ModelFile, torch.nn.Module]


def _member(seed: int, classes: list[str], s2_mean: float = 1000.0) -> Member:
    torch.manual_seed(seed)
    cfg = ModelConfig(levels=2, base_width=8, n_heads=2, d_k=4)
    net = build_model(cfg, len(S1), len(S2), len(classes)).eval()
    f = ModelFile(weights=net.state_dict(), model=cfg, s1_bands=list(S1), s2_bands=list(S2),
                  mean={"s1": np.full(len(S1), -12.0), "s2": np.full(len(S2), s2_mean)},
                  std={"s1": np.full(len(S1), 3.0), "s2": np.full(len(S2), 500.0)},
                  class_names=list(classes), ignore_index=255, patch_size=16, amp=False, source=f"m{seed}")
    return f, net


def test_mean_probs_is_the_mean_of_the_members_softmax_each_with_its_own_inputs(tmp_path: Path) -> None:
    generate(tmp_path / "t", SyntheticConfig(tiles=3, size=16, classes=3, s1_dates=3, s2_dates=3))
    info = open_tile(tmp_path / "t" / "tile_000.zarr")
    # the second member was trained on other tiles (a fold, a seed): its own normalisation is used
    members = [_member(0, ["a", "b", "c", "d"]), _member(1, ["a", "b", "c", "d"], s2_mean=900.0)]
    check_members([f for f, _ in members])
    mean, has_input = mean_probs(members, info, overlap=0.0)
    singles = []
    for f, net in members:
        spec = spec_of(f)
        singles.append(torch.softmax(tile_logits(net, load_input(info, spec), spec, patch=16, overlap=0.0,
                                                 amp=False), 0))
    assert mean.shape == (4, 16, 16) and has_input.shape == (16, 16)
    assert not torch.allclose(singles[0], singles[1])  # two different models: the mean is not either one
    torch.testing.assert_close(mean, (singles[0] + singles[1]) / 2)
    torch.testing.assert_close(mean.sum(0), torch.ones(16, 16))
    one, _ = mean_probs(members[:1], info, overlap=0.0)
    torch.testing.assert_close(one, singles[0])
