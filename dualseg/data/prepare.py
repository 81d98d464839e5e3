"""Raw batch -> model inputs, on whatever device the batch lives: the one normalisation.

Why here and not in the loader: on a GPU node this model consumes samples far faster than one CPU
core can decode them, so every float operation the loader does per sample idles the GPU. Loader
items therefore carry the pixels as stored (format version 2: S2 ``uint16``, S1 ``int16``;
version 1: ``float32``), cropped and stacked, plus a few constants per band; :func:`prepare` turns
a collated batch of them into what the model reads, in a handful of whole-batch torch operations
(no loop over samples), on the device inside the training step, evaluation and prediction alike
(:func:`dualseg.infer.batch.to_device` calls it). Whole-tile masks for maps use the same functions
on CPU tensors.

Semantics (those of the former CPU path, bit for bit in float32 where the operations allow):

* ``x = float32(DN) * scale + shift`` (``shift = offset * scale`` rounded to float32; identity for
  version 1), as :meth:`dualseg.data.quant.Quant.decode`;
* a pixel is invalid at a date when any band holds the band's nodata DN, a non-finite value or the
  tile's declared ``nodata`` value, when it is flagged cloudy, or when the date is padding;
* valid values become ``(x - mean) * inv`` (float32 ``mean`` and ``inv = 1 / std``), invalid +0.0;
* a date is padding (``*_pad``) when no pixel of the patch is valid at it;
* training augmentation (``aug`` (B,2): quarter turns ``k`` and a flip of each item, drawn by the
  dataset) is applied to the prepared tensors and labels here, one batched operation per distinct
  (k, flip) in the batch: a permutation commutes with elementwise work, and the loader is spared
  the copy of a rotated view.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dualseg.data.tile import STREAMS, StreamInfo

COEF = ("scale", "shift", "hole", "nodata", "mean", "inv")  # columns of an item's ``<stream>_coef``
_SCALE, _SHIFT, _HOLE, _NODATA, _MEAN, _INV = range(len(COEF))


def coefficients(si: StreamInfo, nodata: float | None, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """(C, len(COEF)) float32 constants of one tile's stream: dequantisation (from the tile format),
    the band's nodata DN, the tile's ``nodata`` value, mean and 1/std. "No nodata" is +inf: an
    infinite value is invalid anyway, so matching it changes nothing (and NaN would make equal
    constants compare unequal)."""
    c = len(si.bands)
    out = np.full((c, len(COEF)), np.inf, dtype=np.float32)
    m = np.asarray(mean, dtype=np.float32)
    out[:, _MEAN] = m
    out[:, _INV] = 1.0 / np.asarray(std, dtype=np.float32)  # float32 division, as the CPU path did
    if si.quant is None:
        out[:, _SCALE], out[:, _SHIFT] = 1.0, 0.0
    else:
        for j, q in enumerate(si.quant):
            out[j, _SCALE], out[j, _SHIFT], out[j, _HOLE] = q.scale, q.offset * q.scale, q.nodata
    if nodata is not None and not np.isnan(nodata):
        out[:, _NODATA] = nodata
    return torch.from_numpy(out)


def _col(coef: torch.Tensor, j: int) -> torch.Tensor:
    """Column ``j`` of (B,C,K) constants, shaped (B,C,1,1,1) to broadcast over (B,C,T,H,W)."""
    return coef[:, :, j, None, None, None]


def dequantise(raw: torch.Tensor, coef: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values float32, raw as float32) of (B,C,T,H,W) stored pixels; the DNs of ``uint16``/``int16``
    are exact in float32. Multiply then add (two roundings), as the CPU decoder."""
    if raw.dtype == torch.uint16:  # a "barebones" dtype in torch: widen through int32, which every
        # backend converts (the same ops on CPU and GPU, so the CPU tests cover the device's path)
        rawf = raw.view(torch.int16).to(torch.int32).bitwise_and_(0xFFFF).to(torch.float32)
    else:
        rawf = raw.to(torch.float32)
    return rawf * _col(coef, _SCALE) + _col(coef, _SHIFT), rawf


