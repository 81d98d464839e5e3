"""Synthetic generator: determinism, realism properties, benchmark hardness, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from dualseg.config import DataConfig, SyntheticConfig
from dualseg.data.inputs import day_of_year
from dualseg.data.read import read_tile
from dualseg.data.synthetic import IGNORE_INDEX, class_params, generate, make_tile
from dualseg.data.validate import validate_tile


def test_generate_is_deterministic_and_valid(tmp_path):
    cfg = SyntheticConfig(tiles=6, size=32, seed=7)
    t0 = time.perf_counter()
    splits = generate(tmp_path / "a", cfg)
    elapsed = time.perf_counter() - t0
    generate(tmp_path / "b", cfg)
    assert splits == json.loads((tmp_path / "a" / "splits.json").read_text())
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (4, 1, 1)
    for name in sum(splits.values(), []):
        validate_tile(tmp_path / "a" / f"{name}.zarr")
        a, b = read_tile(tmp_path / "a" / f"{name}.zarr"), read_tile(tmp_path / "b" / f"{name}.zarr")
        for key in ("s1", "s2"):
            for band in getattr(a, key).bands:
                np.testing.assert_array_equal(getattr(a, key).bands[band], getattr(b, key).bands[band])
        np.testing.assert_array_equal(a.s2.cloud, b.s2.cloud)
        np.testing.assert_array_equal(a.labels, b.labels)
    other = make_tile(SyntheticConfig(tiles=6, size=32, seed=8), 0)
    assert not np.array_equal(other.labels, read_tile(tmp_path / "a" / "tile_000.zarr").labels)
    print(f"generate 6 tiles 32x32: {elapsed:.2f}s")  # the HPC tests do this on the fly


def test_tiles_have_the_properties_the_benchmark_needs():
    cfg = SyntheticConfig(tiles=6, size=48, classes=6, cloud_fraction=0.5)
    tiles = [make_tile(cfg, i) for i in range(6)]
    t1 = {t.s1.time.size for t in tiles}
    t2 = {t.s2.time.size for t in tiles}
    assert len(t1) > 1 and len(t2) > 1  # T varies per tile ...
    assert any(t.s1.time.size != t.s2.time.size for t in tiles)  # ... and per stream
    assert all(not np.array_equal(t.s1.time[:3], t.s2.time[:3]) for t in tiles)
    labels = np.concatenate([t.labels.ravel() for t in tiles])
    assert 0.03 < np.mean(labels == IGNORE_INDEX) < 0.4  # void borders between parcels
    counts = np.bincount(labels[labels != IGNORE_INDEX], minlength=7)
    assert counts[1] > 3 * counts[6] > 0  # imbalanced
    cloud_cover = np.concatenate([np.isnan(t.s2.bands["B02"]).mean((1, 2)) * 0 + t.s2.cloud.mean((1, 2))
                                  for t in tiles])
    assert (cloud_cover == 1.0).any() and (cloud_cover == 0).any()  # fully cloudy and clear dates
    bright = np.concatenate([t.s2.bands["B02"][t.s2.cloud] for t in tiles])
    clear = np.concatenate([t.s2.bands["B02"][~t.s2.cloud] for t in tiles])
    assert np.nanmean(bright) > 2 * np.nanmean(clear)
    s1 = np.concatenate([t.s1.bands["VH"].ravel() for t in tiles])
    assert -40 < s1.min() and s1.max() < 5 and s1.std() > 1  # dB with speckle
    p = class_params(6)
    assert np.array_equal(p[1, 1:], p[2, 1:]) and p[2, 0] - p[1, 0] == 45  # a pair differing only in timing


def _monthly(tile, stream):
    s = getattr(tile, stream)
    if stream == "s2":
        x = (s.bands["B08"] - s.bands["B04"]) / (s.bands["B08"] + s.bands["B04"])
        x = np.where(s.cloud, np.nan, x)
    else:
        x = s.bands["VH"] - s.bands["VV"]
    month = np.minimum((day_of_year(s.time) - 1) * 12 // 366, 11)
    out = np.full((12, *x.shape[1:]), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for m in range(12):
            if (month == m).any():
                out[m] = np.nanmean(x[month == m], axis=0)
    return out[:, tile.labels != IGNORE_INDEX].T


def _centroid_accuracy(x, y):
    tr = np.random.default_rng(0).random(len(y)) < 0.6  # random pixel split
    mu = np.nan_to_num(np.nanmean(x[tr], 0))
    x = np.where(np.isnan(x), mu, x)
    x = (x - mu) / (x[tr].std(0) + 1e-6)
    cents = np.stack([x[tr][y[tr] == k].mean(0) for k in np.unique(y[tr])])
    pred = np.unique(y[tr])[np.argmin(((x[~tr][:, None] - cents[None]) ** 2).sum(-1), 1)]
    return float((pred == y[~tr]).mean())


def test_benchmark_needs_time_and_s1_helps_under_clouds():
    acc = {}
    for cf in (0.0, 0.8):
        tiles = [make_tile(SyntheticConfig(tiles=8, size=48, classes=6, cloud_fraction=cf), i) for i in range(8)]
        y = np.concatenate([t.labels[t.labels != IGNORE_INDEX] for t in tiles])
        x2 = np.concatenate([_monthly(t, "s2") for t in tiles])
        x1 = np.concatenate([_monthly(t, "s1") for t in tiles])
        acc[cf, "s2"] = _centroid_accuracy(x2, y)
        acc[cf, "both"] = _centroid_accuracy(np.c_[x1, x2], y)
        acc[cf, "single"] = max(_centroid_accuracy(x2[:, [m]], y) for m in range(12))
    assert acc[0.0, "s2"] > acc[0.0, "single"] + 0.2, acc  # one date is not enough
    assert acc[0.8, "s2"] < acc[0.0, "s2"] - 0.15, acc  # heavy cloud hurts S2-only
    assert acc[0.8, "both"] > acc[0.8, "s2"] + 0.03, acc  # ... and S1 helps


def test_cli_and_bad_options(tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "dualseg.data.synthetic", "--out", str(out), "--tiles", "3",
                        "--size", "16"], capture_output=True, text=True)
    assert r.returncode == 0 and "wrote 3 tiles" in r.stdout and r.stderr == "", r.stderr
    r = subprocess.run([sys.executable, "-m", "dualseg.data.synthetic", "--out", str(out), "--tiles", "3"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: synthetic:") and "--overwrite" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([sys.executable, "-m", "dualseg.data.synthetic", "--out", str(tmp_path / "x"), "--tiles", "3",
                        "--cloud-fraction", "1.5"], capture_output=True, text=True)
    assert r.returncode == 2 and "cloud_fraction must be in [0, 1]" in r.stderr
    assert not (tmp_path / "x").exists()


def test_folds_are_written_when_asked_and_an_older_dataset_still_matches(tmp_path):

    from dualseg.data.folds import read_folds, rotation
    from dualseg.data.synthetic import ensure_synthetic
    from dualseg.errors import InputError

    cfg = SyntheticConfig(tiles=7, size=8, s1_dates=2, s2_dates=2, folds=3)
    generate(tmp_path / "f", cfg)
    folds = read_folds(DataConfig(root=str(tmp_path / "f")))
    assert folds == {"1": ["tile_000", "tile_001"], "2": ["tile_002", "tile_003"],
                     "3": ["tile_004", "tile_005", "tile_006"]}
    assert rotation(folds, 2) == {"train": ["tile_002", "tile_003"], "val": ["tile_000", "tile_001"],
                                  "test": ["tile_004", "tile_005", "tile_006"]}
    plain = SyntheticConfig(tiles=3, size=8, s1_dates=2, s2_dates=2)
    generate(tmp_path / "p", plain)
    assert not (tmp_path / "p" / "folds.json").exists()
    meta = tmp_path / "p" / "synthetic.json"  # written before folds existed: the key is missing, i.e. no folds
    meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != "folds"}))
    assert ensure_synthetic(tmp_path / "p", plain) is False
    with pytest.raises(InputError, match=r"data.synthetic.folds=3 but .* was generated with folds=0"):
        ensure_synthetic(tmp_path / "p", SyntheticConfig(tiles=3, size=8, s1_dates=2, s2_dates=2, folds=3))
    with pytest.raises(InputError, match=r"synthetic: folds must be 0 \(none\) or in \[3, tiles=3\]"):
        generate(tmp_path / "bad", SyntheticConfig(tiles=3, folds=4))


@pytest.mark.parametrize("field, value", [("tiles", 2), ("size", 4), ("classes", 1)])
def test_config_checked(tmp_path, field, value):
    from dualseg.errors import InputError

    with pytest.raises(InputError, match=field):
        generate(tmp_path, SyntheticConfig(**{field: value}))


def test_ensure_synthetic_concurrent_callers_generate_once(tmp_path):
    """Many ranks at once: one generates (into a temp folder swapped in whole), the others wait and reuse."""
    from concurrent.futures import ThreadPoolExecutor

    from dualseg.data.synthetic import ensure_synthetic

    cfg = SyntheticConfig(tiles=3, size=8, s1_dates=2, s2_dates=2)
    root = tmp_path / "data"
    with ThreadPoolExecutor(max_workers=3) as pool:  # flock locks per open(): threads contend like processes
        generated = list(pool.map(lambda _: ensure_synthetic(root, cfg), range(3)))
    assert sorted(generated) == [False, False, True]
    assert sorted(p.name for p in root.iterdir()) == [
        "splits.json", "synthetic.json", "tile_000.zarr", "tile_001.zarr", "tile_002.zarr"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".data.generate.lock", "data"]  # no temp folder left
