"""``python -m dualseg.data.validate``: whole-dataset check, one error line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import zarr

from dualseg.data.validate import validate_root
from dualseg.data.write import rewrite_manifest
from dualseg.errors import InputError


def _run(*args):
    return subprocess.run([sys.executable, "-m", "dualseg.data.validate", *map(str, args)],
                          capture_output=True, text=True)


def test_cli_ok_and_bad(tmp_path, data):
    root = data.write_root(tmp_path, n=4)
    r = _run(root)
    assert r.returncode == 0 and r.stdout.startswith("ok: 4 tiles, 3 classes"), r.stderr
    for name in ("t1", "t3"):
        g = zarr.open_group(str(root / f"{name}.zarr"), mode="a")
        data.put_band(g, "s2", "B07", np.full((g["s2/time"].shape[0], 16, 16), np.nan))
        rewrite_manifest(root / f"{name}.zarr")
    r = _run(root)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: tile t1: band s2/B07 is all NaN/nodata (2 of 4 tiles are invalid)"


def test_overlap_missing_and_band_options(tmp_path, data):
    root = data.write_root(tmp_path, n=3, splits={"train": ["t0", "t1"], "val": ["t1"], "test": ["t2"]})
    with pytest.raises(InputError, match="tile t1 is in both train and val"):
        validate_root(root)
    (root / "splits.json").write_text(json.dumps({"train": ["t0", "t9"], "val": ["t1"], "test": ["t2"]}))
    with pytest.raises(InputError, match=r"tile t9: not found"):
        validate_root(root)
    (root / "splits.json").write_text(json.dumps({"train": ["t0"], "val": ["t1"]}))  # an importer's empty test
    with pytest.raises(InputError, match=r"splits.json: the test tile list is empty"):
        validate_root(root)
    (root / "splits.json").unlink()
    assert len(validate_root(root)) == 3
    r = _run(root, "--s1-bands", "VV", "HH")
    assert r.returncode == 2 and "missing band s1/HH" in r.stderr
    r = _run(tmp_path / "empty")
    assert r.returncode == 2 and "is not a directory" in r.stderr
