"""Data layer: tile format (zarr), synthetic benchmark data, PASTIS-R import, datasets and statistics.

The flat public API below is what the rest of dualseg codes against (docs/architecture.md "Data").
Names load lazily (PEP 562) so the CLIs (``python -m dualseg.data.validate`` ...) start without
importing torch, and running a submodule with ``-m`` does not import it twice.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "build": ["DataBundle", "build_data"],
    "batch": ["collate"],
    "dataset": ["TileDataset"],
    "inputs": ["date_features", "day_of_year"],
    "prepare": ["prepare"],
    "splits": ["read_splits", "resolve_splits", "write_splits"],
    "moments": ["Moments", "moments_xp"],
    "stats": ["BandStats", "Partial", "compute_partial"],
    "synthetic": ["ensure_synthetic", "generate", "make_tile"],
    "pastis": ["import_pastis"],
    "tile": ["Stream", "Tile", "TileInfo", "open_tile", "tile_path"],
    "write": ["write_tile"],
    "read": ["read_tile"],
    "preflight": ["check_dataset"],
    "validate": ["validate_root", "validate_tile"],
    "weights": ["compute_class_weights"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from dualseg.data.batch import collate
    from dualseg.data.build import DataBundle, build_data
    from dualseg.data.dataset import TileDataset
    from dualseg.data.inputs import date_features, day_of_year
    from dualseg.data.moments import Moments, moments_xp
    from dualseg.data.pastis import import_pastis
    from dualseg.data.preflight import check_dataset
    from dualseg.data.prepare import prepare
    from dualseg.data.read import read_tile
    from dualseg.data.splits import read_splits, resolve_splits, write_splits
    from dualseg.data.stats import BandStats, Partial, compute_partial
    from dualseg.data.synthetic import ensure_synthetic, generate, make_tile
    from dualseg.data.tile import Stream, Tile, TileInfo, open_tile, tile_path
    from dualseg.data.validate import validate_root, validate_tile
    from dualseg.data.weights import compute_class_weights
    from dualseg.data.write import write_tile


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'dualseg.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"dualseg.data.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
