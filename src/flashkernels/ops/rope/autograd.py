"""Autograd for the RoPE custom ops (``torch.library.register_autograd``).

The rotation is orthogonal: the backward is the same kernel with ``conj`` flipped (the
transpose, i.e. the rotation by -theta). No gradient flows to cos/sin (api.py refuses them).
"""
from __future__ import annotations

import torch
from torch.autograd.graph import increment_version

from ..._eager import eager_call
from . import launch  # registers torch.ops.flashkernels.rope / rope_qk / rope_inplace


def _last_dim_unit(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _setup_rope(ctx, inputs, output):
    x, cos, sin, pos, *rest = inputs
    ctx.save_for_backward(cos, sin, pos)
    ctx.rest = rest


def _backward_rope(ctx, dout, rope_op=None):
    cos, sin, pos = ctx.saved_tensors
    pos_mode, offset, seq_dim, interleaved, full_table, conj = ctx.rest
    rope_op = rope_op or torch.ops.flashkernels.rope
    dx = rope_op(_last_dim_unit(dout), cos, sin, pos, pos_mode, offset, seq_dim, interleaved, full_table, not conj)
    return dx, None, None, None, None, None, None, None, None, None


torch.library.register_autograd("flashkernels::rope", _backward_rope, setup_context=_setup_rope)
# Eager: the launchers themselves, forward and backward (through the op, the backward cost
# ~0.1 ms of host time on the H100 machine, as long as its kernel; flashkernels._eager).
_rope = eager_call(torch.ops.flashkernels.rope, launch.rope_impl, _setup_rope,
                   lambda ctx, dout: _backward_rope(ctx, dout, launch.rope_impl), "RoPE")


def _setup_qk(ctx, inputs, output):
    q, k, cos, sin, pos, *rest = inputs
    ctx.save_for_backward(cos, sin, pos)
    ctx.rest = rest
    ctx.shapes = (q.shape, k.shape)


def _backward_qk(ctx, dq, dk, rope_qk_op=None):
    cos, sin, pos = ctx.saved_tensors
    pos_mode, seq_dim, full_table, conj = ctx.rest
    dq = torch.zeros(ctx.shapes[0], dtype=cos.dtype, device=cos.device) if dq is None else dq
    dk = torch.zeros(ctx.shapes[1], dtype=cos.dtype, device=cos.device) if dk is None else dk
    rope_qk_op = rope_qk_op or torch.ops.flashkernels.rope_qk
    gq, gk = rope_qk_op(_last_dim_unit(dq), _last_dim_unit(dk), cos, sin, pos, pos_mode, seq_dim, full_table,
                        not conj)
    return gq, gk, None, None, None, None, None, None, None


torch.library.register_autograd("flashkernels::rope_qk", _backward_qk, setup_context=_setup_qk)
_rope_qk = eager_call(torch.ops.flashkernels.rope_qk, launch.rope_qk_impl, _setup_qk,
                      lambda ctx, dq, dk: _backward_qk(ctx, dq, dk, launch.rope_qk_impl), "RoPEQK")


def _rope_inplace_eager(x, *args):
    launch.rope_inplace_impl(x, *args)
    # What the op's declared mutation does: autograd sees x changed (a graph that saved x for
    # its backward then refuses to run instead of using the rotated values).
    increment_version(x)


_rope_inplace = eager_call(torch.ops.flashkernels.rope_inplace, _rope_inplace_eager)


def rope(x, cos, sin, pos, pos_mode, offset, seq_dim, interleaved, full_table, in_place=False):
    """The rotation through the Triton kernel, differentiable in x (new tensor) or in place."""
    if in_place:
        _rope_inplace(x, cos, sin, pos, pos_mode, offset, seq_dim, interleaved, full_table, False)
        return x
    return _rope(x, cos, sin, pos, pos_mode, offset, seq_dim, interleaved, full_table, False)


def rope_qk(q, k, cos, sin, pos, pos_mode, seq_dim):
    """Hugging Face's rotation of q and k in one launch, differentiable in q and k."""
    return _rope_qk(q, k, cos, sin, pos, pos_mode, seq_dim, True, False)


__all__ = ["rope", "rope_qk", "launch"]
