"""Autograd for the RMSNorm custom ops, registered with ``torch.library.register_autograd``.

The ops stay pure, so torch.compile traces forward and backward ops into its graphs. With a
residual, h = x + residual feeds both the norm and the caller, so the gradient reaching h is
dh + d(norm)/dh, and it is the gradient of both x and residual: one tensor returned for both, as
torch's add does (autograd copies it where two leaves would otherwise share one .grad). The ops
take the caller's (..., N) tensors themselves: a view between them (the (M, N) rows the kernels
walk) would hand AccumulateGrad two distinct views of one storage, and two leaves' .grad would
alias.
"""
from __future__ import annotations

import torch

from ..._eager import eager_call
from . import launch  # registers torch.ops.flashkernels.rms_norm_fwd / rms_norm_bwd


def _setup_context(ctx, inputs, output):
    x, weight, residual, eps, offset, mode = inputs
    y, h, rstd = output
    # Unused output gradients (rstd's always, h's without a residual) arrive as None instead of
    # materialised zeros (a fill kernel and its launch each); _backward handles None.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(h if residual is not None else x, weight, rstd)
    ctx.has_residual = residual is not None
    ctx.offset = offset


def _backward(ctx, dy, dh, drstd, rms_norm_bwd=None):
    xn, weight, rstd = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(xn)
    dh = dh if ctx.has_residual else None
    rms_norm_bwd = rms_norm_bwd or torch.ops.flashkernels.rms_norm_bwd
    dx, dw = rms_norm_bwd(dy, xn, weight, rstd, dh, ctx.offset)
    return (dx, dw if weight is not None else None, dx if ctx.has_residual else None, None, None, None)


torch.library.register_autograd("flashkernels::rms_norm_fwd", _backward, setup_context=_setup_context)
# Eager: the launchers themselves, forward and backward (through the op, the backward alone cost
# ~0.1 ms of host time on the H100 machine: more than its kernel).
_rms_norm_fwd = eager_call(torch.ops.flashkernels.rms_norm_fwd, launch.rms_norm_fwd_impl, _setup_context,
                           lambda ctx, dy, dh, drstd: _backward(ctx, dy, dh, drstd, launch.rms_norm_bwd_impl),
                           "RMSNorm")


def rms_norm_triton(x, weight, residual, eps, offset, mode):
    """(y, h, rstd) for x (..., N) through the Triton kernels, differentiable in x, weight,
    residual."""
    return _rms_norm_fwd(x, weight, residual, eps, offset, mode)


__all__ = ["rms_norm_triton", "launch"]
