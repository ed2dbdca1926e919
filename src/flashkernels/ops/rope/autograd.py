"""Autograd for the RoPE custom ops (``torch.library.register_autograd``).

The rotation is orthogonal: the backward is the same kernel with ``conj`` flipped (the
transpose, i.e. the rotation by -theta). No gradient flows to cos/sin (api.py refuses them).
"""
from __future__ import annotations

import torch

from ..._eager import eager_call
from . import launch  # registers torch.ops.flashkernels.rope / rope_qk / rope_inplace


def _last_dim_unit(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _setup_rope(ctx, inputs, output):
    x, cos, sin, pos, *rest = inputs
    ctx.save_for_backward(cos, sin, pos)
    ctx.rest = rest


def _backward_rope(ctx, dout):
    cos, sin, pos = ctx.saved_tensors
    pos_mode, offset, seq_dim, interleaved, full_table, conj = ctx.rest
    dx = torch.ops.flashkernels.rope(_last_dim_unit(dout), cos, sin, pos, pos_mode, offset, seq_dim,
                                     interleaved, full_table, not conj)
    return dx, None, None, None, None, None, None, None, None, None


torch.library.register_autograd("flashkernels::rope", _backward_rope, setup_context=_setup_rope)
_rope = eager_call(torch.ops.flashkernels.rope, launch.rope_impl, _setup_rope, _backward_rope, "RoPE")


def _setup_qk(ctx, inputs, output):
    q, k, cos, sin, pos, *rest = inputs
    ctx.save_for_backward(cos, sin, pos)
    ctx.rest = rest
    ctx.shapes = (q.shape, k.shape)


def _backward_qk(ctx, dq, dk):
    cos, sin, pos = ctx.saved_tensors
    pos_mode, seq_dim, full_table, conj = ctx.rest
    dq = torch.zeros(ctx.shapes[0], dtype=cos.dtype, device=cos.device) if dq is None else dq
    dk = torch.zeros(ctx.shapes[1], dtype=cos.dtype, device=cos.device) if dk is None else dk
    gq, gk = torch.ops.flashkernels.rope_qk(_last_dim_unit(dq), _last_dim_unit(dk), cos, sin, pos,
                                            pos_mode, seq_dim, full_table, not conj)
    return gq, gk, None, None, None, None, None, None, None


torch.library.register_autograd("flashkernels::rope_qk", _backward_qk, setup_context=_setup_qk)
_rope_qk = eager_call(torch.ops.flashkernels.rope_qk, launch.rope_qk_impl, _setup_qk, _backward_qk, "RoPEQK")


def rope(x, cos, sin, pos, pos_mode, offset, seq_dim, interleaved, full_table, in_place=False):
    """The rotation through the Triton kernel, differentiable in x (new tensor) or in place."""
    if in_place:
        torch.ops.flashkernels.rope_inplace(x, cos, sin, pos, pos_mode, offset, seq_dim, interleaved,
                                            full_table, False)
        return x
    return _rope(x, cos, sin, pos, pos_mode, offset, seq_dim, interleaved, full_table, False)


def rope_qk(q, k, cos, sin, pos, pos_mode, seq_dim):
    """Hugging Face's rotation of q and k in one launch, differentiable in q and k."""
    return _rope_qk(q, k, cos, sin, pos, pos_mode, seq_dim, True, False)


__all__ = ["rope", "rope_qk", "launch"]
