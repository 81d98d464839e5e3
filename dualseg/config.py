"""Typed experiment configuration loaded from YAML with unknown keys rejected.

A config file has the sections ``data``, ``model`` and ``train`` (owned by this library) and an
optional ``hpc`` section that the orchestration layer validates itself (this library never knows
about SLURM). :func:`dualseg.strict.from_dict` is the one strict dataclass builder used for every
section, so a typo such as ``train.learning_rate`` fails loudly instead of silently using a default. Options
with a fixed set of values are ``Literal`` types: the loader checks them once, naming the choices,
so no module below repeats the check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dualseg.errors import InputError
from dualseg.strict import from_dict as from_dict
from dualseg.strict import to_dict as to_dict

S1_BANDS = ["VV", "VH"]
S2_BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]


MemoryFormat = Literal["auto", "contiguous", "channels_last"]  # train.memory_format
Monitor = Literal["val_loss", "val_miou", "val_oa"]  # what best.pt, early stopping and a search rank on
# train.monitor -> direction (loss goes down, accuracy-like metrics go up)
MONITOR_MODES: dict[str, Literal["min", "max"]] = {"val_loss": "min", "val_miou": "max", "val_oa": "max"}

@dataclass
class SyntheticConfig:
    """Parameters of the generated benchmark data (used when ``data.root`` holds no tiles)."""

    tiles: int = 12
    size: int = 64
    classes: int = 6
    cloud_fraction: float = 0.4
    seed: int = 0
    # added by the data layer (dualseg/data/synthetic.py):
    cloud_mask_miss: float = 0.15  # fraction of cloudy S2 dates whose clouds are not flagged
    s1_dates: int = 30  # mean acquisitions per tile (each tile draws 75-125 % of it)
    s2_dates: int = 24
    parcel_size: int = 10  # mean parcel diameter in pixels
    speckle_looks: float = 4.0  # S1 speckle: gamma(L, 1/L) multiplicative noise
    background_fraction: float = 0.25  # share of parcels that are background (class 0)
    folds: int = 0  # n >= 3: folds.json with the tiles in n contiguous folds (hpc.final.folds: all); 0: none


@dataclass
class DataConfig:
    """Where the tiles are and how patches are cut from them."""

    root: str = "data/synthetic"
    splits: str | None = None  # JSON {"train": [...], "val": [...], "test": [...]}; default <root>/splits.json
    train_tiles: list[str] | None = None  # explicit lists override the splits file
    val_tiles: list[str] | None = None
    test_tiles: list[str] | None = None
    patch_size: int = 32
    samples_per_tile: int = 8  # random training patches per tile per epoch
    max_t: int | None = None  # pad every batch to this T (None: batch maximum)
    # pad each batch's T up to a multiple of this (None: the batch maximum): a few shapes instead of one
    # per batch maximum, so the CUDA allocator reuses its blocks; data.max_t pads all to one size
    time_buckets: int | None = None
    s1_bands: list[str] = field(default_factory=lambda: list(S1_BANDS))
    s2_bands: list[str] = field(default_factory=lambda: list(S2_BANDS))
    augment: bool = True
    # DataLoader worker processes per loader; "auto": the CPUs this rank may run on, less one for the rank
    # itself (dualseg.data.build.loader_workers reads them where it runs)
    num_workers: int | Literal["auto"] = "auto"
    class_weighting: Literal["inverse", "median", "none"] = "median"
    synthetic: SyntheticConfig | None = None
    # added by the data layer (dualseg/data/):
    seed: int = 0  # training patch positions/augmentations derive from (seed, epoch, index)
    cache_mb: float = 1024  # per-process cache of normalised tiles (0 = read every patch from zarr)
    # per-process buffer of tiles streamed tile-major when they do not all fit the cache (0 = off)
    buffer_mb: float = 512
    stats_backend: Literal["auto", "numpy", "cupy"] = "auto"  # band statistics on numpy, cupy (GPU) or auto
    # s*_doy: "doy" day of year, or "days" since 1 Jan of the tile's first year (multi-year series)
    date_encoding: Literal["doy", "days"] = "doy"
    # band statistics cache (<root>/.dualseg-stats, keyed by the train tiles' contents and the bands):
    # "read" uses a valid entry or computes and writes one, "rebuild" recomputes and overwrites, "off" neither
    stats_cache: Literal["read", "rebuild", "off"] = "read"

    def __post_init__(self) -> None:
        _at_least("data", {"patch_size": (self.patch_size, 1), "samples_per_tile": (self.samples_per_tile, 1),
                           "max_t": (self.max_t, 1), "time_buckets": (self.time_buckets, 1),
                           "num_workers": (None if self.num_workers == "auto" else self.num_workers, 0),
                           "cache_mb": (self.cache_mb, 0), "buffer_mb": (self.buffer_mb, 0)})
        if self.time_buckets is not None and self.max_t is not None:
            raise InputError("config: data.time_buckets and data.max_t both set: max_t pads every batch to one "
                             "length already; set one of them")


@dataclass
class ModelConfig:
    """DualStreamUNet3D hyperparameters; levels/base_width/dropout/temporal/fusion are searched."""

    levels: int = 3
    base_width: int = 32
    dropout: float = 0.1
    temporal: Literal["ltae", "mean"] = "ltae"
    fusion: Literal["concat", "sum", "early"] = "concat"
    streams: Literal["both", "s1", "s2"] = "both"
    n_heads: int = 4
    d_k: int = 8
    temporal_kernel: int = 1  # encoder conv kernel along time: 1 = per-date (U-TAE), 3 = UNet3D-like


@dataclass
class TrainConfig:
    """Optimisation, early stopping and where checkpoints go."""

    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_epochs: int = 1
    grad_clip: float = 1.0
    patience: int = 5
    seed: int = 0
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    # layout of the 2-D convolutions' weights and frames (dualseg.model.layout): "auto" = channels_last on CUDA
    # (NHWC is what bf16 tensor-core convolutions run in natively), contiguous on CPU; layout never changes results
    memory_format: MemoryFormat = "auto"
    scratch: str | None = None  # default: $SCRATCH, else ./runs
    run_name: str = "run"
    log_every: int = 10
    monitor: Monitor = "val_loss"  # best.pt + early stopping (loss min, others max)
    # False: no validation split (hpc.final's refit on train+val): exactly ``epochs`` epochs, no early stopping,
    # no val metrics; each epoch's model is best.pt, so the last epoch's is the run's model
    validate: bool = True
    tensorboard: bool = True  # event files in the run folder when the tensorboard extra is installed
    hparams: dict[str, Any] = field(default_factory=dict)  # shown in TensorBoard's HParams (a trial's params)

    def __post_init__(self) -> None:
        _at_least("train", {"epochs": (self.epochs, 1), "batch_size": (self.batch_size, 1),
                            "warmup_epochs": (self.warmup_epochs, 0), "grad_clip": (self.grad_clip, 0),
                            "patience": (self.patience, 0), "log_every": (self.log_every, 1),
                            "weight_decay": (self.weight_decay, 0)})
        if not self.lr > 0:
            raise InputError(f"config: train.lr: must be > 0 (got {self.lr!r})")


@dataclass
class Config:
    """A whole experiment. ``hpc`` is carried opaquely and validated by the ``hpc`` package."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    hpc: dict[str, Any] = field(default_factory=dict)


