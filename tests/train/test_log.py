"""Log lines carry rank/node/trial/epoch."""

from __future__ import annotations

import io
import logging

import pytest

from dualseg.train.log import set_log_context, setup_logging


def test_context_in_every_line() -> None:
    buf = io.StringIO()
    handler = setup_logging(logging.INFO, stream=buf)
    try:
        set_log_context(rank=1, world=4, node=0, trial=7, epoch=3)
        logging.getLogger("dualseg.test").info("hello")
        set_log_context(trial=None, epoch=None)
        logging.getLogger("hpc.test").warning("bye")
    finally:
        logging.getLogger().removeHandler(handler)
        set_log_context(rank=None, world=None, node=None)
    first, second = buf.getvalue().splitlines()
    assert "[rank 1/4 node 0 trial 7 epoch 3] INFO dualseg.test: hello" in first
    assert "trial - epoch -] WARNING hpc.test: bye" in second


def test_setup_is_idempotent_and_rejects_unknown_fields() -> None:
    h1 = setup_logging()
    h2 = setup_logging()
    try:
        assert h1 not in logging.getLogger().handlers and h2 in logging.getLogger().handlers
    finally:
        logging.getLogger().removeHandler(h2)
    with pytest.raises(ValueError, match="unknown"):
        set_log_context(epochs=1)
