"""Convolution-normalisation-activation blocks for image time series and for the 2D decoder.

The encoder works in *frame layout* ``(B, T, C, H, W)``: a (kt, 3, 3) 3D convolution with ``kt == 1``
is then an ordinary 2D convolution over the ``B*T`` frames (no copy, fastest cuDNN path), and
normalisation is a GroupNorm over (C, H, W) of each frame, so a frame's statistics never depend on
other frames or other samples -- BatchNorm3d would let padded dates and batch neighbours leak into
every output. With ``kt > 1`` the temporal kernel mixes neighbouring dates, so the encoder zeroes
padded frames after every block (see :class:`dualseg.model.encoder.StreamEncoder`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def norm_groups(channels: int, max_groups: int = 4) -> int:
    """Largest group count <= ``max_groups`` dividing ``channels`` (U-TAE uses 4 groups)."""
    return math.gcd(channels, max_groups)


class FrameConv(nn.Module):
    """A (kt, k, k) Conv3d applied to a ``(B, T, C, H, W)`` sequence, spatial stride only.

    The weight is always stored as a Conv3d weight (so checkpoints say what the layer is); for
    ``kt == 1`` the forward pass runs it as a Conv2d over the flattened frames.
    """

    def __init__(self, cin: int, cout: int, kt: int = 1, k: int = 3, stride: int = 1, bias: bool = False):
        super().__init__()
        self.kt, self.stride, self.pad = kt, stride, k // 2
        self.conv = nn.Conv3d(cin, cout, (kt, k, k), stride=(1, stride, stride),
                              padding=(kt // 2, k // 2, k // 2), bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        if self.kt == 1:
            y = F.conv2d(x.flatten(0, 1), self.conv.weight.squeeze(2), self.conv.bias,
                         stride=self.stride, padding=self.pad)
            return y.unflatten(0, (b, t))
        y = self.conv(x.transpose(1, 2))  # (B, C', T, H', W')
        return y.transpose(1, 2).contiguous()


class FrameConvNormAct(nn.Module):
    """FrameConv -> per-frame GroupNorm -> ReLU on ``(B, T, C, H, W)``."""

    def __init__(self, cin: int, cout: int, kt: int = 1, stride: int = 1):
        super().__init__()
        self.conv = FrameConv(cin, cout, kt=kt, stride=stride)
        self.norm = nn.GroupNorm(norm_groups(cout), cout)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        b, t = y.shape[:2]
        return self.act(self.norm(y.flatten(0, 1))).unflatten(0, (b, t))


class ConvNormAct2d(nn.Sequential):
    """Conv2d -> GroupNorm -> ReLU; GroupNorm keeps samples independent (small per-rank batches in DDP)."""

    def __init__(self, cin: int, cout: int, k: int = 3):
        super().__init__(
            nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
            nn.GroupNorm(norm_groups(cout), cout),
            nn.ReLU(inplace=True),
        )


class UpBlock2d(nn.Module):
    """Decoder step: 2x transposed-conv upsampling, concat the fused skip, two conv blocks, dropout.

    A stride-2 kernel-2 transposed convolution has no overlapping taps, so it upsamples without the
    checkerboard artefacts of larger kernels and without the atomic-add backward of bilinear upsampling.
    """

    def __init__(self, cin: int, cskip: int, cout: int, dropout: float):
        super().__init__()
        self.up = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False),
            nn.GroupNorm(norm_groups(cout), cout),
            nn.ReLU(inplace=True),
        )
        self.conv1 = ConvNormAct2d(cout + cskip, cout)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = ConvNormAct2d(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        y = self.conv1(torch.cat([self.up(x), skip], dim=1))
        return y + self.conv2(self.drop(y))
