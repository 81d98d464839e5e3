"""CLI: ``python -m dualseg.predict --model M [M ...] --tiles ROOT [--split S | --tile T ...] --out DIR``.

Several models (files, or folders of ``*.pth``) are an ensemble: their mean class probability
makes the map (:mod:`dualseg.infer.members`).

Exit codes: 0 ok, 1 model error, 2 bad input (one ``error:`` line naming the tile/option).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dualseg.errors import DualsegError, report_error


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m dualseg.predict",
        description="Apply a model to tiles (labels not needed) and write class/confidence maps.",
        epilog="per tile: <out>/<tile>.zarr (classes, confidence, uncertainty[, probabilities]) and, when "
               "the tile has a CRS/transform, <out>/<tile>.tif (+ .tif.aux.xml: class names for GIS) and "
               "<out>/<tile>.uncertainty.tif. uncertainty: normalised entropy of the mean probability. "
               "Tiles already mapped are skipped (--overwrite redoes them); "
               "--out may not be, hold or lie inside --tiles or the model, and nothing but maps is replaced.",
    )
    p.add_argument("--model", type=Path, nargs="+", required=True,
                   help="best_model.pth (or a training checkpoint); several, or a folder of them: an ensemble")
    p.add_argument("--tiles", type=Path, required=True, help="tile root (<root>/<tile>.zarr)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--split", help="a split of <root>/splits.json (default: every tile under --tiles)")
    which.add_argument("--tile", action="append", default=[], help="a tile name (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--overlap", type=float, default=0.25, help="window overlap fraction in [0, 1) (default 0.25)")
    p.add_argument("--probabilities", action="store_true", help="also store every class probability")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--no-geotiff", action="store_true", help="zarr only, even for georeferenced tiles")
    p.add_argument("--overwrite", action="store_true", help="redo tiles whose map (written by this tool) exists")
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from dualseg.infer.members import load_members
    from dualseg.predict.maps import list_tiles, predict_tiles

    try:
        model = load_members(a.model)
        names = list_tiles(a.tiles, a.split, a.tile)
        res = predict_tiles(model, a.tiles, names, a.out, overlap=a.overlap, batch_size=a.batch_size,
                            device=a.device, probabilities=a.probabilities, geotiff=not a.no_geotiff,
                            overwrite=a.overwrite)
    except DualsegError as exc:
        return report_error(exc)
    except KeyboardInterrupt:
        print("interrupted: finished maps are kept; rerun to do the rest", file=sys.stderr)
        return 130
    written = [r for r in res if r.status == "written"]
    tifs = sum(r.geotiff is not None for r in res)
    ens = f" (ensemble of {len(model)} models)" if len(model) > 1 else ""
    print(f"{len(written)} map(s) written{ens}, {len(res) - len(written)} already there, {tifs} GeoTIFF(s) -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
