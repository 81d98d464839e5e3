"""Spread over repeated runs: mean, standard deviation and a bootstrap 95 % interval of the mean.

One training run is one draw (the seed moves test mIoU by tens of points on small data); a number worth
publishing says how far it moves. The interval is the percentile bootstrap of the mean over members,
seeded, so the same members always give the same interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Spread:
    """``std`` is the sample standard deviation (ddof=1; None for one value); ``low``/``high`` the 95 % interval."""

    mean: float
    std: float | None
    low: float
    high: float
    n: int


def spread(values: Sequence[float], samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> Spread:
    """Mean, std and the percentile-bootstrap 95 % interval of the mean of ``values``."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("spread of no values")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"spread of non-finite values {x.tolist()}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(samples, x.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Spread(float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else None, float(low), float(high), int(x.size))


def per_class(rows: Sequence[Sequence[float | None]], **kw: Any) -> list[Spread | None]:
    """:func:`spread` of each class over members (a class absent from a member's test tiles is skipped)."""
    out: list[Spread | None] = []
    for column in zip(*rows, strict=True):
        vals = [float(v) for v in column if v is not None and np.isfinite(v)]
        out.append(spread(vals, **kw) if vals else None)
    return out
