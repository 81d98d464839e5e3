"""What the model sees of a tile's pixels and dates, the same for training patches and prediction.

The patch dataset (:mod:`dualseg.data.dataset`) and prediction windows both call these, so a
model is never fed inputs prepared differently from those it was trained on: :func:`date_features`
encodes acquisition dates (``data.date_encoding``). Pixels are z-scored and masked on the device
by :mod:`dualseg.data.prepare`, also the same for both.
"""

from __future__ import annotations

import numpy as np


def day_of_year(days: np.ndarray) -> np.ndarray:
    """Day of year (1..366) of integer days since 1970-01-01."""
    d = np.datetime64("1970-01-01", "D") + np.asarray(days, dtype="timedelta64[D]")
    return (d - d.astype("datetime64[Y]")).astype(np.int64) + 1


def date_features(times: dict[str, np.ndarray], encoding: str = "doy") -> dict[str, np.ndarray]:
    """Per stream int64 date features of a tile (1-based; 0 is left for padding).

    ``doy``: day of year, for series within one season. ``days``: days since 1 January of the year
    of the tile's first acquisition (over both streams), which keeps the order of a series that
    crosses a new year (PASTIS-R runs from September to the next November), same for both streams.
    """
    if encoding == "doy":  # the two values of the config's Literal (checked by the loader)
        return {k: day_of_year(v) for k, v in times.items()}
    first = np.datetime64("1970-01-01", "D") + np.timedelta64(int(min(v.min() for v in times.values())), "D")
    start = int((first.astype("datetime64[Y]").astype("datetime64[D]") - np.datetime64("1970-01-01", "D")).astype(int))
    return {k: np.asarray(v, dtype=np.int64) - start + 1 for k, v in times.items()}
