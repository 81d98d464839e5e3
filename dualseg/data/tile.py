"""The on-disk tile format: one zarr v3 group per tile, its in-memory and opened forms, and the opener.

Layout of ``<root>/<tile>.zarr`` (see docs/data.md)::

    attrs: format="dualseg-tile", version=2 (or 1), class_names=[...], nodata=<float|null>, crs, transform
    s1/  attrs bands=[...];  <band> (T1,H,W) int16 dB x 100 (v1: float32 dB);  time (T1,) int32 days
    s2/  attrs bands=[...];  <band> (T2,H,W) uint16 (v1: float32 reflectance x 1e4);  time;  cloud (T2,H,W) bool
    labels (H,W) int16, attrs ignore_index
    version 2 bands carry scale/offset/nodata/valid_range (:mod:`dualseg.data.quant`); readers
    dequantise them to float32, so version 1 and 2 tiles read alike.

Band dtypes are those :data:`FORMAT_DTYPES` allows for the tile's version and stream. Every
stored band is its own array so a band subset reads only the bytes it needs. The writer
(atomic; chunking and codecs) is :mod:`dualseg.data.write`; the pixel readers (``read_stream``,
``read_all``, ``read_labels``, ``read_tile``) live in :mod:`dualseg.data.read`.

Every tile carries a manifest (:mod:`dualseg.data.manifest`: shapes, chunk grid, a CRC-32 per
chunk). :func:`open_tile` checks the structure (groups, bands, shapes, dates) and that every chunk
file of the arrays it opens exists (zarr would read a lost chunk as fill values), raising
:class:`InputError` naming the tile and the variable; value and checksum checks live in
:mod:`dualseg.data.validate`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import zarr

from dualseg.data.manifest import check_chunks
from dualseg.data.quant import Quant
from dualseg.errors import InputError

FORMAT = "dualseg-tile"
VERSION = 2  # what writers write; every version in FORMAT_DTYPES is read
# THE table of band dtypes per format version and stream: :func:`open_tile` checks it from the zarr
# metadata alone (so validate, pre-flight and prediction); nothing else lists them.
FORMAT_DTYPES: dict[int, dict[str, frozenset[str]]] = {
    1: {"s1": frozenset({"float32"}), "s2": frozenset({"float32"})},
    2: {"s1": frozenset({"int16"}), "s2": frozenset({"uint16"})},
}
STREAMS = ("s1", "s2")
DEFAULT_IGNORE_INDEX = 255
DEFAULT_CHUNK_HW = 128


@dataclass
class Stream:
    """One sensor's time series in memory: ``bands[name]`` is (T,H,W), ``time`` (T,) days since epoch."""

    bands: dict[str, np.ndarray]
    time: np.ndarray
    cloud: np.ndarray | None = None  # (T,H,W) bool, True = cloudy (S2 only)


@dataclass
class Tile:
    """A whole tile in memory, as :func:`~dualseg.data.write.write_tile` writes it and ``read_tile`` returns it."""

    s1: Stream
    s2: Stream
    labels: np.ndarray  # (H,W) integer
    class_names: list[str]
    ignore_index: int = DEFAULT_IGNORE_INDEX
    nodata: float | None = None  # declared nodata value besides NaN
    crs: str | None = None
    transform: list[float] | None = None


@dataclass
class StreamInfo:
    """Metadata of one stream of an opened tile (no pixel data)."""

    bands: list[str]
    time: np.ndarray  # (T,) int64
    has_cloud: bool
    quant: list[Quant] | None = None  # per band (version 2), None = float bands (version 1)

    @property
    def t(self) -> int:
        return int(self.time.shape[0])


@dataclass
class TileInfo:
    """An opened, structurally checked tile; pixel data is read lazily via :func:`read_window`."""

    path: Path
    name: str
    height: int
    width: int
    streams: dict[str, StreamInfo]
    class_names: list[str]
    ignore_index: int
    nodata: float | None
    attrs: dict[str, Any] = field(default_factory=dict)
    has_labels: bool = True
    version: int = 1

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def tile_path(root: str | Path, name: str) -> Path:
    """``<root>/<name>.zarr``."""
    return Path(root) / f"{name}.zarr"


