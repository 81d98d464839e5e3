"""Tile-major streaming: decode each tile (or each row band of a large tile) once per epoch.

A per-patch zarr read decodes whole (T,128,128) chunks for one patch, and a per-process tile cache
only helps while every tile fits in every worker. Instead, :class:`StreamSampler` orders a rank's
training items *by unit* (a whole tile, or a block of patch origins of a tile larger than the buffer):

1. units are shuffled, each unit's items shuffled (``seed``, ``epoch``); the list is padded like
   ``DistributedSampler`` and cut into one contiguous block per rank (each item exactly once per
   epoch over all ranks, plus the same few padding repeats);
2. a rank's block is cut into ``lanes`` contiguous parts, one per DataLoader worker: batch ``b``
   goes to worker ``b % workers`` (the DataLoader's round-robin), so a worker sees only its lane;
3. each lane interleaves its units through a shuffle buffer of ``slots`` open units: every item is
   drawn from a random open unit, so a batch mixes several tiles while a process holds at most
   ``slots`` decoded units (plus one being prefetched), however large the dataset.

Keys are ``(index, release, prefetch)`` tuples: ``release`` marks a unit's last item in its lane
(the dataset drops it), ``prefetch`` is the first item of the unit this lane opens next (the
dataset decodes it in a thread while the current units are cut). The order is a pure function of
(seed, epoch, world size, rank, batch size, lanes, slots): with the trainer's ``SkipSampler`` a
resumed epoch yields exactly the remaining keys. If the DataLoader ever delivered batches to other
workers, results would not change, only speed (a unit would be decoded twice).
"""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
from torch.utils.data import Sampler

Key = tuple[int, bool, int]  # (item index, last item of its unit in this lane, item to prefetch or -1)


class Streamable(Protocol):
    """What :class:`StreamSampler` needs from a dataset (``TileDataset`` implements it)."""

    def __len__(self) -> int: ...

    def stream_plan(self) -> tuple[list[list[int]], int]: ...


