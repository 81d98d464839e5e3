"""Final runs (hpc.final): the config, the members, the final study's record, and the local search end to end."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from dualseg.config import Config, DataConfig
from dualseg.data.folds import write_folds
from dualseg.errors import InputError
from hpc.config import FinalConfig, parse_hpc
from hpc.final import final_name, member_overrides, parent_name
from hpc.final_plan import plan_members
from hpc.study import RECORD_VERSION, FinalMember, FinalPlan, StudyRecord, TrialRecord

MIN = optuna.study.StudyDirection.MINIMIZE


def _trial(number: int, value: float, lr: float, best_epoch: int) -> optuna.trial.FrozenTrial:
    t = optuna.create_trial(state=TrialState.COMPLETE, value=value, params={"train.lr": lr},
                            distributions={"train.lr": FloatDistribution(1e-4, 1.0)},
                            user_attrs={"best_epoch": best_epoch})
    t.number = number
    return t


TRIALS = [_trial(0, 0.9, 0.1, 4), _trial(1, 0.5, 0.2, 2), _trial(2, 0.7, 0.3, 0)]


def test_config_defaults_off_and_is_validated_where_declared() -> None:
    assert not parse_hpc(Config()).final.on  # today's behaviour stays the default
    f = parse_hpc(Config(hpc={"final": {"seeds": 3, "top_k": 2, "epochs": 7}})).final
    assert (f.on, f.seeds, f.top_k, f.folds, f.refit, f.epochs) == (True, 3, 2, "none", "train", 7)
    for bad, message in (({"seeds": -1}, "hpc.final.seeds: must be >= 0"), ({"top_k": 0}, "top_k: must be >= 1"),
                         ({"top_k": 9}, "at most 8 complete trials"), ({"epochs": 0}, "a number >= 1"),
                         ({"epochs": "last"}, "hpc.final.epochs"), ({"folds": "five"}, "hpc.final.folds")):
        with pytest.raises(InputError, match=message):
            parse_hpc(Config(hpc={"final": bad}))


def test_members_are_configuration_by_fold_by_seed(tmp_path: Path) -> None:
    cfg = Config(data=DataConfig(root=str(tmp_path)))
    cfg.train.seed = 10
    members = plan_members("s", TRIALS, MIN, FinalConfig(seeds=2, top_k=2, epochs="best"), cfg)
    assert [(m.parent_trial, m.rank, m.seed, m.epochs, m.fold) for m in members] == [
        (1, 0, 10, 3, None), (1, 0, 11, 3, None), (2, 1, 10, 1, None), (2, 1, 11, 1, None)]
    assert members[0].params == {"train.lr": 0.2}
    assert [m.epochs for m in plan_members("s", TRIALS, MIN, FinalConfig(seeds=1), cfg)] == [None]  # fixed
    with pytest.raises(InputError, match=r"top_k: 4 configurations asked, but study 's' has only 3 complete"):
        plan_members("s", TRIALS, MIN, FinalConfig(seeds=1, top_k=4), cfg)
    with pytest.raises(InputError, match="needs a dataset with folds"):
        plan_members("s", TRIALS, MIN, FinalConfig(seeds=1, folds="all"), cfg)
    write_folds(tmp_path, {"a": ["t0"], "b": ["t1"], "c": ["t2"]})
    folded = plan_members("s", TRIALS, MIN, FinalConfig(seeds=2, folds="all"), cfg)
    assert [(m.fold, m.fold_name, m.seed) for m in folded] == [
        (0, "a", 10), (0, "a", 11), (1, "b", 10), (1, "b", 11), (2, "c", 10), (2, "c", 11)]
    o = member_overrides(folded[3], cfg.data)
    assert o == {"train.lr": 0.2, "train.seed": 11, "data.seed": 11, "data.train_tiles": ["t0"],
                 "data.val_tiles": ["t2"], "data.test_tiles": ["t1"]}
    assert member_overrides(members[0], cfg.data)["train.epochs"] == 3


def test_refit_on_train_and_val_trains_without_validation_for_the_derived_epochs(tmp_path: Path) -> None:
    from dualseg.data.splits import write_splits
    from hpc.runner import told_objective

    for t in ("t0", "t1", "t2", "t3"):
        (tmp_path / f"{t}.zarr").mkdir()
    write_splits(tmp_path / "splits.json", {"train": ["t0", "t1"], "val": ["t2"], "test": ["t3"]})
    cfg = Config(data=DataConfig(root=str(tmp_path)))
    final = parse_hpc(Config(hpc={"final": {"seeds": 1, "refit": "train+val", "epochs": "best"}})).final
    (member,) = plan_members("s", TRIALS, MIN, final, cfg)
    assert (member.parent_trial, member.epochs) == (1, 3)  # trial 1's best epoch 2, + 1
    o = member_overrides(member, cfg.data, final.refit)
    assert (o["data.train_tiles"], o["data.val_tiles"], o["train.validate"], o["train.epochs"]) == \
        (["t0", "t1", "t2"], [], False, 3)
    assert "data.test_tiles" not in o  # the test tiles stay the splits file's
    write_folds(tmp_path, {"a": ["t0"], "b": ["t1"], "c": ["t2"], "d": ["t3"]})
    folded = plan_members("s", TRIALS, MIN, FinalConfig(seeds=1, folds="all", refit="train+val", epochs=4), cfg)
    o = member_overrides(folded[1], cfg.data, "train+val")  # rotation 1: b test, c val, a+d train
    assert (o["data.train_tiles"], o["data.val_tiles"], o["data.test_tiles"]) == (["t0", "t3", "t2"], [], ["t1"])
    with pytest.raises(InputError, match="needs a derived epoch count"):
        member_overrides(plan_members("s", TRIALS, MIN, FinalConfig(seeds=1), cfg)[0], cfg.data, "train+val")
    from dualseg.config import apply_overrides

    hpc = parse_hpc(Config(hpc={"objective": "val_miou"}))
    assert told_objective(apply_overrides(cfg, o), hpc) == "train_loss" and told_objective(cfg, hpc) == "val_miou"


def test_a_claimed_member_carries_its_parameters_as_optuna_params(tmp_path: Path) -> None:
    """Enqueued fixed parameters are no trial.params until suggested; the claim records them, with the
    parent trial's distributions, for the enqueued trial and for a fresh one alike, and a second claim is harmless."""
    from dualseg.config import to_dict
    from hpc.final import claim_member
    from hpc.storage import StorageURL, open_database
    from hpc.study import schema

    cfg = Config(data=DataConfig(root=str(tmp_path)))
    members = plan_members("s", TRIALS, MIN, FinalConfig(seeds=2), cfg)
    assert members[0].distributions == {"train.lr": optuna.distributions.distribution_to_json(
        FloatDistribution(1e-4, 1.0))}
    plan = FinalPlan("s", members)
    url = f"sqlite:///{tmp_path / 'f.db'}"
    db = open_database(StorageURL.parse(url), create_tables=True)
    study = optuna.create_study(storage=url, study_name="s/final")  # another process's storage (its own cache)
    study.enqueue_trial(members[0].params, user_attrs={"member": 0})
    enqueued, fresh = study.ask(), study.ask()  # the enqueued member's trial, then one of no member
    assert enqueued.params == {} and enqueued.user_attrs == {"member": 0}
    sid = schema.study_id(db.load_study("s/final"))
    for trial in (enqueued, fresh, enqueued):
        o = claim_member(db, "s/final", sid, trial._trial_id, plan, to_dict(cfg), 10.0)
        assert o["train.lr"] == 0.2 and o["train.seed"] == (1 if trial is fresh else 0)
    by_number = {t.number: t for t in study.get_trials()}
    for t in (enqueued, fresh):
        assert by_number[t.number].params == {"train.lr": 0.2}
        assert by_number[t.number].distributions == {"train.lr": FloatDistribution(1e-4, 1.0)}
    assert TrialRecord.of(by_number[fresh.number]).member == 1


