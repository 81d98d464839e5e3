"""Map outputs: one zarr per tile (always) and a GeoTIFF (when the tile is georeferenced).

Both are written atomically (temp beside the target, fsync, rename), the zarr last: its presence
means the tile is done, which is what a resumed run checks. A map zarr carries ``format:
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


def write_zarr(
    path: Path,
    classes: np.ndarray,
    confidence: np.ndarray,
    probabilities: np.ndarray | None,
    attrs: dict[str, Any],
    chunk: int = 256,
) -> Path:
    """``classes`` (H,W) uint8, ``confidence`` (H,W) float32, optional ``probabilities`` (K,H,W) float32."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    h, w = classes.shape
    ch, cw = min(chunk, h), min(chunk, w)
    try:
        root = zarr.open_group(tmp, mode="w", zarr_format=3)
        root.attrs.update({**attrs, "format": MAP_FORMAT})
        root.create_array("classes", data=np.ascontiguousarray(classes, dtype=np.uint8), chunks=(ch, cw))
        root.create_array("confidence", data=np.ascontiguousarray(confidence, dtype=np.float32), chunks=(ch, cw))
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


def write_geotiff(
    path: Path, classes: np.ndarray, crs: str, transform: list[float], class_names: list[str], ignore: int
) -> Path:
    """Tiled, deflate-compressed uint8 GeoTIFF with CRS, affine ``transform`` (a,b,c,d,e,f), colour
    table, ``ignore`` as nodata and the class names as tags (``CLASS_NAMES`` JSON, ``CLASS_<i>``)."""
    try:
        import rasterio
        import rasterio.crs
        from rasterio.io import MemoryFile
        from rasterio.transform import Affine
    except ImportError:
        raise InputError("GeoTIFF output needs rasterio: pip install 'dualseg[geo]' (or pass --no-geotiff)") from None
    if len(transform) != 6:
        raise InputError(f"GeoTIFF {path.name}: tile transform must have 6 values, got {len(transform)}")
    try:
        crs_obj = rasterio.crs.CRS.from_user_input(crs)
    except Exception as exc:  # noqa: BLE001 - rasterio/pyproj raise several types
        raise InputError(f"GeoTIFF {path.name}: tile CRS {crs!r} not understood ({exc})") from None
    h, w = classes.shape
    profile: dict[str, Any] = {
        "driver": "GTiff", "height": h, "width": w, "count": 1, "dtype": "uint8", "crs": crs_obj,
        "transform": Affine(*transform), "nodata": ignore, "compress": "deflate",
    }
    if h >= 16 and w >= 16:  # GeoTIFF tiles are multiples of 16 px
        profile.update(tiled=True, blockxsize=min(256, w // 16 * 16), blockysize=min(256, h // 16 * 16))
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
    """A GeoTIFF :func:`write_geotiff` wrote (its ``CLASS_NAMES`` tag and ``class`` band)."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        import rasterio

        with warnings.catch_warnings():  # a foreign TIFF may warn (not georeferenced): not our line to print
            warnings.simplefilter("ignore")
            with rasterio.open(path) as src:
                return "CLASS_NAMES" in src.tags(1) and src.descriptions[0] == "class"
    except Exception:  # noqa: BLE001 - rasterio raises several types for what is not a GeoTIFF
        return False
