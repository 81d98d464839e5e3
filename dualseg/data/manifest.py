"""Tile manifests: what a tile held when it was written, so missing or changed bytes are an error.

zarr reads a chunk whose file is gone as the array's fill value (0.0), silently; consolidated
metadata even keeps listing an array whose whole directory was deleted. So:

* :func:`write_manifest` (called by ``write_tile`` before consolidating) records every array's
  shape, dtype and chunk shape plus, per chunk, the stored size and CRC-32 of its bytes in
  ``<tile>.zarr/manifest.json``; the root attribute ``manifest`` points at it.
* :func:`check_chunks` (every ``open_tile``: one ``stat`` per chunk, no file read) refuses an
  array whose chunk files are not all there, comparing the store with the chunk grid.
* :func:`verify_tile` (``validate``) re-reads every chunk file and compares size and checksum;
  a tile without a manifest (older writers) gets the listing check of every array instead.

Every chunk is written, also an all-fill-value one (``write_empty_chunks``), so "no file" always
means "lost". :func:`content_stamp` (the stats cache key) hashes the manifest and the listing
(keys, sizes, mtimes), so a band rewritten in place changes the key.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import zlib
from pathlib import Path
from typing import Any

import zarr

from dualseg.errors import InputError

MANIFEST = "manifest.json"
ALGO = "crc32"  # zlib.crc32 of the stored (compressed) chunk bytes: no dependency, ~1 GB/s
MANIFEST_VERSION = 1


def chunk_keys(arr: zarr.Array) -> list[str]:
    """Store keys (relative to the array) of every chunk of ``arr``'s grid, e.g. ``c/0/1/0``."""
    return [arr.metadata.encode_chunk_key(ix) for ix in itertools.product(*(range(n) for n in arr.cdata_shape))]


def arrays_of(group: zarr.Group, prefix: str = "") -> dict[str, zarr.Array]:
    """Every array below ``group`` by path (``s2/B02``, ``labels`` ...), sorted."""
    out: dict[str, zarr.Array] = {}
    for name, member in sorted(group.members()):
        path = f"{prefix}{name}"
        if isinstance(member, zarr.Array):
            out[path] = member
        elif isinstance(member, zarr.Group):
            out.update(arrays_of(member, f"{path}/"))
    return out


def _crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            crc = zlib.crc32(block, crc)
    return crc


def write_manifest(root: Path, group: zarr.Group) -> dict[str, Any]:
    """Record ``root``'s arrays and chunks in ``root/manifest.json``; return the attribute to set."""
    arrays = {}
    for path, arr in arrays_of(group).items():
        chunks = {}
        for key in chunk_keys(arr):
            f = root / path / key
            chunks[key] = [f.stat().st_size, _crc(f)]
        arrays[path] = {"shape": list(arr.shape), "dtype": str(arr.dtype), "chunks": list(arr.chunks), "crc": chunks}
    doc = {"version": MANIFEST_VERSION, "algo": ALGO, "arrays": arrays}
    (root / MANIFEST).write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    return {"file": MANIFEST, "algo": ALGO, "version": MANIFEST_VERSION}


def stored_files(path: Path) -> set[str]:
    """Relative paths of every file under ``path`` (one ``os.walk``)."""
    out: set[str] = set()
    cut = len(str(path)) + 1
    for dirpath, _, files in os.walk(path):
        rel = dirpath[cut:]
        out.update(f"{rel}/{f}" if rel else f for f in files)
    return out


def _where(key: str) -> str:
    """``s2/B02`` -> ``band s2/B02``; ``labels`` -> ``array labels`` (messages name what it is)."""
    return f"band {key}" if "/" in key and key.split("/")[-1] not in ("time", "cloud") else f"array {key}"


def check_chunks(path: Path, name: str, arrays: dict[str, zarr.Array]) -> None:
    """Every chunk file of ``arrays`` (path -> array) exists under tile ``path``; else one InputError.

    No file is read: one ``stat`` per chunk of the grid (a 128x128 tile: 16 arrays, 16 stats).
    """
    for key, arr in arrays.items():
        base = os.path.join(path, key)
        if not os.path.isdir(base):
            raise InputError(f"tile {name}: {_where(key)}: its directory {key}/ is missing from the store")
        want = chunk_keys(arr)
        missing = [k for k in want if not os.path.isfile(os.path.join(base, k))]
        if missing:
            more = f" ({len(missing)} of {len(want)} chunks missing)" if len(missing) > 1 else ""
            raise InputError(f"tile {name}: {_where(key)}: missing chunk {missing[0]}{more}")


def read_manifest(path: Path, name: str) -> dict[str, Any] | None:
    """The tile's manifest, or None for a tile written without one; a broken one is an error."""
    f = path / MANIFEST
    if not f.is_file():
        return None
    try:
        doc = json.loads(f.read_text())
        if doc.get("algo") != ALGO or not isinstance(doc.get("arrays"), dict):
            raise ValueError(f"unknown algo {doc.get('algo')!r} or no arrays")
        return doc
    except (OSError, ValueError, AttributeError) as exc:
        raise InputError(f"tile {name}: {MANIFEST} is unreadable ({exc})") from None


def verify_tile(path: Path, name: str, group: zarr.Group, attrs: dict[str, Any]) -> bool:
    """Check every array and chunk of the tile against its manifest (reads every chunk file).

    Returns whether a manifest was there; without one (older writers) every array gets the
    listing check of :func:`check_chunks`. The first problem is one InputError naming the tile,
    the stream/band and the chunk.
    """
    manifest = read_manifest(path, name)
    present = arrays_of(group)
    if manifest is None:
        if attrs.get("manifest"):
            raise InputError(f"tile {name}: {MANIFEST} is missing (the tile attributes say it was written)")
        check_chunks(path, name, present)
        return False
    for key, rec in manifest["arrays"].items():
        arr = present.get(key)
        if arr is None:
            raise InputError(f"tile {name}: {_where(key)} is in the manifest but not in the tile")
        have = {"shape": list(arr.shape), "dtype": str(arr.dtype), "chunks": list(arr.chunks)}
        for field in ("shape", "dtype", "chunks"):
            if have[field] != rec[field]:
                raise InputError(f"tile {name}: {_where(key)}: {field} {have[field]} != {rec[field]} in the manifest")
        for ck, (size, crc) in rec["crc"].items():
            f = path / key / ck
            try:
                actual = f.stat().st_size
            except FileNotFoundError:
                raise InputError(f"tile {name}: {_where(key)}: missing chunk {ck}") from None
            if actual != size or _crc(f) != crc:
                raise InputError(
                    f"tile {name}: {_where(key)}: chunk {ck} differs from the manifest "
                    f"({actual} bytes vs {size} written; changed or corrupt)"
                )
    extra = sorted(set(present) - set(manifest["arrays"]))
    if extra:
        check_chunks(path, name, {k: present[k] for k in extra})
    return True


def content_stamp(path: Path) -> str:
    """Digest of a tile's contents as cheaply as it can be known: the manifest bytes plus every
    file's key, size and mtime (no chunk is read). Rewriting any array changes it."""
    h = hashlib.sha256()
    cut = len(str(path)) + 1
    for dirpath, dirs, files in os.walk(path):
        dirs.sort()
        for f in sorted(files):
            full = os.path.join(dirpath, f)
            try:
                st = os.stat(full)
            except FileNotFoundError:
                continue
            h.update(f"{full[cut:]}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            if f == MANIFEST and dirpath == str(path):
                h.update(Path(full).read_bytes())
    return h.hexdigest()[:24]