def check_dates(tile: str, key: str, time: np.ndarray) -> None:
    """Dates are integer days, at least one, strictly increasing (the writer and :func:`open_tile` both check)."""
    if time.size and not np.issubdtype(time.dtype, np.integer):
        raise InputError(f"tile {tile}: {key}/time must be integer days since 1970-01-01, got {time.dtype}")
    if time.size == 0:
        raise InputError(f"tile {tile}: {key}/time is empty (no acquisitions)")
    diff = np.diff(time.astype(np.int64))
    if (diff == 0).any():
        i = int(np.flatnonzero(diff == 0)[0])
        raise InputError(f"tile {tile}: {key}/time has a duplicate date {int(time[i])} at index {i + 1}")
    if (diff < 0).any():
        i = int(np.flatnonzero(diff < 0)[0])
        raise InputError(f"tile {tile}: {key}/time is not sorted (index {i + 1}: {int(time[i + 1])} < {int(time[i])})")


def open_group(path: Path, name: str) -> zarr.Group:
    """Open tile ``name`` read-only (consolidated metadata when present)."""
    if not path.is_dir():
        raise InputError(f"tile {name}: not found ({path})")
    try:
        return zarr.open_group(str(path), mode="r", use_consolidated=None)
    except Exception as exc:  # noqa: BLE001 - zarr raises many types for a broken store
        raise InputError(f"tile {name}: not a readable zarr group ({path}): {type(exc).__name__}: {exc}") from None


def _member(group: zarr.Group, key: str, name: str, want: type) -> Any:
    try:
        obj = group[key]
    except KeyError:
        obj = None
    except Exception as exc:  # noqa: BLE001 - zarr raises many types for a broken store
        raise InputError(f"tile {name}: {key}: unreadable ({type(exc).__name__}: {exc})") from None
    if obj is None:
        kind = "group" if want is zarr.Group else "array"
        raise InputError(f"tile {name}: missing {kind} {key}")
    if not isinstance(obj, want):
        raise InputError(f"tile {name}: {key} is not a zarr {want.__name__.lower()}")
    return obj


def open_tile(
    path: str | Path,
    s1_bands: list[str] | None = None,
    s2_bands: list[str] | None = None,
    *,
    require_labels: bool = True,
) -> TileInfo:
    """Open a tile and check its structure (groups, bands, shapes, dates); reads no pixel data.

    ``s1_bands``/``s2_bands`` (default: the bands listed in the stream attrs) must all exist.
    ``require_labels=False`` accepts a tile without ``labels`` (prediction needs only S1/S2 and
    dates); its ``has_labels`` is then False and H,W come from the first S1 band.
    """
    path = Path(path)
    name = path.name.removesuffix(".zarr")
    root = open_group(path, name)
    attrs = dict(root.attrs)
    version = tile_version(attrs, name)
    class_names = attrs.get("class_names")
    if not require_labels and class_names is None:  # a bare input tile: the model knows the classes
        class_names = []
    elif not isinstance(class_names, list) or not class_names:
        raise InputError(f"tile {name}: attribute class_names missing or empty")
    has_labels = require_labels or "labels" in root
    labels = _member(root, "labels", name, zarr.Array) if has_labels else None
    if labels is not None and (labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer)):
        raise InputError(f"tile {name}: labels must be a 2-D integer array, got {labels.dtype} {labels.shape}")
    hw = tuple(labels.shape) if labels is not None else _unlabelled_hw(root, name, s1_bands)
    streams: dict[str, StreamInfo] = {}
    opened: dict[str, zarr.Array] = {"labels": labels} if labels is not None else {}  # every chunk must be there
    for key, wanted in (("s1", s1_bands), ("s2", s2_bands)):
        g = _member(root, key, name, zarr.Group)
        bands = list(wanted) if wanted is not None else list(g.attrs.get("bands", []))
        if not bands:
            raise InputError(f"tile {name}: stream {key} lists no bands")
        time_arr = opened[f"{key}/time"] = _member(root, f"{key}/time", name, zarr.Array)
        check_chunks(path, name, {f"{key}/time": time_arr})  # before reading it: no fill-value dates
        time = np.asarray(time_arr[...])
        if time.ndim != 1:
            raise InputError(f"tile {name}: {key}/time must be 1-D, got shape {time.shape}")
        check_dates(name, key, time)
        quant: list[Quant] = []
        for band in bands:
            arr = g.get(band)
            if arr is None:
                raise InputError(f"tile {name}: missing band {key}/{band}")
            if not isinstance(arr, zarr.Array) or arr.ndim != 3:
                raise InputError(f"tile {name}: {key}/{band} must be a (T,H,W) array")
            allowed = FORMAT_DTYPES[version][key]
            if str(arr.dtype) not in allowed:  # metadata only: no chunk is read
                raise InputError(f"tile {name}: band {key}/{band} is stored as {arr.dtype}; format version "
                                 f"{version} allows {' or '.join(sorted(allowed))}")
            if arr.shape[0] != time.shape[0]:
                raise InputError(
                    f"tile {name}: {key}/{band} has T={arr.shape[0]} but {key}/time has {time.shape[0]} dates"
                )
            if tuple(arr.shape[1:]) != hw:
                raise InputError(f"tile {name}: {key}/{band} has H,W={tuple(arr.shape[1:])} but labels are {hw}")
            opened[f"{key}/{band}"] = arr
            if version >= 2:
                quant.append(_band_quant(arr, name, key, band))
        cloud = g.get("cloud")
        has_cloud = cloud is not None
        if cloud is not None and not isinstance(cloud, zarr.Array):
            raise InputError(f"tile {name}: {key}/cloud is not a zarr array")
        if cloud is not None:
            if tuple(cloud.shape) != (time.shape[0], *hw):
                raise InputError(f"tile {name}: {key}/cloud shape {tuple(cloud.shape)} != {(time.shape[0], *hw)}")
            opened[f"{key}/cloud"] = cloud
        streams[key] = StreamInfo(bands=bands, time=time.astype(np.int64), has_cloud=has_cloud,
                                  quant=quant if version >= 2 else None)
    check_chunks(path, name, opened)
    nodata = attrs.get("nodata")
    return TileInfo(
        path=path,
        name=name,
        height=int(hw[0]),
        width=int(hw[1]),
        streams=streams,
        class_names=[str(c) for c in class_names],
        ignore_index=int(cast(int, (labels.attrs if labels is not None else attrs).get("ignore_index",
                                                                                      DEFAULT_IGNORE_INDEX))),
        nodata=None if nodata is None else float(cast(float, nodata)),
        attrs=attrs,
        has_labels=labels is not None,
        version=version,
    )


