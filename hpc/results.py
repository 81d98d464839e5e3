"""``results.json``: its one writer, and its ``final`` section (``hpc.final``) — members, spread, folds, ensemble.

The final section is typed here (:class:`FinalSection`) so that the report, the maps and a reader of the file
see one shape. Per member the test metrics of its ``best.pt``; per metric (loss, OA, mIoU, per-class IoU/F1)
mean, standard deviation and a seeded bootstrap 95 % interval (:mod:`dualseg.train.summary`); per fold the
fold's spread and its own ensemble; per configuration (``top_k > 1``: the parent trial a member retrains) the
spread of that configuration's members alone; and the ensemble (mean of the members' probabilities,
:mod:`dualseg.infer.members`) scored on the same test tiles — with folds each fold has its own test tiles,
so there the ensembles are per fold.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from dualseg.io import atomic_write_text
from dualseg.train.rundir import BEST
from dualseg.train.summary import Spread, per_class, spread
from hpc.paths import study_scratch, trial_dir
from hpc.storage import StorageURL
from hpc.study import StudyRecord, TrialRecord, open_study

log = logging.getLogger("hpc.results")
METRICS = ("loss", "oa", "miou")


def finite(obj: Any) -> Any:
    """JSON without NaN/inf (invalid JSON for strict readers): such values become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_results(path: Path, results: dict[str, Any]) -> Path:
    """The one way ``results.json`` is written: strict JSON, atomically."""
    return atomic_write_text(path, json.dumps(finite(results), indent=2, sort_keys=True, default=str) + "\n")


@dataclass
class MemberResult:
    member: int
    trial: int
    parent_trial: int
    rank: int
    seed: int
    fold: str | None
    checkpoint: str
    test: dict[str, Any]


@dataclass
class Summary:
    """Spread of a group of members, and the group's ensemble (None for one member)."""

    members: list[int]
    metrics: dict[str, Spread | None]
    iou: list[Spread | None]
    f1: list[Spread | None]
    ensemble: dict[str, Any] | None = None


@dataclass
class FinalSection:
    study: str
    planned: int
    complete: int
    class_names: list[str]
    members: list[MemberResult]
    summary: Summary
    folds: dict[str, Summary] = field(default_factory=dict)
    # parent trial number -> the spread of the members retraining that configuration (no ensemble of its own)
    configurations: dict[str, Summary] = field(default_factory=dict)


def summarize(members: list[MemberResult], ensemble: dict[str, Any] | None) -> Summary:
    def over(key: str) -> Spread | None:
        values = [float(m.test[key]) for m in members if m.test.get(key) is not None and math.isfinite(m.test[key])]
        return spread(values) if values else None

    return Summary([m.member for m in members], {k: over(k) for k in METRICS},
                   per_class([m.test["iou"] for m in members]), per_class([m.test["f1"] for m in members]), ensemble)


def by_configuration(members: list[MemberResult]) -> dict[str, Summary]:
    """The spread per configuration, keyed by its parent trial: with ``top_k > 1`` the overall spread mixes
    different recipes (their gap is no seed noise), so each configuration's own seeds/folds are summarised too."""
    groups: dict[int, list[MemberResult]] = {}
    for m in sorted(members, key=lambda m: (m.rank, m.member)):
        groups.setdefault(m.parent_trial, []).append(m)
    return {str(trial): summarize(group, None) for trial, group in groups.items()}


def _ensemble(record: StudyRecord, group: list[MemberResult]) -> dict[str, Any] | None:
    from dualseg.train.evaluate import evaluate_ensemble
    from hpc.final import member_config

    if len(group) < 2 or record.final is None:
        return None
    cfg = member_config(record, record.final.members[group[0].member])
    scored = evaluate_ensemble([m.checkpoint for m in group], cfg, split="test")
    return {k: scored[k] for k in ("loss", "oa", "miou", "iou", "f1", "members", "unpredicted")}


def final_section(storage: StorageURL, name: str, scratch: str | Path | None) -> FinalSection:
    """Evaluate every complete member of the final study ``name`` on its test tiles."""
    from dualseg.train import evaluate_checkpoint
    from hpc.final import member_config

    with open_study(storage, name, budget_s=300) as opened:
        record, trials = opened.record, opened.trials()
    assert record.final is not None, f"{name} is not a final study"
    final_dir = study_scratch(scratch, record.scratch) / name
    members: list[MemberResult] = []
    class_names: list[str] = []
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    for t in done:
        index = TrialRecord.of(t).member
        if index is None or index in record.final.stale or any(m.member == index for m in members):
            continue  # a stale member trained a configuration of an earlier ranking
        plan = record.final.members[index]
        ckpt = trial_dir(final_dir, t.number) / BEST
        test = evaluate_checkpoint(ckpt, member_config(record, plan), split="test")
        class_names = test["class_names"]
        members.append(MemberResult(index, t.number, plan.parent_trial, plan.rank, plan.seed, plan.fold_name,
                                    str(ckpt), {k: test[k] for k in (*METRICS, "iou", "f1", "epoch", "tiles")}))
    if not members:
        raise ValueError(f"final study {name}: no COMPLETE member to evaluate")
    members.sort(key=lambda m: m.member)
    groups: dict[str, list[MemberResult]] = {}
    for m in members:
        groups.setdefault(m.fold or "", []).append(m)
    folds = {} if "" in groups else {f: summarize(g, _ensemble(record, g)) for f, g in groups.items()}
    overall = summarize(members, _ensemble(record, members) if not folds else None)
    return FinalSection(name, len(record.final.current()), len(members), class_names, members, overall, folds,
                        by_configuration(members))


def final_results(storage: StorageURL, name: str, scratch: str | Path | None) -> dict[str, Any]:
    """The ``final`` section as results.json holds it."""
    return asdict(final_section(storage, name, scratch))
