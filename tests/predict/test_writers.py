"""GeoTIFF output: read back with rasterio, same CRS, transform and classes as the zarr map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio  # the geo extra; part of the test extra, so CI has it
import zarr

from dualseg.config import Config
from dualseg.data.read import read_tile
from dualseg.data.write import write_tile
from dualseg.predict import class_colours, read_map
from dualseg.predict.__main__ import main
from dualseg.predict.writers import is_map, is_map_geotiff, write_geotiff, write_zarr
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
    assert sorted(p.name for p in out.iterdir()) == [f"{name}.tif", f"{name}.tif.aux.xml", f"{name}.uncertainty.tif",
                                                      f"{name}.zarr"]


def test_maps_are_recognised_and_nothing_else(tmp_path: Path) -> None:
    """What --overwrite may replace: maps this package wrote (also before the format marker), never a tile."""
    classes, conf = np.zeros((16, 16), np.uint8), np.ones((16, 16), np.float32)
    attrs = {"tile": "t", "class_names": ["a"], "ignore_index": 255, "overlap": 0.25, "model": "m.pth"}
    m = write_zarr(tmp_path / "t.zarr", classes, conf, None, attrs)
    assert is_map(m)
    g = zarr.open_group(str(m), mode="a")
    del g.attrs["format"]
    assert is_map(m)  # a map written before the marker existed
    del g.attrs["overlap"]
    assert not is_map(m)
    from dualseg.config import SyntheticConfig
    from dualseg.data.synthetic import generate

    generate(tmp_path / "tiles", SyntheticConfig(tiles=3, size=8, s1_dates=2, s2_dates=2))
    (tmp_path / "link.zarr").symlink_to(write_zarr(tmp_path / "u.zarr", classes, conf, None, attrs))
    for other in (tmp_path / "tiles" / "tile_000.zarr", tmp_path / "tiles" / "splits.json", tmp_path / "link.zarr",
                  tmp_path / "none.zarr"):
        assert not is_map(other), other
    tif = write_geotiff(tmp_path / "t.tif", classes, "EPSG:32631", TRANSFORM, ["a"], 255)
    assert is_map_geotiff(tif)
    (tmp_path / "x.tif").write_bytes(b"II*\x00 not ours")
    with (pytest.warns(rasterio.errors.NotGeoreferencedWarning),
          rasterio.open(tmp_path / "y.tif", "w", driver="GTiff", height=8, width=8, count=1, dtype="uint8") as dst):
        dst.write(np.zeros((1, 8, 8), np.uint8))  # a real TIFF, not a map (and not georeferenced)
    assert not is_map_geotiff(tmp_path / "x.tif") and not is_map_geotiff(tmp_path / "y.tif")


def _gdal_category_names(path: Path) -> list[str] | None:
    """Category names of band 1 as GDAL itself reads them (rasterio's bundled libgdal through ctypes;
    rasterio has no API for them). None when that library cannot be found."""
    import ctypes
    import glob
    import os

    libs = glob.glob(os.path.join(os.path.dirname(os.path.dirname(rasterio.__file__)), "rasterio.libs", "libgdal*"))
    if not libs:
        return None
    gdal = ctypes.CDLL(libs[0])
    gdal.GDALAllRegister()
    gdal.GDALOpen.restype = ctypes.c_void_p
    gdal.GDALOpen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    gdal.GDALGetRasterBand.restype = ctypes.c_void_p
    gdal.GDALGetRasterBand.argtypes = [ctypes.c_void_p, ctypes.c_int]
    gdal.GDALGetRasterCategoryNames.restype = ctypes.POINTER(ctypes.c_char_p)
    gdal.GDALGetRasterCategoryNames.argtypes = [ctypes.c_void_p]
    gdal.GDALClose.argtypes = [ctypes.c_void_p]
    gdal.GDALGetMetadata.restype = ctypes.c_void_p
    gdal.GDALGetMetadata.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    ds = gdal.GDALOpen(str(path).encode(), 0)
    assert ds, f"GDAL cannot open {path}"
    try:
        band = gdal.GDALGetRasterBand(ds, 1)
        gdal.GDALGetMetadata(band, None)  # as gdalinfo does first: GTiff loads the PAM side-car lazily
        names = gdal.GDALGetRasterCategoryNames(band)
        out = []
        while names and names[len(out)] is not None:
            out.append(names[len(out)].decode())
        return out
    finally:
        gdal.GDALClose(ds)


def test_class_names_reach_gis_tools_as_category_names(tmp_path: Path) -> None:
    """QGIS's legend reads GDAL category names: the PAM side-car written beside the GeoTIFF carries them."""
    import xml.etree.ElementTree as ET

    names = ["wheat", "maize & <rape>", "meadow"]
    tif = write_geotiff(tmp_path / "t.tif", np.zeros((32, 32), np.uint8), "EPSG:32631", TRANSFORM, names, 255)
    aux = tmp_path / "t.tif.aux.xml"
    band = ET.parse(aux).getroot().find("PAMRasterBand")
    assert band is not None and band.get("band") == "1"
    assert [c.text for c in band.iter("Category")] == names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.tif", "t.tif.aux.xml"]  # no temp file left
    gdal_names = _gdal_category_names(tif)
    if gdal_names is not None:  # the wheel's own GDAL (the one QGIS-like tools link) reads them back
        assert gdal_names == names
    with rasterio.open(tif) as src:  # and the side-car does not disturb what rasterio reads
        assert json.loads(src.tags(1)["CLASS_NAMES"]) == names and src.descriptions[0] == "class"


def test_uncertainty_geotiff_round_trip(tmp_path: Path) -> None:
    from dualseg.predict.writers import write_uncertainty_geotiff

    u = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    u[0, 0] = np.nan  # no input there
    tif = write_uncertainty_geotiff(tmp_path / "t.uncertainty.tif", u, "EPSG:32631", TRANSFORM)
    with rasterio.open(tif) as src:
        assert src.dtypes == ("float32",) and np.isnan(src.nodata) and src.crs.to_epsg() == 32631
        assert list(src.transform)[:6] == TRANSFORM and src.descriptions[0] == "uncertainty"
        np.testing.assert_array_equal(src.read(1), u)
    assert is_map_geotiff(tif)
