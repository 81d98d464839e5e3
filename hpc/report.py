"""A study report: ``python hpc/report.py --study NAME [--storage URL]`` -> ``<results>/report/index.html``.

PNG figures and one HTML page that shows them: Optuna's matplotlib visualisations (optimisation
history, parameter importances, parallel coordinates, intermediate values), learning curves of the
best trials (from their ``metrics.jsonl``), and, once the evaluation job wrote ``results.json`` and
``best_model.pth``, the test confusion matrix, per-class IoU/F1 against the majority baseline and
panels of a few test tiles (S2 true colour, S1 VV/VH, labels, prediction, its uncertainty, error
map). With final runs (``results.json``'s ``final``, read by :mod:`hpc.report_final`): per-class IoU
with error bars over the members, members vs ensemble and, with folds, a fold table. Figures and
summary name the study's objective (e.g. ``val_loss``), not Optuna's "Objective Value".

Without ``--storage`` (and ``$DUALSEG_STORAGE``) the local default study is found at
``<scratch>/<study>/study.db``, scratch being ``--scratch``, ``$SCRATCH`` or ``./runs``, as the
launcher's local mode writes it.
"""

from __future__ import annotations

if not __package__:  # run as a file: re-run as `python -m hpc.<name>` (hpc/_script.py)
    import os
    import runpy

    runpy.run_path(os.path.join(os.path.dirname(__file__), "_script.py"))

import argparse
import html
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from matplotlib.figure import Figure

from dualseg.errors import DualsegError, report_error
from dualseg.io import atomic_write_bytes, atomic_write_text
from dualseg.train.rundir import METRICS
from hpc import figures
from hpc.paths import resolve_scratch, study_scratch, trial_dir
from hpc.report_final import Final, fold_table, read_final, summary_rows
from hpc.storage import STORAGE_ENV, StorageURL, study_storage
from hpc.study import Counts, best, open_study, ranked

DEFAULT_STUDY = "dualseg-default"
OPTUNA_PLOTS = {
    "optimization_history": "optimisation history",
    "param_importances": "hyperparameter importances (fANOVA)",
    "parallel_coordinate": "parallel coordinates",
    "intermediate_values": "validation value per epoch of every trial (pruning)",
}


def load_study(storage: StorageURL | str | None, name: str,
               scratch: str | Path | None) -> tuple[optuna.Study, Path, str]:
    """The study (explicit storage, ``$DUALSEG_STORAGE``, else the local default SQLite file), the
    scratch root and the objective the study ranks trials on (its record's, e.g. ``val_loss``)."""
    root = resolve_scratch(str(scratch) if scratch else None)
    url = storage if isinstance(storage, StorageURL) else study_storage(storage, root / name / "study.db")
    with open_study(url, name, budget_s=60) as opened:
        opened.trials()  # read now: the figures are drawn after the engine is closed
    return opened.study, study_scratch(scratch, opened.record.scratch), opened.record.objective


def _save(fig: Figure, path: Path) -> Path:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _message(text: str) -> Figure:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    ax.set_axis_off()
    return fig


def optuna_figures(study: optuna.Study, out: Path, objective: str = "val_loss") -> dict[str, str]:
    """The four Optuna plots, their axes named ``objective``; one Optuna cannot draw (e.g. importances
    of 1 trial) says why instead."""
    import optuna.visualization.matplotlib as ovm

    made = {}
    for key, title in OPTUNA_PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning: the matplotlib backend is "experimental"
                named = {} if key == "intermediate_values" else {"target_name": objective}
                ax = getattr(ovm, f"plot_{key}")(study, **named)
            first = np.asarray(ax).ravel()[0]
            if key == "intermediate_values":  # reported per epoch: the objective, under Optuna's generic name
                first.set_ylabel(f"{objective} (per epoch)")
            fig = first.figure
            fig.set_size_inches(12 if key == "parallel_coordinate" else 9, 5 if key == "parallel_coordinate" else 4.5)
            fig.tight_layout()
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            fig = _message(f"{title}: not available for this study ({exc})")
        made[f"{key}.png"] = f"{title} ({objective}, {study.direction.name.lower()})"
        _save(fig, out / f"{key}.png")
    return made


