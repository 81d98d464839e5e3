"""Progress bars only on rank 0 and a terminal (or when forced)."""

from __future__ import annotations

import pytest

from dualseg.train.progress import progress_bar


def test_bar_only_when_enabled_and_wanted(monkeypatch: pytest.MonkeyPatch) -> None:
    items = [1, 2, 3]
    monkeypatch.setenv("DUALSEG_PROGRESS", "1")
    bar = progress_bar(items, enabled=True, desc="x", total=3)
    assert bar is not items and list(bar) == items
    bar.close()
    assert progress_bar(items, enabled=False, desc="x") is items  # other ranks: never
    monkeypatch.setenv("DUALSEG_PROGRESS", "0")
    assert progress_bar(items, enabled=True, desc="x") is items
    monkeypatch.delenv("DUALSEG_PROGRESS")
    assert progress_bar(items, enabled=True, desc="x") is items  # pytest captures stderr: not a TTY
