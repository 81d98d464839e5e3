"""Tiny tile fixtures for the data tests (16x16 pixels, a handful of dates).

Helpers are handed out through fixtures (not imported) so the tests work under any import mode.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest

from dualseg.config import S1_BANDS, S2_BANDS, DataConfig
from dualseg.data.quant import QUANT
from dualseg.data.tile import Stream, Tile
from dualseg.data.write import write_tile


def make_tile(
    h: int = 16, w: int = 16, t1: int = 5, t2: int = 4, k: int = 3, seed: int = 0, cloud: bool = True
) -> Tile:
    """Random but valid tile: S2 with some NaN and clouds, labels in [0,k) plus 255 voids.

    Values lie on the format-version-2 grid (S2 whole units, S1 multiples of 0.01 dB computed as
    the reader dequantises), so both format versions round-trip them bit for bit."""
    rng = np.random.default_rng(seed)
    s1 = {b: np.rint(rng.normal(-12 - 3 * i, 2.0, (t1, h, w)) * 100).astype(np.int16) * np.float32(0.01)
          for i, b in enumerate(S1_BANDS)}
    s2 = {b: np.rint(rng.uniform(100, 3000, (t2, h, w))).astype(np.float32) for b in S2_BANDS}
    s2["B02"][0, :2, :3] = np.nan
    cl = rng.random((t2, h, w)) < 0.2 if cloud else None
    labels = rng.integers(0, k, (h, w)).astype(np.int16)
    labels[0, :] = 255
    d1 = np.sort(rng.choice(np.arange(18600, 19000), t1, replace=False)).astype(np.int32)
    d2 = np.sort(rng.choice(np.arange(18600, 19000), t2, replace=False)).astype(np.int32)
    return Tile(
        s1=Stream(s1, d1),
        s2=Stream(s2, d2, cl),
        labels=labels,
        class_names=[f"c{i}" for i in range(k)],
        ignore_index=255,
        crs="EPSG:32631",
        transform=[10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0],
    )


def write_root(root: Path, n: int = 5, splits: dict | None = None, version: int = 2, **kw) -> Path:
    """``n`` tiles t0..t{n-1} (different T per tile, format ``version``) and a splits.json under ``root``."""
    for i in range(n):
        write_tile(root / f"t{i}.zarr", make_tile(seed=i, t1=4 + i % 3, t2=3 + (i * 2) % 4, **kw), version=version)
    names = [f"t{i}" for i in range(n)]
    splits = splits or {"train": names[: n - 2], "val": names[n - 2 : n - 1], "test": names[n - 1 :]}
    (root / "splits.json").write_text(json.dumps(splits))
    return root


def put_band(group, key: str, band: str, values: np.ndarray) -> None:
    """Replace band ``key/band`` of an open tile group in place with float ``values``, stored as
    the tile's format version stores them (a test that edits a tile edits it consistently)."""
    g = group[key]
    if int(group.attrs.get("version", 1)) >= 2:
        q = QUANT[key]
        g.create_array(band, data=q.encode(values, f"{key}/{band}"), overwrite=True, attributes=q.attrs())
    else:
        g.create_array(band, data=np.asarray(values, dtype=np.float32), overwrite=True)


@pytest.fixture
def data() -> types.SimpleNamespace:
    """``data.make_tile(...)``, ``data.write_root(root, n)``, ``data.cfg(root, **fields)``,
    ``data.put_band(group, key, band, values)``."""

    def cfg(root: Path, **fields) -> DataConfig:
        base = dict(root=str(root), patch_size=8, samples_per_tile=3, augment=False)
        base.update(fields)
        return DataConfig(**base)

    return types.SimpleNamespace(make_tile=make_tile, write_root=write_root, cfg=cfg, put_band=put_band)


