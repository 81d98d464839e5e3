"""Dual-stream (S1 radar + S2 optical) 3D U-Net with temporal attention for SITS segmentation.

Entry point: :func:`build_model` (validates the ``model:`` config, naming the bad option; the
choices of ``temporal``/``fusion``/``streams`` are ``Literal`` types checked by the config loader).
See docs/model.md for the architecture and how it relates to UNet3D and U-TAE.
"""

from __future__ import annotations

from torch import nn

from dualseg.config import ModelConfig
from dualseg.errors import InputError
from dualseg.model.flops import count_parameters, estimate_flops
from dualseg.model.unet3d import DualStreamUNet3D

__all__ = ["DualStreamUNet3D", "build_model", "check_patch_size", "count_parameters", "estimate_flops",
           "validate_model_config"]

def _int_at_least(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"config: model.{name}: must be an integer >= {low} (got {value!r})")


def validate_model_config(cfg: ModelConfig) -> None:
    """Raise :class:`InputError` naming the first invalid ``model.*`` option."""
    _int_at_least("levels", cfg.levels, 1)
    if cfg.levels > 8:
        raise InputError(f"config: model.levels: must be <= 8 (got {cfg.levels})")
    _int_at_least("base_width", cfg.base_width, 1)
    _int_at_least("n_heads", cfg.n_heads, 1)
    _int_at_least("d_k", cfg.d_k, 1)
    _int_at_least("temporal_kernel", cfg.temporal_kernel, 1)
    if cfg.temporal_kernel % 2 == 0:
        raise InputError(f"config: model.temporal_kernel: must be odd (got {cfg.temporal_kernel})")
    if isinstance(cfg.dropout, bool) or not isinstance(cfg.dropout, (int, float)) or not 0.0 <= cfg.dropout < 1.0:
        raise InputError(f"config: model.dropout: must be in [0, 1) (got {cfg.dropout!r})")
    if cfg.temporal == "ltae" and cfg.base_width % cfg.n_heads:
        raise InputError(
            f"config: model.base_width: {cfg.base_width} must be divisible by model.n_heads = {cfg.n_heads} "
            "(each attention head aggregates one channel group)"
        )


def check_patch_size(cfg: ModelConfig, patch_size: int, option: str = "data.patch_size") -> None:
    """Raise :class:`InputError` unless ``patch_size`` is divisible by ``2**(levels-1)``."""
    div = 2 ** (cfg.levels - 1)
    if patch_size < div or patch_size % div:
        raise InputError(
            f"config: {option}: {patch_size} is not a positive multiple of 2**(model.levels-1) = {div} "
            f"(model.levels = {cfg.levels})"
        )


def build_model(cfg: ModelConfig, s1_channels: int, s2_channels: int, num_classes: int) -> nn.Module:
    """Build the :class:`DualStreamUNet3D` described by ``cfg`` for the given band and class counts."""
    validate_model_config(cfg)
    for stream, channels in (("s1", s1_channels), ("s2", s2_channels)):
        if cfg.streams in ("both", stream) and (isinstance(channels, bool) or not isinstance(channels, int)
                                                or channels < 1):
            raise InputError(
                f"model: streams={cfg.streams!r} needs {stream} bands, got {channels!r} channels "
                f"(check data.{stream}_bands)"
            )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise InputError(f"model: num_classes must be an integer >= 2 (got {num_classes!r})")
    return DualStreamUNet3D(
        s1_channels, s2_channels, num_classes, levels=cfg.levels, base_width=cfg.base_width,
        dropout=float(cfg.dropout), temporal=cfg.temporal, fusion=cfg.fusion, streams=cfg.streams,
        n_heads=cfg.n_heads, d_k=cfg.d_k, temporal_kernel=cfg.temporal_kernel,
    )
