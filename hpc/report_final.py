"""The ``final`` section of ``results.json`` as the report reads it: :class:`hpc.results.FinalSection`
(its one writer) as JSON, read leniently into what the report draws::

    "final": {"members": [{"member", "seed", "fold", "checkpoint", "test": {"oa", "miou", "iou": [..], ..}}],
              "summary": {"metrics": {"miou": {"mean", "std", "low", "high", "n"}, ..}, "ensemble": {..} | null},
              "folds":   {"<fold>": <summary of that fold>},
              "configurations": {"<parent trial>": <summary of its members>}}

Anything missing is simply not drawn (an old ``results.json`` has no ``final`` at all; a final study
that failed to evaluate has only ``error``). Per-class spreads and the fold table are computed here
from the members; with several configurations (``top_k > 1``) each gets its own mIoU row, best first.
The ensemble tile panels use the members' checkpoints (not across folds: a fold's
test tiles are other folds' training tiles).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Member:
    """One final run: its seed, its fold (None without folds), its test metrics and its configuration
    (the search trial whose parameters it trains; None in a results.json that does not say)."""

    seed: int | None
    fold: int | str | None
    metrics: dict[str, Any]
    config: str | None = None


@dataclass
class Spread:
    """A metric over the members: mean, standard deviation and a 95 % interval (None if not given)."""

    mean: float
    std: float
    ci95: tuple[float, float] | None = None


@dataclass
class Final:
    """What the report uses of ``results["final"]``."""

    members: list[Member]
    summary: dict[str, Spread] = field(default_factory=dict)
    ensemble: dict[str, Any] = field(default_factory=dict)
    folds: dict[str, Any] = field(default_factory=dict)
    models: list[Path] = field(default_factory=list)
    configurations: dict[str, Spread] = field(default_factory=dict)  # parent trial -> its members' test mIoU

    @property
    def folded(self) -> bool:
        return any(m.fold is not None for m in self.members)

    def per_class(self, key: str = "iou", config: str | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """(mean, std) per class of ``key`` over the members (of one configuration when given; std 0 for
        one member, NaN for a class only one of several members scored), or None."""
        rows = [m.metrics.get(key) for m in self.members if config is None or m.config == config]
        if not rows or any(not isinstance(r, list) for r in rows) or len({len(r) for r in rows}) != 1:  # type: ignore[arg-type]
            return None
        a = np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=np.float64)  # type: ignore[union-attr]
        n = np.isfinite(a).sum(axis=0)
        mean = np.where(n > 0, np.nansum(a, axis=0) / np.maximum(n, 1), np.nan)
        if len(a) == 1:
            return mean, np.zeros(a.shape[1])
        var = np.nansum((a - mean) ** 2, axis=0) / np.maximum(n - 1, 1)
        return mean, np.where(n > 1, np.sqrt(var), np.nan)  # a class scored by one member only has no spread

    def per_class_groups(self, key: str = "iou") -> list[tuple[str | None, int, np.ndarray, np.ndarray]]:
        """``(configuration, members, mean, std)`` per configuration, best first; one group (None) when
        the members share one. An error bar over several recipes would show their difference as noise."""
        named = {m.config for m in self.members if m.config is not None}
        order: list[str | None] = [*self.configurations, *sorted(named - set(self.configurations))]
        groups = order if len(order) > 1 else [None]
        out = []
        for g in groups:
            if (pc := self.per_class(key, g)) is not None:
                out.append((g, sum(g is None or m.config == g for m in self.members), pc[0], pc[1]))
        return out

    def spread(self, metric: str) -> Spread | None:
        """``summary[metric]`` when given, else mean/std over the members' values."""
        if metric in self.summary:
            return self.summary[metric]
        vals = [_num(m.metrics.get(metric)) for m in self.members]
        ok = [v for v in vals if v is not None]
        if not ok:
            return None
        return Spread(float(np.mean(ok)), float(np.std(ok, ddof=1)) if len(ok) > 1 else 0.0)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _mapping(raw: Any) -> dict[str, Any]:
    return dict(raw) if isinstance(raw, dict) else {}


