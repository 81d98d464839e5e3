"""Late fusion per level and the merged early-fusion sequence."""

from __future__ import annotations

import torch

from dualseg.model.fusion import LevelFusion, merge_streams


def test_level_fusion_modes():
    a, b = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    assert torch.equal(LevelFusion(8, "sum")(a, b), a + b)
    concat = LevelFusion(8, "concat")
    assert concat(a, b).shape == (2, 8, 4, 4)
    assert sum(p.numel() for p in concat.parameters()) == 16 * 8 + 2 * 8


def test_merge_streams_layout_pad_days_and_sensor():
    s1 = torch.randn(2, 3, 2, 4, 4)  # (B, T1, C1, H, W)
    s2 = torch.randn(2, 4, 5, 4, 4)
    p1 = torch.tensor([[False, False, True]] * 2)
    p2 = torch.zeros(2, 4, dtype=torch.bool)
    d1 = torch.tensor([[1, 5, 0]] * 2)
    d2 = torch.tensor([[2, 3, 7, 9]] * 2)
    x, pad, days, sensor = merge_streams(s1, s2, p1, p2, d1, d2, gap=1)
    assert x.shape == (2, 8, 7, 4, 4)
    assert torch.equal(x[:, :3, :2], s1) and torch.equal(x[:, 4:, 2:], s2)
    assert x[:, :3, 2:].abs().max() == 0 and x[:, 3].abs().max() == 0 and x[:, 4:, :2].abs().max() == 0
    assert pad[0].tolist() == [False, False, True, True, False, False, False, False]
    assert days[0].tolist() == [1, 5, 0, 0, 2, 3, 7, 9]
    assert sensor[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    _, _, no_days, _ = merge_streams(s1, s2, p1, p2, None, None, gap=0)
    assert no_days is None
