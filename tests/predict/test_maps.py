"""python -m dualseg.predict on unlabelled tiles: maps of the right shape whose mIoU is the evaluated one."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from dualseg.config import Config
from dualseg.data.read import read_labels
from dualseg.data.tile import FORMAT_DTYPES, open_tile, tile_path
from dualseg.data.write import consolidate, rewrite_manifest
from dualseg.errors import InputError
from dualseg.predict import read_map, score_map
from dualseg.predict.__main__ import main
from dualseg.train import evaluate_checkpoint, metrics_from_confusion


def test_maps_of_unlabelled_tiles_score_the_evaluated_miou(
    quick_cfg: Config, trained: dict[str, Path], unlabelled: Callable[..., Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = Path(quick_cfg.data.root)
    test_tiles = json.loads((root / "splits.json").read_text())["test"]
    bare = unlabelled(root, test_tiles, tmp_path / "bare")
    with pytest.raises(InputError, match=f"tile {test_tiles[0]}: missing array labels"):
        open_tile(tile_path(bare, test_tiles[0]))  # training still requires labels
    info = open_tile(tile_path(bare, test_tiles[0]), require_labels=False)
    assert not info.has_labels and (info.height, info.width) == (64, 64) and info.class_names
    out = tmp_path / "maps"
    assert main(["--model", str(trained["slim"]), "--tiles", str(bare), "--out", str(out), "--overlap", "0.25"]) == 0
    assert f"{len(test_tiles)} map(s) written" in capsys.readouterr().out
    k = open_tile(tile_path(root, test_tiles[0])).num_classes
    cm = torch.zeros(k, k, dtype=torch.int64)
    for name in test_tiles:
        info = open_tile(tile_path(root, name))
        m = read_map(out / f"{name}.zarr")
        assert m["classes"].shape == m["confidence"].shape == (info.height, info.width)
        assert m["classes"].dtype == np.uint8 and set(np.unique(m["classes"])) <= set(range(k))
        assert ((m["confidence"] >= 1 / k - 1e-6) & (m["confidence"] <= 1)).all()
        cm += score_map(m["classes"], read_labels(info), k, info.ignore_index)[0]
    ev = evaluate_checkpoint(trained["best"], split="test", overlap=0.25)
    assert ev["unpredicted"] == 0
    assert metrics_from_confusion(cm)["miou"] == pytest.approx(ev["miou"], abs=1e-6)
    assert cm.tolist() == ev["confusion_matrix"]
    # a rerun finds every map and redoes none
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.zarr")}
    assert main(["--model", str(trained["slim"]), "--tiles", str(bare), "--out", str(out)]) == 0
    assert f"0 map(s) written, {len(test_tiles)} already there" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.zarr")} == mtimes


def test_probabilities_and_split_selection(quick_cfg: Config, trained: dict[str, Path], tmp_path: Path) -> None:
    root = Path(quick_cfg.data.root)
    name = json.loads((root / "splits.json").read_text())["val"][0]
    out = tmp_path / "maps"
    assert main(["--model", str(trained["best"]), "--tiles", str(root), "--tile", name, "--out", str(out),
                 "--probabilities", "--batch-size", "3"]) == 0
    m = read_map(out / f"{name}.zarr")
    probs = m["probabilities"]
    assert probs.shape == (open_tile(tile_path(root, name)).num_classes, *m["classes"].shape)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    assert (probs.argmax(axis=0) == m["classes"]).all()
    np.testing.assert_allclose(probs.max(axis=0), m["confidence"], rtol=1e-6)
    assert sorted(p.name for p in out.iterdir()) == [f"{name}.zarr"]  # no GeoTIFF: synthetic tiles have no CRS


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tile", "nope"], "tile nope: not found"),
        (["--split", "holdout"], "--split: 'holdout' is not in"),
        (["--overlap", "1.0"], "--overlap must be in [0, 1)"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--device", "tpu"], "--device: unknown value 'tpu'"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    quick_cfg: Config, trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    args: list[str], message: str,
) -> None:
    out = tmp_path / "maps"
    rc = main(["--model", str(trained["slim"]), "--tiles", quick_cfg.data.root, "--out", str(out), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not out.exists()


def test_missing_band_and_bad_model_are_named(quick_cfg: Config, trained: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              unlabelled: Callable[..., Path]) -> None:
    import shutil

    root = Path(quick_cfg.data.root)
    name = json.loads((root / "splits.json").read_text())["test"][0]
    bare = unlabelled(root, [name], tmp_path / "bare")
    shutil.rmtree(bare / f"{name}.zarr" / "s2" / "B11")
    consolidate(bare / f"{name}.zarr")
    out = tmp_path / "maps"
    assert main(["--model", str(trained["slim"]), "--tiles", str(bare), "--out", str(out)]) == 2
    assert f"error: tile {name}: missing band s2/B11" in capsys.readouterr().err
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a model")
    assert main(["--model", str(junk), "--tiles", str(root), "--out", str(out)]) == 2
    assert f"error: --model: cannot load {junk}" in capsys.readouterr().err
    assert not out.exists()


def test_a_band_in_a_dtype_the_format_does_not_allow_is_refused(quick_cfg: Config, trained: dict[str, Path],
                                                                tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                unlabelled: Callable[..., Path]) -> None:
    """An int8 band (the format says uint16, or float32 in version 1) is one line naming tile, band and dtype; no map is written."""
    import zarr

    root = Path(quick_cfg.data.root)
    name = json.loads((root / "splits.json").read_text())["test"][0]
    bare = unlabelled(root, [name], tmp_path / "bare")
    g = zarr.open_group(str(bare / f"{name}.zarr"), mode="a")
    g["s2"].create_array("B03", data=np.ones(g["s2/B03"].shape, "i1"), overwrite=True)
    rewrite_manifest(bare / f"{name}.zarr")
    out = tmp_path / "maps"
    assert main(["--model", str(trained["slim"]), "--tiles", str(bare), "--out", str(out)]) == 2
    version = int(g.attrs.get("version", 1))
    allowed = " or ".join(sorted(FORMAT_DTYPES[version]["s2"]))
    assert capsys.readouterr().err == (f"error: tile {name}: band s2/B03 is stored as int8; format version "
                                       f"{version} allows {allowed}\n")
    assert not out.exists()
