"""The trainer's loaders hand data.time_buckets to collate: every batch's T is a multiple of it."""

from __future__ import annotations

import torch

from dualseg.data import collate
from dualseg.train.loaders import eval_loader, train_loader


def _item(t1: int, t2: int) -> dict[str, torch.Tensor]:
    item = {"labels": torch.zeros(4, 4, dtype=torch.int64)}
    for key, t, c in (("s1", t1, 2), ("s2", t2, 3)):
        item.update({key: torch.ones(c, t, 4, 4), f"{key}_doy": torch.arange(1, t + 1),
                     f"{key}_valid": torch.ones(t, dtype=torch.bool)})
    return item


def test_time_buckets_reach_every_batch() -> None:
    items = [_item(3 + i % 5, 2 + i % 7) for i in range(24)]
    loader, sampler, _ = train_loader(items, collate, batch_size=4, rank=1, world_size=2, seed=0, num_workers=0,
                                      pin_memory=False, max_t=None, time_buckets=4)
    sampler.set_epoch(0)
    evals = eval_loader(items, collate, batch_size=4, rank=0, world_size=2, num_workers=0, pin_memory=False,
                        max_t=None, time_buckets=4)
    shapes = [(b["s1"].shape[2], b["s2"].shape[2]) for b in [*loader, *evals]]
    assert len(shapes) == 6 and all(t1 % 4 == 0 and t2 % 4 == 0 for t1, t2 in shapes)
    plain, _, _ = train_loader(items, collate, batch_size=4, rank=1, world_size=2, seed=0, num_workers=0,
                               pin_memory=False, max_t=None)
    assert any(b["s2"].shape[2] % 4 for b in plain)  # without buckets: the batch maximum