def _spread(raw: Any) -> Spread | None:
    """A :class:`dualseg.train.summary.Spread` as JSON (mean, std, low, high, n)."""
    if not isinstance(raw, dict) or _num(raw.get("mean")) is None:
        return None
    low, high = _num(raw.get("low")), _num(raw.get("high"))
    return Spread(float(raw["mean"]), _num(raw.get("std")) or 0.0,
                  (low, high) if low is not None and high is not None else None)


def read_final(results: dict[str, Any] | None) -> Final | None:
    """The typed ``final`` section, or None when there is none (or it has no member with metrics)."""
    raw = (results or {}).get("final")
    if not isinstance(raw, dict):
        return None
    rows = [m for m in raw.get("members") or [] if isinstance(m, dict) and isinstance(m.get("test"), dict)]
    members = [Member(m.get("seed"), m.get("fold"), dict(m["test"]),
                      str(m["parent_trial"]) if m.get("parent_trial") is not None else None) for m in rows]
    if not members:
        return None
    overall = _mapping(raw.get("summary"))
    summary = {k: s for k, v in _mapping(overall.get("metrics")).items() if (s := _spread(v)) is not None}
    ens = overall.get("ensemble")
    folds = _mapping(raw.get("folds"))
    models = [] if folds else [Path(m["checkpoint"]) for m in rows if isinstance(m.get("checkpoint"), str)]
    # best configuration first (results.json's keys are sorted as text): by the rank its members carry
    rank = {str(m.get("parent_trial")): int(m["rank"]) for m in rows if isinstance(m.get("rank"), int)}
    configs = {k: s for k, v in sorted(_mapping(raw.get("configurations")).items(), key=lambda kv: rank.get(kv[0], 0))
               if (s := _spread(_mapping(_mapping(v).get("metrics")).get("miou"))) is not None}
    return Final(members, summary, dict(ens) if isinstance(ens, dict) else {}, dict(folds), models, configs)


def summary_rows(final: Final) -> list[tuple[str, str]]:
    """Rows for the report's summary table: members, mean ± std [interval], the ensemble."""
    rows = [("final runs", f"{len(final.members)} member(s)"
             + (f" over {len({m.fold for m in final.members})} fold(s)" if final.folded else ""))]
    for metric in ("oa", "miou"):
        s = final.spread(metric)
        if s is not None:
            ci = f" [95 % {s.ci95[0]:.4f}, {s.ci95[1]:.4f}]" if s.ci95 else ""
            rows.append((f"final test {metric} (mean ± std)", f"{s.mean:.4f} ± {s.std:.4f}{ci}"))
    if len(final.configurations) > 1:  # top_k > 1: the overall spread mixes recipes; each one's own too
        for trial, s in final.configurations.items():
            rows.append((f"final test miou, configuration of trial {trial} (mean ± std)",
                         f"{s.mean:.4f} ± {s.std:.4f}"))
    for metric in ("oa", "miou"):
        if (v := _num(final.ensemble.get(metric))) is not None:
            rows.append((f"ensemble test {metric}", f"{v:.4f}"))
    return rows


def fold_table(final: Final) -> str:
    """HTML table per fold (members, mean test OA / mIoU), computed from the members; "" without folds."""
    if not final.folded:
        return ""
    by: dict[str, list[Member]] = {}
    for m in final.members:
        by.setdefault(str(m.fold), []).append(m)
    rows = []
    for fold in sorted(by, key=lambda f: (len(f), f)):
        cells = [fold, str(len(by[fold]))]
        for metric in ("oa", "miou"):
            vals = [v for m in by[fold] if (v := _num(m.metrics.get(metric))) is not None]
            cells.append(f"{np.mean(vals):.4f}" if vals else "–")
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    head = "<tr><th>fold</th><th>members</th><th>test OA</th><th>test mIoU</th></tr>"
    return f'<h2>folds</h2>\n<table class="folds">{head}{"".join(rows)}</table>'
