"""An ensemble of models: the mean of their softmax probabilities on one tile — the one averaging that the
final runs' score (``results.json``) and the ensemble maps share.

Members must agree on what a pixel is (bands) and what a class is (names, ignore value); each member reads
the tile with its *own* normalisation (its training statistics), so members trained on different tiles
(seeds or folds) still see their own inputs. Averaging probabilities, not logits, is what "mean of the
members' probabilities" means; ``log`` of the mean is a valid logit for :func:`dualseg.infer.to_map`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dualseg.data.tile import TileInfo
from dualseg.errors import InputError
from dualseg.infer.modelfile import ModelFile, load_exported, spec_of
from dualseg.infer.window import load_input, tile_logits


@dataclass
class Member:
    """One model of an ensemble: its file (normalisation, classes) and the built network."""

    file: ModelFile
    net: nn.Module


def check_members(files: Sequence[ModelFile]) -> None:
    """Same bands, classes and ignore value across members: one error line naming the first that differs."""
    if not files:
        raise InputError("ensemble: no model given")
    first = files[0]
    for f in files[1:]:
        for what, a, b in (("S1 bands", first.s1_bands, f.s1_bands), ("S2 bands", first.s2_bands, f.s2_bands),
                           ("classes", first.class_names, f.class_names),
                           ("ignore value", first.ignore_index, f.ignore_index)):
            if a != b:
                raise InputError(f"ensemble: model {f.source} has {what} {b} but {first.source} has {a}")


def load_members(paths: Sequence[str | Path], device: str | torch.device = "cpu") -> list[Member]:
    """Model files (slim exports or training checkpoints), checked to agree, built on ``device``."""
    files = [load_exported(p) for p in paths]
    check_members(files)
    return [Member(f, f.build(device)) for f in files]


def mean_probabilities(members: Sequence[Member], info: TileInfo, *, overlap: float = 0.25, batch_size: int = 8,
                       device: str | torch.device = "cpu") -> tuple[torch.Tensor, np.ndarray]:
    """(K,H,W) float32 mean of the members' softmax probabilities on tile ``info`` (CPU), and the (H,W)
    mask of pixels with valid input (the first member's streams)."""
    if not members:
        raise InputError("ensemble: no model given")
    total: torch.Tensor | None = None
    has_input: np.ndarray | None = None
    for m in members:
        spec = spec_of(m.file)
        inp = load_input(info, spec)
        logits = tile_logits(m.net, inp, spec, patch=m.file.patch_size, overlap=overlap, batch_size=batch_size,
                             device=device, amp=m.file.amp)
        probs = torch.softmax(logits.to(torch.float32), dim=0)
        total = probs if total is None else total + probs
        if has_input is None:
            has_input = inp.has_input(spec.streams)
    assert total is not None and has_input is not None
    return total / len(members), has_input