# How a run executes, not what it computes: the only settings a relaunch of a study may change freely.
RUNTIME_ONLY = frozenset({"data.num_workers", "data.cache_mb", "data.buffer_mb", "data.stats_backend",
                          "data.stats_cache", "train.device", "train.memory_format", "train.scratch",
                          "train.run_name", "train.log_every", "train.tensorboard", "train.hparams"})


def _at_least(section: str, values: dict[str, tuple[float | None, float]]) -> None:
    """One line for the first value below its minimum (None: unset, allowed). Checked where the field is
    declared, so a bad value fails when the config is loaded, not in the 10th trial of a search."""
    for name, (value, low) in values.items():
        if value is not None and not value >= low:
            raise InputError(f"config: {section}.{name}: must be >= {low:g} (got {value!r})")


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Return a copy of ``cfg`` with dotted keys (``"train.lr": 1e-3``) replaced, type-checked."""
    raw = to_dict(cfg)
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise InputError(f"config: unknown key {dotted}")
            node = node[p]
        if leaf not in node:
            raise InputError(f"config: unknown key {dotted}")
        node[leaf] = value
    return from_dict(Config, raw)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load a YAML config (``None``: all defaults), then apply dotted ``overrides``.

    A file that is empty or not a mapping is refused: it never stands for the defaults."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"config: file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise InputError(f"config: {p}: not valid YAML ({str(exc).splitlines()[0]})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"config: {p}: unreadable ({exc})") from None
        if loaded is None:  # an empty file would silently mean "all defaults": a wrong path, a lost file
            raise InputError(f"config: {p} is empty (leave out --config for all defaults)")
        if not isinstance(loaded, dict):
            raise InputError(f"config: {p}: top level must be a mapping of sections, got {type(loaded).__name__}")
        raw = loaded
    cfg = from_dict(Config, raw)
    return apply_overrides(cfg, overrides) if overrides else cfg
