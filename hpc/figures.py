"""The report's own matplotlib figures: learning curves, confusion matrix, per-class scores, tile panels.

Each function returns a Figure (the caller saves and closes it). Colours of classes are the maps'
colour table (:func:`dualseg.predict.class_colours`), so a report panel and a GeoTIFF opened in QGIS
agree.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")  # headless: jobs and login nodes have no display

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from dualseg.predict import class_colours

F = TypeVar("F", bound=Callable[..., Figure])


def plain(fn: F) -> F:
    """Draw in matplotlib's default style (Optuna's plots switch the global style to ggplot)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with plt.style.context("default"):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]  # same signature, wrapped


@plain
def learning_curves(curves: dict[int, list[dict[str, Any]]], values: dict[int, float | None]) -> Figure:
    """Train/val loss and val mIoU per epoch of a few trials (``curves[n]`` = metrics.jsonl rows)."""
    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (n, rows) in enumerate(curves.items()):
        colour = f"C{i}"
        ep = [r.get("epoch", j) for j, r in enumerate(rows)]
        label = f"trial {n}" + (f" ({values[n]:.4g})" if values.get(n) is not None else "")
        ax_loss.plot(ep, [r.get("train_loss", np.nan) for r in rows], "--", color=colour, label=f"{label} train")
        ax_loss.plot(ep, [r.get("val_loss", np.nan) for r in rows], "-o", color=colour, ms=3, label=f"{label} val")
        ax_miou.plot(ep, [r.get("val_miou", np.nan) for r in rows], "-o", color=colour, ms=3, label=label)
    ax_loss.set(title="loss (dashed: train, solid: val)", xlabel="epoch", ylabel="weighted cross-entropy")
    ax_miou.set(title="validation mIoU", xlabel="epoch", ylabel="mIoU")
    for ax in (ax_loss, ax_miou):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.legend(fontsize=7)
    ax_miou.legend(fontsize=7)
    fig.tight_layout()
    return fig


