"""hpc.requeue.QueuedVouching: which requeued jobs' trials live workers keep beating, and for how long."""

from __future__ import annotations

import time

from hpc.requeue import QueuedVouching


def test_only_waiting_jobs_are_vouched_for_and_squeue_failing_for_long_ends_it() -> None:
    v = QueuedVouching(period_s=0.0, unknown_for_s=0.3)
    queued = {1: "10_0", 2: "10_1", 3: "11"}
    states = {"10_0": "PENDING", "10_1": "RUNNING"}  # 11 has left the queue
    assert v.vouched(queued, states) == [1]  # RUNNING adopts its trial itself; gone: the heartbeat check decides
    assert v.vouched(queued, None) == [1, 2, 3]  # squeue failing: unknown is never "gone"...
    time.sleep(0.4)
    assert v.vouched(queued, None) == []  # ...but only for a bounded time
    assert v.vouched(queued, states) == [1]  # squeue answers again: the clock restarts
    assert v.vouched(queued, None) == [1, 2, 3]


def test_at_most_one_squeue_per_period() -> None:
    v = QueuedVouching(period_s=5.0, unknown_for_s=60.0)
    assert v.due() and not v.due()
