"""What launching an existing study again may do: add workers, never silently change the search.

A relaunch (``--study`` of an existing study) continues it: new workers pull the remaining trials.
Changing what the study *is* — the trial target, the objective, the search space — under running
workers would mix trials of two searches in one ranking, so it needs ``--allow-change``; so does
relaunching a complete study (it would submit workers with nothing to do and evaluate again).
"""

from __future__ import annotations

from typing import Any

from dualseg.errors import InputError
from hpc.study import StudyRecord


def _fmt(v: Any) -> str:
    return str(v) if not isinstance(v, dict) else ", ".join(sorted(v)) or "(none)"


def check_relaunch(name: str, existing: StudyRecord, new: StudyRecord, finished: int, allow_change: bool) -> None:
    """Refuse, with one line, a relaunch that would change the search or re-run a complete study."""
    if existing.config is None or allow_change:  # a new study, or the user said so
        return
    changed = [(what, old, now) for what, old, now in (
        ("--trials", existing.trials, new.trials),
        ("hpc.objective", existing.objective, new.objective),
        ("hpc.search", existing.launch.get("search"), new.launch.get("search")),
    ) if old != now]
    if changed:
        what, old, now = changed[0]
        raise InputError(f"--study: {name!r} was launched with {what} {_fmt(old)}; this launch says {_fmt(now)} "
                         "(changing a launched search needs --allow-change, or use another --study)")
    if finished >= existing.trials:
        raise InputError(f"--study: {name!r} is complete ({finished}/{existing.trials} finished trials): nothing to "
                         "run (its results are in <scratch>/<study>/results; raise --trials with --allow-change to "
                         "extend it)")
