"""DualStreamUNet3D: one 3D U-Net encoder per sensor, temporal aggregation per level, fused 2D decoder.

Data path for ``streams="both"`` with late fusion::

    s1 (B,C1,T1,H,W) -> encoder_s1 -> per-level sequences -> temporal_s1 -> maps ┐ fusion per level
    s2 (B,C2,T2,H,W) -> encoder_s2 -> per-level sequences -> temporal_s2 -> maps ┘   -> 2D decoder -> (B,K,H,W)

Inputs arrive channels-first (B, C, T, H, W) as the data contract says; they are transposed once to
frame layout (B, T, C, H, W) so per-date convolutions run as 2D convolutions over B*T frames.
Padded dates are zeroed on entry (NaN-safe) and never reach a valid output (see ``blocks``, ``encoder``
and ``temporal`` for why each step is padding-invariant).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dualseg.errors import InputError
from dualseg.model.blocks import UpBlock2d
from dualseg.model.encoder import StreamEncoder
from dualseg.model.fusion import LevelFusion, merge_streams
from dualseg.model.layout import frames_layout, like_layout
from dualseg.model.temporal import TemporalAggregator


def _frames(name: str, x: torch.Tensor | None, pad: torch.Tensor | None, days: torch.Tensor | None,
            channels: int, divisor: int, dtype: torch.dtype, channels_last: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate one stream and return it in frame layout with padded frames zeroed, plus its mask."""
    if x is None or pad is None:
        raise InputError(f"model input: {name} and {name}_pad are required for this model's streams")
    if x.dim() != 5:
        raise InputError(f"model input: {name} must be (B, C, T, H, W), got shape {tuple(x.shape)}")
    if x.dtype != dtype:
        raise InputError(f"model input: {name} has dtype {x.dtype}, the model's parameters are {dtype}")
    b, c, t, h, w = x.shape
    if c != channels:
        raise InputError(f"model input: {name} has {c} channels, the model was built for {channels}")
    if h % divisor or w % divisor:
        raise InputError(
            f"model input: {name} patch size {h}x{w} is not divisible by {divisor} = 2**(model.levels-1); "
            "change data.patch_size or model.levels"
        )
    if pad.dtype != torch.bool or tuple(pad.shape) != (b, t):
        raise InputError(
            f"model input: {name}_pad must be a bool (B, T) = ({b}, {t}) mask (True = padding), "
            f"got {pad.dtype} {tuple(pad.shape)}"
        )
    if days is not None and tuple(days.shape) != (b, t):
        raise InputError(f"model input: {name}_doy must be (B, T) = ({b}, {t}), got {tuple(days.shape)}")
    frames = x.transpose(1, 2)
    frames = torch.where(pad.to(x.device)[:, :, None, None, None], frames.new_zeros(()), frames)
    return frames_layout(frames, channels_last), pad


