"""Warm-up + cosine schedule shape."""

from __future__ import annotations

import pytest
import torch

from dualseg.train.schedule import build_scheduler, warmup_cosine


def test_warmup_then_cosine_shape() -> None:
    total, warm = 100, 10
    lrs = [warmup_cosine(s, total, warm) for s in range(total)]
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))  # rising warm-up
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay
    assert lrs[55] == pytest.approx(0.5, abs=0.02)  # half-way through the cosine
    assert warmup_cosine(total, total, warm) == pytest.approx(0.0)


def test_scheduler_steps_optimizer_lr_and_roundtrips() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-2)
    sched = build_scheduler(opt, total_steps=20, warmup_steps=4)
    seen = []
    for _ in range(8):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[:4] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2])
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    sched2 = build_scheduler(opt2, total_steps=20, warmup_steps=4)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    sched.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
