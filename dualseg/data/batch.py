"""Batching items whose time series differ in length, for training and prediction alike.

:func:`collate` pads each stream along time (to the batch maximum, a multiple of
``data.time_buckets`` or ``data.max_t``) and adds the pad mask the model's temporal layers rely on:
``s1_pad``/``s2_pad`` (B,T) bool, True where the date is padding or invalid in the patch.
"""

from __future__ import annotations

import torch

from dualseg.data.tile import STREAMS
from dualseg.errors import InputError


def padded_length(t: int, max_t: int | None = None, time_buckets: int | None = None) -> int:
    """The time length a batch whose longest series has ``t`` dates is padded to: ``max_t``, else
    ``t`` rounded up to a multiple of ``time_buckets``, else ``t``."""
    if max_t is not None:
        return max_t
    if time_buckets is not None:
        return -(-t // time_buckets) * time_buckets
    return t


def collate(
    batch: list[dict[str, torch.Tensor]], max_t: int | None = None, time_buckets: int | None = None
) -> dict[str, torch.Tensor]:
    """Stack items, padding each stream along time to the batch max, rounded up to a multiple of
    ``time_buckets`` (``data.time_buckets``), or to ``max_t`` (``data.max_t``).

    Adds ``s1_pad``/``s2_pad`` (B,T) bool, True where the date is padding or invalid in the patch.
    Padded values and day-of-year are 0.
    """
    if not batch:
        raise InputError("collate: empty batch")
    out: dict[str, torch.Tensor] = {}
    b = len(batch)
    for key in STREAMS:
        ts = [item[key].shape[1] for item in batch]
        t = max(ts)
        if max_t is not None and t > max_t:
            raise InputError(f"data.max_t={max_t} is smaller than a {key} series of T={t}")
        t = padded_length(t, max_t, time_buckets)
        c, h, w = batch[0][key].shape[0], *batch[0][key].shape[2:]
        x = torch.zeros((b, c, t, h, w), dtype=batch[0][key].dtype)
        doy = torch.zeros((b, t), dtype=torch.int64)
        valid = torch.zeros((b, t), dtype=torch.bool)
        for j, item in enumerate(batch):
            n = ts[j]
            x[j, :, :n] = item[key]
            doy[j, :n] = item[f"{key}_doy"]
            valid[j, :n] = item[f"{key}_valid"]
        out[key], out[f"{key}_doy"], out[f"{key}_valid"], out[f"{key}_pad"] = x, doy, valid, ~valid
    out["labels"] = torch.stack([item["labels"] for item in batch])
    return out
