"""Map outputs: one zarr per tile (always) and a GeoTIFF (when the tile is georeferenced).

Both are written atomically (temp beside the target, fsync, rename), the zarr last: its presence
means the tile is done, which is what a resumed run checks. Beside ``<tile>.tif`` (uint8 classes
with a colour table) go ``<tile>.tif.aux.xml``, GDAL's PAM side-car holding the class names as
band *category names* (what QGIS's paletted legend and ``gdalinfo`` show; a GeoTIFF has no tag
of its own for them, and rasterio no API), and ``<tile>.uncertainty.tif`` (float32, NaN no-data:
a second file because a GeoTIFF has one data type and one no-data value for all its bands, and
the class band's no-data is the ignore value). A map zarr carries ``format:
dualseg-map``, so a rerun (or ``--overwrite``) can tell its own maps from anything else. The GeoTIFF needs rasterio (the
``geo`` extra); the zarr needs nothing beyond the core dependencies.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import zarr

from dualseg.errors import InputError
from dualseg.io import _fsync_dir, atomic_write_bytes, replace_dir

MAP_FORMAT = "dualseg-map"  # the ``format`` attribute of every map zarr: what marks it as ours

# tab20 (matplotlib), so maps and report figures use the same colours without importing matplotlib
PALETTE = [
    (31, 119, 180), (174, 199, 232), (255, 127, 14), (255, 187, 120), (44, 160, 44), (152, 223, 138),
    (214, 39, 40), (255, 152, 150), (148, 103, 189), (197, 176, 213), (140, 86, 75), (196, 156, 148),
    (227, 119, 194), (247, 182, 210), (127, 127, 127), (199, 199, 199), (188, 189, 34), (219, 219, 141),
    (23, 190, 207), (158, 218, 229),
]


def class_colours(num_classes: int) -> list[tuple[int, int, int]]:
    """RGB per class (cycling through tab20)."""
    return [PALETTE[i % len(PALETTE)] for i in range(num_classes)]


def map_path(out: str | Path, tile: str) -> Path:
    """``<out>/<tile>.zarr``: the map of ``tile`` (its existence marks the tile done)."""
    return Path(out) / f"{tile}.zarr"


def geotiff_path(out: str | Path, tile: str) -> Path:
    return Path(out) / f"{tile}.tif"


def uncertainty_path(out: str | Path, tile: str) -> Path:
    """``<out>/<tile>.uncertainty.tif``: the disagreement layer as a GeoTIFF."""
    return Path(out) / f"{tile}.uncertainty.tif"


def aux_path(tif: Path) -> Path:
    """GDAL's PAM side-car of ``tif`` (read by every GDAL-based tool, QGIS included)."""
    return tif.with_name(tif.name + ".aux.xml")


def category_xml(class_names: list[str], band: int = 1) -> str:
    """A PAM document giving ``band`` the class names as category names (value i -> name i)."""
    cats = "".join(f"      <Category>{escape(n)}</Category>\n" for n in class_names)
    return (f'<PAMDataset>\n  <PAMRasterBand band="{band}">\n    <CategoryNames>\n{cats}'
            "    </CategoryNames>\n  </PAMRasterBand>\n</PAMDataset>\n")


