"""Apply a trained model to tiles (labelled or not) and write class/confidence maps.

One inference path: :func:`tile_logits` (sliding windows, smooth blending, in :mod:`dualseg.infer`)
serves both the maps written here and the test metrics of :func:`dualseg.train.evaluate_checkpoint`.
Its names are re-exported here; this package adds only the writing (and never imports the trainer).
CLI: ``python -m dualseg.predict --model best_model.pth --tiles ROOT --out DIR``.
"""

from dualseg.infer.modelfile import ModelFile, load_exported, spec_of
from dualseg.infer.window import (
    InputSpec,
    TileInput,
    blend_weight,
    load_input,
    score_map,
    tile_logits,
    to_map,
    windows,
)
from dualseg.predict.maps import MapResult, list_tiles, predict_tiles, read_map, resolve_device
from dualseg.predict.writers import class_colours, geotiff_path, map_path, write_geotiff, write_zarr

__all__ = [
    "InputSpec",
    "MapResult",
    "ModelFile",
    "TileInput",
    "blend_weight",
    "class_colours",
    "geotiff_path",
    "list_tiles",
    "load_exported",
    "load_input",
    "map_path",
    "predict_tiles",
    "read_map",
    "resolve_device",
    "score_map",
    "spec_of",
    "tile_logits",
    "to_map",
    "windows",
    "write_geotiff",
    "write_zarr",
]
