"""read_json: a missing or malformed user file is one InputError naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualseg.errors import InputError
from dualseg.io import read_json


def test_read_json(tmp_path: Path) -> None:
    good = tmp_path / "a.json"
    good.write_text('{"train": ["t1"]}')
    assert read_json(good, "splits") == {"train": ["t1"]}
    with pytest.raises(InputError, match=r"^splits: file not found: .*nope\.json$"):
        read_json(tmp_path / "nope.json", "splits")
    bad = tmp_path / "b.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match=r"^pastis: .*b\.json: not valid JSON"):
        read_json(bad, "pastis")
