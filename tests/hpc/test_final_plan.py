"""Which final runs there are (hpc.final_plan), and the final study brought up to an extended search's ranking."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from dualseg.config import Config, DataConfig, to_dict
from hpc.final_plan import replan
from hpc.study import FinalMember, FinalPlan, StudyRecord, TrialRecord


def _member(trial: int, seed: int, rank: int = 0, lr: float = 0.1) -> FinalMember:
    return FinalMember("s", trial, rank, seed, {"train.lr": lr})


def test_replan_keeps_what_the_new_ranking_still_wants() -> None:
    plan = FinalPlan("s", [_member(1, 0), _member(1, 1), _member(2, 0, 1), _member(2, 1, 1)])
    # trial 2 is now the best, trial 1 dropped out of top 2, trial 5 entered: trial 2's members are kept
    fresh = [_member(2, 0), _member(2, 1), _member(5, 0, 1), _member(5, 1, 1)]
    new, added = replan(plan, fresh, reuse=True)
    assert added == [4, 5] and new.stale == [0, 1] and new.current() == [2, 3, 4, 5]
    assert [(m.parent_trial, m.rank) for m in new.members] == [(1, 0), (1, 0), (2, 0), (2, 0), (5, 1), (5, 1)]
    assert replan(new, fresh, reuse=True) == (new, [])  # the usual later evaluation job: nothing changes
    # a config or refit change: nothing is reused, every current member goes stale
    again, added = replan(new, fresh, reuse=False)
    assert added == [6, 7, 8, 9] and again.stale == [0, 1, 2, 3, 4, 5] and again.current() == [6, 7, 8, 9]
    # a member is kept only when it trains exactly the same run (seed, params, fold, epochs)
    moved, added = replan(plan, [_member(1, 0, lr=0.3), _member(1, 1)], reuse=True)
    assert added == [4] and moved.stale == [0, 2, 3]


def _complete(study: optuna.Study, value: float, lr: float) -> None:
    study.add_trial(optuna.create_trial(state=TrialState.COMPLETE, value=value, params={"train.lr": lr},
                                        distributions={"train.lr": FloatDistribution(1e-4, 1.0)}))


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_an_extended_search_gets_final_runs_of_its_new_best(backend: str, tmp_path: Path,
                                                           request: pytest.FixtureRequest) -> None:
    """A search extended with --allow-change after its final runs: the new best's members are enqueued,
    the old best's go stale (kept, not evaluated or claimed), status counts the current ones."""
    from hpc.final import claim_member, ensure_final_study, final_progress
    from hpc.storage import StorageURL, open_database
    from hpc.study import OpenStudy, schema

    url = StorageURL.parse(f"sqlite:///{tmp_path / 's.db'}" if backend == "sqlite"
                           else request.getfixturevalue("pg_db_url"))
    cfg = Config(data=DataConfig(root=str(tmp_path)), hpc={"final": {"seeds": 2}})
    record = StudyRecord(config=to_dict(cfg), trials=2, scratch=str(tmp_path), launch={"workers": 1})
    db = open_database(url, create_tables=True)
    try:
        parent = optuna.create_study(study_name="s", storage=db.storage)
        for k, v in record.launch_attrs().items():
            parent.set_user_attr(k, v)
        _complete(parent, 0.5, 0.1)
        _complete(parent, 0.7, 0.2)
        opened = OpenStudy(db, parent, StudyRecord.read(parent))
        first, created = ensure_final_study(opened, url, tmp_path)
        assert created and first.final is not None and first.final.current() == [0, 1]
        assert ensure_final_study(opened, url, tmp_path)[1] is False  # a later evaluation job: as planned
        final = db.load_study("s/final")
        final.tell(final.ask(), 0.4)  # the old best's members ran: member 0 complete,
        final.tell(final.ask(), state=TrialState.FAIL)  # member 1 failed for good
        _complete(parent, 0.3, 0.3)  # the extension found a better configuration
        second, added = ensure_final_study(opened, url, tmp_path)
        assert added and second.final is not None and second.final.stale == [0, 1]
        assert [(m.parent_trial, m.seed) for m in second.final.members[2:]] == [(2, 0), (2, 1)]
        assert second.trials == second.launch["trials"] == 4  # the workers count to the new total
        assert StudyRecord.read(db.load_study("s/final")) == second
        waiting = [t for t in final.get_trials(deepcopy=False) if t.state == TrialState.WAITING]
        assert sorted(TrialRecord.of(t).member for t in waiting) == [2, 3]
        assert final_progress(url, "s") == {"complete": 0, "running": 0, "waiting": 2, "failed": 0, "total": 2}
        # a trial of no member (a retry's replacement) claims a free current member, never the stale failed one
        final.tell(final.ask(), state=TrialState.FAIL)  # member 2's trial failed: member 2 is free again
        fresh = db.storage.create_new_trial(schema.study_id(final))
        # ... also by a worker started before the replan (it holds the first plan: members 0 and 1 only)
        overrides = claim_member(db, "s/final", schema.study_id(final), fresh, first.final, to_dict(cfg), 10.0)
        assert overrides["train.lr"] == 0.3 and overrides["train.seed"] == 0
        assert TrialRecord.of(db.storage.get_trial(fresh)).member == 2
    finally:
        db.close()

