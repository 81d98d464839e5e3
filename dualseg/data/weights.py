"""Class weights for the loss from training label counts (ignore class already excluded).

Crop maps are heavily imbalanced; ``inverse`` (N / (K_present * n_c)) and ``median``
(median frequency / frequency, Eigen & Fergus) re-weight rare classes. A class absent from the
training tiles cannot be learned: it gets a warning naming it and the largest present weight, so
the loss stays finite if it appears in a batch anyway.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from dualseg.errors import InputError

log = logging.getLogger("dualseg.data.weights")

METHODS = ("inverse", "median", "none")


def compute_class_weights(
    counts: np.ndarray | list[int], method: str = "median", class_names: list[str] | None = None
) -> torch.Tensor:
    """Weights (K,) float32 from per-class pixel counts (K,), ``method`` in inverse | median | none."""
    if method not in METHODS:
        raise InputError(f"data.class_weighting: unknown method {method!r} (known: {', '.join(METHODS)})")
    counts = np.asarray(counts, dtype=np.float64)
    k = counts.size
    if k == 0:
        raise InputError("class weights: no classes")
    if method == "none":
        return torch.ones(k, dtype=torch.float32)
    present = counts > 0
    if not present.any():
        raise InputError("class weights: the train tiles contain no labelled pixel")
    freq = counts / counts.sum()
    w = np.zeros(k)
    if method == "inverse":
        w[present] = 1.0 / (present.sum() * freq[present])
    else:
        w[present] = np.median(freq[present]) / freq[present]
    absent = np.flatnonzero(~present)
    if absent.size:
        names = [class_names[i] if class_names and i < len(class_names) else str(i) for i in absent]
        msg = f"classes absent from the train tiles (weight set to the max present weight): {', '.join(names)}"
        log.warning(msg)
        w[absent] = w[present].max()
    return torch.as_tensor(w, dtype=torch.float32)
