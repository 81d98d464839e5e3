"""hpc/status.py: trials by state, best trial, running trials with their jobs."""

from __future__ import annotations

from pathlib import Path

import optuna

from hpc import study as st
from hpc.status import collect, render


def _study(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = st.create_or_load_study(st.open_storage(url, create_tables=True), "s", "minimize", {"trials": 5})
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
    s = collect(_study(tmp_path), "s")
    assert s["counts"]["COMPLETE"] == 2 and s["counts"]["PRUNED"] == 1 and s["counts"]["RUNNING"] == 1
    assert s["best"]["number"] == 1 and s["best"]["value"] == 0.2
    assert s["running"] == [{"number": 3, "job": "123_4", "last_step": 1, "retry_of": None, "slurm": "-",
                            "requeued": False}]
    text = render(s)
    assert "3/5 finished" in text and "best: trial 1 value 0.2" in text and "123_4" in text


def test_cli_errors_are_one_line(tmp_path: Path, hpc_tools) -> None:
    url = _study(tmp_path)
    r = hpc_tools.run_cli("status.py", "--study", "s", "--storage", url)
    assert r.returncode == 0 and "complete 2" in r.stdout
    r = hpc_tools.run_cli("status.py", "--study", "nope", "--storage", url)
    assert r.returncode == 2 and r.stderr.strip() == f"error: --study: no study named 'nope' in storage {url}"
    r = hpc_tools.run_cli("status.py", "--study", "s", env={"DUALSEG_STORAGE": ""})
    assert r.returncode == 2 and r.stderr.strip() == "error: --storage: not given and $DUALSEG_STORAGE is not set"
