"""The one AdamW: fused on CUDA only, and resuming keeps this device's choice."""

from __future__ import annotations

import copy

import pytest
import torch

from dualseg.train.optim import build_optimizer, load_optimizer_state, use_fused


def test_fused_only_when_every_parameter_is_a_cuda_float() -> None:
    assert not use_fused([torch.zeros(2)])
    assert not use_fused([])
    assert use_fused([torch.zeros(2, device="meta")]) is False
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(2))], lr=1e-3, weight_decay=0.0)
    assert isinstance(opt, torch.optim.AdamW) and not opt.param_groups[0]["fused"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/gpu_check.sh runs it)")
def test_fused_on_cuda() -> None:
    p = torch.nn.Parameter(torch.zeros(2, device="cuda"))
    assert build_optimizer([p], lr=1e-3, weight_decay=0.0).param_groups[0]["fused"]
    assert not use_fused([p, torch.nn.Parameter(torch.zeros(2))])  # one CPU parameter: not all qualify


def _stepped(fused: bool | None) -> tuple[torch.nn.Parameter, torch.optim.AdamW]:
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    opt = torch.optim.AdamW([p], lr=1e-2, fused=fused)
    for _ in range(3):
        p.grad = torch.randn(5)
        opt.step()
    return p, opt


def test_a_fused_state_resumes_plain_and_continues_exactly() -> None:
    """A state saved by a fused optimizer (a GPU run; CPU fused stands in here) resumes in the plain one
    without turning it fused, and the next step equals the plain optimizer's own."""
    _, fused = _stepped(True)
    p_ref, plain = _stepped(None)
    q = torch.nn.Parameter(p_ref.detach().clone())
    resumed = build_optimizer([q], lr=1e-2, weight_decay=1e-2)
    load_optimizer_state(resumed, fused.state_dict())
    assert not resumed.param_groups[0]["fused"]
    assert fused.state_dict()["param_groups"][0]["fused"]  # the saved state is not modified
    load_optimizer_state(resumed, copy.deepcopy(plain.state_dict()))  # as from a checkpoint file
    g = torch.randn(5)
    for p, opt in ((p_ref, plain), (q, resumed)):
        p.grad = g.clone()
        opt.step()
    assert torch.equal(p_ref, q)


def test_moments_saved_from_nhwc_weights_take_the_resumed_weights_layout() -> None:
    """A checkpoint keeps strides: moments of channels_last weights resumed into contiguous ones (or back)
    are re-laid like the parameters, values unchanged (the fused kernel reads them as one flat layout)."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3, 2, 2).contiguous(memory_format=torch.channels_last))
    opt = torch.optim.AdamW([w], lr=1e-2)
    w.grad = torch.randn(4, 3, 2, 2).contiguous(memory_format=torch.channels_last)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    assert saved["state"][0]["exp_avg"].stride() == w.stride() != (12, 4, 2, 1)
    q = torch.nn.Parameter(w.detach().contiguous())
    resumed = build_optimizer([q], lr=1e-2, weight_decay=1e-2)
    load_optimizer_state(resumed, saved)
    for key in ("exp_avg", "exp_avg_sq"):
        got = resumed.state[q][key]
        assert got.stride() == q.stride() and torch.equal(got, saved["state"][0][key])