def valid_mask(
    x: torch.Tensor, rawf: torch.Tensor, coef: torch.Tensor, cloud: torch.Tensor | None = None,
    present: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B,T,H,W) bool: every band finite, not the nodata DN nor the tile's nodata value, not cloudy,
    and the date present (``present`` (B,T); padded dates are invalid)."""
    bad = ~torch.isfinite(x) | (rawf == _col(coef, _HOLE)) | (x == _col(coef, _NODATA))
    valid = ~bad.any(dim=1)
    if cloud is not None:
        valid &= ~cloud
    if present is not None:
        valid &= present[:, :, None, None]
    return valid


def prepare_stream(
    raw: torch.Tensor, coef: torch.Tensor, cloud: torch.Tensor | None = None, present: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(z-scored float32 (B,C,T,H,W) with invalid pixels +0.0, valid (B,T,H,W)) of one stream."""
    x, rawf = dequantise(raw, coef)
    valid = valid_mask(x, rawf, coef, cloud, present)
    z = (x - _col(coef, _MEAN)) * _col(coef, _INV)
    return z.masked_fill_(~valid[:, None], 0.0), valid


def is_raw(batch: dict[str, Any]) -> bool:
    """Whether ``batch`` holds stored pixels (collated loader items) rather than model inputs."""
    return any(f"{k}_coef" in batch for k in STREAMS)


def raw_keys(key: str) -> tuple[str, ...]:
    """A raw batch's entries of stream ``key`` (``_cloud`` only when some tile stores clouds)."""
    return key, f"{key}_coef", f"{key}_present", f"{key}_cloud", f"{key}_doy"


Groups = list[tuple[int, int, torch.Tensor]]  # (quarter turns, flip, indices of the items so augmented)


def _groups(aug: torch.Tensor | None, device: torch.device) -> Groups:
    """The items of each distinct non-identity (k, flip) of a batch; ``aug`` is read on the host."""
    if aug is None:
        return []
    combos = [(int(k), int(f)) for k, f in aug.tolist()]
    return [(k, f, torch.tensor([j for j, c in enumerate(combos) if c == (k, f)], device=device))
            for k, f in sorted(set(combos)) if k or f]


def _augment(t: torch.Tensor, groups: Groups) -> torch.Tensor:
    """Rotate/flip the items of ``t`` (B,...,H,W) by their (k, flip); square patches keep their shape."""
    if not groups:
        return t
    out = t.clone()
    for k, f, idx in groups:
        part = torch.rot90(t.index_select(0, idx), k, dims=(-2, -1))
        out[idx] = torch.flip(part, dims=(-1,)) if f else part
    return out


def prepare(batch: dict[str, Any], streams: str = "both") -> dict[str, Any]:
    """Model inputs from a collated raw batch (see module doc), on the batch's device.

    Returns per used stream ``<k>`` (B,C,T,H,W) float32, ``<k>_mask`` (B,T,H,W) pixel validity,
    ``<k>_valid``/``<k>_pad`` (B,T) and ``<k>_doy``; plus ``labels``.
    """
    groups = _groups(batch.get("aug"), batch["labels"].device)  # ``aug`` stays on the host: no sync
    out: dict[str, Any] = {"labels": _augment(batch["labels"], groups)}
    for key in STREAMS if streams == "both" else (streams,):
        if batch.get(key) is None:
            continue
        z, valid = prepare_stream(batch[key], batch[f"{key}_coef"], batch.get(f"{key}_cloud"),
                                  batch.get(f"{key}_present"))
        z, valid = _augment(z, groups), _augment(valid, groups)
        dates = valid.flatten(2).any(dim=2)
        out[key], out[f"{key}_mask"], out[f"{key}_valid"], out[f"{key}_pad"] = z, valid, dates, ~dates
        out[f"{key}_doy"] = batch[f"{key}_doy"]
    return out
