"""The one AdamW of training: fused on CUDA, the plain single-tensor loop on CPU.

``fused=True`` runs the whole update as one multi-tensor CUDA kernel per dtype group instead of a
loop of small kernels per parameter (a model of this size has ~100 small tensors, so the step is
launch-bound). PyTorch supports it for floating-point parameters on CUDA; every parameter must
qualify, so it is chosen only when all do. CPU stays on the plain implementation the CPU tests and
their exactness were written against. The choice is a property of *this* run's device, not of the
checkpoint: :func:`load_optimizer_state` keeps it when resuming a state saved on another device.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # the CUDA fused kernels' dtypes


def use_fused(params: Iterable[torch.Tensor]) -> bool:
    """True when every parameter is a floating-point CUDA tensor of a dtype the fused kernel takes."""
    ps = list(params)
    return bool(ps) and all(p.device.type == "cuda" and p.dtype in FUSED_DTYPES for p in ps)


def build_optimizer(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over ``params``: ``fused=True`` when :func:`use_fused` says so, else the default (plain on CPU)."""
    ps = list(params)
    if use_fused(ps):
        return torch.optim.AdamW(ps, lr=lr, weight_decay=weight_decay, fused=True)
    return torch.optim.AdamW(ps, lr=lr, weight_decay=weight_decay)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)`` that keeps this optimizer's ``fused``/``foreach`` choice.

    ``load_state_dict`` takes every hyperparameter from the saved groups, ``fused`` included: a CUDA
    checkpoint resumed on CPU would turn the CPU step fused, a CPU one resumed on a GPU unfused. The
    saved groups get this optimizer's flags first, so ``step`` is also placed as the current
    implementation expects (on the parameter's device as float32 when fused), and the moments get the
    parameters' memory layout (the checkpoint keeps the strides of the run that saved it).
    """
    mine = optimizer.param_groups
    groups = [dict(g) for g in state["param_groups"]]
    for saved, now in zip(groups, mine):
        for key in ("fused", "foreach"):
            if key in now:
                saved[key] = now[key]
    optimizer.load_state_dict({**state, "param_groups": groups})
    for group in optimizer.param_groups:  # moments saved from NHWC weights (train.memory_format) into NCHW ones, or
        for p in group["params"]:  # back: the fused kernel walks param, grad and moments as one flat layout
            st = optimizer.state.get(p, {})
            for key, v in st.items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    st[key] = torch.empty_like(p).copy_(v)
