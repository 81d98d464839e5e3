"""Batching items whose time series differ in length, for training and prediction alike.

:func:`collate` pads each stream along time (to the batch maximum, a multiple of
``data.time_buckets`` or ``data.max_t``) and adds the pad mask the model's temporal layers rely on:
``s1_pad``/``s2_pad`` (B,T) bool, True where the date is padding or invalid in the patch.

Loader items carry stored pixels (:mod:`dualseg.data.prepare`): their batch keeps the stored dtype
(float32 when a batch mixes format versions; the DNs are exact in it), stacks each item's band
constants (``<k>_coef``) and cloud mask (``<k>_cloud``, False where absent or padding) and marks
the real dates (``<k>_present``); whether a date is usable is only known after masking, so
``_valid``/``_pad`` come from :func:`~dualseg.data.prepare.prepare` on the device.
"""

from __future__ import annotations

import numpy as np
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
        if f"{key}_coef" in batch[0]:
            out.update(_collate_raw(batch, key, max_t, time_buckets))
            continue
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
    if "aug" in batch[0]:
        out["aug"] = torch.stack([item["aug"] for item in batch])
    return out


def _length(batch: list[dict[str, torch.Tensor]], key: str, max_t: int | None, time_buckets: int | None) -> int:
    t = max(item[key].shape[1] for item in batch)
    if max_t is not None and t > max_t:
        raise InputError(f"data.max_t={max_t} is smaller than a {key} series of T={t}")
    return padded_length(t, max_t, time_buckets)


def _collate_raw(
    batch: list[dict[str, torch.Tensor]], key: str, max_t: int | None, time_buckets: int | None
) -> dict[str, torch.Tensor]:
    """One stream of raw items: stored pixels zero-padded along time, constants, clouds, real dates."""
    b, t = len(batch), _length(batch, key, max_t, time_buckets)
    first = batch[0][key]
    dtypes = {item[key].dtype for item in batch}
    dtype = first.dtype if len(dtypes) == 1 else torch.float32
    x = torch.empty((b, first.shape[0], t, *first.shape[2:]), dtype=dtype)  # every value written once
    doy = torch.zeros((b, t), dtype=torch.int64)
    present = torch.zeros((b, t), dtype=torch.bool)
    clouds = any(item.get(f"{key}_cloud") is not None for item in batch)
    cloud = torch.zeros((b, t, *first.shape[2:]), dtype=torch.bool) if clouds else None
    xn = x.numpy()  # numpy's strided copy of a patch view is ~25 % faster than torch's copy_
    for j, item in enumerate(batch):
        n = item[key].shape[1]
        np.copyto(xn[j, :, :n], item[key].numpy(), casting="safe")
        xn[j, :, n:] = 0
        doy[j, :n] = item[f"{key}_doy"]
        present[j, :n] = True
        if cloud is not None and item.get(f"{key}_cloud") is not None:
            cloud[j, :n] = item[f"{key}_cloud"]
    out = {key: x, f"{key}_doy": doy, f"{key}_present": present,
           f"{key}_coef": torch.stack([item[f"{key}_coef"] for item in batch])}
    if cloud is not None:
        out[f"{key}_cloud"] = cloud
    return out
