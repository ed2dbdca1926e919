"""Launchers for the gated-activation kernels, registered as torch.library custom ops.

``torch.ops.flashkernels.glu_fwd(gate, up, act)`` and ``glu_bwd(dout, gate, up, act)`` are
``triton_op``s; autograd is registered in autograd.py. ``act``: 0 silu (SwiGLU), 1 gelu tanh,
2 gelu exact (GeGLU). All tensors must be contiguous (the kernels index them flat); outputs are
contiguous, shaped like ``gate``.
"""
from __future__ import annotations

import torch
from torch.library import triton_op

from ..._interpreter import kernels_interpreted
from ..._launch import cached_launch

from .kernels.glu import glu_bwd_kernel, glu_fwd_kernel

ACTS = {"silu": 0, "gelu_tanh": 1, "gelu_none": 2}

# 1024 elements a program (8 a thread at 4 warps): a first guess for a memory-bound elementwise
# kernel, to be measured against the copy bandwidth with issue 4's benchmarks.
BLOCK = 1024
NUM_WARPS = 4


def _grid(n: int) -> tuple[int]:
    return ((n + BLOCK - 1) // BLOCK,)


def glu_fwd_impl(gate: torch.Tensor, up: torch.Tensor, act: int) -> torch.Tensor:
    """act(gate) * up for contiguous gate, up of one shape and dtype."""
    out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    n = gate.numel()
    if n:
        cached_launch(glu_fwd_kernel, _grid(n), gate, up, out, n, ACT=act, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return out


def glu_bwd_impl(dout: torch.Tensor, gate: torch.Tensor, up: torch.Tensor,
                 act: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(dgate, dup) for contiguous dout, gate, up of one shape."""
    dg = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    du = torch.empty(up.shape, dtype=up.dtype, device=up.device)
    n = gate.numel()
    if n:
        cached_launch(glu_bwd_kernel, _grid(n), dout, gate, up, dg, du, n, ACT=act, BLOCK=BLOCK,
                      num_warps=NUM_WARPS)
    return dg, du


# The custom ops are the same functions (flashkernels._eager: eager calls skip the dispatcher).
glu_fwd = triton_op("flashkernels::glu_fwd", mutates_args=())(glu_fwd_impl)
glu_bwd = triton_op("flashkernels::glu_bwd", mutates_args=())(glu_bwd_impl)


# Decided once, at import (see flashkernels._interpreter.kernels_interpreted).
KERNELS_INTERPRETED = kernels_interpreted(glu_fwd_kernel)
