"""GeoTIFF output: read back with rasterio, same CRS, transform and classes as the zarr map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio  # the geo extra; part of the test extra, so CI has it

from dualseg.config import Config
from dualseg.data.read import read_tile
from dualseg.data.tile import write_tile
from dualseg.predict import class_colours, read_map
from dualseg.predict.__main__ import main
from dualseg.train.export import load_exported

TRANSFORM = [10.0, 0.0, 699960.0, 0.0, -10.0, 5300040.0]


@pytest.mark.parametrize(("crs", "epsg"),
                         [("EPSG:32631", 32631), ("urn:ogc:def:crs:EPSG::2154", 2154)])  # 2nd: PASTIS-R's
def test_geotiff_round_trip(quick_cfg: Config, trained: dict[str, Path], tmp_path: Path, crs: str, epsg: int) -> None:
    root = Path(quick_cfg.data.root)
    name = json.loads((root / "splits.json").read_text())["test"][0]
    tile = read_tile(root / f"{name}.zarr")
    tile.crs, tile.transform = crs, TRANSFORM
    write_tile(tmp_path / "geo" / f"{name}.zarr", tile)
    out = tmp_path / "maps"
    assert main(["--model", str(trained["slim"]), "--tiles", str(tmp_path / "geo"), "--out", str(out)]) == 0
    classes = read_map(out / f"{name}.zarr")["classes"]
    names = load_exported(trained["slim"]).class_names
    with rasterio.open(out / f"{name}.tif") as src:
        assert src.crs.to_epsg() == epsg
        assert list(src.transform)[:6] == TRANSFORM
        assert (src.height, src.width) == classes.shape and src.dtypes == ("uint8",)
        np.testing.assert_array_equal(src.read(1), classes)
        assert src.nodata == 255 and src.compression is not None
        assert json.loads(src.tags(1)["CLASS_NAMES"]) == names
        cmap = src.colormap(1)
        assert [cmap[i][:3] for i in range(len(names))] == class_colours(len(names))
    from PIL import Image

    with Image.open(out / f"{name}.tif") as im:  # TIFF tags 322/323: tiled, not striped
        assert (im.tag_v2.get(322), im.tag_v2.get(323)) == (64, 64)
    assert sorted(p.name for p in out.iterdir()) == [f"{name}.tif", f"{name}.zarr"]
