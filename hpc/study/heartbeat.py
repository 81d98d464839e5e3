"""A trial's heartbeat while it trains, and its null twin for ranks that do not talk to the database.

Only rank 0 connects; the other ranks get :class:`NullHeartbeat`, so the training loop has one shape.
An unreachable database is waited out, never fatal: a missed beat costs nothing until ``grace_period``,
and after an outage no trial is failed within one grace period (:data:`hpc.storage.OUTAGE`).
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from hpc.storage import OUTAGE, Database, is_connection_error

log = logging.getLogger("hpc.study")


class Heartbeat:
    """Beats every ``interval`` s in a thread (the trial was created with its first heartbeat)."""

    def __init__(self, db: Database, trial_id: int, interval: float) -> None:
        self._db, self._trial_id, self._interval = db, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)

    def beat(self) -> None:
        self._db.rdb.record_heartbeat(self._trial_id)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.beat()
                OUTAGE.recovered()
            except Exception as exc:  # noqa: BLE001 - keep beating; the next beat may get through
                if is_connection_error(exc):
                    OUTAGE.failed("heartbeat", exc, self._db.budget_s)
                else:
                    log.warning("heartbeat failed (%s); retrying", type(exc).__name__)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class NullHeartbeat(Heartbeat):
    """For ranks without a database connection: beats nothing."""

    def __init__(self) -> None:
        pass

    def __enter__(self) -> NullHeartbeat:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        return None
