"""hpc.paths: the scratch default chain and study incarnations (trial folders are never resumed across studies)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualseg.errors import InputError
from hpc.paths import check_study_dir, claim_study_dir, new_incarnation, resolve_scratch


def test_scratch_chain(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SCRATCH", str(tmp_path / "env"))
    assert resolve_scratch(str(tmp_path / "cli"), str(tmp_path / "cfg")) == tmp_path / "cli"
    assert resolve_scratch(None, str(tmp_path / "cfg")) == tmp_path / "cfg"
    assert resolve_scratch(None, None) == tmp_path / "env"
    monkeypatch.delenv("SCRATCH")
    assert resolve_scratch(None, None) == Path("runs").resolve()


def test_a_study_folder_belongs_to_one_incarnation(tmp_path: Path) -> None:
    study_dir = tmp_path / "s"
    first = new_incarnation()
    claim_study_dir(study_dir, first, "s")
    claim_study_dir(study_dir, first, "s")  # the same study relaunched: fine
    (study_dir / "trial-0").mkdir()
    with pytest.raises(InputError, match="holds trial folders of another study named 's'"):
        claim_study_dir(study_dir, new_incarnation(), "s")
    with pytest.raises(InputError, match="belongs to another incarnation"):
        check_study_dir(study_dir, new_incarnation(), "s")
    check_study_dir(study_dir, first, "s")


def test_trial_folders_from_older_code_are_refused(tmp_path: Path) -> None:
    (tmp_path / "s" / "trial-0").mkdir(parents=True)
    with pytest.raises(InputError, match="earlier study named 's'"):
        claim_study_dir(tmp_path / "s", new_incarnation(), "s")
