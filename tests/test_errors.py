"""CLI error reporting: one line, secrets scrubbed, exit 2 for bad input and 1 otherwise."""

from __future__ import annotations

import pytest

from dualseg.errors import InputError, TrainingError, one_line, report_error


def test_worker_traceback_is_reduced_to_the_original_message() -> None:
    folded = InputError(
        "Caught InputError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\ndualseg.errors.InputError: tile a: s2/B05: all values are NaN\n'
    )
    assert one_line(folded) == "tile a: s2/B05: all values are NaN"


def test_report_error_codes_and_scrub(capsys: pytest.CaptureFixture[str]) -> None:
    assert report_error(InputError("bad --nodes 0")) == 2
    assert report_error(TrainingError("loss is NaN at epoch 3"), lambda m: m.replace("NaN", "***")) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: bad --nodes 0", "error: loss is *** at epoch 3"]