def learning_curve_figure(study: optuna.Study, study_dir: Path, out: Path, top: int = 3) -> dict[str, str]:
    curves, values = {}, {}
    for t in ranked(study.get_trials(deepcopy=False), study.direction)[:top]:
        p = trial_dir(study_dir, t.number) / METRICS
        if p.is_file():
            curves[t.number] = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
            values[t.number] = t.value
    fig = figures.learning_curves(curves, values) if curves else _message(f"no metrics.jsonl under {study_dir}")
    _save(fig, out / "learning_curves.png")
    return {"learning_curves.png": f"learning curves of the {len(curves)} best trials"}


def tile_figure(results: dict[str, Any], results_dir: Path, out: Path, n: int = 3) -> dict[str, str]:
    """Predict a few test tiles (the maps' code path) and draw the panels with their uncertainty.

    The final runs' models when ``results.json`` lists them (their ensemble), else ``best_model.pth``.
    """
    from dualseg.config import Config, from_dict
    from dualseg.data.read import read_labels, read_stream
    from dualseg.data.splits import resolve_splits
    from dualseg.data.tile import open_tile, tile_path
    from dualseg.infer.members import ensemble_map, load_members, mean_probs

    final = read_final(results)
    paths = final.models if final and final.models and all(p.is_file() for p in final.models) \
        else [results_dir / "best_model.pth"]
    models = load_members(paths)
    model = models[0]
    cfg = from_dict(Config, results["config"])
    names = resolve_splits(cfg.data, ("test",))["test"][:n]
    built = [(m, m.build("cpu")) for m in models]
    overlap = float((results.get("test") or {}).get("overlap") or 0.25)
    panels = []
    for name in names:
        info = open_tile(tile_path(cfg.data.root, name), model.s1_bands, model.s2_bands, require_labels=False)
        probs, has_input = mean_probs(built, info, overlap=overlap, device="cpu")
        classes, _, _, unsure = ensemble_map(probs, has_input, model.ignore_index)
        s2, cloud = read_stream(info, "s2")
        s1, _ = read_stream(info, "s1")
        rgb, t = figures.s2_true_colour(s2, cloud, model.s2_bands)
        date = np.datetime64("1970-01-01") + np.timedelta64(int(info.streams["s2"].time[t]), "D")
        panels.append({"name": name, "s2_rgb": rgb, "s2_date": str(date),
                       "s1_rgb": figures.s1_composite(s1, model.s1_bands), "uncertainty": unsure,
                       "labels": read_labels(info) if info.has_labels else None, "classes": classes})
    _save(figures.tile_panels(panels, model.class_names, model.ignore_index, len(models)), out / "test_tiles.png")
    return {"test_tiles.png": f"{len(panels)} test tiles: S2, S1, labels, prediction"
                              f"{f' (ensemble of {len(models)})' if len(models) > 1 else ''}, uncertainty, errors"}


def final_figures(final: Final, names: list[str], out: Path) -> dict[str, str]:
    """Per-class IoU over the final members (error bars) and members vs ensemble."""
    made: dict[str, str] = {}
    groups = [g for g in final.per_class_groups("iou") if len(g[2]) == len(names)]
    if groups:
        ens = final.ensemble.get("iou")
        _save(figures.per_class_spread(names, [(None if c is None else f"trial {c}", n, mean, std)
                                               for c, n, mean, std in groups],
                                       ens if isinstance(ens, list) else None), out / "final_per_class.png")
        made["final_per_class.png"] = (f"test IoU per class: mean ± std over {len(final.members)} final run(s)"
                                       + (f" of {len(groups)} configurations" if len(groups) > 1 else "")
                                       + ", ensemble")
    several = len(final.configurations) > 1
    labels = [(f"trial {m.config} " if several else "") + f"seed {m.seed}" + (f" fold {m.fold}" if m.fold is not None
                                                                             else "") for m in final.members]
    _save(figures.members_vs_ensemble(list(zip(labels, [m.metrics for m in final.members])), final.ensemble),
          out / "members_ensemble.png")
    made["members_ensemble.png"] = "test OA / mIoU of each final run vs their ensemble"
    return made


