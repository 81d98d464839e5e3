"""Fusing the radar and optical streams: per-level late fusion, or early fusion of the inputs.

Late fusion (``"concat"``, ``"sum"``) combines the two streams' temporally aggregated maps at every
U-Net level, so each sensor keeps its own encoder and its own temporal attention (S1 and S2 have
different dates and different T). Early fusion (``"early"``, an ablation) cannot stack channels
because the two time axes differ; instead it merges both series into *one* sequence of dates over
the union of channels (S1 frames carry zeros in the S2 channels and vice versa, which makes the
first convolution sensor-specific), sorted by nothing but concatenated, with a sensor id for the
attention keys. One encoder and one attention then see every acquisition of both sensors.
"""

from __future__ import annotations

import torch
from torch import nn

from dualseg.model.blocks import norm_groups


class LevelFusion(nn.Module):
    """Fuse two (B, C, H, W) maps of one level: ``concat`` (+1x1 conv, norm, ReLU) or ``sum``."""

    def __init__(self, channels: int, mode: str):
        super().__init__()
        self.mode = mode
        self.proj = None
        if mode == "concat":
            self.proj = nn.Sequential(
                nn.Conv2d(2 * channels, channels, 1, bias=False),
                nn.GroupNorm(norm_groups(channels), channels),
                nn.ReLU(inplace=True),
            )

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.proj is None:
            return a + b
        return self.proj(torch.cat([a, b], dim=1))


def merge_streams(
    s1: torch.Tensor, s2: torch.Tensor, s1_pad: torch.Tensor, s2_pad: torch.Tensor,
    s1_days: torch.Tensor | None, s2_days: torch.Tensor | None, gap: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Early fusion input: frames (B, T1+gap+T2, C1+C2, H, W), pad, days (or None), sensor id (B, T).

    ``gap`` padded frames separate the two sensors so a temporal kernel of size ``2*gap+1`` never
    sees the other sensor's first/last frame as a neighbour (which would break padding invariance).
    """
    b, t1, c1, h, w = s1.shape
    t2, c2 = s2.shape[1], s2.shape[2]
    t = t1 + gap + t2
    x = s1.new_zeros(b, t, c1 + c2, h, w)
    x[:, :t1, :c1] = s1
    x[:, t1 + gap:, c1:] = s2
    gap_pad = s1_pad.new_ones(b, gap)
    pad = torch.cat([s1_pad, gap_pad, s2_pad], dim=1)
    days = None
    if s1_days is not None or s2_days is not None:
        d1 = s1_days if s1_days is not None else torch.arange(t1, device=s1.device).expand(b, t1)
        d2 = s2_days if s2_days is not None else torch.arange(t2, device=s2.device).expand(b, t2)
        days = torch.cat([d1.to(torch.int64), d1.new_zeros(b, gap, dtype=torch.int64), d2.to(torch.int64)], dim=1)
    sensor = torch.cat([
        torch.zeros(b, t1 + gap, dtype=torch.int64, device=s1.device),
        torch.ones(b, t2, dtype=torch.int64, device=s1.device),
    ], dim=1)
    return x, pad, days, sensor
