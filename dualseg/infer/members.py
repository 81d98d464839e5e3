"""Several models, one map: their mean class probability and where they are unsure.

An ensemble (the final runs' seeds, or any list of exported models) is averaged in probability
space, the mean of each member's softmax over its blended logits, so members whose logits differ
in scale count equally. A single model is the ensemble of one: its map is its softmax, exactly
what :func:`dualseg.infer.to_map` gives, so a map of one model is unchanged.

The disagreement layer is the **normalised entropy of the mean probability**,
``H(p̄) / log K`` in [0, 1]: 0 where all members put all mass on one class, 1 where the mean is
uniform. Chosen over the members' vote fraction because it is defined for one model as well
(a model's own predictive uncertainty), is continuous where the vote fraction of 2-3 members has
only 2-3 levels, and rises both when members disagree and when they agree on being unsure (the
mutual information alone would miss the latter). Pixels without valid input are NaN (no data).

Members must read the same bands and streams and mean the same classes (names, ignore value);
:func:`check_members` names the first model that differs and how. Each member reads the tile with its
*own* input spec (normalisation from its training statistics, date encoding, ``max_t``, windows), so
members trained on other tiles (the final runs' seeds and folds) each see their own inputs; members
that share a spec share one read of the tile. This is the one averaging the final runs' score
(``results.json``, :func:`dualseg.train.evaluate.evaluate_ensemble`), the maps and the report use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dualseg.data.tile import TileInfo
from dualseg.errors import InputError
from dualseg.infer.modelfile import ModelFile, load_exported, spec_of
from dualseg.infer.window import InputSpec, TileInput, blend_logits, load_input, probs_to_map

MODEL_SUFFIXES = (".pth", ".pt")


def model_paths(given: Sequence[str | Path]) -> list[Path]:
    """Model files: each given file, and every ``*.pth``/``*.pt`` of a given folder (sorted)."""
    out: list[Path] = []
    for g in given:
        p = Path(g)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix in MODEL_SUFFIXES and f.is_file())
            if not found:
                raise InputError(f"--model: folder {p} holds no *.pth / *.pt model")
            out += found
        else:
            out.append(p)
    if not out:
        raise InputError("--model: no model given")
    return list(dict.fromkeys(out))


def _differs(a: ModelFile, b: ModelFile) -> str | None:
    """What ``b`` does differently from ``a`` in reading tiles or naming classes, or None."""
    if a.s1_bands != b.s1_bands or a.s2_bands != b.s2_bands:
        return f"bands s1={b.s1_bands} s2={b.s2_bands} (first model: s1={a.s1_bands} s2={a.s2_bands})"
    if a.model.streams != b.model.streams:
        return f"streams {b.model.streams!r} (first model: {a.model.streams!r})"
    if a.class_names != b.class_names or a.ignore_index != b.ignore_index:
        return (f"classes {b.class_names} ignore {b.ignore_index} "
                f"(first model: {a.class_names} ignore {a.ignore_index})")
    return None


def check_members(models: Sequence[ModelFile]) -> None:
    """Every model reads the bands and names the classes of the first; else one error naming the model."""
    if not models:
        raise InputError("--model: no model given")
    for m in models[1:]:
        why = _differs(models[0], m)
        if why is not None:
            raise InputError(f"--model: {m.source} does not match {models[0].source}: it has {why}")


def load_members(given: Sequence[str | Path]) -> list[ModelFile]:
    """Load and check the models of ``--model`` (files and folders)."""
    models = [load_exported(p) for p in model_paths(given)]
    check_members(models)
    return models


def _spec_key(spec: InputSpec) -> tuple[Any, ...]:
    """Members with equal keys read a tile identically (one read serves them all)."""
    stats = tuple(np.asarray(d[k], dtype=np.float64).tobytes() for d in (spec.mean, spec.std) for k in sorted(d))
    return stats, spec.date_encoding, spec.max_t, spec.streams


@torch.no_grad()
def mean_probs(
    members: Sequence[tuple[ModelFile, nn.Module]],
    info: TileInfo,
    *,
    overlap: float = 0.25,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], Any] | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """Mean softmax (K,H,W) float32 on the CPU of the built ``members`` over tile ``info``, and the (H,W)
    mask of pixels with valid input (the first member's streams).

    Each member reads the tile with its own spec (shared reads for equal specs); summed on ``device``,
    one transfer per tile.
    """
    if not members:
        raise InputError("--model: no model given")
    total: torch.Tensor | None = None
    has_input: np.ndarray | None = None
    reads: dict[tuple[Any, ...], TileInput] = {}
    for model, net in members:
        spec = spec_of(model)
        key = _spec_key(spec)
        tile = reads[key] = reads[key] if key in reads else load_input(info, spec)
        if has_input is None:
            has_input = tile.has_input(spec.streams)
        logits = blend_logits(net, tile, spec, patch=model.patch_size, overlap=overlap,
                              batch_size=batch_size, device=device, amp=model.amp, on_batch=on_batch)
        p = torch.softmax(logits.to(torch.float32), dim=0)
        total = p if total is None else total.add_(p)
    assert total is not None and has_input is not None
    return (total / len(members) if len(members) > 1 else total).cpu(), has_input


def uncertainty(probs: torch.Tensor, has_input: np.ndarray) -> np.ndarray:
    """Normalised entropy (H,W) float32 in [0, 1] of (K,H,W) probabilities; NaN without input."""
    k = int(probs.shape[0])
    p = probs.to(torch.float64)
    h = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=0) / (math.log(k) if k > 1 else 1.0)
    out: np.ndarray = h.clamp(0.0, 1.0).numpy().astype(np.float32)
    out[~has_input] = np.nan
    return out


def ensemble_map(
    probs: torch.Tensor, has_input: np.ndarray, ignore: int, dtype: type = np.uint8
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(classes, confidence, probabilities, uncertainty) of mean probabilities (see module doc)."""
    classes, conf, p = probs_to_map(probs, has_input, ignore, dtype)
    return classes, conf, p, uncertainty(probs, has_input)
