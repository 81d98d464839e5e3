"""hpc.relaunch through the real launcher: a relaunch adds workers, never silently changes the search."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from dualseg.errors import InputError
from hpc.relaunch import check_relaunch
from hpc.study import StudyRecord


def _record(**kw: object) -> StudyRecord:
    base: dict = {"config": {}, "trials": 4, "objective": "val_loss", "launch": {"search": {"train.lr": {}}}}
    return StudyRecord(**{**base, **kw})


def test_what_a_relaunch_may_change() -> None:
    old = _record()
    check_relaunch("s", old, _record(launch={"search": {"train.lr": {}}, "workers": 8}), 1, False)  # more workers
    check_relaunch("s", StudyRecord(), _record(trials=9), 0, False)  # a new study
    for new, needle in ((_record(trials=5), "--trials 4; this launch says 5"),
                        (_record(objective="val_miou"), "hpc.objective val_loss; this launch says val_miou"),
                        (_record(launch={"search": {"model.dropout": {}}}), "hpc.search train.lr; this launch says "
                                                                            "model.dropout")):
        with pytest.raises(InputError, match="needs --allow-change") as err:
            check_relaunch("s", old, new, 1, False)
        assert needle in str(err.value)
        check_relaunch("s", old, new, 1, True)
    with pytest.raises(InputError, match="is complete"):
        check_relaunch("s", old, old, 4, False)


def test_a_relaunch_may_not_change_what_trials_compute_but_how_they_run() -> None:
    cfg = {"data": {"root": "/d", "num_workers": 2}, "train": {"epochs": 10, "log_every": 5}, "hpc": {"x": 1}}
    old = _record(config=cfg)
    runtime = {"data": {"root": "/d", "num_workers": "auto"}, "train": {"epochs": 10, "log_every": 1}}
    check_relaunch("s", old, _record(config=runtime), 1, False)
    for change, needle in (({"train": {"epochs": 20, "log_every": 5}}, "train.epochs 10; this launch says 20"),
                           ({"data": {"root": "/e", "num_workers": 2}}, "data.root /d; this launch says /e")):
        with pytest.raises(InputError, match="needs --allow-change") as err:
            check_relaunch("s", old, _record(config={**cfg, **change}), 1, False)
        assert needle in str(err.value)


def test_relaunch_refusals_through_the_cli(hpc_tools: SimpleNamespace, tiny_args: list[str], tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    base = [*tiny_args, "--storage", f"sqlite:///{db}", "--study", "again", "--executor", "local"]
    r = hpc_tools.run_cli("launch.py", *base, "--trials", "2", "--prepare-only")
    assert r.returncode == 0, r.stderr
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    r = hpc_tools.run_cli("launch.py", *base, "--trials", "3")
    assert r.returncode == 2 and r.stderr.count("error:") == 1 and "--allow-change" in r.stderr, r.stderr
    study = optuna.load_study(study_name="again", storage=f"sqlite:///{db}")
    for v in (0.5, 0.4):
        study.tell(study.ask(), v)
    r = hpc_tools.run_cli("launch.py", *base, "--trials", "2")
    assert r.returncode == 2 and "is complete (2/2 finished trials)" in r.stderr, r.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()) == before
    assert len(optuna.load_study(study_name="again", storage=f"sqlite:///{db}").trials) == 2


@pytest.mark.postgres
def test_a_search_the_server_cannot_hold_is_refused(pg_db_url: str, hpc_tools: SimpleNamespace,
                                                    tiny_args: list[str]) -> None:
    r = hpc_tools.run_cli("launch.py", *tiny_args, "--study", "big", "--workers", "5000", "--prepare-only",
                          "--executor", "local", env={"DUALSEG_STORAGE": pg_db_url})
    assert r.returncode == 2 and r.stderr.count("error:") == 1, r.stderr
    assert "--workers: 5000 worker(s) need up to 10002 database connections" in r.stderr
    assert "max_connections" in r.stderr and "password" not in r.stderr.lower()
