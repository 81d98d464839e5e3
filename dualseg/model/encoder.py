"""Per-stream 3D-convolutional U-Net encoder over an image time series.

Each level is a (strided) conv block followed by residual conv blocks, shared across dates (like
U-TAE's encoder; with ``temporal_kernel > 1`` the kernels also span neighbouring dates, like
UNet3D). The encoder returns the *un-aggregated* sequence at every level; temporal aggregation
(``dualseg.model.temporal``) collapses time afterwards, so skips keep per-date detail until the
attention decides which dates matter.
"""

from __future__ import annotations

import torch
from torch import nn

from dualseg.model.blocks import FrameConvNormAct


class EncoderLevel(nn.Module):
    """``first`` conv (stride 1 at level 0, 2 below) then ``n_res`` residual conv blocks."""

    def __init__(self, cin: int, cout: int, stride: int, n_res: int, kt: int):
        super().__init__()
        self.first = FrameConvNormAct(cin, cout, kt=kt, stride=stride)
        self.res = nn.ModuleList(FrameConvNormAct(cout, cout, kt=kt) for _ in range(n_res))

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        x = self.first(x)
        if keep is not None:
            x = x * keep
        for block in self.res:
            x = x + block(x)
            if keep is not None:
                x = x * keep
        return x


class StreamEncoder(nn.Module):
    """U-Net encoder for one ``(B, T, C, H, W)`` stream; returns one sequence per level.

    Level ``l`` has ``widths[l]`` channels at spatial size ``H / 2**l``. With ``kt > 1`` padded frames
    are zeroed after every block (``keep`` mask) so that, together with the per-frame GroupNorm,
    frames appended as padding behave exactly like the convolution's own zero padding and cannot
    change any valid frame's features. With ``kt == 1`` frames never mix, so the encoder runs on the
    valid frames only (packed; padded and cloudy dates cost no compute) when at most a fraction
    ``pack_below`` of the frames is valid (0 disables packing), and scatters them back to ``(B, T, ...)`` (zeros at
    padded dates) for the temporal aggregation.
    """

    def __init__(self, in_channels: int, widths: list[int], kt: int = 1, pack_below: float = 0.9):
        super().__init__()
        self.kt = kt
        self.pack_below = pack_below
        levels = []
        cin = in_channels
        for i, w in enumerate(widths):
            levels.append(EncoderLevel(cin, w, stride=1 if i == 0 else 2, n_res=1 if i == 0 else 2, kt=kt))
            cin = w
        self.levels = nn.ModuleList(levels)

    def _run(self, x: torch.Tensor, keep: torch.Tensor | None) -> list[torch.Tensor]:
        feats = []
        for level in self.levels:
            x = level(x, keep)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> list[torch.Tensor]:
        if self.kt > 1:
            return self._run(x, (~pad).to(x.device, x.dtype)[:, :, None, None, None])
        b, t = pad.shape
        if self.pack_below > 0.0:
            idx = (~pad).flatten().nonzero().squeeze(1).to(x.device)  # one host sync: how many are valid
            n = idx.numel()
            if 0 < n <= self.pack_below * b * t:
                packed = self._run(x.flatten(0, 1).index_select(0, idx).unsqueeze(0), None)
                return [_unpack(f[0], idx, b, t) for f in packed]
        return self._run(x, None)


def _unpack(frames: torch.Tensor, idx: torch.Tensor, b: int, t: int) -> torch.Tensor:
    """Scatter packed valid frames (N, C, H, W) back to (B, T, C, H, W) with zeros at padded dates."""
    nhwc = not frames.is_contiguous() and frames.is_contiguous(memory_format=torch.channels_last)
    out = frames.new_zeros((b * t, *frames.shape[1:]))
    out = out.contiguous(memory_format=torch.channels_last) if nhwc else out
    return out.index_copy_(0, idx, frames).view(b, t, *frames.shape[1:])  # keeps a channels_last layout