@plain
def confusion(cm: np.ndarray, names: list[str]) -> Figure:
    """Row-normalised test confusion matrix (rows: true class), with the row share in each cell."""
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    k = len(names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * k, 0.8 + 0.6 * k))
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{rows[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if rows[i, j] > 0.6 else "black")
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set(xlabel="predicted", ylabel="true", title="test confusion matrix (row-normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def majority_per_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class IoU and F1 of always predicting the most frequent true class."""
    cm = np.asarray(cm, dtype=np.float64)
    support, total = cm.sum(axis=1), cm.sum()
    k = int(support.argmax())
    iou, f1 = np.zeros(len(support)), np.zeros(len(support))
    if total > 0:
        iou[k] = support[k] / total
        f1[k] = 2 * support[k] / (support[k] + total)
    return iou, f1


@plain
def per_class(test: dict[str, Any]) -> Figure:
    """Per-class IoU and F1 of the model next to the majority baseline, with both mIoUs."""
    names = list(test["class_names"])
    cm = np.asarray(test["confusion_matrix"])
    base_iou, base_f1 = majority_per_class(cm)
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, base in ((axes[0], "iou", base_iou), (axes[1], "f1", base_f1)):
        model = np.array([np.nan if v is None else v for v in test[key]], dtype=np.float64)
        ax.bar(x - 0.2, model, 0.4, label="model", color="tab:blue")
        ax.bar(x + 0.2, base, 0.4, label="majority baseline", color="tab:gray")
        ax.set_xticks(x, names, rotation=45, ha="right")
        ax.set(title=f"test {key.upper()} per class", ylim=(0, 1))
    axes[0].axhline(test["miou"], color="tab:blue", ls="--", lw=1, label=f"model mIoU {test['miou']:.3f}")
    base_miou = (test.get("majority_baseline") or {}).get("miou")
    if base_miou is not None:
        axes[0].axhline(base_miou, color="tab:gray", ls="--", lw=1, label=f"baseline mIoU {base_miou:.3f}")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _stretch(rgb: np.ndarray) -> np.ndarray:
    """2-98 % percentile stretch per channel to [0, 1]; NaN -> 0."""
    out = np.zeros_like(rgb, dtype=np.float64)
    for c in range(rgb.shape[-1]):
        ch = rgb[..., c]
        ok = np.isfinite(ch)
        if ok.any():
            lo, hi = np.percentile(ch[ok], [2, 98])
            out[..., c] = np.clip((np.where(ok, ch, lo) - lo) / max(hi - lo, 1e-6), 0, 1)
    return out


def clearest_date(s2: np.ndarray, cloud: np.ndarray | None) -> int:
    """Index of the S2 date with the most valid, cloud-free pixels ((C,T,H,W) input)."""
    valid = np.isfinite(s2).all(axis=0)
    if cloud is not None:
        valid &= ~cloud
    return int(valid.reshape(valid.shape[0], -1).sum(axis=1).argmax())


def s2_true_colour(s2: np.ndarray, cloud: np.ndarray | None, bands: list[str]) -> tuple[np.ndarray, int]:
    """RGB of the clearest date (B04/B03/B02 when present, else the first three bands)."""
    t = clearest_date(s2, cloud)
    idx = [bands.index(b) for b in ("B04", "B03", "B02")] if {"B04", "B03", "B02"} <= set(bands) else [0, 1, 2]
    return _stretch(np.stack([s2[i, t] for i in idx], axis=-1)), t


def s1_composite(s1: np.ndarray, bands: list[str]) -> np.ndarray:
    """Temporal median VV (red), VH (green), VV-VH (blue) in dB."""
    vv = np.nanmedian(s1[bands.index("VV") if "VV" in bands else 0], axis=0)
    vh = np.nanmedian(s1[bands.index("VH") if "VH" in bands else min(1, len(bands) - 1)], axis=0)
    return _stretch(np.stack([vv, vh, vv - vh], axis=-1))


@plain
def tile_panels(panels: list[dict[str, Any]], names: list[str], ignore: int, models: int = 1) -> Figure:
    """One row per tile: S2 true colour, S1 VV/VH, labels, prediction, its uncertainty, error map.

    ``panels[i]``: ``name``, ``s2_rgb``, ``s2_date``, ``s1_rgb``, ``labels`` (or None), ``classes``,
    ``uncertainty`` (normalised entropy of the (mean) probability, NaN without input). ``models``:
    how many models the prediction averages (named in the titles).
    """
    k = len(names)
    cmap = ListedColormap([np.array(c) / 255 for c in class_colours(k)] + [(1, 1, 1)])

    def show_classes(ax: Axes, m: np.ndarray) -> None:
        ax.imshow(np.where(m == ignore, k, m), cmap=cmap, vmin=-0.5, vmax=k + 0.5, interpolation="nearest")

    fig, axes = plt.subplots(len(panels), 6, figsize=(18, 3.1 * len(panels) + 0.8), squeeze=False)
    what = f"ensemble of {models}" if models > 1 else "model"
    for row, p in zip(axes, panels):
        row[0].imshow(p["s2_rgb"])
        row[0].set_title(f"{p['name']}: S2 true colour, {p['s2_date']}", fontsize=8)
        row[1].imshow(p["s1_rgb"])
        row[1].set_title("S1 median VV / VH / VV-VH", fontsize=8)
        lab, pred = p.get("labels"), p["classes"]
        if lab is not None:
            show_classes(row[2], lab)
            err = np.full((*pred.shape, 3), 0.85)
            scored = (lab != ignore) & (pred != ignore)
            err[scored & (lab == pred)] = (0.2, 0.65, 0.3)
            err[scored & (lab != pred)] = (0.85, 0.15, 0.15)
            row[5].imshow(err, interpolation="nearest")
            acc = float((lab == pred)[scored].mean()) if scored.any() else float("nan")
            row[5].set_title(f"error map (green right, red wrong): {acc:.1%}", fontsize=8)
        row[2].set_title("labels", fontsize=8)
        show_classes(row[3], pred)
        row[3].set_title(f"prediction ({what})", fontsize=8)
        unsure = p.get("uncertainty")
        if unsure is not None:
            im = row[4].imshow(np.ma.masked_invalid(unsure), cmap="magma", vmin=0, vmax=1, interpolation="nearest")
            fig.colorbar(im, ax=row[4], fraction=0.046)
            row[4].set_title(f"uncertainty (entropy, mean {np.nanmean(unsure):.2f})", fontsize=8)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    handles = [Patch(color=(c[0] / 255, c[1] / 255, c[2] / 255), label=n) for c, n in zip(class_colours(k), names)]
    handles.append(Patch(facecolor="white", edgecolor="black", label="ignore / no data"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


@plain
def per_class_spread(names: list[str], groups: list[tuple[str | None, int, np.ndarray, np.ndarray]],
                     ensemble: list[float | None] | None, key: str = "IoU") -> Figure:
    """Per-class test score: for each configuration (label, members, mean, std) its mean over its final
    members with ± 1 std error bars, and the ensemble's."""
    x = np.arange(len(names))
    bars = len(groups) + (ensemble is not None and len(ensemble) == len(names))
    width = 0.8 / max(bars, 1)
    fig, ax = plt.subplots(figsize=(max(6.0, (0.4 + 0.25 * bars) * len(names) + 2), 4))
    for i, (label, members, mean, std) in enumerate(groups):
        name = f"{label}: " if label else ""
        ax.bar(x - 0.4 + width * (i + 0.5), mean, width, yerr=std, capsize=3, color=f"C{i}",
               label=f"{name}mean of {members} member(s) ± std")
    if bars > len(groups):
        ax.bar(x - 0.4 + width * (bars - 0.5), [np.nan if v is None else v for v in ensemble or []], width,
               color="tab:orange" if len(groups) == 1 else "black", label="ensemble")
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set(title=f"test {key} per class over the final runs", ylim=(0, 1), ylabel=key)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


@plain
def members_vs_ensemble(members: list[tuple[str, dict[str, Any]]], ensemble: dict[str, Any]) -> Figure:
    """Test OA and mIoU of every final member (mean ± std shaded) next to the ensemble's."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key in zip(axes, ("oa", "miou")):
        vals = np.array([np.nan if m.get(key) is None else m[key] for _, m in members], dtype=np.float64)
        x = np.arange(len(members))
        ax.plot(x, vals, "o", color="tab:blue", label="members")
        if np.isfinite(vals).any():
            mu, sd = np.nanmean(vals), (np.nanstd(vals, ddof=1) if np.isfinite(vals).sum() > 1 else 0.0)
            ax.axhspan(mu - sd, mu + sd, color="tab:blue", alpha=0.15, label=f"mean ± std {mu:.3f} ± {sd:.3f}")
            ax.axhline(mu, color="tab:blue", lw=1)
        if isinstance(ensemble.get(key), (int, float)):
            ax.axhline(ensemble[key], color="tab:orange", ls="--", label=f"ensemble {ensemble[key]:.3f}")
        ax.set_xticks(x, [n for n, _ in members], rotation=45, ha="right", fontsize=7)
        ax.set(title=f"test {key.upper() if key == 'oa' else 'mIoU'}: members vs ensemble", ylabel=key)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
