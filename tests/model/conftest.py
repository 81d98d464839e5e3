"""Shared tiny-model fixtures for the model tests (16x16 patches, widths 8/16/32).

Helpers are handed out through the ``tiny`` fixture (not imported) so the tests work under any
pytest import mode.
"""

from __future__ import annotations

import dataclasses
import types

import pytest
import torch

from dualseg.config import ModelConfig
from dualseg.model import build_model

C1, C2, K, H = 2, 3, 4, 16




def tiny_cfg(**overrides) -> ModelConfig:
    base = ModelConfig(levels=3, base_width=8, dropout=0.1, n_heads=2, d_k=4)
    return dataclasses.replace(base, **overrides)


def tiny_model(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(tiny_cfg(**overrides), C1, C2, K)


def make_batch(b: int = 2, t1: int = 4, t2: int = 5, size: int = H, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs with increasing, distinct days of year and no padding."""
    g = torch.Generator().manual_seed(seed)
    return {
        "s1": torch.randn(b, C1, t1, size, size, generator=g),
        "s2": torch.randn(b, C2, t2, size, size, generator=g),
        "s1_pad": torch.zeros(b, t1, dtype=torch.bool),
        "s2_pad": torch.zeros(b, t2, dtype=torch.bool),
        "s1_doy": torch.sort(torch.randperm(365, generator=g)[:t1] + 1).values.expand(b, t1).clone(),
        "s2_doy": torch.sort(torch.randperm(365, generator=g)[:t2] + 1).values.expand(b, t2).clone(),
    }


def append_padding(batch: dict[str, torch.Tensor], n1: int, n2: int, fill: float = float("nan")) -> dict:
    """Append ``n1``/``n2`` padded dates holding garbage (NaN by default) and garbage days."""
    out = dict(batch)
    for s, n in (("s1", n1), ("s2", n2)):
        x = batch[s]
        b, c, _, h, w = x.shape
        out[s] = torch.cat([x, torch.full((b, c, n, h, w), fill)], dim=2)
        out[f"{s}_pad"] = torch.cat([batch[f"{s}_pad"], torch.ones(b, n, dtype=torch.bool)], dim=1)
        out[f"{s}_doy"] = torch.cat([batch[f"{s}_doy"], torch.full((b, n), 999, dtype=torch.int64)], dim=1)
    return out


@pytest.fixture
def tiny() -> types.SimpleNamespace:
    return types.SimpleNamespace(C1=C1, C2=C2, K=K, H=H, cfg=tiny_cfg, model=tiny_model, batch=make_batch,
                                 append_padding=append_padding)