def tile_version(attrs: dict[str, Any], name: str) -> int:
    """The tile's format version (1 when unstated: the oldest tiles); an unknown one is an error."""
    raw = attrs.get("version", 1) if attrs.get("format", FORMAT) == FORMAT else 1
    try:
        version = int(cast(int, raw))
    except (TypeError, ValueError):
        raise InputError(f"tile {name}: format version {raw!r} is not an integer") from None
    if version > max(FORMAT_DTYPES):
        newest = max(FORMAT_DTYPES)
        raise InputError(f"tile {name}: format version {version} is newer than this dualseg reads ({newest})")
    if version not in FORMAT_DTYPES:
        raise InputError(f"tile {name}: format version {version} is not one this dualseg reads "
                         f"({', '.join(map(str, sorted(FORMAT_DTYPES)))})")
    return version


def _band_quant(arr: zarr.Array, name: str, key: str, band: str) -> Quant:
    """A quantised band's encoding from its attributes (its dtype was checked against the version's)."""
    return Quant.from_attrs(dict(arr.attrs), arr.dtype, f"tile {name}: band {key}/{band}")


def _unlabelled_hw(root: zarr.Group, name: str, s1_bands: list[str] | None) -> tuple[int, ...]:
    """H,W of a tile without labels: those of its first S1 band (every band is checked against it)."""
    g = _member(root, "s1", name, zarr.Group)
    bands = list(s1_bands) if s1_bands is not None else list(g.attrs.get("bands", []))
    arr = g.get(bands[0]) if bands else None
    if not isinstance(arr, zarr.Array) or arr.ndim != 3:
        raise InputError(f"tile {name}: no labels and no readable s1 band to take H,W from")
    return tuple(arr.shape[1:])


Window = tuple[slice, slice]


WINDOW_BYTES = 256 * 2**20  # largest read of a whole-tile pass


def row_windows(info: TileInfo, key: str, budget: int | None = None) -> Iterator[Window]:
    """Full-width row bands of at most ``budget`` bytes of ``key`` data: whole-tile passes
    (statistics, validation) keep bounded memory even on a full 10980x10980 S2 tile."""
    budget = WINDOW_BYTES if budget is None else budget
    si = info.streams[key]
    per_row = max(1, len(si.bands) * si.t * info.width * 4)  # float32 as read
    rows = max(1, min(info.height, budget // per_row))
    for y in range(0, info.height, rows):
        yield slice(y, min(y + rows, info.height)), slice(0, info.width)
