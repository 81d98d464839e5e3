"""Sliding-window inference over a whole tile with smooth blending: the one inference path.

Both maps (``python -m dualseg.predict``) and test metrics (``evaluate_checkpoint``) come from
:func:`tile_logits`, so the mIoU of the written maps is the evaluated mIoU; it lives in
:mod:`dualseg.infer`, below both, and ``dualseg.predict`` re-exports its names.

Inputs are normalised, masked and padded exactly as in training: a tile is read as stored, its
windows are batched with :func:`dualseg.data.collate` like loader items and prepared on the device
by :func:`dualseg.data.prepare.prepare` with the stored band statistics (a date is padding for a
window when none of its pixels is valid there, as for a training patch).

Windows of ``patch`` pixels advance by ``patch * (1 - overlap)``; the last row/column is shifted
inwards so every pixel is covered. Overlapping logits are averaged with a separable raised-cosine
(Hann) weight, high in a window's centre where the convolutions saw full context, low at its
border; a floor keeps tile-border pixels (seen only near a window's border) defined. The weights
are normalised per pixel, so a prediction that does not depend on position is reproduced exactly:
no seams.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dualseg.data.batch import collate
from dualseg.data.inputs import date_features
from dualseg.data.prepare import coefficients, dequantise, prepare_stream, valid_mask
from dualseg.data.read import read_stream_raw
from dualseg.data.tile import STREAMS, TileInfo, open_group
from dualseg.errors import InputError
from dualseg.infer.batch import autocast_ctx, forward, to_device

WEIGHT_FLOOR = 0.1


@dataclass
class InputSpec:
    """How a tile becomes model input (from the model file, i.e. from training)."""

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    date_encoding: str = "doy"
    max_t: int | None = None
    streams: str = "both"


@dataclass
class TileInput:
    """A tile, read whole as stored: (C,T,H,W) pixels, (T,H,W) clouds, band constants, date features."""

    name: str
    raw: dict[str, np.ndarray]
    cloud: dict[str, np.ndarray | None]
    coef: dict[str, torch.Tensor]
    doy: dict[str, torch.Tensor]

    @property
    def shape(self) -> tuple[int, int]:
        h, w = self.raw["s1"].shape[-2:]
        return int(h), int(w)

    def _batch(self, key: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        cloud = self.cloud[key]
        return (torch.from_numpy(self.raw[key])[None], self.coef[key][None],
                None if cloud is None else torch.from_numpy(cloud)[None])

    def prepared(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Whole-tile model input of stream ``key`` on the CPU: (C,T,H,W) float32, valid (T,H,W)."""
        z, valid = prepare_stream(*self._batch(key))
        return z[0].numpy(), valid[0].numpy()

    def has_input(self, streams: str = "both") -> np.ndarray:
        """(H,W) bool: some date of a stream the model uses is valid at the pixel."""
        keys = STREAMS if streams == "both" else (streams,)
        out = np.zeros(self.shape, dtype=bool)
        for k in keys:
            raw, coef, cloud = self._batch(k)
            x, rawf = dequantise(raw, coef)
            out |= valid_mask(x, rawf, coef, cloud)[0].any(dim=0).numpy()
        return out


def load_input(info: TileInfo, spec: InputSpec) -> TileInput:
    """Read both streams of ``info`` as stored, with the constants that normalise them like training."""
    g = open_group(info.path, info.name)  # labels may be absent: read only the streams
    coef, streams = {}, {}
    for key in STREAMS:
        parts, cloud = read_stream_raw(info, key, group=g)
        streams[key] = np.stack(parts), cloud
        n = len(parts)
        if n != len(spec.mean[key]):
            raise InputError(f"tile {info.name}: {key} has {n} bands but the model expects {len(spec.mean[key])}")
        coef[key] = coefficients(info.streams[key], info.nodata, spec.mean[key], spec.std[key])
    feats = date_features({k: info.streams[k].time for k in STREAMS}, spec.date_encoding)
    return TileInput(info.name, {k: v[0] for k, v in streams.items()}, {k: v[1] for k, v in streams.items()},
                     coef, {k: torch.from_numpy(v) for k, v in feats.items()})


def starts(size: int, patch: int, stride: int) -> list[int]:
    """Window offsets along one axis: every ``stride`` pixels, the last one flush with the edge."""
    out = list(range(0, size - patch + 1, stride))
    if out[-1] != size - patch:
        out.append(size - patch)
    return out


def blend_weight(patch: int, floor: float = WEIGHT_FLOOR) -> torch.Tensor:
    """(patch, patch) separable raised-cosine weight in [floor, 1]."""
    i = torch.arange(patch, dtype=torch.float64)
    w1 = floor + (1.0 - floor) * torch.sin(torch.pi * (i + 0.5) / patch) ** 2
    return (w1[:, None] * w1[None, :]).to(torch.float32)


def windows(h: int, w: int, patch: int, overlap: float) -> list[tuple[int, int]]:
    """Top-left corners of the windows covering an (h, w) tile."""
    if not 0.0 <= overlap < 1.0:
        raise InputError(f"--overlap must be in [0, 1), got {overlap}")
    if patch > min(h, w):
        raise InputError(f"patch size {patch} is larger than the tile ({h}x{w})")
    stride = max(1, round(patch * (1.0 - overlap)))
    return [(y, x) for y in starts(h, patch, stride) for x in starts(w, patch, stride)]


