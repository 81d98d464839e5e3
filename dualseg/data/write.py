"""Writing tiles: :func:`write_tile` checks a :class:`~dualseg.data.tile.Tile` and writes it atomically.

A separate module from the format (:mod:`dualseg.data.tile`) because only the generator, the
importer and tools write tiles, while everything else only opens them. Chunks span the whole time
axis (every patch needs every date) and ``chunk_hw`` (128) pixels in space: the dataset reads each
tile whole once per process, where fewer chunks decode faster (23 vs 36 ms for a 128x128 tile at
64 px), while an uncached 32-px patch still touches at most four chunks. The default codec is
chosen per array kind (:data:`AUTO`, measured by bench/bench_codec.py): Blosc-LZ4 byte shuffle for
bands and cloud masks, Blosc-Zstd 1 for labels;
``codec="none"`` trades ~1.4x the bytes for 1.3-1.5x faster whole-tile reads from the page cache.
Every chunk is written (also all-fill ones) and recorded in the manifest
(:mod:`dualseg.data.manifest`), so a missing chunk file always means lost data.
"""

from __future__ import annotations

import shutil
import threading
import uuid
import warnings
from pathlib import Path
from typing import Any, cast

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.core.array_spec import ArrayConfigParams

from dualseg.data.manifest import arrays_of, chunk_keys, stored_files, write_manifest
from dualseg.data.quant import QUANT
from dualseg.data.tile import DEFAULT_CHUNK_HW, FORMAT, FORMAT_DTYPES, STREAMS, VERSION, Stream, Tile, check_dates
from dualseg.errors import InputError
from dualseg.io import replace_dir

_CONSOLIDATE_LOCK = threading.Lock()
# all-fill-value chunks are written too, so a missing chunk file always means lost data
_EVERY_CHUNK = cast(ArrayConfigParams, {"write_empty_chunks": True})


def _check_stream(tile: str, key: str, s: Stream, hw: tuple[int, int] | None) -> tuple[int, int]:
    if not s.bands:
        raise InputError(f"tile {tile}: stream {key} has no bands")
    time = np.asarray(s.time)
    if time.ndim != 1:
        raise InputError(f"tile {tile}: {key}/time must be 1-D, got shape {time.shape}")
    check_dates(tile, key, time)
    for name, arr in s.bands.items():
        if arr.ndim != 3:
            raise InputError(f"tile {tile}: {key}/{name} must be (T,H,W), got shape {arr.shape}")
        if arr.shape[0] != time.shape[0]:
            raise InputError(
                f"tile {tile}: {key}/{name} has T={arr.shape[0]} but {key}/time has {time.shape[0]} dates"
            )
        if hw is None:
            hw = arr.shape[1:]
        elif arr.shape[1:] != hw:
            raise InputError(f"tile {tile}: {key}/{name} has H,W={arr.shape[1:]} but the tile is {hw}")
    want = (time.shape[0], *cast(tuple[int, int], hw))
    if s.cloud is not None and s.cloud.shape != want:
        raise InputError(f"tile {tile}: {key}/cloud shape {s.cloud.shape} != {want}")
    return hw  # type: ignore[return-value]


CODECS = ("auto", "lz4", "zstd", "none")
# "auto": the codec per array kind, chosen from bench/bench_codec.py's table (docs/data.md): bands
# and cloud masks Blosc-LZ4 byte shuffle (decodes 2-3 GB/s per core; zstd saves 10-14 % of the
# band bytes but decodes 3-5x slower), labels Blosc-Zstd 1 (2.4x smaller than LZ4, read once per tile)
AUTO = {"band": "lz4", "cloud": "lz4", "labels": "zstd"}


