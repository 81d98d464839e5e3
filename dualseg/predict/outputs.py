"""Where maps go: never onto an input, never over what this package did not write, nothing half-made left.

``--out`` equal to ``--tiles`` once replaced a tile by its map with ``--overwrite`` (and called the
tile "already there" without it). So the output folder is checked against the inputs first
(:func:`dualseg.io.check_output`: not the tiles folder or the model file, not inside or around
them, not a file), and an existing ``<out>/<tile>.zarr`` (or ``.tif``) counts as done, or may be
replaced, only when it is a map this package wrote (:func:`~dualseg.predict.writers.is_map`);
anything else is one error line before anything is written. A write that fails (a full disk) is one
error line too, and removes the folders this run created while they are still empty.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from dualseg.data.tile import TileInfo
from dualseg.errors import InputError
from dualseg.io import check_output, check_writable_dir
from dualseg.predict.writers import geotiff_path, is_map, is_map_geotiff, map_path, uncertainty_path

NOT_OURS = "is never replaced (move it away or choose another --out)"


def check_out(out: str | Path, tiles: str | Path, model: str | Path | None) -> Path:
    """``--out`` is a writable folder (or can be made one) that is not, does not contain and is not
    inside the tiles folder or the model file; returns it resolved. Creates nothing."""
    checked = check_output(out, {"tiles folder --tiles": tiles, "model file --model": model or None}, "--out")
    check_writable_dir(out, "--out")
    return checked


def georeferenced(info: TileInfo) -> bool:
    """A tile with a CRS and a transform gets a GeoTIFF beside its zarr map."""
    return bool(info.attrs.get("crs") and info.attrs.get("transform"))


def pending(out: Path, infos: list[TileInfo], *, overwrite: bool = False, geotiff: bool = True) -> list[TileInfo]:
    """The tiles still to map: those without a map in ``out``, or all with ``overwrite``.

    A file or folder in a map's place that this package did not write raises, with or without
    ``overwrite``: it is neither "already mapped" nor replaced.
    """
    todo = []
    for info in infos:
        z = map_path(out, info.name)
        if z.exists() or z.is_symlink():
            if not is_map(z):
                raise InputError(f"--out: {z} exists and is not a map written by dualseg.predict; it {NOT_OURS}")
            if not overwrite:
                continue
        for tif in (geotiff_path(out, info.name), uncertainty_path(out, info.name)):
            if geotiff and georeferenced(info) and (tif.exists() or tif.is_symlink()) and not is_map_geotiff(tif):
                raise InputError(f"--out: {tif} exists and is not a GeoTIFF written by dualseg.predict; "
                                 f"it {NOT_OURS}")
        todo.append(info)
    return todo


@contextlib.contextmanager
def removing_new_empty_dirs(out: Path) -> Iterator[None]:
    """On any failure, remove ``out`` and the parents of it this run created, if still empty.

    Finished maps are kept (a rerun does the rest); the writers remove their own temp files.
    """
    created = []
    d = Path(os.path.abspath(out))
    while not d.exists() and d != d.parent:
        created.append(d)
        d = d.parent
    try:
        yield
    except BaseException:
        for d in created:  # deepest first; a non-empty folder stops the walk
            try:
                d.rmdir()
            except OSError:
                break
        raise
