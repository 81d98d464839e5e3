"""DataLoaders whose batch order is a pure function of (seed, epoch, rank) — the basis of exact resume.

Training uses the tile-major :class:`~dualseg.data.stream.StreamSampler` when the dataset streams
(``data.buffer_mb > 0``), else ``DistributedSampler`` (also with one replica, so one code path);
both are re-seeded each epoch with ``set_epoch`` and shard every item to exactly one rank, and a
resumed epoch skips the batches already done. Validation uses a contiguous
shard per rank *without* the padding ``DistributedSampler`` adds, so summed confusion matrices count
every validation pixel exactly once.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sized
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from dualseg.data.stream import StreamSampler


class ShardSampler(Sampler[int]):
    """A contiguous block of a dataset's indices, in order; shards differ by at most one item.

    Contiguous, so each rank's validation patches come from whole tiles (each decoded by one rank).
    """

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        base, extra = divmod(length, world_size)
        start = rank * base + min(rank, extra)
        self.indices = list(range(start, start + base + (rank < extra)))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class SkipSampler(Sampler[Any]):
    """Wraps a sampler and drops its first ``skip`` indices (resume in the middle of an epoch)."""

    def __init__(self, sampler: Sampler[Any], skip: int = 0) -> None:
        self.sampler = sampler
        self.skip = skip

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)  # type: ignore[arg-type]


def train_loader(
    dataset: Dataset,
    collate: Callable[..., dict[str, Any]],
    *,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    num_workers: int,
    pin_memory: bool,
    max_t: int | None,
    time_buckets: int | None = None,
) -> tuple[DataLoader, SkipSampler, torch.Generator]:
    """Shuffled, rank-sharded loader; the caller sets epoch/skip on the sampler and seeds the generator.

    A streaming dataset gets one sampler lane per DataLoader worker, so that each worker decodes
    only the tiles of the batches it is handed.
    """
    base: Sampler[Any]
    if getattr(dataset, "streaming", False):
        base = StreamSampler(
            dataset, num_replicas=world_size, rank=rank, seed=seed, batch_size=batch_size,  # type: ignore[arg-type]
            lanes=max(1, num_workers),
        )
    else:
        base = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False)
    sampler = SkipSampler(base)
    gen = torch.Generator()
    gen.manual_seed(seed)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=partial(collate, max_t=max_t, time_buckets=time_buckets),
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,  # the dataset's epoch (set_epoch) must reach fresh workers
        generator=gen,
        drop_last=False,
    )
    return loader, sampler, gen


def eval_loader(
    dataset: Dataset,
    collate: Callable[..., dict[str, Any]],
    *,
    batch_size: int,
    rank: int,
    world_size: int,
    num_workers: int,
    pin_memory: bool,
    max_t: int | None,
    time_buckets: int | None = None,
) -> DataLoader:
    """In-order loader over this rank's shard (no padding, no duplicates)."""
    if not isinstance(dataset, Sized):
        raise TypeError("evaluation dataset must have a length")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), rank, world_size),
        collate_fn=partial(collate, max_t=max_t, time_buckets=time_buckets),
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=False,
    )


def steps_per_epoch(dataset_len: int, batch_size: int, world_size: int) -> int:
    """Optimizer steps per epoch on every rank (DistributedSampler pads to equal shards)."""
    per_rank = -(-dataset_len // world_size)
    return -(-per_rank // batch_size)
