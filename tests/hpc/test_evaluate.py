"""hpc/evaluate.py error paths (the full path runs in test_launch's local and SLURM searches)."""

from __future__ import annotations

from pathlib import Path

import optuna

from hpc.storage import StorageURL, create_or_load_study, open_database


def _study(tmp_path: Path, complete: bool) -> str:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = create_or_load_study(open_database(StorageURL.parse(url), create_tables=True), "s", "minimize",
                                    {"trials": 1, "scratch": str(tmp_path)})
    dist = {"train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    state = optuna.trial.TrialState.COMPLETE if complete else optuna.trial.TrialState.FAIL
    study.add_trial(optuna.create_trial(state=state, value=0.3 if complete else None, params={"train.lr": 1e-3},
                                        distributions=dist))
    return url


def test_no_complete_trial_is_an_input_error(tmp_path: Path, hpc_tools) -> None:
    r = hpc_tools.run_cli("evaluate.py", "--study", "s", "--storage", _study(tmp_path, complete=False))
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: --study: 's' has no COMPLETE trial to evaluate")
    assert not (tmp_path / "s" / "results").exists()


def test_missing_checkpoint_names_the_path(tmp_path: Path, hpc_tools) -> None:
    r = hpc_tools.run_cli("evaluate.py", "--study", "s", "--storage", _study(tmp_path, complete=True))
    assert r.returncode == 2
    assert r.stderr.strip() == (f"error: best trial 0: checkpoint {tmp_path}/s/trial-0/best.pt not found "
                                "(wrong --scratch?)")
    assert not (tmp_path / "s" / "results" / "results.json").exists()
