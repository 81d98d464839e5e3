"""Deterministic synthetic S1+S2 benchmark tiles (``python -m dualseg.data.synthetic --out DIR``).

Why it is hard in the right ways: parcels (Voronoi cells with void borders) carry one of K crop
classes or background with imbalanced frequencies. Crop classes come in pairs that share spectra,
amplitude and radar structure and differ only in the *timing* of green-up/senescence, so no single
date separates them. S2 reflectances are a soil/vegetation mix driven by that phenology, hidden by
bright clouds on ``cloud_fraction`` of the dates (some fully cloudy, some not flagged in the cloud
mask); S1 (dB, gamma speckle) sees the same vegetation through the clouds with a class-dependent
structure response. Acquisition dates and counts differ per stream and per tile. Everything
derives from ``(seed, tile index)``, so a dataset is reproducible bit for bit.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from dualseg.config import S1_BANDS, S2_BANDS, SyntheticConfig
from dualseg.data.folds import write_folds
from dualseg.data.splits import describe_splits, write_splits
from dualseg.data.tile import Stream, Tile, tile_path
from dualseg.data.write import write_tile
from dualseg.errors import InputError, report_error
from dualseg.io import atomic_write_text, staged_dir

IGNORE_INDEX = 255
MARKER = "synthetic.json"  # a generated dataset (its config): the only folder --overwrite replaces
YEAR_START = int((np.datetime64("2021-01-01") - np.datetime64("1970-01-01")).astype(int))
# Reflectance spectra (B02..B12) of bare soil, green vegetation and cloud.
SOIL = np.array([0.08, 0.11, 0.14, 0.17, 0.19, 0.21, 0.23, 0.24, 0.30, 0.26], dtype=np.float32)
VEG = np.array([0.03, 0.06, 0.03, 0.10, 0.25, 0.35, 0.42, 0.44, 0.22, 0.11], dtype=np.float32)
CLOUD = np.array([0.50, 0.50, 0.52, 0.52, 0.53, 0.53, 0.54, 0.54, 0.40, 0.32], dtype=np.float32)


def class_params(classes: int) -> np.ndarray:
    """Per class (green-up day, season length, amplitude, radar structure); row 0 = background.

    Classes 2j+1 and 2j+2 share everything but a 45-day shift of the season.
    """
    p = np.zeros((classes + 1, 4), dtype=np.float64)
    p[0] = (0, 0, 0, 0.5)
    for c in range(1, classes + 1):
        j, second = divmod(c - 1, 2)
        green = 75 + 22 * (j % 4) + 45 * second
        p[c] = (green, 70 + 20 * (j % 3), 0.55 + 0.12 * (j % 3), 0.6 + 0.5 * ((j * 7) % 5) / 4)
    return p


def class_names(classes: int) -> list[str]:
    return ["background"] + [f"crop_{c}" for c in range(1, classes + 1)]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _dates(rng: np.random.Generator, mean: int) -> np.ndarray:
    n = int(rng.integers(max(2, round(0.75 * mean)), max(3, round(1.25 * mean)) + 1))
    n = min(n, 360)
    return np.sort(rng.choice(np.arange(1, 366), size=n, replace=False)).astype(np.int32)


def _parcels(rng: np.random.Generator, size: int, cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """Voronoi parcel id map (H,W), void-border mask, number of parcels."""
    n = max(4, int(size * size / cfg.parcel_size**2))
    seeds = rng.uniform(0, size, size=(n, 2))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    d = (yy.reshape(-1, 1) - seeds[:, 0]) ** 2 + (xx.reshape(-1, 1) - seeds[:, 1]) ** 2
    two = np.partition(d, 1, axis=1)[:, :2]
    ids = np.argmin(d, axis=1).reshape(size, size)
    border = (np.sqrt(two[:, 1]) - np.sqrt(two[:, 0])).reshape(size, size) < 1.0
    return ids, border, n


def _smooth_field(rng: np.random.Generator, t: int, size: int, cell: int = 8) -> np.ndarray:
    """Smooth random fields (t,size,size) by bilinear upsampling of coarse noise."""
    g = size // cell + 2
    coarse = rng.random((t, g, g), dtype=np.float32)
    pos = (np.arange(size, dtype=np.float32) + 0.5) / cell
    i0 = pos.astype(int)
    w = (pos - i0)[None, :]
    rows = coarse[:, i0, :] * (1 - w[..., None]) + coarse[:, i0 + 1, :] * w[..., None]
    return rows[:, :, i0] * (1 - w) + rows[:, :, i0 + 1] * w


def make_tile(cfg: SyntheticConfig, index: int) -> Tile:
    """Generate tile ``index`` of the dataset described by ``cfg`` (pure function of both)."""
    rng = np.random.default_rng([cfg.seed, index])
    size, k = cfg.size, cfg.classes
    params = class_params(k)
    ids, border, n = _parcels(rng, size, cfg)
    crop = 1.0 / np.arange(1, k + 1) ** 0.9  # Zipf-like: crop_1 common, crop_K rare
    freq = np.concatenate([[cfg.background_fraction], (1 - cfg.background_fraction) * crop / crop.sum()])
    parcel_class = rng.choice(k + 1, size=n, p=freq)
    green = params[parcel_class, 0] + rng.normal(0, 6, n)
    length = params[parcel_class, 1] * rng.uniform(0.9, 1.1, n)
    amp = params[parcel_class, 2] * rng.uniform(0.85, 1.1, n)
    struct = params[parcel_class, 3] * rng.uniform(0.9, 1.1, n)
    bg_veg = np.where(parcel_class == 0, rng.uniform(0.05, 0.7, n), 0.0)
    bright = rng.uniform(0.8, 1.25, n)

    def vegetation(days: np.ndarray) -> np.ndarray:  # (T, n) fraction of green cover per parcel
        t = days[:, None].astype(np.float64)
        season = amp * (_sigmoid((t - green) / 6.0) - _sigmoid((t - green - length) / 9.0))
        return np.clip(0.08 + season + bg_veg, 0.0, 0.95).astype(np.float32)

    # --- Sentinel-2 -------------------------------------------------------------------------
    d2 = _dates(rng, cfg.s2_dates)
    t2 = d2.size
    veg2 = vegetation(d2)[:, ids] + rng.normal(0, 0.02, (t2, size, size)).astype(np.float32)
    soil = (bright[ids] * 1.0).astype(np.float32)
    refl = (1 - veg2)[None] * (SOIL[:, None, None, None] * soil[None, None]) + veg2[None] * VEG[:, None, None, None]
    refl += rng.normal(0, 0.006, refl.shape).astype(np.float32)
    cloudy = rng.random(t2) < cfg.cloud_fraction
    cover = np.where(rng.random(t2) < 0.3, 1.0, rng.uniform(0.2, 0.95, t2))
    field = _smooth_field(rng, t2, size)
    thresh = np.array([np.quantile(field[i], 1 - cover[i]) if cover[i] < 1 else -1.0 for i in range(t2)])
    cloud = (field > thresh[:, None, None]) & cloudy[:, None, None]
    alpha = rng.uniform(0.75, 1.0, (t2, 1, 1)).astype(np.float32)
    refl = np.where(cloud[None], refl * (1 - alpha[None]) + alpha[None] * CLOUD[:, None, None, None], refl)
    flagged = cloud & (rng.random(t2) >= cfg.cloud_mask_miss)[:, None, None]
    refl = np.clip(refl, 0.0, 1.0) * 10000.0
    swath = rng.random(t2) < 0.08  # a few dates at a swath edge: missing pixels (NaN)
    if swath.any():
        cut = rng.integers(size // 4, 3 * size // 4 + 1)
        refl[:, swath, :, cut:] = np.nan
    s2_bands = {b: refl[i].astype(np.float32) for i, b in enumerate(S2_BANDS)}
    s2 = Stream(bands=s2_bands, time=d2 + YEAR_START, cloud=flagged)

    # --- Sentinel-1 -------------------------------------------------------------------------
    d1 = _dates(rng, cfg.s1_dates)
    veg1 = vegetation(d1)[:, ids]
    moist = (0.6 + 0.4 * np.sin(d1 / 365.0 * 2 * np.pi * 3 + rng.uniform(0, 6))).astype(np.float32)
    s = struct[ids][None].astype(np.float32)
    vh = 0.004 + 0.05 * veg1 * s
    vv = 0.05 * moist[:, None, None] * soil[None] * (1 - 0.5 * veg1) + 0.08 * veg1 * s**0.5
    looks = cfg.speckle_looks
    bands1 = {}
    for name, lin in (("VV", vv), ("VH", vh)):
        speckle = rng.gamma(looks, 1.0 / looks, lin.shape).astype(np.float32)
        bands1[name] = (10.0 * np.log10(lin * speckle + 1e-6)).astype(np.float32)
    s1 = Stream(bands={b: bands1[b] for b in S1_BANDS}, time=d1 + YEAR_START)

    labels = parcel_class[ids].astype(np.int16)
    labels[border] = IGNORE_INDEX
    return Tile(s1=s1, s2=s2, labels=labels, class_names=class_names(k), ignore_index=IGNORE_INDEX, crs=None)


def _check(cfg: SyntheticConfig) -> None:
    if cfg.tiles < 3:
        raise InputError(f"synthetic: tiles must be >= 3 (train/val/test), got {cfg.tiles}")
    if cfg.size < 8:
        raise InputError(f"synthetic: size must be >= 8, got {cfg.size}")
    if not 2 <= cfg.classes <= 40:
        raise InputError(f"synthetic: classes must be in [2, 40], got {cfg.classes}")
    if not 0.0 <= cfg.cloud_fraction <= 1.0:
        raise InputError(f"synthetic: cloud_fraction must be in [0, 1], got {cfg.cloud_fraction}")
    if not 0.0 <= cfg.cloud_mask_miss <= 1.0:
        raise InputError(f"synthetic: cloud_mask_miss must be in [0, 1], got {cfg.cloud_mask_miss}")
    if not 0.0 <= cfg.background_fraction < 1.0:
        raise InputError(f"synthetic: background_fraction must be in [0, 1), got {cfg.background_fraction}")
    if cfg.folds and not 3 <= cfg.folds <= cfg.tiles:
        raise InputError(f"synthetic: folds must be 0 (none) or in [3, tiles={cfg.tiles}] (a rotation needs test, "
                         f"val and train folds), got {cfg.folds}")
    if cfg.s1_dates < 2 or cfg.s2_dates < 2:
        raise InputError("synthetic: s1_dates and s2_dates must be >= 2")
    if cfg.parcel_size < 2 or cfg.speckle_looks <= 0:
        raise InputError("synthetic: parcel_size must be >= 2 and speckle_looks > 0")


def synthetic_splits(n: int) -> dict[str, list[str]]:
    """60/20/20 split of ``tile_000..`` (at least one tile in val and test)."""
    names = [f"tile_{i:03d}" for i in range(n)]
    n_test = max(1, round(0.2 * n))
    n_val = max(1, round(0.2 * n))
    n_train = n - n_val - n_test
    return {"train": names[:n_train], "val": names[n_train : n - n_test], "test": names[n - n_test :]}


def synthetic_folds(n: int, folds: int) -> dict[str, list[str]]:
    """``tile_000..`` in ``folds`` contiguous folds named ``1..folds`` (as PASTIS-R numbers its five)."""
    names = [f"tile_{i:03d}" for i in range(n)]
    return {str(k + 1): names[k * n // folds:(k + 1) * n // folds] for k in range(folds)}


def generate(out: str | Path, cfg: SyntheticConfig | None = None, *, overwrite: bool = False) -> dict[str, list[str]]:
    """Write ``cfg.tiles`` tiles and ``splits.json`` into ``out``, all or nothing (a temp folder
    beside it is renamed into place at the end; an existing generated dataset is replaced with
    ``overwrite``, a folder without ``synthetic.json`` never)."""
    cfg = cfg or SyntheticConfig()
    _check(cfg)
    splits = synthetic_splits(cfg.tiles)
    names = [n for s in splits.values() for n in s]
    with staged_dir(out, "synthetic: --out", overwrite=overwrite, marker=MARKER) as tmp:
        atomic_write_text(tmp / MARKER, json.dumps(vars(cfg), indent=1) + "\n")  # marks the dir as ours

        def one(i_name: tuple[int, str]) -> None:
            write_tile(tile_path(tmp, i_name[1]), make_tile(cfg, i_name[0]))

        # zarr writes wait on its I/O event loop; overlapping tiles in threads halves the wall time.
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(one, enumerate(sorted(names))))
        if cfg.folds:
            write_folds(tmp, synthetic_folds(cfg.tiles, cfg.folds))
        write_splits(tmp / "splits.json", splits)
    return splits


def _check_same(root: Path, cfg: SyntheticConfig) -> bool:
    """An existing generated dataset must match the requested config (else results would silently
    come from other data); returns False (nothing generated)."""
    meta = root / MARKER
    if not meta.is_file():
        return False  # user data with a splits file: not ours to judge
    try:
        have = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        have = {}
    want, default = vars(cfg), vars(SyntheticConfig())
    diff = [k for k in want if have.get(k, default[k]) != want[k]]  # a key added since: it had the default
    if diff:
        k = diff[0]
        raise InputError(
            f"data.synthetic.{k}={want[k]!r} but {root} was generated with {k}={have.get(k, default[k])!r}; "
            "delete that directory or point data.root elsewhere"
        )
    return False


def ensure_synthetic(root: str | Path, cfg: SyntheticConfig) -> bool:
    """Generate the dataset into ``root`` unless it is complete; returns whether it generated.

    Safe for many processes at once (DDP ranks, parallel trials): an exclusive ``flock`` on
    ``.<root name>.generate.lock`` beside ``root`` (outside it: the dataset folder is swapped in
    whole at the end) lets the first one write while the others wait, then find ``splits.json``
    and return. Refuses to write into a directory holding foreign tiles.
    """
    import fcntl

    root = Path(root)
    if (root / "splits.json").is_file():
        return _check_same(root, cfg)
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.generate.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if (root / "splits.json").is_file():
                return _check_same(root, cfg)
            if any(root.glob("*.zarr")) and not (root / MARKER).is_file():
                raise InputError(
                    f"data.root {root} holds tiles but no splits.json; refusing to generate synthetic data there"
                )
            generate(root, cfg, overwrite=True)
            return True
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    d = SyntheticConfig()
    ap = argparse.ArgumentParser(allow_abbrev=False,
                                 prog="python -m dualseg.data.synthetic", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--tiles", type=int, default=d.tiles)
    ap.add_argument("--size", type=int, default=d.size, help="tile height = width in pixels")
    ap.add_argument("--classes", type=int, default=d.classes, help="crop classes (plus background)")
    ap.add_argument("--cloud-fraction", type=float, default=d.cloud_fraction, help="fraction of cloudy S2 dates")
    ap.add_argument("--cloud-mask-miss", type=float, default=d.cloud_mask_miss)
    ap.add_argument("--s1-dates", type=int, default=d.s1_dates)
    ap.add_argument("--s2-dates", type=int, default=d.s2_dates)
    ap.add_argument("--parcel-size", type=int, default=d.parcel_size)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--folds", type=int, default=d.folds, help="also write folds.json with this many folds (>= 3)")
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    cfg = SyntheticConfig(
        tiles=a.tiles, size=a.size, classes=a.classes, cloud_fraction=a.cloud_fraction, seed=a.seed,
        cloud_mask_miss=a.cloud_mask_miss, s1_dates=a.s1_dates, s2_dates=a.s2_dates, parcel_size=a.parcel_size,
        folds=a.folds,
    )
    try:
        splits = generate(a.out, cfg, overwrite=a.overwrite)
    except InputError as exc:
        return report_error(exc)
    print(f"wrote {describe_splits(splits)} to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
