"""What launching an existing study again may do: add workers, never silently change the search.

A relaunch (``--study`` of an existing study) continues it: new workers pull the remaining trials.
Changing what the study *is* — the trial target, the objective, the search space, any setting of the
config that changes what a trial computes (epochs, data, model; not e.g. loader workers) — under running
workers would mix trials of two searches in one ranking, so it needs ``--allow-change``; so does
relaunching a complete study (it would submit workers with nothing to do and evaluate again).
"""

from __future__ import annotations

from typing import Any

from dualseg.config import RUNTIME_ONLY
from dualseg.errors import InputError
from hpc.study import StudyRecord


def _fmt(v: Any) -> str:
    return str(v) if not isinstance(v, dict) else ", ".join(sorted(v)) or "(none)"


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, recorded, now)`` of every setting that changes what trials compute (epochs, data, model...):
    the recorded config is what the workers run, so a silent change would be ignored or mix two searches."""
    a, b = _flat({k: v for k, v in old.items() if k != "hpc"}), _flat({k: v for k, v in new.items() if k != "hpc"})
    return [(k, a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys())
            if k not in RUNTIME_ONLY and a.get(k) != b.get(k)]


def check_relaunch(name: str, existing: StudyRecord, new: StudyRecord, finished: int, allow_change: bool,
                   final_pending: bool = False) -> None:
    """Refuse, with one line, a relaunch that would change the search or re-run a complete study (one whose
    final runs are still to finish is resumed: ``final_pending``)."""
    if existing.config is None or allow_change:  # a new study, or the user said so
        return
    changed = [(what, old, now) for what, old, now in (
        ("--trials", existing.trials, new.trials),
        ("hpc.objective", existing.objective, new.objective),
        ("hpc.search", existing.launch.get("search"), new.launch.get("search")),
        *config_changes(existing.config, new.config or {}),
    ) if old != now]
    if changed:
        what, old, now = changed[0]
        raise InputError(f"--study: {name!r} was launched with {what} {_fmt(old)}; this launch says {_fmt(now)} "
                         "(changing a launched search needs --allow-change, or use another --study)")
    if finished >= existing.trials and not final_pending:
        raise InputError(f"--study: {name!r} is complete ({finished}/{existing.trials} finished trials): nothing to "
                         "run (its results are in <scratch>/<study>/results; raise --trials with --allow-change to "
                         "extend it)")