def write_zarr(
    path: Path,
    classes: np.ndarray,
    confidence: np.ndarray,
    probabilities: np.ndarray | None,
    attrs: dict[str, Any],
    chunk: int = 256,
    *,
    uncertainty: np.ndarray | None = None,
) -> Path:
    """``classes`` (H,W) uint8, ``confidence`` (H,W) float32, optional ``uncertainty`` (H,W) float32
    and ``probabilities`` (K,H,W) float32."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    h, w = classes.shape
    ch, cw = min(chunk, h), min(chunk, w)
    try:
        root = zarr.open_group(tmp, mode="w", zarr_format=3)
        root.attrs.update({**attrs, "format": MAP_FORMAT})
        root.create_array("classes", data=np.ascontiguousarray(classes, dtype=np.uint8), chunks=(ch, cw))
        root.create_array("confidence", data=np.ascontiguousarray(confidence, dtype=np.float32), chunks=(ch, cw))
        if uncertainty is not None:
            root.create_array("uncertainty", data=np.ascontiguousarray(uncertainty, dtype=np.float32),
                              chunks=(ch, cw), fill_value=np.nan)
        if probabilities is not None:
            k = probabilities.shape[0]
            root.create_array("probabilities", data=np.ascontiguousarray(probabilities, dtype=np.float32),
                              chunks=(k, ch, cw))
        for f in tmp.rglob("*"):  # durable before the rename makes it visible
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)
    return path


def _profile(path: Path, shape: tuple[int, ...], crs: str, transform: list[float], dtype: str,
             nodata: float) -> dict[str, Any]:
    """A tiled, deflate-compressed single-band GeoTIFF profile; bad CRS/transform is an input error."""
    try:
        import rasterio.crs
        from rasterio.transform import Affine
    except ImportError:
        raise InputError("GeoTIFF output needs rasterio: pip install 'dualseg[geo]' (or pass --no-geotiff)") from None
    if len(transform) != 6:
        raise InputError(f"GeoTIFF {path.name}: tile transform must have 6 values, got {len(transform)}")
    try:
        crs_obj = rasterio.crs.CRS.from_user_input(crs)
    except Exception as exc:  # noqa: BLE001 - rasterio/pyproj raise several types
        raise InputError(f"GeoTIFF {path.name}: tile CRS {crs!r} not understood ({exc})") from None
    h, w = shape
    profile: dict[str, Any] = {
        "driver": "GTiff", "height": h, "width": w, "count": 1, "dtype": dtype, "crs": crs_obj,
        "transform": Affine(*transform), "nodata": nodata, "compress": "deflate",
    }
    if h >= 16 and w >= 16:  # GeoTIFF tiles are multiples of 16 px
        profile.update(tiled=True, blockxsize=min(256, w // 16 * 16), blockysize=min(256, h // 16 * 16))
    return profile


def write_geotiff(
    path: Path, classes: np.ndarray, crs: str, transform: list[float], class_names: list[str], ignore: int
) -> Path:
    """Tiled, deflate-compressed uint8 GeoTIFF with CRS, affine ``transform`` (a,b,c,d,e,f), colour
    table, ``ignore`` as nodata, the class names as tags (``CLASS_NAMES`` JSON, ``CLASS_<i>``) and,
    in ``<path>.aux.xml`` (written first, removed if the GeoTIFF fails), as GDAL category names."""
    profile = _profile(path, classes.shape, crs, transform, "uint8", ignore)
    from rasterio.io import MemoryFile

    # Built in memory, then written by dualseg.io: GDAL reports a failed write (a full disk) only as a
    # log line and leaves a truncated file, where Python's own write raises OSError.
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(np.ascontiguousarray(classes, dtype=np.uint8), 1)
            cmap = {i: (*c, 255) for i, c in enumerate(class_colours(len(class_names)))}
            cmap[ignore] = (0, 0, 0, 0)
            dst.write_colormap(1, cmap)
            dst.update_tags(1, CLASS_NAMES=json.dumps(class_names),
                            **{f"CLASS_{i}": n for i, n in enumerate(class_names)})
            dst.set_band_description(1, "class")
        data = mem.read()
    aux = atomic_write_bytes(aux_path(path), category_xml(class_names).encode())
    try:
        return atomic_write_bytes(path, data)
    except BaseException:
        aux.unlink(missing_ok=True)
        raise


def write_uncertainty_geotiff(path: Path, uncertainty: np.ndarray, crs: str, transform: list[float]) -> Path:
    """The disagreement layer (H,W) float32 as a GeoTIFF, NaN as no-data, on the class map's grid."""
    profile = _profile(path, uncertainty.shape, crs, transform, "float32", float("nan"))
    from rasterio.io import MemoryFile

    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(np.ascontiguousarray(uncertainty, dtype=np.float32), 1)
            dst.update_tags(1, LAYER="uncertainty",
                            DEFINITION="normalised entropy of the mean class probability (0 sure, 1 uniform)")
            dst.set_band_description(1, "uncertainty")
        data = mem.read()
    return atomic_write_bytes(path, data)


def is_map(path: Path) -> bool:
    """A map zarr :func:`write_zarr` wrote (its ``format`` attribute; earlier maps by their attributes).

    What ``--overwrite`` may replace and what counts as "already mapped": never a tile or a foreign zarr.
    """
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        g = zarr.open_group(str(path), mode="r")
        attrs = dict(g.attrs)
        classes = g.get("classes")
    except Exception:  # noqa: BLE001 - zarr raises many types for what is not a zarr group
        return False
    if attrs.get("format") == MAP_FORMAT:
        return True
    return {"tile", "model", "overlap", "class_names"} <= attrs.keys() and isinstance(classes, zarr.Array)


def is_map_geotiff(path: Path) -> bool:
    """A GeoTIFF :func:`write_geotiff` (its ``CLASS_NAMES`` tag and ``class`` band) or
    :func:`write_uncertainty_geotiff` (``LAYER=uncertainty``) wrote."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        import rasterio

        with warnings.catch_warnings():  # a foreign TIFF may warn (not georeferenced): not our line to print
            warnings.simplefilter("ignore")
            with rasterio.open(path) as src:
                tags, desc = src.tags(1), src.descriptions[0]
                return ("CLASS_NAMES" in tags and desc == "class") or (
                    tags.get("LAYER") == "uncertainty" and desc == "uncertainty")
    except Exception:  # noqa: BLE001 - rasterio raises several types for what is not a GeoTIFF
        return False
