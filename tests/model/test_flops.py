"""Parameter counting and FLOP estimates used for MFU in the benchmarks."""

from __future__ import annotations

import torch

from dualseg.config import ModelConfig
from dualseg.model import build_model, count_parameters, estimate_flops


def test_count_parameters_counts_shared_once_and_skips_frozen():
    lin = torch.nn.Linear(3, 4)
    seq = torch.nn.Sequential(lin, lin, torch.nn.Linear(4, 2))
    assert count_parameters(seq) == 16 + 10
    seq[2].weight.requires_grad_(False)
    assert count_parameters(seq) == 16 + 2
    assert count_parameters(seq, trainable_only=False) == 26


def test_forward_flops_match_hand_count(tiny):
    """levels=1, s1 only, mean: conv Cin->W and W->W per frame, then the 1x1 head."""
    cfg = ModelConfig(levels=1, base_width=8, temporal="mean", streams="s1", dropout=0.0)
    model = build_model(cfg, 2, 3, 5)
    b, t, h = 2, 3, 16
    batch = tiny.batch(b=b, t1=t, t2=1, size=h)
    expected = 2 * b * t * h * h * 9 * (2 * 8 + 8 * 8) + 2 * b * h * h * 8 * 5
    assert estimate_flops(model, batch, backward=False) == expected


def test_flops_scale_with_batch_and_backward_costs_about_twice_forward(tiny):
    model = tiny.model()
    params_before = [p.detach().clone() for p in model.parameters()]
    f2 = estimate_flops(model, tiny.batch(b=2), backward=False)
    f4 = estimate_flops(model, tiny.batch(b=4), backward=False)
    total = estimate_flops(model, tiny.batch(b=2))
    assert f4 == 2 * f2
    assert 2.5 * f2 < total < 3.5 * f2
    assert all(p.device.type == "cpu" and p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(params_before, model.parameters()))


def test_padded_dates_are_not_counted(tiny):
    cfg = ModelConfig(levels=1, base_width=8, temporal="mean", streams="s1", dropout=0.0)
    model = build_model(cfg, 2, 3, 5)
    b, t, h = 2, 4, 16
    batch = tiny.batch(b=b, t1=t, t2=1, size=h)
    batch["s1_pad"][0, 1:] = True
    batch["s1_pad"][1, 3] = True  # 4 of 8 frames valid
    expected = 2 * 4 * h * h * 9 * (2 * 8 + 8 * 8) + 2 * b * h * h * 8 * 5
    assert estimate_flops(model, batch, backward=False) == expected
