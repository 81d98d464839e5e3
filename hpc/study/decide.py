"""The counting rule of the search, as a pure function of the study's counts.

``finished + running >= target`` means "wait", never "ask": any number of workers deciding at once
(each under the study lock) can neither overshoot nor undershoot the requested number of finished
trials. Kept free of I/O so that every corner is a unit test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hpc.study.counts import Counts


@dataclass(frozen=True)
class Decision:
    action: Literal["train", "wait", "stop"]
    reason: str


def decide(counts: Counts, lost: int, target: int, max_failed: int) -> Decision:
    """What a job does next: ``lost`` is the number of failed trials no retry continues."""
    done, running = counts.finished, counts.running
    if done >= target:
        return Decision("stop", f"study has {done}/{target} finished trials")
    if lost >= max_failed:
        return Decision("stop", f"{lost} failed trials (hpc.max_failed={max_failed})")
    if done + running >= target:
        return Decision("wait", f"{done} finished + {running} running")
    return Decision("train", "new")
