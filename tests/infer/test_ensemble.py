"""Ensembles: members must agree on bands and classes; the mean of probabilities is what is averaged."""

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
from dualseg.infer import ModelFile, load_input, spec_of, tile_logits
from dualseg.infer.ensemble import Member, check_members, mean_probabilities
from dualseg.model import build_model

S1, S2 = list(S1_BANDS), list(S2_BANDS)


def _member(seed: int, classes: list[str]) -> Member:
    torch.manual_seed(seed)
    cfg = ModelConfig(levels=2, base_width=8, n_heads=2, d_k=4)
    net = build_model(cfg, len(S1), len(S2), len(classes)).eval()
    f = ModelFile(weights=net.state_dict(), model=cfg, s1_bands=list(S1), s2_bands=list(S2),
                  mean={"s1": np.full(len(S1), -12.0), "s2": np.full(len(S2), 1000.0)},
                  std={"s1": np.full(len(S1), 3.0), "s2": np.full(len(S2), 500.0)},
                  class_names=list(classes), ignore_index=255, patch_size=16, amp=False, source=f"m{seed}")
    return Member(f, net)


def test_members_must_agree_on_bands_and_classes() -> None:
    a, b = _member(0, ["x", "y"]), _member(1, ["x", "z"])
    check_members([a.file, _member(2, ["x", "y"]).file])
    with pytest.raises(InputError, match=r"ensemble: model m1 has classes \['x', 'z'\] but m0 has \['x', 'y'\]"):
        check_members([a.file, b.file])
    other = dataclasses.replace(b.file, class_names=["x", "y"], s2_bands=["B02"])
    with pytest.raises(InputError, match="S2 bands"):
        check_members([a.file, other])
    with pytest.raises(InputError, match="no model"):
        check_members([])


def test_mean_probabilities_is_the_mean_of_the_members_softmax(tmp_path: Path) -> None:
    generate(tmp_path / "t", SyntheticConfig(tiles=3, size=16, classes=3, s1_dates=3, s2_dates=3))
    info = open_tile(tmp_path / "t" / "tile_000.zarr")
    members = [_member(s, ["a", "b", "c", "d"]) for s in (0, 1)]
    mean, has_input = mean_probabilities(members, info, overlap=0.0)
    singles = []
    for m in members:
        spec = spec_of(m.file)
        singles.append(torch.softmax(tile_logits(m.net, load_input(info, spec), spec, patch=16, overlap=0.0,
                                                 amp=False), 0))
    assert mean.shape == (4, 16, 16) and has_input.shape == (16, 16)
    assert not torch.allclose(singles[0], singles[1])  # two different models: the mean is not either one
    torch.testing.assert_close(mean, (singles[0] + singles[1]) / 2)
    torch.testing.assert_close(mean.sum(0), torch.ones(16, 16))
    one, _ = mean_probabilities(members[:1], info, overlap=0.0)
    torch.testing.assert_close(one, singles[0])
