"""Inference: a model file and a tile in, blended logits out — the one path maps and evaluation share.

Layering: ``dualseg.data`` -> ``dualseg.model`` -> ``dualseg.infer`` -> ``dualseg.train`` /
``dualseg.predict`` (train and predict never import each other; tests/test_layers.py checks it).
A package of its own, not part of :mod:`dualseg.model`: the model package is the architecture
(modules, no files, no tiles), while this reads checkpoints and model files, reads tiles through
:mod:`dualseg.data` and runs the model on them. Both training (``evaluate_checkpoint``, the train
step's forward, ``export_model``) and prediction import downwards from here, so making a map loads
neither the trainer nor ``torch.distributed`` code of ours, and the evaluated mIoU is the maps' mIoU by
construction rather than by keeping two copies in step.

- :mod:`dualseg.infer.checkpoint`: the CRC-checked checkpoint format and strict weight loading.
- :mod:`dualseg.infer.modelfile`: :class:`ModelFile`, :func:`load_exported` (slim file or ``best.pt``).
- :mod:`dualseg.infer.batch`: ``to_device``, ``forward``, ``autocast_ctx`` (shared with the train step).
- :mod:`dualseg.infer.window`: sliding windows, blending, ``tile_logits``, ``to_map``, ``score_map``.
"""

from dualseg.infer.batch import autocast_ctx, forward, to_device
from dualseg.infer.checkpoint import CheckpointError, load_checkpoint, load_model_state
from dualseg.infer.modelfile import ModelFile, load_exported, spec_of, weight_bytes
from dualseg.infer.window import (
    InputSpec,
    TileInput,
    blend_weight,
    check_uint8,
    load_input,
    score_map,
    tile_logits,
    to_map,
    windows,
)

__all__ = [
    "CheckpointError",
    "InputSpec",
    "ModelFile",
    "TileInput",
    "autocast_ctx",
    "blend_weight",
    "check_uint8",
    "forward",
    "load_checkpoint",
    "load_exported",
    "load_input",
    "load_model_state",
    "score_map",
    "spec_of",
    "tile_logits",
    "to_device",
    "to_map",
    "weight_bytes",
    "windows",
]
