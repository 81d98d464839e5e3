"""PASTIS-R importer on a small fake folder in the published layout."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date

import numpy as np
import pytest
import zarr

from dualseg.data import build_data, read_tile
from dualseg.data.pastis import import_pastis, parse_folds
from dualseg.data.quant import QUANT
from dualseg.errors import InputError

H = 16


def _fake_pastis(root, n=5):
    """Patches 10000+i in folds 1..5, S2 int16, S1A float dB, TARGET (3,H,W), geojson dates."""
    rng = np.random.default_rng(0)
    for d in ("DATA_S2", "DATA_S1A", "ANNOTATIONS"):
        (root / d).mkdir(parents=True)
    feats = []
    for i in range(n):
        pid = 10000 + i
        t2, t1 = 4 + i % 2, 5 + i % 3
        np.save(root / "DATA_S2" / f"S2_{pid}.npy", rng.integers(0, 8000, (t2, 10, H, H)).astype(np.int16))
        np.save(root / "DATA_S1A" / f"S1A_{pid}.npy", rng.normal(-12, 3, (t1, 3, H, H)).astype(np.float32))
        target = np.stack([rng.integers(0, 20, (H, H)), np.zeros((H, H)), np.zeros((H, H))]).astype(np.int64)
        np.save(root / "ANNOTATIONS" / f"TARGET_{pid}.npy", target)
        d2 = {str(k): int(f"201809{10 + 3 * k:02d}") for k in range(t2)}
        d1 = {str(k): int(f"201810{1 + 4 * k:02d}") for k in range(t1)}
        props = {"ID_PATCH": pid, "Fold": i + 1, "dates-S2": d2 if i % 2 else json.dumps(d2),
                 "dates-S1A": json.dumps(d1)}
        x0, y0 = 700000.0 + 1280 * i, 6600000.0
        geom = {"type": "Polygon",
                "coordinates": [[[x0, y0], [x0 + 10 * H, y0], [x0 + 10 * H, y0 + 10 * H], [x0, y0 + 10 * H], [x0, y0]]]}
        feats.append({"type": "Feature", "properties": props, "geometry": geom})
    doc = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::2154"}},
           "features": feats}
    (root / "metadata.geojson").write_text(json.dumps(doc))
    return root


def test_import_round_trip_and_folds(tmp_path):
    src = _fake_pastis(tmp_path / "PASTIS-R")
    splits = import_pastis(src, tmp_path / "out", "1,2,3/4/5", workers=2)
    assert splits == {"train": ["pastis_10000", "pastis_10001", "pastis_10002"], "val": ["pastis_10003"],
                      "test": ["pastis_10004"]}
    assert json.loads((tmp_path / "out" / "splits.json").read_text()) == splits
    assert json.loads((tmp_path / "out" / "folds.json").read_text()) == {  # hpc.final.folds: all rotates these
        str(i + 1): [f"pastis_1000{i}"] for i in range(5)}
    t = read_tile(tmp_path / "out" / "pastis_10001.zarr")
    s2 = np.load(src / "DATA_S2" / "S2_10001.npy")
    s1 = np.load(src / "DATA_S1A" / "S1A_10001.npy")
    np.testing.assert_array_equal(t.s2.bands["B8A"], s2[:, 7].astype(np.float32))
    # format version 2: S2 int16 is stored exactly, S1 dB to 0.01 dB (quantisation error <= 0.005 dB)
    np.testing.assert_allclose(t.s1.bands["VH"], s1[:, 1], rtol=0, atol=QUANT["s1"].max_error * 1.001)
    g = zarr.open_group(str(tmp_path / "out" / "pastis_10001.zarr"), mode="r")
    assert g.attrs["version"] == 2 and g["s2/B8A"].dtype == np.uint16 and g["s1/VH"].dtype == np.int16
    assert list(t.s1.bands) == ["VV", "VH", "RATIO"]
    np.testing.assert_array_equal(t.labels, np.load(src / "ANNOTATIONS" / "TARGET_10001.npy")[0])
    assert t.ignore_index == 19 and len(t.class_names) == 19
    assert t.s2.time[0] == (date(2018, 9, 10) - date(1970, 1, 1)).days and t.s2.time[1] - t.s2.time[0] == 3
    assert t.crs.endswith("2154") and t.transform == [10.0, 0.0, 701280.0, 0.0, -10.0, 6600000.0 + 160]
    b = build_data(build_cfg(tmp_path / "out"), splits=("train", "val", "test"))
    assert b.num_classes == 19 and b.ignore_index == 19 and b.s1_channels == 2
    item = b.datasets["val"][0]
    assert set(item["labels"].unique().tolist()) <= set(range(20))


def build_cfg(root):
    from dualseg.config import DataConfig

    return DataConfig(root=str(root), patch_size=8, samples_per_tile=2)


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda s: (s / "DATA_S1A" / "S1A_10002.npy").unlink(), r"patch 10002: missing file .*S1A_10002.npy"),
        (lambda s: np.save(s / "DATA_S2" / "S2_10001.npy", np.zeros((9, 10, H, H), np.int16)),
         r"patch 10001: S2_10001.npy has T=9 but dates-S2 lists 5"),
        (lambda s: np.save(s / "DATA_S2" / "S2_10000.npy", np.zeros((4, 4, H, H), np.int16)),
         r"patch 10000: S2_10000.npy has shape \(4, 4, 16, 16\)"),
        (lambda s: np.save(s / "ANNOTATIONS" / "TARGET_10000.npy", np.full((3, H, H), 42)),
         r"patch 10000: TARGET holds classes \[42\]"),
        (lambda s: (s / "DATA_S2" / "S2_10000.npy").write_bytes(b"junk"), r"patch 10000: cannot read"),
        (lambda s: (s / "metadata.geojson").unlink(), r"has no metadata.geojson"),
    ],
)
def test_broken_sources_are_named(tmp_path, breakage, message):
    src = _fake_pastis(tmp_path / "P")
    breakage(src)
    with pytest.raises(InputError, match=message):
        import_pastis(src, tmp_path / "out", "1,2,3/4/5", workers=1)
    assert not (tmp_path / "out" / "splits.json").exists()


def test_unsorted_dates_named(tmp_path):
    src = _fake_pastis(tmp_path / "P", n=3)
    doc = json.loads((src / "metadata.geojson").read_text())
    doc["features"][1]["properties"]["dates-S1A"] = json.dumps({"0": 20181005, "1": 20181001, "2": 20181009,
                                                                "3": 20181010, "4": 20181011, "5": 20181012})
    (src / "metadata.geojson").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"tile pastis_10001: s1/time is not sorted"):
        import_pastis(src, tmp_path / "out", "1/2/3", workers=1)


def test_parse_folds():
    assert parse_folds("1,2/3/4,5") == {"train": [1, 2], "val": [3], "test": [4, 5]}
    for bad, msg in (("1,2,3", "TRAIN/VAL/TEST"), ("1/1/2", "two splits"), ("a/2/3", "not integers"),
                     ("/2/3", "no train")):
        with pytest.raises(InputError, match=msg):
            parse_folds(bad)


def test_cli(tmp_path):
    src = _fake_pastis(tmp_path / "P", n=3)
    ok = subprocess.run([sys.executable, "-m", "dualseg.data.pastis", str(src), str(tmp_path / "o"),
                         "--folds", "1/2/3"], capture_output=True, text=True)
    assert ok.returncode == 0 and "wrote 3 tiles" in ok.stdout, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "dualseg.data.pastis", str(src), str(tmp_path / "o3"), "--orbit", "S1D",
                          "--folds", "1/2/3"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: pastis: patch 10000: missing file") \
        and "S1D_10000.npy" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "dualseg.data.pastis", str(tmp_path / "none"), str(tmp_path / "o2")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == f"error: pastis: source folder {tmp_path / 'none'} not found"