def _compressors(codec: str) -> list[BloscCodec] | None:
    """Blosc-LZ4 (default: fast decode, ~1.3x smaller), Blosc-zstd level 1 (smallest), or none
    (fastest from the page cache, 1.3-1.5x faster whole-tile reads, ~1.4x the bytes)."""
    if codec == "lz4":
        return [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]
    if codec == "zstd":
        return [BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")]
    if codec == "none":
        return None
    raise InputError(f"tile codec: unknown value {codec!r} ({', '.join(CODECS)})")


def write_tile(
    path: str | Path,
    tile: Tile,
    *,
    chunk_hw: int = DEFAULT_CHUNK_HW,
    overwrite: bool = False,
    codec: str = "auto",
    version: int = VERSION,
) -> Path:
    """Check ``tile`` and write it to ``path`` atomically (temp dir + rename), return ``path``.

    A crash mid-write leaves at most a hidden ``.<name>.tmp-*`` directory, never a half tile.
    ``codec`` is ``auto`` (per array kind: :data:`AUTO`) | ``lz4`` | ``zstd`` | ``none`` for all
    arrays (readers need no option: zarr records it).
    ``version`` 2 (default) quantises the bands (:mod:`dualseg.data.quant`: a value outside the
    representable range is an InputError naming tile and band); 1 writes float32 bands.
    """
    path = Path(path)
    name = path.name.removesuffix(".zarr")
    comp = {kind: _compressors(AUTO[kind] if codec == "auto" else codec) for kind in AUTO}
    if version not in FORMAT_DTYPES:
        raise InputError(f"tile {name}: cannot write format version {version} ({', '.join(map(str, FORMAT_DTYPES))})")
    hw = _check_stream(name, "s1", tile.s1, None)
    hw = _check_stream(name, "s2", tile.s2, hw)
    if tile.labels.shape != hw:
        raise InputError(f"tile {name}: labels shape {tile.labels.shape} != band shape {hw}")
    if path.exists() and not overwrite:
        raise InputError(f"tile {name}: {path} already exists (pass overwrite=True)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        _write_group(tmp, name, tile, hw, chunk_hw, comp, version)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _write_group(
    tmp: Path, name: str, tile: Tile, hw: tuple[int, int], chunk_hw: int, comp: dict[str, list[BloscCodec] | None],
    version: int
) -> None:
    ch, cw = min(chunk_hw, hw[0]), min(chunk_hw, hw[1])
    root = zarr.open_group(tmp, mode="w", zarr_format=3)
    root.attrs.update(
        {
            "format": FORMAT,
            "version": version,
            "class_names": list(tile.class_names),
            # version 2: nodata is per band (its DN); the float value was mapped to it on encoding
            "nodata": None if tile.nodata is None or version >= 2 else float(tile.nodata),
            "crs": tile.crs,
            "transform": None if tile.transform is None else [float(v) for v in tile.transform],
            "time_epoch": "1970-01-01",
        }
    )
    for key in STREAMS:
        s: Stream = getattr(tile, key)
        g = root.create_group(key, attributes={"bands": list(s.bands)})
        t = len(s.time)
        for band, arr in s.bands.items():
            attrs: dict[str, Any] = {}
            if version >= 2:
                q = QUANT[key]
                data = q.encode(arr, f"tile {name}: band {key}/{band}", tile.nodata)
                attrs = q.attrs()
            else:
                data = np.ascontiguousarray(arr, dtype=np.float32)
            g.create_array(band, data=data, chunks=(t, ch, cw), compressors=comp["band"], attributes=attrs,
                           config=_EVERY_CHUNK)
        g.create_array("time", data=np.asarray(s.time, dtype=np.int32), config=_EVERY_CHUNK)
        if s.cloud is not None:
            cloud = np.ascontiguousarray(s.cloud, dtype=bool)
            g.create_array("cloud", data=cloud, chunks=(t, ch, cw), compressors=comp["cloud"], config=_EVERY_CHUNK)
    root.create_array(
        "labels",
        data=np.ascontiguousarray(tile.labels, dtype=np.int16),
        chunks=(ch, cw),
        compressors=comp["labels"],
        attributes={"ignore_index": int(tile.ignore_index)},
        config=_EVERY_CHUNK,
    )
    root.attrs["manifest"] = write_manifest(tmp, root)
    consolidate(tmp)


def consolidate(path: Path) -> None:
    """Consolidated metadata: one metadata read per tile instead of one per array when opening.

    zarr warns that it is not (yet) part of the v3 spec; readers fall back to per-array metadata.
    """
    with _CONSOLIDATE_LOCK, warnings.catch_warnings():  # catch_warnings is process-global state
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        warnings.filterwarnings("ignore", message="Object at manifest.json", category=UserWarning)
        zarr.consolidate_metadata(str(path))


def rewrite_manifest(path: str | Path) -> None:
    """Record the manifest of the tile at ``path`` as it is now (a tile edited in place with zarr,
    or written by older code, adopts its current contents: chunks zarr left unwritten because
    they held only the fill value are written out first), then re-consolidate."""
    path = Path(path)
    root = zarr.open_group(str(path), mode="a", use_consolidated=False)
    files = stored_files(path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Object at manifest.json", category=UserWarning)
        arrays = arrays_of(root)
    for key, arr in arrays.items():
        if any(f"{key}/{ck}" not in files for ck in chunk_keys(arr)):
            full = arr.with_config(_EVERY_CHUNK)
            full[...] = full[...]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Object at manifest.json", category=UserWarning)
        root.attrs["manifest"] = write_manifest(path, root)
    consolidate(path)