def _summary(study: optuna.Study, results: dict[str, Any] | None, objective: str = "val_loss") -> str:
    trials = study.get_trials(deepcopy=False)
    counts = Counts.of(trials).by_state()
    rows = [("study", study.study_name), ("objective", f"{objective} ({study.direction.name.lower()})"),
            ("trials", ", ".join(f"{k.lower()} {v}" for k, v in counts.items() if v))]
    top = best(trials, study.direction)
    if top is not None:
        rows += [("best trial", f"{top.number}: {objective} {top.value:.4g}"), ("best params", json.dumps(top.params))]
    if results:
        t = results.get("test") or {}
        base = t.get("majority_baseline") or {}
        rows += [("test OA / mIoU", f"{t.get('oa', math.nan):.4f} / {t.get('miou', math.nan):.4f}"),
                 ("majority baseline OA / mIoU", f"{base.get('oa', math.nan):.4f} / {base.get('miou', math.nan):.4f}")]
        final = read_final(results)
        if final is not None:
            rows += summary_rows(final)
        if results.get("scratch_usage"):
            rows.append(("scratch usage (bytes)", str(results["scratch_usage"].get("bytes"))))
    return "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)


def write_index(out: Path, study: optuna.Study, results: dict[str, Any] | None, figs: dict[str, str],
                objective: str = "val_loss") -> Path:
    body = "\n".join(f'<figure><img src="{html.escape(f)}" alt="{html.escape(c)}"><figcaption>{html.escape(c)}'
                     f"</figcaption></figure>" for f, c in figs.items())
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dualseg report: {html.escape(study.study_name)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}} img{{max-width:100%}}
th{{text-align:left;padding-right:1em}} td{{padding-right:1em}} figure{{margin:2em 0}}
figcaption{{color:#555}}</style></head>
<body><h1>dualseg study {html.escape(study.study_name)}</h1>
<table>{_summary(study, results, objective)}</table>
{fold_table(final) if (final := read_final(results)) is not None else ""}
{body}
</body></html>
"""
    return atomic_write_text(out / "index.html", page)


def write_report(study_name: str = DEFAULT_STUDY, storage: StorageURL | str | None = None,
                 scratch: str | Path | None = None,
                 out: str | Path | None = None, tiles: int = 3, results_dir: str | Path | None = None) -> Path:
    """Write ``<results>/report/`` (or ``out``); returns the path of ``index.html``.

    ``results_dir`` (``results.json``, ``best_model.pth``) defaults to ``<scratch>/<study>/results``.
    """
    study, root, objective = load_study(storage, study_name, scratch)
    study_dir = root / study_name
    results_dir = Path(results_dir) if results_dir else study_dir / "results"
    report = Path(out) if out else results_dir / "report"
    report.mkdir(parents=True, exist_ok=True)
    figs = optuna_figures(study, report, objective)
    figs |= learning_curve_figure(study, study_dir, report)
    results = None
    if (results_dir / "results.json").is_file():
        results = json.loads((results_dir / "results.json").read_text())
        test = results.get("test") or {}
        if test.get("confusion_matrix"):
            _save(figures.confusion(np.asarray(test["confusion_matrix"]), list(test["class_names"])),
                  report / "confusion_matrix.png")
            figs["confusion_matrix.png"] = "test confusion matrix (row-normalised)"
            _save(figures.per_class(test), report / "per_class.png")
            figs["per_class.png"] = "test IoU / F1 per class vs the majority baseline"
        final = read_final(results)
        if final is not None:
            figs |= final_figures(final, list(test.get("class_names") or []), report)
        if tiles > 0 and (results_dir / "best_model.pth").is_file() and results.get("config"):
            try:
                figs |= tile_figure(results, results_dir, report, tiles)
            except DualsegError as exc:  # tiles moved or unreadable: the rest of the report still helps
                _save(_message(f"test tiles not drawn: {exc}"), report / "test_tiles.png")
                figs["test_tiles.png"] = "test tiles (not available)"
    return write_index(report, study, results, figs, objective)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="python hpc/report.py", description=__doc__.split("\n")[0])
    p.add_argument("--study", default=DEFAULT_STUDY, help=f"study name (default {DEFAULT_STUDY})")
    p.add_argument("--storage", help=f"database URL (default ${STORAGE_ENV}, else <scratch>/<study>/study.db)")
    p.add_argument("--scratch", help="scratch root (default: the study's record, $SCRATCH, ./runs)")
    p.add_argument("--results", help="folder of results.json/best_model.pth (default <scratch>/<study>/results)")
    p.add_argument("--out", help="report folder (default <results>/report)")
    p.add_argument("--tiles", type=int, default=3, help="test tiles to draw (0: none)")
    a = p.parse_args(argv)
    try:
        index = write_report(a.study, a.storage, a.scratch, a.out, a.tiles, a.results)
    except DualsegError as exc:
        return report_error(exc)
    print(f"report: {index} ({len(list(index.parent.glob('*.png')))} figures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
