"""Export a trial's training checkpoint as the slim ``best_model.pth`` (see :mod:`dualseg.infer.modelfile`).

Reading a model file is inference (:func:`dualseg.infer.load_exported`); ``ModelFile``,
``load_exported`` and ``weight_bytes`` are re-exported here for callers of the training API.
"""

from __future__ import annotations

from pathlib import Path

from dualseg.config import Config
from dualseg.infer.checkpoint import load_checkpoint
from dualseg.infer.modelfile import ModelFile, from_checkpoint, load_exported, to_file, weight_bytes
from dualseg.io import atomic_torch_save

__all__ = ["ModelFile", "export_model", "load_exported", "weight_bytes"]


def export_model(checkpoint: str | Path, cfg: Config | None, out: str | Path) -> Path:
    """Write the slim model of training checkpoint ``checkpoint`` to ``out`` (atomically).

    ``cfg`` defaults to the config stored in the checkpoint (pass the trial's config when the
    caller has it; its model section must match the weights, which is checked here).
    """
    src = Path(checkpoint)
    m = from_checkpoint(load_checkpoint(src), cfg, str(src))
    m.build("cpu")  # shapes match the config (fails naming the parameter otherwise)
    return atomic_torch_save(to_file(m), out)
