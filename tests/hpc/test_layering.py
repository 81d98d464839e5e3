"""The rules of hpc/ that hold in code: Optuna's private schema is touched by one module only."""

from __future__ import annotations

import re
from pathlib import Path

HPC = Path(__file__).resolve().parents[2] / "hpc"
PRIVATE = re.compile(r"optuna\.storages\._rdb|_study_id\b|_thread_local|_datetime_start_utc")


def test_only_the_schema_module_touches_optuna_private_parts() -> None:
    offenders = sorted(str(p.relative_to(HPC.parent)) for p in HPC.rglob("*.py")
                       if PRIVATE.search(p.read_text()) and p != HPC / "study" / "schema.py")
    assert offenders == [], f"Optuna's private schema used outside hpc/study/schema.py: {offenders}"
