"""From a model file and tiles to maps on disk, resumably (a tile whose map exists is skipped)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dualseg.data.splits import read_splits
from dualseg.data.tile import TileInfo, open_tile, tile_path
from dualseg.errors import InputError
from dualseg.infer.members import check_members, ensemble_map, mean_probs
from dualseg.infer.modelfile import ModelFile
from dualseg.infer.window import check_uint8, windows
from dualseg.predict.outputs import check_out, pending, removing_new_empty_dirs
from dualseg.predict.writers import (
    geotiff_path,
    map_path,
    uncertainty_path,
    write_geotiff,
    write_uncertainty_geotiff,
    write_zarr,
)

log = logging.getLogger("dualseg.predict")


@dataclass
class MapResult:
    """One tile's outcome: ``written`` or ``skipped`` (already there), and its files."""

    tile: str
    status: str
    zarr: Path
    geotiff: Path | None
    seconds: float = 0.0


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an input error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"--device: unknown value {device!r} (auto, cpu, cuda)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available")
    return torch.device(device)


def list_tiles(root: str | Path, split: str | None = None, tiles: list[str] | None = None) -> list[str]:
    """Tile names: the given ones, a split of ``<root>/splits.json``, or every ``*.zarr`` under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"--tiles: {root} is not a directory")
    if tiles:
        return list(dict.fromkeys(tiles))
    if split is not None:
        splits = read_splits(root / "splits.json")
        if split not in splits:
            raise InputError(f"--split: {split!r} is not in {root / 'splits.json'} ({', '.join(splits)})")
        return list(splits[split])
    names = sorted(p.name.removesuffix(".zarr") for p in root.glob("*.zarr") if not p.name.startswith("."))
    if not names:
        raise InputError(f"--tiles: no *.zarr tile under {root}")
    return names


def open_inputs(model: ModelFile, root: str | Path, names: list[str]) -> list[TileInfo]:
    """Open every tile up front (labels optional): a missing band fails before any map is written."""
    infos = [open_tile(tile_path(root, n), model.s1_bands, model.s2_bands, require_labels=False) for n in names]
    for info in infos:
        if min(info.height, info.width) < model.patch_size:
            raise InputError(f"tile {info.name}: {info.height}x{info.width} is smaller than the model's "
                             f"patch size {model.patch_size}")
        for key in ("s1", "s2"):
            if model.max_t is not None and info.streams[key].t > model.max_t:
                raise InputError(f"tile {info.name}: {key} has T={info.streams[key].t} > the model's "
                                 f"max_t={model.max_t}")
    return infos


def predict_tiles(
    models: ModelFile | Sequence[ModelFile],
    root: str | Path,
    names: list[str],
    out: str | Path,
    *,
    overlap: float = 0.25,
    batch_size: int = 8,
    device: str = "auto",
    probabilities: bool = False,
    geotiff: bool = True,
    overwrite: bool = False,
    progress: bool | None = None,
) -> list[MapResult]:
    """Write ``<out>/<tile>.zarr`` (+ GeoTIFFs when georeferenced) for each tile in ``names``.

    Several ``models`` (an ensemble; they must agree, :func:`~dualseg.infer.members.check_members`)
    are averaged in probability space (:func:`~dualseg.infer.members.mean_probs`); every map also
    carries the ``uncertainty`` layer. Tiles whose map already exists are skipped unless
    ``overwrite`` (so a rerun, or a requeued array task, does only what is left). ``out`` is never
    an input, and only maps this package wrote count as done or are replaced
    (:mod:`dualseg.predict.outputs`); all of it is checked before the first write. A failed write (a
    full disk) is an :class:`InputError` naming the tile, and leaves no temp file and no empty folder
    of this run. ``progress`` (default: stderr is a terminal) shows a bar.
    """
    members = [models] if isinstance(models, ModelFile) else list(models)
    if not members:
        raise InputError("--model: no model given")
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    if not 0.0 <= overlap < 1.0:
        raise InputError(f"--overlap must be in [0, 1), got {overlap}")
    check_members(members)
    model = members[0]
    check_uint8(model.num_classes, model.ignore_index, f"--model {model.source}")
    dev = resolve_device(device)
    infos = open_inputs(model, root, names)
    for m in members:
        check_out(out, root, m.source)
    out = Path(out)
    todo = pending(out, infos, overwrite=overwrite, geotiff=geotiff)
    results = [MapResult(i.name, "skipped", map_path(out, i.name), _tif_if_any(out, i)) for i in infos
               if i not in todo]
    if not todo:
        return results
    built = [(m, m.build(dev)) for m in members]
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    total = sum(len(windows(i.height, i.width, m.patch_size, overlap)) for i in todo for m in members)
    with (tqdm(total=total, unit="window", disable=not show, desc=f"predict {len(todo)} tile(s)") as bar,
          removing_new_empty_dirs(out)):
        for info in todo:
            t0 = time.monotonic()
            bar.set_postfix_str(info.name)
            probs, has_input = mean_probs(built, info, overlap=overlap, batch_size=batch_size, device=dev,
                                          on_batch=bar.update)
            classes, conf, p, unsure = ensemble_map(probs, has_input, model.ignore_index)
            try:
                zpath, tif = _write(members, out, info, (classes, conf, unsure, p if probabilities else None),
                                    overlap, geotiff)
            except OSError as exc:
                raise InputError(f"--out: cannot write the map of tile {info.name} to {out}: "
                                 f"{exc.strerror or exc}") from None
            results.append(MapResult(info.name, "written", zpath, tif, time.monotonic() - t0))
    return results


Layers = tuple[np.ndarray, np.ndarray, np.ndarray, "np.ndarray | None"]  # classes, confidence, uncertainty, probs


def _write(members: list[ModelFile], out: Path, info: TileInfo, layers: Layers, overlap: float,
           geotiff: bool) -> tuple[Path, Path | None]:
    """The GeoTIFFs (when georeferenced), then the zarr that marks the tile done; a failed zarr takes
    this tile's new GeoTIFFs with it."""
    classes, conf, unsure, probs = layers
    model = members[0]
    written: list[Path] = []
    tif = None
    crs, transform = info.attrs.get("crs"), info.attrs.get("transform")
    try:
        if geotiff and crs and transform:  # georeferenced(info), narrowed for the types
            written.append(write_uncertainty_geotiff(uncertainty_path(out, info.name), unsure, crs, transform))
            tif = write_geotiff(geotiff_path(out, info.name), classes, crs, transform, model.class_names,
                                model.ignore_index)
            written += [tif, tif.with_name(tif.name + ".aux.xml")]
        sources = [m.source for m in members]
        attrs = {"tile": info.name, "class_names": model.class_names, "ignore_index": model.ignore_index,
                 "crs": crs, "transform": transform, "overlap": overlap,
                 "model": sources[0] if len(sources) == 1 else sources, "models": sources,
                 "uncertainty": "normalised entropy of the mean class probability (0 sure, 1 uniform)",
                 "code_version": model.code_version}
        return write_zarr(map_path(out, info.name), classes, conf, probs, attrs, uncertainty=unsure), tif
    except BaseException:
        for f in written:
            f.unlink(missing_ok=True)
        raise


def _tif_if_any(out: Path, info: TileInfo) -> Path | None:
    p = geotiff_path(out, info.name)
    return p if p.exists() else None


def read_map(path: str | Path) -> dict[str, np.ndarray]:
    """``classes``/``confidence``/``uncertainty`` (and ``probabilities`` if written) of a map zarr."""
    import zarr

    g = zarr.open_group(str(path), mode="r")
    out = {}
    for k in ("classes", "confidence", "uncertainty", "probabilities"):
        arr = g.get(k)
        if isinstance(arr, zarr.Array):
            out[k] = np.asarray(arr[...])
    return out
