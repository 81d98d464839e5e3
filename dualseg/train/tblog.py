"""TensorBoard event files of a run, when the ``tensorboard`` extra is installed; nothing otherwise.

Fed by the trainer's epoch record (the same one ``metrics.jsonl`` gets, on rank 0 only), written
into ``<run folder>/tensorboard/``, so ``tensorboard --logdir <scratch>/<study>`` lists every trial
(and final run) by its folder name and its HParams tab compares them. The hyperparameters are
``train.hparams`` (the HPC worker puts a trial's sampled parameters there, through the config
like any override), else the scalar options of the ``model`` and ``train`` sections.

Optional on purpose: without the package (``torch.utils.tensorboard`` imports it) or with
``train.tensorboard: false`` nothing is imported or written, and a failing write (a full disk)
turns the log off with one warning instead of costing the run: ``metrics.jsonl`` is the record.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from dualseg.config import Config

log = logging.getLogger(__name__)

FOLDER = "tensorboard"  # under the run folder: the event files of this run

SCALARS = ("train_loss", "val_loss", "val_oa", "val_miou", "lr", "train_time_s", "val_time_s")
METRICS = ("val_loss", "val_oa", "val_miou")  # the HParams tab's metric columns (scalar tags of the run)


def available() -> bool:
    """Whether ``torch.utils.tensorboard`` can be imported (the ``tensorboard`` extra)."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def hparams_of(cfg: Config) -> dict[str, bool | int | float | str]:
    """The run's hyperparameters as HParams accepts them (other values as their text)."""
    raw: dict[str, Any] = dict(cfg.train.hparams)
    if not raw:
        for section in ("model", "train"):
            for key, value in vars(getattr(cfg, section)).items():
                if isinstance(value, (bool, int, float, str)) and key not in ("scratch", "run_name", "device"):
                    raw[f"{section}.{key}"] = value
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in sorted(raw.items())}


class EpochBoard:
    """One run's event writer (rank 0); :meth:`epoch` per finished epoch, :meth:`close` at the end."""

    def __init__(self, cfg: Config, run_dir: Path, is_main: bool) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        self.writer: Any = None
        self.on = bool(cfg.train.tensorboard) and is_main and available()

    def _open(self) -> Any:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        writer = SummaryWriter(log_dir=str(self.run_dir / FOLDER))
        events = writer.file_writer  # this run's event file (add_hparams would open a sub-run folder)
        assert events is not None  # made by SummaryWriter.__init__
        for summary in hparams(hparams_of(self.cfg), {m: math.nan for m in METRICS}):
            events.add_summary(summary)  # the tab's columns; their values: this run's scalars
        return writer

    def epoch(self, record: dict[str, Any], class_names: list[str] | None = None) -> None:
        """Write one epoch's scalars (step = epoch) and flush: a killed job keeps what it logged."""
        if not self.on:
            return
        try:
            if self.writer is None:
                self.writer = self._open()
            step = int(record["epoch"])
            for key in SCALARS:
                value = record.get(key)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, float(value), step)
            names = class_names or []
            for i, v in enumerate(record.get("val_iou") or []):
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(f"val_iou/{names[i] if i < len(names) else i}", float(v), step)
            self.writer.flush()
        except OSError as exc:
            log.warning("tensorboard: stopped logging to %s (%s); metrics.jsonl is unaffected", self.run_dir, exc)
            self.close()
            self.on = False

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError:
                pass
            self.writer = None
