"""Autograd for the gated-activation custom ops (``torch.library.register_autograd``)."""
from __future__ import annotations

import torch

from ..._eager import eager_call
from . import launch  # registers torch.ops.flashkernels.glu_fwd / glu_bwd


def _setup_context(ctx, inputs, output):
    gate, up, act = inputs
    ctx.save_for_backward(gate, up)
    ctx.act = act


def _backward(ctx, dout, glu_bwd=None):
    gate, up = ctx.saved_tensors
    glu_bwd = glu_bwd or torch.ops.flashkernels.glu_bwd
    dg, du = glu_bwd(dout.contiguous(), gate, up, ctx.act)
    return dg, du, None


torch.library.register_autograd("flashkernels::glu_fwd", _backward, setup_context=_setup_context)
# Eager: the launchers themselves, forward and backward (flashkernels._eager).
_glu_fwd = eager_call(torch.ops.flashkernels.glu_fwd, launch.glu_fwd_impl, _setup_context,
                      lambda ctx, dout: _backward(ctx, dout, launch.glu_bwd_impl), "GLU")


def gated_activation(gate, up, act: int):
    """act(gate) * up through the Triton kernels, differentiable in gate and up."""
    return _glu_fwd(gate, up, act)


__all__ = ["gated_activation", "launch"]
