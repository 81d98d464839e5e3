"""A slim model file for inference: weights plus everything needed to feed them, nothing else.

A training checkpoint carries the optimizer state (two moments per weight for AdamW), RNG states and
history, ~3x the weights. ``best_model.pth`` only needs what turns a tile into a map: the weights,
the model config, the band lists and band statistics (the exact normalisation of training), the
class names and ignore value, the date encoding, patch size and ``max_t`` (the same windows and
padding as training) and the code version. Everything is a tensor, number, string, list or dict,
so it loads with ``torch.load(weights_only=True)``.

:func:`load_exported` reads either kind of file, so a map can be made from a trial's ``best.pt``
as well; both give the same :class:`ModelFile` and therefore the same predictions. Reading (and the
format, both directions) lives here, below training, so a map never loads the trainer; the act of
exporting a trial's checkpoint is :func:`dualseg.train.export.export_model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dualseg import code_version
from dualseg.config import Config, ModelConfig, from_dict, to_dict
from dualseg.errors import InputError, TrainingError
from dualseg.infer.checkpoint import CheckpointError, load_model_state, read_verified
from dualseg.infer.window import InputSpec

FORMAT = "dualseg-model"
VERSION = 1
STREAMS = ("s1", "s2")


@dataclass
class ModelFile:
    """What inference needs, from a slim export or a full training checkpoint."""

    weights: dict[str, torch.Tensor]
    model: ModelConfig
    s1_bands: list[str]
    s2_bands: list[str]
    mean: dict[str, np.ndarray]  # float64 per band, as computed over the train tiles
    std: dict[str, np.ndarray]
    class_names: list[str]
    ignore_index: int
    date_encoding: str = "doy"
    patch_size: int = 32
    max_t: int | None = None
    amp: bool = True
    code_version: str = ""
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def build(self, device: str | torch.device = "cpu") -> nn.Module:
        """The model with its weights, in eval mode on ``device`` (channels_last on CUDA: same values, faster)."""
        from dualseg.model import build_model
        from dualseg.model.layout import resolve_memory_format, set_memory_format

        net = build_model(self.model, len(self.s1_bands), len(self.s2_bands), self.num_classes)
        load_model_state(net, self.weights, source=f"model {self.source}")
        net = net.to(device).eval()
        return set_memory_format(net, resolve_memory_format("auto", device))  # NHWC on CUDA, as in training


def from_checkpoint(state: dict[str, Any], cfg: Config | None, source: str) -> ModelFile:
    """What inference needs of a training state; ``cfg`` defaults to the config stored in it."""
    if cfg is None:
        try:
            cfg = from_dict(Config, state["config"])
        except (InputError, KeyError, TypeError) as exc:
            raise TrainingError(f"checkpoint {source}: stored config missing or no longer valid ({exc})") from None
    meta = state.get("data") or {}
    stats = meta.get("stats") or {}
    if not stats.get("mean") or not meta.get("class_names"):
        raise TrainingError(f"checkpoint {source}: no band statistics / class names stored (too old a checkpoint?)")
    return ModelFile(
        weights={k: v.detach().cpu() for k, v in state["model"].items()},
        model=cfg.model,
        s1_bands=list(cfg.data.s1_bands),
        s2_bands=list(cfg.data.s2_bands),
        mean={k: np.asarray(stats["mean"][k], dtype=np.float64) for k in STREAMS},
        std={k: np.asarray(stats["std"][k], dtype=np.float64) for k in STREAMS},
        class_names=[str(c) for c in meta["class_names"]],
        ignore_index=int(meta.get("ignore_index", 255)),
        date_encoding=cfg.data.date_encoding,
        patch_size=int(cfg.data.patch_size),
        max_t=cfg.data.max_t,
        amp=bool(cfg.train.amp),
        code_version=code_version(),
        source=source,
    )


def to_file(m: ModelFile) -> dict[str, Any]:
    """The slim file's content (tensors, numbers, strings, lists, dicts: ``weights_only`` loadable)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": m.weights,
        "model_config": to_dict(m.model),
        "bands": {"s1": list(m.s1_bands), "s2": list(m.s2_bands)},
        "stats": {"mean": {k: torch.from_numpy(m.mean[k]) for k in STREAMS},
                  "std": {k: torch.from_numpy(m.std[k]) for k in STREAMS}},
        "class_names": list(m.class_names),
        "ignore_index": m.ignore_index,
        "date_encoding": m.date_encoding,
        "patch_size": m.patch_size,
        "max_t": m.max_t,
        "amp": m.amp,
        "code_version": m.code_version,
    }


def load_exported(path: str | Path) -> ModelFile:
    """Read a slim model (or a full training checkpoint) with ``weights_only=True``."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--model: file not found: {p}")
    try:
        raw = read_verified(p)  # a damaged best.pt fails its CRC instead of mapping with wrong weights
    except CheckpointError as exc:
        raise InputError(f"--model: cannot load {p}: {exc.reason}") from None
    if not isinstance(raw, dict) or "model" not in raw:
        raise InputError(f"--model: {p} is neither a dualseg model nor a training checkpoint")
    if raw.get("format") != FORMAT:
        return from_checkpoint(raw, None, str(p))
    if int(raw.get("version", 0)) > VERSION:
        raise InputError(f"--model: {p} has format version {raw['version']}, newer than this dualseg reads ({VERSION})")
    try:
        return ModelFile(
            weights=raw["model"],
            model=from_dict(ModelConfig, raw["model_config"]),
            s1_bands=list(raw["bands"]["s1"]),
            s2_bands=list(raw["bands"]["s2"]),
            mean={k: raw["stats"]["mean"][k].numpy() for k in STREAMS},
            std={k: raw["stats"]["std"][k].numpy() for k in STREAMS},
            class_names=list(raw["class_names"]),
            ignore_index=int(raw["ignore_index"]),
            date_encoding=str(raw["date_encoding"]),
            patch_size=int(raw["patch_size"]),
            max_t=raw.get("max_t"),
            amp=bool(raw.get("amp", True)),
            code_version=str(raw.get("code_version", "")),
            source=str(p),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"--model: {p} is a damaged dualseg model (missing {exc})") from None


def weight_bytes(m: ModelFile) -> int:
    """Bytes of the weights alone (the bound the slim file is held to)."""
    return sum(t.numel() * t.element_size() for t in m.weights.values())


def spec_of(model: ModelFile) -> InputSpec:
    """How tiles become this model's input: its training normalisation, date encoding and ``max_t``."""
    return InputSpec(mean=model.mean, std=model.std, date_encoding=model.date_encoding, max_t=model.max_t,
                     streams=model.model.streams)
