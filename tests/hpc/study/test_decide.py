"""hpc.study.decide: the counting rule, every corner, without a database."""

from __future__ import annotations

import pytest

from hpc.study import Counts, decide


@pytest.mark.parametrize(("counts", "lost", "action", "reason"), [
    (Counts(), 0, "train", "new"),
    (Counts(complete=3, pruned=1), 0, "stop", "study has 4/4 finished trials"),
    (Counts(complete=5), 0, "stop", "study has 5/4 finished trials"),  # overshoot never asks more
    (Counts(complete=2, running=2), 0, "wait", "2 finished + 2 running"),
    (Counts(complete=2, running=1, waiting=3), 0, "train", "new"),  # waiting trials are popped by a train
    (Counts(complete=1, fail=3), 3, "stop", "3 failed trials (hpc.max_failed=3)"),
    (Counts(complete=1, fail=3), 2, "train", "new"),  # failures a retry continues do not count
    (Counts(complete=4, fail=9), 9, "stop", "study has 4/4 finished trials"),  # done wins over failures
])
def test_decide(counts: Counts, lost: int, action: str, reason: str) -> None:
    d = decide(counts, lost, target=4, max_failed=3)
    assert (d.action, d.reason) == (action, reason)


def test_the_rule_never_overshoots() -> None:
    """Any sequence of decisions, each followed by what it asked for, ends with exactly the target finished."""
    target = 5
    for workers in range(1, 8):
        c = Counts()
        while True:
            acts = [decide(c, 0, target, 10).action for _ in range(workers)]
            if "train" in acts:
                c = Counts(complete=c.complete, running=c.running + 1)
            elif c.running:
                c = Counts(complete=c.complete + 1, running=c.running - 1)
            else:
                break
            if c.finished + c.running > target:
                raise AssertionError(f"{workers} workers overshot: {c}")
        assert c.finished == target
