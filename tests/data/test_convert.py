"""``python -m dualseg.data.convert``: a version-1 dataset rewritten as version 2, all or nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from dualseg.config import SyntheticConfig
from dualseg.data.convert import MARKER, convert, main
from dualseg.data.quant import QUANT
from dualseg.data.read import read_tile
from dualseg.data.synthetic import make_tile
from dualseg.data.write import write_tile


def _v1_dataset(root, n=3, size=32):
    cfg = SyntheticConfig(tiles=n, size=size, classes=3, s1_dates=5, s2_dates=5)
    names = [f"tile_{i:03d}" for i in range(n)]
    for i, name in enumerate(names):
        write_tile(root / f"{name}.zarr", make_tile(cfg, i), version=1)
    (root / "splits.json").write_text(json.dumps({"train": names[:1], "val": names[1:2], "test": names[2:]}))
    return names


def test_convert_v1_to_v2_keeps_values_within_the_quantisation_error(tmp_path):
    names = _v1_dataset(tmp_path / "v1")
    assert main([str(tmp_path / "v1"), str(tmp_path / "v2"), "--workers", "2"]) == 0
    assert (tmp_path / "v2" / "splits.json").read_bytes() == (tmp_path / "v1" / "splits.json").read_bytes()
    assert json.loads((tmp_path / "v2" / MARKER).read_text())["version"] == 2
    for name in names:
        g = zarr.open_group(str(tmp_path / "v2" / f"{name}.zarr"), mode="r")
        assert g.attrs["version"] == 2 and g["s2/B04"].dtype == np.uint16
        manifest = json.loads((tmp_path / "v2" / f"{name}.zarr" / "manifest.json").read_text())
        assert manifest["arrays"]["s1/VV"]["dtype"] == "int16"  # the manifest was rewritten
        a, b = read_tile(tmp_path / "v1" / f"{name}.zarr"), read_tile(tmp_path / "v2" / f"{name}.zarr")
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.s2.cloud, b.s2.cloud)
        for key in ("s1", "s2"):
            for band, x in getattr(a, key).bands.items():
                y = getattr(b, key).bands[band]
                assert np.array_equal(np.isnan(x), np.isnan(y))
                err = np.nanmax(np.abs(x.astype(np.float64) - y))
                assert err <= QUANT[key].max_error * 1.001  # + float32 rounding of the result
    # converting the result again changes no value (v2 -> v2 is exact)
    convert(tmp_path / "v2", tmp_path / "again", workers=1)
    for name in names:
        a, b = read_tile(tmp_path / "v2" / f"{name}.zarr"), read_tile(tmp_path / "again" / f"{name}.zarr")
        for band, x in a.s2.bands.items():
            np.testing.assert_array_equal(x, b.s2.bands[band])


def test_a_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    _v1_dataset(tmp_path / "v1")
    import dualseg.data.convert as mod

    calls = []

    def failing(path, tile, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return write_tile(path, tile, **kw)

    monkeypatch.setattr(mod, "write_tile", failing)
    with pytest.raises(OSError, match="disk full"):
        convert(tmp_path / "v1", tmp_path / "v2", workers=1)
    assert len(calls) >= 2 and sorted(p.name for p in tmp_path.iterdir()) == ["v1"]