def unit_side(tile_bytes: int, pixels: int, patch_size: int, buffer_bytes: int, chunk: int) -> int | None:
    """Side of the square block of patch origins per unit of a tile; None = the whole tile is one unit.

    A unit's window (block + patch - 1) fits half the buffer (one unit decoding while another
    is cut). Blocks are whole multiples of the zarr chunk side ``chunk`` where that fits, since a
    window decodes every chunk it touches.
    """
    budget = buffer_bytes // 2
    if buffer_bytes <= 0 or tile_bytes <= budget:
        return None
    per_px = tile_bytes / pixels
    side = int((budget / per_px) ** 0.5) - (patch_size - 1)
    return max(1, side // chunk * chunk if side >= chunk else side)


def lane_sizes(n: int, batch_size: int, lanes: int) -> list[int]:
    """Items of each lane when position ``p`` of ``n`` goes to lane ``(p // batch_size) % lanes``."""
    sizes = [0] * lanes
    full, rest = divmod(n, batch_size)
    for b in range(full):
        sizes[b % lanes] += batch_size
    if rest:
        sizes[full % lanes] += rest
    return sizes


def interleave(runs: Sequence[Sequence[int]], slots: int, rng: np.random.Generator) -> list[Key]:
    """One lane's keys: items drawn at random from up to ``slots`` open runs (see module doc)."""
    out: list[Key] = []
    first: list[int] = []  # position in ``out`` of each run's first item (load order)
    opened = 0
    open_runs: list[list[int]] = []  # [run id, next position]
    while opened < len(runs) and len(open_runs) < slots:
        open_runs.append([opened, 0])
        opened += 1
    while open_runs:
        j = int(rng.integers(len(open_runs))) if len(open_runs) > 1 else 0
        r, pos = open_runs[j]
        run = runs[r]
        if pos == 0:
            first.append(len(out))
        last = pos + 1 == len(run)
        out.append((run[pos], last, -1))
        if not last:
            open_runs[j][1] = pos + 1
        elif opened < len(runs):
            open_runs[j] = [opened, 0]
            opened += 1
        else:
            open_runs.pop(j)
    for a, b in itertools.pairwise(first):  # loading run k hints the run loaded after it
        index, last, _ = out[a]
        out[a] = (index, last, out[b][0])
    return out


def _runs(items: Sequence[int], unit_of: Callable[[int], int]) -> list[list[int]]:
    """Consecutive items of the same unit, as runs."""
    runs: list[list[int]] = []
    prev = None
    for i in items:
        u = unit_of(i)
        if runs and u == prev:
            runs[-1].append(i)
        else:
            runs.append([i])
        prev = u
    return runs


def rank_order(
    units: list[list[int]], *, seed: int, epoch: int, world_size: int, rank: int, batch_size: int,
    lanes: int, slots: int,
) -> list[Key]:
    """This rank's keys for one epoch (pure function of its arguments; see module doc)."""
    rng = np.random.default_rng([seed, epoch, 0x57])
    flat: list[int] = []
    owner: dict[int, int] = {}
    for u in rng.permutation(len(units)):
        items = units[int(u)]
        for i in rng.permutation(len(items)):
            flat.append(items[int(i)])
            owner[items[int(i)]] = int(u)
    n = len(flat)
    per = -(-n // world_size)
    padded = (flat * (-(-per * world_size // max(n, 1))))[: per * world_size] if n else []
    block = padded[rank * per : (rank + 1) * per]
    sizes = lane_sizes(len(block), batch_size, lanes)
    lane_keys: list[list[Key]] = []
    start = 0
    for lane, size in enumerate(sizes):
        part = block[start : start + size]
        start += size
        lane_rng = np.random.default_rng([seed, epoch, rank, lane, 0x1A])
        lane_keys.append(interleave(_runs(part, owner.__getitem__), slots, lane_rng))
    out: list[Key] = []
    taken = [0] * lanes
    for p in range(len(block)):
        lane = (p // batch_size) % lanes
        out.append(lane_keys[lane][taken[lane]])
        taken[lane] += 1
    return out


class StreamSampler(Sampler[Key]):
    """Tile-major, rank-sharded training order (module doc); ``set_epoch`` like ``DistributedSampler``."""

    def __init__(
        self, dataset: Streamable, *, num_replicas: int, rank: int, seed: int, batch_size: int, lanes: int
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.dataset = dataset
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.batch_size, self.lanes = max(1, batch_size), max(1, lanes)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return max(0, -(-len(self.dataset) // self.num_replicas))

    def __iter__(self) -> Iterator[Key]:
        units, slots = self.dataset.stream_plan()
        return iter(rank_order(
            units, seed=self.seed, epoch=self.epoch, world_size=self.num_replicas, rank=self.rank,
            batch_size=self.batch_size, lanes=self.lanes, slots=slots,
        ))


class UnitBuffer:
    """A process's decoded units: loaded on first use or prefetched in a thread, dropped on release.

    Bounded by ``capacity`` bytes (never below two units): an over-full buffer drops its oldest
    unit, which only costs a re-decode should that unit be needed again (out-of-order delivery).
    Reset in a forked child: a parent's threads and futures do not survive ``fork``.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._reset()

    def _reset(self) -> None:
        self._units: OrderedDict[Any, Future[Any] | Any] = OrderedDict()
        self._sizes: dict[Any, int] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pid = os.getpid()

    def _own(self) -> None:
        if self._pid != os.getpid():
            self._reset()

    def clear(self) -> None:
        self._own()
        self._units.clear()
        self._sizes.clear()

    def __len__(self) -> int:
        return len(self._units)

    def _make_room(self, size: int) -> None:
        limit = max(self.capacity, 2 * size)
        while self._units and sum(self._sizes.values()) + size > limit:
            old, _ = self._units.popitem(last=False)
            self._sizes.pop(old, None)

    def get(self, unit: Any, size: int, load: Callable[[], Any]) -> Any:
        """The decoded ``unit`` (waiting for its prefetch if one runs), loading it if absent."""
        self._own()
        hit = self._units.get(unit)
        if hit is None:
            self._make_room(size)
            hit = load()
            self._units[unit], self._sizes[unit] = hit, size
        elif isinstance(hit, Future):
            try:
                hit = hit.result()  # re-raises the loader's InputError, naming the tile
            except BaseException:
                self.release(unit)
                raise
            self._units[unit] = hit
        return hit

    def prefetch(self, unit: Any, size: int, load: Callable[[], Any]) -> None:
        """Start decoding ``unit`` in the background (no-op if present)."""
        self._own()
        if unit in self._units:
            return
        self._make_room(size)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dualseg-prefetch")
        self._units[unit], self._sizes[unit] = self._pool.submit(load), size

    def release(self, unit: Any) -> None:
        self._own()
        self._units.pop(unit, None)
        self._sizes.pop(unit, None)

    def __getstate__(self) -> dict[str, Any]:
        return {"capacity": self.capacity}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.capacity = state["capacity"]
        self._reset()
