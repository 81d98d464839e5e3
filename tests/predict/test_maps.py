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
    """An int8 band (the format says uint16; float32 in version 1) is one line naming tile, band, dtype."""
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


def _second_model(slim: Path, out: Path, **changes: object) -> Path:
    """Another model of the same recipe: the weights perturbed (``changes`` alter its metadata)."""
    import dataclasses

    from dualseg.infer.modelfile import load_exported, to_file
    from dualseg.io import atomic_torch_save

    m = load_exported(slim)
    g = torch.Generator().manual_seed(7)
    weights = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
               for k, v in m.weights.items()}
    return atomic_torch_save(to_file(dataclasses.replace(m, weights=weights, **changes)), out)  # type: ignore[arg-type]


def test_ensemble_map_is_the_mean_probability_and_scores_like_it(
    quick_cfg: Config, trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two models -> one map: the argmax of their mean softmax (computed here per model through the
    evaluation's own path), scored with the project's metric, plus the uncertainty layer."""
    from dualseg.infer import load_exported, load_input, spec_of, tile_logits, to_map

    root = Path(quick_cfg.data.root)
    tiles = json.loads((root / "splits.json").read_text())["test"]
    models = tmp_path / "final"
    models.mkdir()
    (models / "a.pth").write_bytes(trained["slim"].read_bytes())
    _second_model(trained["slim"], models / "b.pth")
    out = tmp_path / "maps"
    assert main(["--model", str(models), "--tiles", str(root), "--split", "test", "--out", str(out)]) == 0
    assert f"{len(tiles)} map(s) written (ensemble of 2 models)" in capsys.readouterr().out
    members = [load_exported(models / "a.pth"), load_exported(models / "b.pth")]
    k = members[0].num_classes
    cm_map, cm_mean = torch.zeros(k, k, dtype=torch.int64), torch.zeros(k, k, dtype=torch.int64)
    differs = 0
    for name in tiles:
        info = open_tile(tile_path(root, name), members[0].s1_bands, members[0].s2_bands)
        inp = load_input(info, spec_of(members[0]))
        probs = [to_map(tile_logits(m.build(), inp, spec_of(m), patch=m.patch_size, overlap=0.25, amp=m.amp),
                        inp.has_input(), info.ignore_index)[2] for m in members]
        mean = (probs[0] + probs[1]) / 2
        m = read_map(out / f"{name}.zarr")
        np.testing.assert_array_equal(m["classes"], mean.argmax(axis=0))
        np.testing.assert_allclose(m["confidence"], mean.max(axis=0), rtol=1e-5)
        entropy = -(mean * np.log(np.clip(mean, 1e-12, None))).sum(axis=0) / np.log(k)
        np.testing.assert_allclose(m["uncertainty"], entropy, atol=1e-5)
        assert ((m["uncertainty"] >= 0) & (m["uncertainty"] <= 1)).all()
        differs += int((probs[0].argmax(axis=0) != probs[1].argmax(axis=0)).sum())
        labels = read_labels(info)
        cm_map += score_map(m["classes"], labels, k, info.ignore_index)[0]
        cm_mean += score_map(mean.argmax(axis=0).astype(np.uint8), labels, k, info.ignore_index)[0]
    assert differs > 0  # the members do disagree somewhere: the test can tell an ensemble from one model
    assert metrics_from_confusion(cm_map)["miou"] == metrics_from_confusion(cm_mean)["miou"]
    assert cm_map.tolist() == cm_mean.tolist()


def test_models_that_differ_are_one_line(quick_cfg: Config, trained: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    other = _second_model(trained["slim"], tmp_path / "other.pth", class_names=["w", "x", "y", "z"])
    out = tmp_path / "maps"
    assert main(["--model", str(trained["slim"]), str(other), "--tiles", quick_cfg.data.root, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --model: {other} does not match {trained['slim']}: "
                                               "it has classes ['w', 'x', 'y', 'z']"), err
    assert not out.exists()
