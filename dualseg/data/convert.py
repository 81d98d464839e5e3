"""Rewrite a dataset in the current tile format (``python -m dualseg.data.convert SRC DST``).

Why a tool and not an in-place upgrade: a dataset is shared and read by running searches, so the
new copy is built beside it and only then renamed into place (all or nothing: a failure or
Ctrl-C leaves nothing at DST). The source is validated first (a damaged tile is named, never
copied into the new format), every tile is read (dequantised if already version 2) and written
by :func:`~dualseg.data.write.write_tile` (quantised, new manifest), ``splits.json`` is copied,
and the result is validated again before the rename. DST must be empty or absent and must not
be, contain or lie inside SRC.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dualseg.data.read import read_tile
from dualseg.data.tile import VERSION, tile_path
from dualseg.data.validate import validate_root
from dualseg.data.write import write_tile
from dualseg.errors import InputError, report_error
from dualseg.io import atomic_write_text, check_output, staged_dir

MARKER = "convert.json"  # source and format version of a converted dataset


def convert(src: str | Path, dst: str | Path, *, codec: str = "auto", workers: int = 4) -> list[str]:
    """Write every tile of ``src`` (validated) in format :data:`VERSION` under ``dst``; return the names."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise InputError(f"convert: source folder {src} not found")
    out = check_output(dst, {"source folder SRC": src}, "convert: DST")
    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"convert: DST: {dst} is not empty (convert writes only into a new or empty folder)")
    with staged_dir(dst, "convert: DST", overwrite=False, marker=MARKER, inputs={"source folder SRC": src}) as tmp:
        names = [info.name for info in validate_root(src, workers=workers)]

        def one(name: str) -> None:
            write_tile(tile_path(tmp, name), read_tile(tile_path(src, name)), version=VERSION, codec=codec)

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            list(pool.map(one, names))
        if (src / "splits.json").is_file():
            shutil.copyfile(src / "splits.json", tmp / "splits.json")
        atomic_write_text(tmp / MARKER, json.dumps({"source": str(src), "version": VERSION}, indent=1) + "\n")
        validate_root(tmp, workers=workers)
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dualseg.data.convert", description=__doc__.splitlines()[0])
    ap.add_argument("src", help="tile root to convert (left unchanged)")
    ap.add_argument("dst", help="new tile root (absent or empty)")
    ap.add_argument("--workers", type=int, default=4)
    a = ap.parse_args(argv)
    try:
        names = convert(a.src, a.dst, workers=a.workers)
    except InputError as exc:
        return report_error(exc)
    print(f"wrote {len(names)} tiles in format version {VERSION} to {a.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