def test_final_record_round_trips_typed() -> None:
    plan = FinalPlan("s", [FinalMember("s", 1, 0, 10, {"train.lr": 0.2}, 2, "c", 3)])
    rec = StudyRecord(config={}, trials=1, final=plan)
    back = StudyRecord.from_attrs(json.loads(json.dumps(rec.launch_attrs())))
    assert back.final == plan and isinstance(back.final.members[0], FinalMember)
    assert StudyRecord.from_attrs(StudyRecord(trials=2).launch_attrs()).final is None
    # a dualseg that reads only plain records refuses a final study rather than sampling its members
    plain = StudyRecord(trials=2).launch_attrs()["record_version"]
    assert rec.launch_attrs()["record_version"] == RECORD_VERSION > plain
    assert final_name("s") == "s/final" and parent_name("s/final") == "s" and parent_name("s") == "s"
    t = optuna.create_trial(state=TrialState.WAITING, user_attrs={"member": 4})
    assert TrialRecord.of(t).member == 4


def test_local_search_with_two_seeds_ends_with_spread_and_ensemble(hpc_tools: SimpleNamespace, tiny_args: list[str],
                                                                   tmp_path: Path) -> None:
    r = hpc_tools.run_cli("launch.py", *tiny_args, "--executor", "local", "--trials", "2", "--study", "fin",
                          "--set", "hpc.final={seeds: 2}", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "final runs: study fin/final, 2 member(s)" in r.stdout
    study_dir = tmp_path / "scratch" / "fin"
    storage = f"sqlite:///{study_dir / 'study.db'}"
    final = optuna.load_study(study_name="fin/final", storage=storage)
    assert [t.state for t in final.trials] == [TrialState.COMPLETE] * 2  # exactly the members, no extra trial
    record = StudyRecord.read(final)
    best = optuna.load_study(study_name="fin", storage=storage).best_trial
    assert record.final is not None and [(m.parent_study, m.parent_trial, m.seed) for m in record.final.members] \
        == [("fin", best.number, 0), ("fin", best.number, 1)]
    assert sorted(TrialRecord.of(t).member for t in final.trials) == [0, 1]
    assert [t.params for t in final.trials] == [best.params] * 2  # the dashboard shows what each member trained
    results = json.loads((study_dir / "results" / "results.json").read_text())
    section = results["final"]
    assert (section["study"], section["planned"], section["complete"]) == ("fin/final", 2, 2)
    assert [m["seed"] for m in section["members"]] == [0, 1]
    assert all((study_dir / "final" / f"trial-{m['trial']}" / "best.pt").is_file() for m in section["members"])
    mious = [m["test"]["miou"] for m in section["members"]]
    s = section["summary"]["metrics"]["miou"]
    assert s["n"] == 2 and s["mean"] == pytest.approx(sum(mious) / 2) and s["low"] <= s["mean"] <= s["high"]
    assert s["std"] == pytest.approx(abs(mious[0] - mious[1]) / 2 ** 0.5)
    assert len(section["summary"]["iou"]) == len(section["class_names"])
    (config,) = section["configurations"].items()  # top_k 1: one configuration, its spread the overall one
    assert config[0] == str(best.number) and config[1]["metrics"]["miou"] == s and config[1]["ensemble"] is None
    ensemble = section["summary"]["ensemble"]
    assert ensemble is not None and 0.0 <= ensemble["miou"] <= 1.0 and len(ensemble["members"]) == 2
    # the seed-0 member retrains the best trial itself: same seed, same parameters, same test score
    assert section["members"][0]["test"]["miou"] == pytest.approx(results["test"]["miou"])
    st = hpc_tools.run_cli("status.py", "--study", "fin", "--scratch", str(tmp_path / "scratch"))
    assert "final runs: 2/2 members complete, 0 running" in st.stdout, st.stdout + st.stderr


def test_local_refit_on_train_and_val_trains_the_best_epochs_without_validation(
        hpc_tools: SimpleNamespace, tiny_args: list[str], tmp_path: Path) -> None:
    r = hpc_tools.run_cli("launch.py", *tiny_args, "--executor", "local", "--trials", "1", "--study", "refit",
                          "--set", "hpc.final={seeds: 1, refit: train+val, epochs: best}", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    study_dir = tmp_path / "scratch" / "refit"
    storage = f"sqlite:///{study_dir / 'study.db'}"
    parent = optuna.load_study(study_name="refit", storage=storage).best_trial
    epochs = TrialRecord.of(parent).best_epoch + 1  # type: ignore[operator]
    assert f"hpc.final.epochs: best -> {epochs} epoch(s) for the configuration of trial {parent.number}" \
        in r.stdout + r.stderr
    final = optuna.load_study(study_name="refit/final", storage=storage)
    (member,) = final.trials
    assert member.state == TrialState.COMPLETE and final.direction == MIN
    assert StudyRecord.read(final).objective == "train_loss"
    run = study_dir / "final" / f"trial-{member.number}"
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(epochs))  # exactly the derived count, no early stop
    assert not any(k.startswith("val_") for h in history for k in h)
    assert member.value == pytest.approx(history[-1]["train_loss"])  # told: the last epoch's training loss
    assert TrialRecord.of(member).monitor == "train_loss"
    from dualseg.train import load_checkpoint

    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["epoch"] == epochs and ckpt["config"]["train"]["validate"] is False
    splits = json.loads((Path(ckpt["config"]["data"]["root"]) / "splits.json").read_text())
    assert ckpt["config"]["data"]["train_tiles"] == splits["train"] + splits["val"]
    section = json.loads((study_dir / "results" / "results.json").read_text())["final"]
    (scored,) = section["members"]
    assert scored["test"]["epoch"] == epochs - 1 and 0.0 <= scored["test"]["miou"] <= 1.0
    assert scored["test"]["tiles"] == splits["test"]


def test_local_search_over_all_folds_ends_with_per_fold_numbers(hpc_tools: SimpleNamespace, tmp_path: Path) -> None:
    """Generated data with 3 folds: one member per fold rotation, each scored on its own fold's test tiles."""
    from dataclasses import replace

    from dualseg.config import load_config
    from dualseg.data.folds import read_folds, rotation
    from dualseg.data.synthetic import ensure_synthetic

    root = tmp_path / "folded"
    ensure_synthetic(root, replace(load_config(hpc_tools.tiny).data.synthetic, folds=3))
    folds = read_folds(DataConfig(root=str(root)))
    assert folds is not None and list(folds) == ["1", "2", "3"]
    r = hpc_tools.run_cli("launch.py", "--config", str(hpc_tools.tiny), "--scratch", str(tmp_path / "scratch"),
                          "--set", f"data.root={root}", "--set", "data.synthetic.folds=3", "--executor", "local",
                          "--trials", "1", "--study", "folds", "--set", "hpc.final={seeds: 1, folds: all}", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "final runs: study folds/final, 3 member(s)" in r.stdout
    study_dir = tmp_path / "scratch" / "folds"
    final = optuna.load_study(study_name="folds/final", storage=f"sqlite:///{study_dir / 'study.db'}")
    assert [t.state for t in final.trials] == [TrialState.COMPLETE] * 3
    section = json.loads((study_dir / "results" / "results.json").read_text())["final"]
    assert (section["planned"], section["complete"]) == (3, 3)
    assert [m["fold"] for m in section["members"]] == ["1", "2", "3"]
    assert sorted(section["folds"]) == ["1", "2", "3"]
    for i, m in enumerate(section["members"]):
        assert m["test"]["tiles"] == rotation(folds, i)["test"] == folds[m["fold"]]  # its own fold's test tiles
        fold = section["folds"][m["fold"]]
        assert fold["members"] == [m["member"]] and fold["ensemble"] is None  # one member: no ensemble
        assert fold["metrics"]["miou"]["mean"] == pytest.approx(m["test"]["miou"]) and fold["metrics"]["miou"]["n"] == 1
    overall = section["summary"]["metrics"]["miou"]
    mious = [m["test"]["miou"] for m in section["members"]]
    assert overall["n"] == 3 and overall["mean"] == pytest.approx(sum(mious) / 3)
    assert section["summary"]["ensemble"] is None  # folds have different test tiles: ensembles are per fold


def test_slurm_search_with_two_seeds_runs_final_members_as_two_node_trials(slurm_env, pg_db_url, hpc_tools,
                                                                          tiny_args, tmp_path) -> None:
    """The real bed: the evaluation job submits the final array (same 2-node shape) and an evaluation job
    afterany it; that one evaluates, and results.json holds the members, their spread and the ensemble."""
    r = hpc_tools.run_cli("launch.py", *tiny_args, "--nodes", "2", "--trials", "2", "--workers", "1",
                          "--partition", slurm_env["partition"], "--time", "10", "--study", "finbed",
                          "--storage", pg_db_url, "--set", "hpc.final={seeds: 2}", timeout=120)
    assert r.returncode == 0, r.stderr
    array, eval_id = hpc_tools.job_ids_from(r.stdout)
    assert eval_id
    deadline = time.monotonic() + 900
    while hpc_tools.jobs_named("-finbed"):  # the search, its evaluation, the final array, the final evaluation
        assert time.monotonic() < deadline, f"jobs of finbed still queued: {hpc_tools.jobs_named('-finbed')}"
        time.sleep(2)
    study_dir = tmp_path / "scratch" / "finbed"
    final = optuna.load_study(study_name="finbed/final", storage=pg_db_url)
    assert [t.state for t in final.trials] == [TrialState.COMPLETE] * 2
    record = StudyRecord.read(final)
    assert record.final is not None and [m.seed for m in record.final.members] == [0, 1] and record.arrays
    logs = study_dir / "final" / "logs"
    final_array = record.arrays[0]
    for rank in (0, 1):  # the final runs are 2-node DDP trials like the search's
        text = (logs / f"{final_array}_{rank}_log.out").read_text()
        assert f"[rank {rank}/2 node n" in text and ("is member" in text) == (rank == 0), text[-2000:]
    section = json.loads((study_dir / "results" / "results.json").read_text())["final"]
    assert section["complete"] == 2 and section["summary"]["metrics"]["miou"]["n"] == 2
    assert section["summary"]["ensemble"] is not None