def _on(device: torch.device, pad: torch.Tensor, days: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Masks/days on the features' device. A no-op in training; for FLOP counting on the meta device
    the masks stay real on the CPU up to the encoder, which needs their values to pack valid frames."""
    return pad.to(device), (days.to(device) if days is not None else None)


class DualStreamUNet3D(nn.Module):
    """Dual-stream (or single-stream, for ablations) U-Net over S1/S2 image time series.

    ``streams``: ``"both"``, ``"s1"`` or ``"s2"``; ``fusion``: ``"concat"``/``"sum"`` (per-level late
    fusion) or ``"early"`` (one encoder over the merged date sequence); ``temporal``: ``"ltae"`` or
    ``"mean"``. Level ``l`` has ``base_width * 2**l`` channels at ``H / 2**l``.
    """

    def __init__(self, s1_channels: int, s2_channels: int, num_classes: int, *, levels: int = 3,
                 base_width: int = 32, dropout: float = 0.1, temporal: str = "ltae", fusion: str = "concat",
                 streams: str = "both", n_heads: int = 4, d_k: int = 8, temporal_kernel: int = 1):
        super().__init__()
        self.streams, self.fusion_mode, self.levels = streams, fusion, levels
        self.s1_channels, self.s2_channels = s1_channels, s2_channels
        self.gap = temporal_kernel // 2
        widths = [base_width * 2**i for i in range(levels)]
        self.widths = widths
        kt = temporal_kernel
        early = streams == "both" and fusion == "early"
        self.early = early

        def temporal_agg(n_sensors: int = 1) -> TemporalAggregator:
            return TemporalAggregator(widths, temporal, n_heads, d_k, dropout, n_sensors)

        self.enc_s1: StreamEncoder | None = None
        self.enc_s2: StreamEncoder | None = None
        self.enc_joint: StreamEncoder | None = None
        self.tmp_s1: TemporalAggregator | None = None
        self.tmp_s2: TemporalAggregator | None = None
        self.tmp_joint: TemporalAggregator | None = None
        self.fuse: nn.ModuleList | None = None
        if early:
            self.enc_joint = StreamEncoder(s1_channels + s2_channels, widths, kt)
            self.tmp_joint = temporal_agg(n_sensors=2)
        else:
            if streams in ("both", "s1"):
                self.enc_s1, self.tmp_s1 = StreamEncoder(s1_channels, widths, kt), temporal_agg()
            if streams in ("both", "s2"):
                self.enc_s2, self.tmp_s2 = StreamEncoder(s2_channels, widths, kt), temporal_agg()
            if streams == "both":
                self.fuse = nn.ModuleList(LevelFusion(w, fusion) for w in widths)
        self.bottleneck_drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.decoder = nn.ModuleList(
            UpBlock2d(widths[i + 1], widths[i], widths[i], dropout) for i in reversed(range(levels - 1))
        )
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        self.channels_last = False  # NHWC frames and maps (dualseg.model.layout.set_memory_format)

    def forward(self, s1: torch.Tensor | None, s2: torch.Tensor | None, s1_pad: torch.Tensor | None,
                s2_pad: torch.Tensor | None, s1_doy: torch.Tensor | None = None,
                s2_doy: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, K, H, W). Pads are bool (B, T), True = padding or unusable date."""
        div, dtype = 2 ** (self.levels - 1), self.head.weight.dtype
        use_s1 = self.streams in ("both", "s1")
        use_s2 = self.streams in ("both", "s2")
        cl = self.channels_last
        f1 = _frames("s1", s1, s1_pad, s1_doy, self.s1_channels, div, dtype, cl) if use_s1 else None
        f2 = _frames("s2", s2, s2_pad, s2_doy, self.s2_channels, div, dtype, cl) if use_s2 else None
        if f1 is not None and f2 is not None:
            assert s1 is not None and s2 is not None
            if s1.shape[0] != s2.shape[0] or s1.shape[-2:] != s2.shape[-2:]:
                raise InputError(
                    f"model input: s1 {tuple(s1.shape)} and s2 {tuple(s2.shape)} differ in batch or patch size"
                )
        if self.early:
            assert f1 is not None and f2 is not None and self.enc_joint is not None and self.tmp_joint is not None
            x, pad, days, sensor = merge_streams(f1[0], f2[0], f1[1], f2[1], s1_doy, s2_doy, self.gap)
            x = frames_layout(x, cl) if cl else x
            maps = self.tmp_joint(self.enc_joint(x, pad), *_on(x.device, pad, days), sensor)
        else:
            per_stream = []
            if f1 is not None:
                assert self.enc_s1 is not None and self.tmp_s1 is not None
                per_stream.append(self.tmp_s1(self.enc_s1(*f1), *_on(f1[0].device, f1[1], s1_doy)))
            if f2 is not None:
                assert self.enc_s2 is not None and self.tmp_s2 is not None
                per_stream.append(self.tmp_s2(self.enc_s2(*f2), *_on(f2[0].device, f2[1], s2_doy)))
            if self.fuse is not None:
                maps = [fuse(a, b) for fuse, a, b in zip(self.fuse, *per_stream)]
            else:
                maps = per_stream[0]
        maps = [like_layout(m, cl) for m in maps]  # temporal aggregation hands back NCHW maps
        y = self.bottleneck_drop(maps[-1])
        for block, skip in zip(self.decoder, reversed(maps[:-1])):
            y = block(y, skip)
        return self.classify(y)

    def classify(self, y: torch.Tensor) -> torch.Tensor:
        """The 1x1 classifier in float32, also under bf16 autocast: logits, the loss, argmax (metrics, maps)
        and the search objective then never see bf16 rounding (ties, ~3 significant digits).

        Run as a matmul over channels, the same maths as the 1x1 convolution: cuDNN convolutions may use
        TF32 on CUDA by default (``torch.backends.cudnn.allow_tf32``), float32 matmuls do not
        (``torch.backends.cuda.matmul.allow_tf32`` is off unless a site turns it on).
        """
        device_type = y.device.type if y.device.type in ("cuda", "cpu", "xpu", "mps") else "cpu"  # meta: FLOPs
        w = self.head.weight  # float32 (autocast casts copies, never the parameters)
        with torch.autocast(device_type=device_type, enabled=False):
            return F.linear(y.to(w.dtype).movedim(1, -1), w.flatten(1), self.head.bias).movedim(-1, 1)
