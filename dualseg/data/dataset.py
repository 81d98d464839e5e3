"""Patch dataset over tiles: augmented patches of stored pixels (batched by :mod:`dualseg.data.batch`).

Items carry the pixels as stored (integers for format version 2), cropped (views of the decoded
tile), plus each band's constants and the augmentation drawn for them;
:func:`dualseg.data.prepare.prepare` dequantises, z-scores, masks and augments a whole batch on the
device, so the loader's work per sample is decode, crop and stack (collate's one copy).

Training items are random patches whose position and augmentation depend only on
``(seed, epoch, index)``, so a resumed run (``set_epoch``) draws exactly the same patches, under
any sampler, worker count or rank layout. Evaluation items tile every tile on a fixed grid whose
last row/column is shifted inwards, so every pixel is covered.

Reading a patch straight from zarr decodes its whole (T,128,128) chunks (~10-15 ms for the 14
arrays, read concurrently); tiles are therefore cached whole, as stored, in an LRU of
``cache_mb`` per process, so every chunk is decoded once per process. When all tiles fit, :meth:`TileDataset.preload`
fills the cache before DataLoader workers fork so they share it copy-on-write instead of each
re-reading it every epoch. zarr handles are opened lazily per process (never pickled).

When the tiles do not fit, training streams them (:mod:`dualseg.data.stream`): the sampler hands
out ``(index, release, prefetch)`` keys in tile-major order, and each process keeps at most
``buffer_mb`` of decoded units (whole tiles, or chunk-aligned blocks of tiles larger than half the buffer),
each decoded once per epoch and dropped after its last patch.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dualseg.data.inputs import date_features
from dualseg.data.prepare import coefficients
from dualseg.data.read import read_all
from dualseg.data.stream import UnitBuffer, unit_side
from dualseg.data.tile import DEFAULT_CHUNK_HW, STREAMS, StreamInfo, TileInfo, Window, open_group
from dualseg.errors import InputError


class TileDataset(Dataset):
    """Patches of ``patch_size`` from ``tiles``; items follow the contract in docs/architecture.md."""

    def __init__(
        self,
        tiles: list[TileInfo],
        mean: dict[str, np.ndarray],
        std: dict[str, np.ndarray],
        *,
        patch_size: int,
        train: bool,
        samples_per_tile: int = 8,
        seed: int = 0,
        augment: bool = False,
        cache_mb: float = 1024,
        date_encoding: str = "doy",
        buffer_mb: float = 0,
    ) -> None:
        if not tiles:
            raise InputError("dataset: empty tile list")
        if patch_size < 1:
            raise InputError(f"data.patch_size must be >= 1, got {patch_size}")
        for t in tiles:
            if patch_size > min(t.height, t.width):
                raise InputError(
                    f"data.patch_size={patch_size} is larger than tile {t.name} ({t.height}x{t.width})"
                )
        if train and samples_per_tile < 1:
            raise InputError(f"data.samples_per_tile must be >= 1, got {samples_per_tile}")
        self.tiles = tiles
        self.mean = {k: np.asarray(mean[k], dtype=np.float32) for k in STREAMS}
        self.std = {k: np.asarray(std[k], dtype=np.float32) for k in STREAMS}
        self.patch_size = patch_size
        self.train = train
        self.samples_per_tile = samples_per_tile
        self.seed = seed
        self.augment = augment and train
        self.cache_bytes = int(cache_mb * 2**20)
        self.buffer_bytes = int(buffer_mb * 2**20)  # 0: no streaming (random access through the cache)
        self._buffer = UnitBuffer(self.buffer_bytes)
        self._unit_sides: list[int | None] = [
            unit_side(self.tile_bytes_of(t), t.height * t.width, self.patch_size, self.buffer_bytes, DEFAULT_CHUNK_HW)
            for t in tiles
        ]
        self._fits = sum(self.tile_bytes_of(t) for t in tiles) <= self.cache_bytes
        self.epoch = 0
        self.doy = []
        self.coef = []  # per tile and stream: dequantisation and normalisation constants (prepare)
        for t in tiles:
            feats = date_features({k: t.streams[k].time for k in STREAMS}, date_encoding)
            self.doy.append({k: torch.from_numpy(v) for k, v in feats.items()})
            self.coef.append({k: coefficients(t.streams[k], t.nodata, self.mean[k], self.std[k]) for k in STREAMS})
        self.grid = [] if train else self._grid()
        self._cache: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._cached_bytes = 0
        self._groups: dict[int, Any] = {}
        self._pid = os.getpid()

    # -- indexing -----------------------------------------------------------------------------
    def _grid(self) -> list[tuple[int, int, int]]:
        p = self.patch_size
        out = []
        for i, t in enumerate(self.tiles):
            ys = sorted({*range(0, t.height - p + 1, p), t.height - p})
            xs = sorted({*range(0, t.width - p + 1, p), t.width - p})
            out += [(i, y, x) for y in ys for x in xs]
        return out

    def __len__(self) -> int:
        return len(self.tiles) * self.samples_per_tile if self.train else len(self.grid)

    def set_epoch(self, epoch: int) -> None:
        """Select the patches of ``epoch`` (call on every rank before iterating)."""
        self.epoch = int(epoch)
        self._buffer.clear()

    # -- streaming units (dualseg.data.stream) ------------------------------------------------
    @property
    def streaming(self) -> bool:
        """Whether training should use the tile-major :class:`~dualseg.data.stream.StreamSampler`."""
        return self.train and self.buffer_bytes > 0

    def unit_of(self, index: int) -> tuple[int, int, int]:
        """(tile, block row, block column) of training item ``index``; (i, 0, 0) is a whole tile."""
        i = index // self.samples_per_tile
        side = self._unit_sides[i]
        if side is None:
            return i, 0, 0
        _, y, x, _, _ = self.locate(index)
        return i, y // side, x // side

    def unit_window(self, unit: tuple[int, int, int]) -> Window:
        """Pixels of ``unit``: every patch whose origin lies in its block."""
        i, by, bx = unit
        t, side = self.tiles[i], self._unit_sides[i]
        if side is None:
            return slice(0, t.height), slice(0, t.width)
        ext = side + self.patch_size - 1
        return slice(by * side, min(by * side + ext, t.height)), slice(bx * side, min(bx * side + ext, t.width))

    def unit_bytes(self, unit: tuple[int, int, int]) -> int:
        ys, xs = self.unit_window(unit)
        t = self.tiles[unit[0]]
        return self.tile_bytes(unit[0]) * (ys.stop - ys.start) * (xs.stop - xs.start) // (t.height * t.width)

    def stream_plan(self) -> tuple[list[list[int]], int]:
        """(items of each unit this epoch, open units per lane) for the sampler."""
        units: list[list[int]] = []
        spt = self.samples_per_tile
        for i in range(len(self.tiles)):
            items = range(i * spt, (i + 1) * spt)
            if self._unit_sides[i] is None:
                units.append(list(items))
                continue
            blocks: dict[tuple[int, int, int], list[int]] = {}
            for j in items:
                blocks.setdefault(self.unit_of(j), []).append(j)
            units += [blocks[b] for b in sorted(blocks)]
        biggest = max(self.unit_bytes(self.unit_of(u[0])) for u in units)
        return units, max(1, self.buffer_bytes // max(1, biggest) - 1)

    def _load_unit(self, unit: tuple[int, int, int]) -> dict[str, Any]:
        i = unit[0]
        return self._load(i, None if self._unit_sides[i] is None else self.unit_window(unit))

    def locate(self, index: int) -> tuple[int, int, int, int, int]:
        """(tile index, y, x, rot90 k, flip) of item ``index`` in the current epoch."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        if not self.train:
            i, y, x = self.grid[index]
            return i, y, x, 0, 0
        i = index // self.samples_per_tile
        t, p = self.tiles[i], self.patch_size
        rng = np.random.default_rng([self.seed, self.epoch, index])
        y, x, k, f = rng.integers([t.height - p + 1, t.width - p + 1, 4, 2])
        if not self.augment:
            k, f = 0, 0
        return i, int(y), int(x), int(k), int(f)

    # -- reading ------------------------------------------------------------------------------
    def _group(self, i: int) -> Any:
        if self._pid != os.getpid():  # forked worker: never reuse the parent's handles
            self._groups, self._pid = {}, os.getpid()
        g = self._groups.get(i)
        if g is None:
            g = self._groups[i] = open_group(self.tiles[i].path, self.tiles[i].name)
        return g

    def _load(self, i: int, window: Window | None) -> dict[str, Any]:
        info, g = self.tiles[i], self._group(i)
        out: dict[str, Any] = {}
        streams, out["labels"] = read_all(info, window, group=g, raw=True)  # one concurrent zarr round trip
        for key in STREAMS:
            out[key], out[f"{key}_cloud"] = streams[key]
        return out

    def tile_bytes(self, i: int) -> int:
        """Bytes a cached tile occupies."""
        return self.tile_bytes_of(self.tiles[i])

    @staticmethod
    def tile_bytes_of(t: TileInfo) -> int:
        """Stored bytes per value (2 for version-2 integers, 4 for float32), clouds, int64 labels."""
        hw = t.height * t.width
        return sum(si.t * hw * (_itemsize(si) * len(si.bands) + si.has_cloud)
                   for si in (t.streams[k] for k in STREAMS)) + 8 * hw

    def _cached(self, i: int) -> dict[str, Any] | None:
        hit = self._cache.get(i)
        if hit is not None:
            self._cache.move_to_end(i)
            return hit
        size = self.tile_bytes(i)
        if size > self.cache_bytes:
            return None
        while self._cache and self._cached_bytes + size > self.cache_bytes:
            j, _ = self._cache.popitem(last=False)
            self._cached_bytes -= self.tile_bytes(j)
        hit = self._cache[i] = self._load(i, None)
        self._cached_bytes += size
        return hit

    def _total_bytes(self) -> int:
        return sum(self.tile_bytes(i) for i in range(len(self.tiles)))

    def preload(self, workers: int = 4) -> bool:
        """Load every tile into the cache if all fit (zarr decoding in threads); returns whether they did."""
        if self._total_bytes() > self.cache_bytes:
            return False
        missing = [i for i in range(len(self.tiles)) if i not in self._cache]
        for i in missing:  # open handles here: the threads below only read
            self._group(i)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for i, whole in zip(missing, pool.map(lambda j: self._load(j, None), missing)):
                self._cache[i] = whole
                self._cached_bytes += self.tile_bytes(i)
        return True

    def __getitem__(self, key: int | tuple[int, bool, int]) -> dict[str, torch.Tensor]:
        """Item ``key``: an index, or a :class:`~dualseg.data.stream.StreamSampler` key."""
        if isinstance(key, tuple):
            return self._streamed(*key)
        i, y, x, k, f = self.locate(key)
        p = self.patch_size
        whole = self._cached(i)
        if whole is not None:
            return self._item(i, whole, y, x, k, f)
        return self._item(i, self._load(i, (slice(y, y + p), slice(x, x + p))), 0, 0, k, f)

    def _streamed(self, index: int, release: bool, prefetch: int) -> dict[str, torch.Tensor]:
        i, y, x, k, f = self.locate(index)
        whole = self._cached(i) if self._fits else None  # everything fits: decoded once per process
        if whole is not None:
            return self._item(i, whole, y, x, k, f)
        unit = self.unit_of(index)
        whole = self._buffer.get(unit, self.unit_bytes(unit), partial(self._load_unit, unit))
        if prefetch >= 0 and (nxt := self.unit_of(prefetch)) != unit:
            self._group(nxt[0])  # open the handle here: the thread only reads
            self._buffer.prefetch(nxt, self.unit_bytes(nxt), partial(self._load_unit, nxt))
        if release:
            self._buffer.release(unit)
        if self._unit_sides[i] is not None:
            ys, xs = self.unit_window(unit)
            y, x = y - ys.start, x - xs.start
        return self._item(i, whole, y, x, k, f)

    def _item(self, i: int, whole: dict[str, Any], y: int, x: int, k: int, f: int) -> dict[str, torch.Tensor]:
        p = self.patch_size
        window = (Ellipsis, slice(y, y + p), slice(x, x + p))
        # views of the decoded unit (collate copies them once); the augmentation (k, f) is applied
        # to the prepared batch on the device (dualseg.data.prepare)
        item: dict[str, torch.Tensor] = {"aug": _AUG[k, f]}
        for key in STREAMS:
            item[key] = torch.from_numpy(whole[key][window])
            item[f"{key}_coef"] = self.coef[i][key]
            item[f"{key}_doy"] = self.doy[i][key]
            if whole[f"{key}_cloud"] is not None:
                item[f"{key}_cloud"] = torch.from_numpy(whole[f"{key}_cloud"][window])
        item["labels"] = torch.from_numpy(whole["labels"][window])
        return item

    def __getstate__(self) -> dict[str, Any]:
        """Workers get paths and metadata, plus the cache (shared copy-on-write when forked)."""
        state = self.__dict__.copy()
        state["_groups"] = {}
        return state


_AUG = {(k, f): torch.tensor([k, f]) for k in range(4) for f in range(2)}  # shared, never written


def _itemsize(si: StreamInfo) -> int:
    return 4 if si.quant is None else max(np.dtype(q.dtype).itemsize for q in si.quant)
