"""hpc/status.py: trials by state, best trial, running trials with their jobs."""

from __future__ import annotations

from pathlib import Path

import optuna

from hpc.status import collect, render
from hpc.storage import StorageURL, create_or_load_study, open_database


def _study(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = create_or_load_study(open_database(StorageURL.parse(url), create_tables=True), "s", "minimize",
                                 {"trials": 5})
    dist = {"train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    for value in (0.5, 0.2):
        study.add_trial(optuna.create_trial(value=value, params={"train.lr": value / 100}, distributions=dist))
    study.add_trial(optuna.create_trial(state=optuna.trial.TrialState.PRUNED, params={"train.lr": 1e-3},
                                        distributions=dist, intermediate_values={0: 0.9}))
    running = study.ask({"train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    running.report(0.7, 0)
    running.report(0.6, 1)
    running.set_user_attr("job_id", "123_4")
    return url


def test_collect_and_render(tmp_path: Path) -> None:
    s = collect(StorageURL.parse(_study(tmp_path)), "s")
    assert s["counts"]["COMPLETE"] == 2 and s["counts"]["PRUNED"] == 1 and s["counts"]["RUNNING"] == 1
    assert s["best"]["number"] == 1 and s["best"]["value"] == 0.2
    (r,) = s["running"]
    assert (r["number"], r["job"], r["last_step"], r["retry_of"], r["slurm"], r["requeued"]) \
        == (3, "123_4", 1, None, "-", False)
    assert r["stale"], "a RUNNING trial whose job squeue does not know is stale"
    text = render(s)
    assert "3/5 finished" in text and "best: trial 1 value 0.2" in text and "123_4" in text


def test_cli_errors_are_one_line(tmp_path: Path, hpc_tools) -> None:
    url = _study(tmp_path)
    r = hpc_tools.run_cli("status.py", "--study", "s", "--storage", url)
    assert r.returncode == 0 and "complete 2" in r.stdout
    r = hpc_tools.run_cli("status.py", "--study", "nope", "--storage", url)
    assert r.returncode == 2 and r.stderr.strip() == f"error: --study: no study named 'nope' in storage {url}"
    r = hpc_tools.run_cli("status.py", "--study", "s", "--scratch", str(tmp_path / "none"), env={"DUALSEG_STORAGE": ""})
    missing = tmp_path / "none" / "s" / "study.db"
    assert r.returncode == 2 and r.stderr.strip() == ("error: --storage: not given, $DUALSEG_STORAGE unset and no "
                                                      f"local study at {missing} (pass --storage or --scratch)")
    assert not missing.exists() and not missing.parent.exists(), "status must not create an empty database"
