"""Mask-aware temporal aggregation: masked mean, and L-TAE style attention with date encoding.

Both collapse ``(B, T, C, H, W)`` sequences to ``(B, C, H, W)`` maps at every U-Net level while giving
padded / invalid dates exactly zero weight, so appending padding cannot change the result. A sample
whose dates are *all* padded gets an all-zero map (not NaN), which keeps a dual-stream model usable
when, e.g., every optical date of a patch is cloudy.

The attention follows U-TAE (Garnot & Landrieu 2021): a lightweight temporal attention (L-TAE) with
one learned master query per head runs at the lowest resolution; its per-pixel, per-head attention
masks are bilinearly upsampled to the skip resolutions (a convex combination, so masks still sum to
one and padded dates stay at zero) and reused there, channel group ``h`` following head ``h``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dualseg.model.blocks import norm_groups


def masked_mean(x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` (B, T, C, H, W) over the dates where ``pad`` (B, T) is False; 0 if none."""
    keep = (~pad).to(x.dtype)
    count = keep.sum(1).clamp_min(1.0)
    w = (keep / count[:, None])[:, :, None, None, None]
    return (x * w).sum(1)


def date_encoding(days: torch.Tensor, dim: int, period: float = 1000.0) -> torch.Tensor:
    """Transformer sinusoidal encoding of (possibly irregular) acquisition days, (B, T) -> (B, T, dim).

    Encodes the actual day rather than the frame index, as L-TAE does, so irregular revisits and
    cloud gaps keep their true spacing.
    """
    half = dim // 2
    freq = torch.exp(-math.log(period) * torch.arange(half, device=days.device, dtype=torch.float32) * 2 / dim)
    ang = days.to(torch.float32)[..., None] * freq
    enc = torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)
    if dim % 2:
        enc = F.pad(enc, (0, 1))
    return enc


def aggregate(x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Weighted sum over time; channel group ``h`` of ``x`` (B,T,C,H,W) uses head ``h`` of ``attn`` (B,T,heads,H,W)."""
    b, t, c, hh, ww = x.shape
    heads = attn.shape[2]
    xv = x.view(b, t, heads, c // heads, hh, ww)
    out = (xv * attn.to(x.dtype)[:, :, :, None]).sum(1)
    return out.reshape(b, c, hh, ww)


class LTAE(nn.Module):
    """Lightweight temporal attention (L-TAE): per-pixel attention over dates with master queries.

    Keys are a 1x1 projection of each frame plus a learned projection of the date encoding (and of a
    sensor embedding when two sensors share one sequence, i.e. early fusion). Values are the input
    channels split into ``n_heads`` groups, as in L-TAE. Scores, the mask and the softmax are computed
    in float32 even under bf16 autocast.
    """

    def __init__(self, channels: int, n_heads: int, d_k: int, dropout: float = 0.0, n_sensors: int = 1):
        super().__init__()
        self.n_heads, self.d_k = n_heads, d_k
        self.key = nn.Conv2d(channels, n_heads * d_k, 1)
        self.date_key = nn.Linear(2 * d_k * n_heads, n_heads * d_k, bias=False)
        self.sensor_key = nn.Embedding(n_sensors, n_heads * d_k) if n_sensors > 1 else None
        self.query = nn.Parameter(torch.randn(n_heads, d_k) * d_k**-0.5)
        self.attn_drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out = nn.Sequential(
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.GroupNorm(norm_groups(channels), channels),
            nn.ReLU(inplace=True),
        )

    def attention(self, x: torch.Tensor, pad: torch.Tensor, days: torch.Tensor,
                  sensor: torch.Tensor | None = None) -> torch.Tensor:
        """Attention masks (B, T, heads, H, W), summing to 1 over valid dates (0 where all padded)."""
        b, t, c, hh, ww = x.shape
        k = self.key(x.flatten(0, 1)).view(b, t, self.n_heads, self.d_k, hh, ww)
        device_type = x.device.type if x.device.type in ("cuda", "cpu", "xpu", "mps") else "cpu"  # meta: FLOP counts
        with torch.autocast(device_type=device_type, enabled=False):
            q = self.query.float()
            scores = torch.einsum("bthdxy,hd->bthxy", k.float(), q)
            dk = self.date_key(date_encoding(days, self.date_key.in_features))
            if self.sensor_key is not None and sensor is not None:
                dk = dk + self.sensor_key(sensor)
            dk = dk.float().view(b, t, self.n_heads, self.d_k)
            scores = scores + torch.einsum("bthd,hd->bth", dk, q)[..., None, None]
            scores = scores * self.d_k**-0.5
            mask = pad[:, :, None, None, None]
            scores = scores.masked_fill(mask, torch.finfo(torch.float32).min)
            attn = torch.softmax(scores, dim=1).masked_fill(mask, 0.0)
        return self.attn_drop(attn)

    def forward(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        return self.out(aggregate(x, attn))


class TemporalAggregator(nn.Module):
    """Collapses the per-level sequences of one encoder to maps: ``mode`` is ``"ltae"`` or ``"mean"``."""

    def __init__(self, widths: list[int], mode: str, n_heads: int, d_k: int, dropout: float, n_sensors: int = 1):
        super().__init__()
        self.mode = mode
        self.ltae = LTAE(widths[-1], n_heads, d_k, dropout, n_sensors) if mode == "ltae" else None

    def forward(self, feats: list[torch.Tensor], pad: torch.Tensor, days: torch.Tensor | None,
                sensor: torch.Tensor | None = None) -> list[torch.Tensor]:
        if self.ltae is None:
            return [masked_mean(f, pad) for f in feats]
        if days is None:  # no dates given: fall back to the frame index
            days = torch.arange(pad.shape[1], device=pad.device).expand(pad.shape)
        bottom = feats[-1]
        attn = self.ltae.attention(bottom, pad, days, sensor)  # (B, T, heads, h, w)
        b, t, heads, h, w = attn.shape
        out = []
        for f in feats[:-1]:
            size = f.shape[-2:]
            up = F.interpolate(attn.reshape(b, t * heads, h, w), size=size, mode="bilinear", align_corners=False)
            out.append(aggregate(f, up.view(b, t, heads, *size)))
        out.append(self.ltae(bottom, attn))
        return out