def _item(t: TileInput, y: int, x: int, p: int) -> dict[str, torch.Tensor]:
    item: dict[str, torch.Tensor] = {}
    for key in STREAMS:
        item[key] = torch.from_numpy(np.ascontiguousarray(t.raw[key][..., y : y + p, x : x + p]))
        item[f"{key}_coef"] = t.coef[key]
        item[f"{key}_doy"] = t.doy[key]
        cloud = t.cloud[key]
        if cloud is not None:
            item[f"{key}_cloud"] = torch.from_numpy(np.ascontiguousarray(cloud[:, y : y + p, x : x + p]))
    item["labels"] = torch.zeros((p, p), dtype=torch.int64)  # collate wants one; prediction never uses it
    return item


@torch.no_grad()
def blend_logits(
    model: nn.Module,
    tile: TileInput,
    spec: InputSpec,
    *,
    patch: int,
    overlap: float = 0.25,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    amp: bool = True,
    on_batch: Callable[[int], Any] | None = None,
) -> torch.Tensor:
    """Blended logits (K,H,W) float32 left on ``device`` (see module doc).

    The accumulators live on the device: a batch's logits are never copied to the host, so a GPU
    spends its time on the model rather than on one small transfer per batch (on the CPU it is the
    same code). An ensemble sums its members' softmax there too and moves one array per tile.
    """
    device = torch.device(device)
    h, w = tile.shape
    corners = windows(h, w, patch, overlap)
    weight = blend_weight(patch).to(device)
    acc: torch.Tensor | None = None
    wsum = torch.zeros((h, w), dtype=torch.float32, device=device)
    model.eval()
    for b in range(0, len(corners), max(1, batch_size)):
        chunk = corners[b : b + batch_size]
        batch = to_device(collate([_item(tile, y, x, patch) for y, x in chunk], spec.max_t), device, spec.streams)
        with autocast_ctx(device, amp):
            logits = forward(model, batch)
        logits = logits.float()
        if acc is None:
            acc = torch.zeros((logits.shape[1], h, w), dtype=torch.float32, device=device)
        for (y, x), lg in zip(chunk, logits):
            acc[:, y : y + patch, x : x + patch] += lg * weight
            wsum[y : y + patch, x : x + patch] += weight
        if on_batch is not None:
            on_batch(len(chunk))
    assert acc is not None  # windows() always returns at least one window
    return acc / wsum


def tile_logits(model: nn.Module, tile: TileInput, spec: InputSpec, **kw: Any) -> torch.Tensor:
    """Blended logits (K,H,W) float32 on the CPU for the whole tile: :func:`blend_logits`, moved once."""
    return blend_logits(model, tile, spec, **kw).cpu()


def check_uint8(num_classes: int, ignore: int, what: str = "model") -> None:
    """Maps store classes as uint8: every class and the ignore value must fit."""
    if not 0 <= ignore <= 255 or num_classes > 255:
        raise InputError(f"{what}: maps are uint8, but ignore value {ignore} / {num_classes} classes do not fit")


def to_map(
    logits: torch.Tensor, has_input: np.ndarray, ignore: int, dtype: type = np.uint8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(classes with ``ignore`` where no valid input, confidence float32, probabilities (K,H,W) float32).

    ``dtype`` uint8 for written maps (checked with :func:`check_uint8`); evaluation passes int64 so
    any ignore value works there.
    """
    return probs_to_map(torch.softmax(logits.cpu(), dim=0), has_input, ignore, dtype)


def probs_to_map(
    probs: torch.Tensor, has_input: np.ndarray, ignore: int, dtype: type = np.uint8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`to_map` from (mean) class probabilities (K,H,W) on the CPU: what an ensemble's map is made of."""
    if dtype is np.uint8:
        check_uint8(int(probs.shape[0]), ignore)
    conf, cls = probs.max(dim=0)
    classes: np.ndarray = cls.numpy().astype(dtype)
    classes[~has_input] = ignore
    confidence = conf.numpy().astype(np.float32)
    confidence[~has_input] = 0.0
    return classes, confidence, probs.numpy()


def score_map(classes: np.ndarray, labels: np.ndarray, num_classes: int, ignore: int) -> tuple[torch.Tensor, int]:
    """(confusion matrix (K,K) int64, labelled pixels left without a prediction) of a map.

    Pixels labelled ``ignore`` are skipped; labelled pixels the map leaves at ``ignore`` (no valid
    input) cannot enter the matrix and are counted separately.
    """
    lab = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    pred = torch.from_numpy(np.asarray(classes, dtype=np.int64))
    labelled = (lab != ignore) & (lab >= 0) & (lab < num_classes)
    unpredicted = int((labelled & (pred == ignore)).sum())
    keep = labelled & (pred != ignore)
    idx = lab[keep] * num_classes + pred[keep]
    cm = torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    return cm, unpredicted
