"""Autograd for the attention custom ops, registered with ``torch.library.register_autograd``.

The ops stay pure (no autograd inside them), so torch.compile traces the forward and the
backward op into its graphs, and ``torch.ops.flashkernels.attn_fwd`` is differentiable when
called directly (what ``torch.library.opcheck`` checks).

lse is differentiable too: d lse / d scores = P, so an incoming dlse folds into the backward's
row term, dS = P * (dP - (Delta - dlse)).

Eager calls (not under torch.compile) take a shorter road to the same launcher functions
(flashkernels._eager): through the dispatcher a call cost ~0.6 ms of host time with grad.
"""
from __future__ import annotations

import torch

from ..._eager import eager_call
from . import launch  # registers torch.ops.flashkernels.attn_fwd / attn_bwd

# (for api._triton_entry, which torch.compile traces: importing it from launch there made torch 2.11's dynamo stop
# with "Bad import result", launch's module type being a subclass (launch._Switches), session 29)
KERNELS_INTERPRETED = launch.KERNELS_INTERPRETED


_N_INPUTS = 19  # attn_fwd's arguments


def _setup_context(ctx, inputs, output):
    (q, k, v, mask, scale, causal, causal_offset, bshd, allow_tf32, window_left, window_right, softcap,
     alibi_slopes, sink, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, deterministic) = inputs
    out, lse = output
    # Unused output gradients arrive as None, not as zeros: most callers never touch lse, and a
    # materialised zero dlse cost 4 bytes a row plus a subtraction.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(q, k, v, out, lse, mask, alibi_slopes, sink, cu_seqlens_q, cu_seqlens_k)
    ctx.args = (scale, causal, causal_offset, bshd, allow_tf32, window_left, window_right, softcap)
    ctx.maxlens = (max_seqlen_q, max_seqlen_k)
    ctx.deterministic = deterministic


def _backward(ctx, dout, dlse, attn_bwd=None):
    q, k, v, out, lse, mask, alibi_slopes, sink, cu_q, cu_k = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    elif dout.stride(-1) != 1:
        dout = dout.contiguous()
    attn_bwd = attn_bwd or torch.ops.flashkernels.attn_bwd
    dq, dk, dv, dsink = attn_bwd(dout, q, k, v, out, lse, dlse, mask, *ctx.args,
                                 alibi_slopes, sink, cu_q, cu_k, *ctx.maxlens, ctx.deterministic)
    # Gradients for q, k, v and sink; none for the mask, the ALiBi slopes (both refused by the
    # API when they require grad), the sequence offsets and the plain arguments.
    grads = [None] * _N_INPUTS
    grads[0], grads[1], grads[2] = dq, dk, dv
    grads[13] = dsink if sink is not None else None
    return tuple(grads)


torch.library.register_autograd("flashkernels::attn_fwd", _backward, setup_context=_setup_context)


_attn_fwd = eager_call(torch.ops.flashkernels.attn_fwd, launch.attn_fwd_impl, _setup_context,
                      lambda ctx, dout, dlse: _backward(ctx, dout, dlse, launch.attn_bwd_impl), "FlashAttention")


def flash_attention(q, k, v, mask, scale, causal, causal_offset, bshd, allow_tf32,
                    window_left=-1, window_right=-1, softcap=0.0, alibi_slopes=None, sink=None,
                    cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0, deterministic=False):
    """Returns (out, lse) through the Triton kernels, differentiable in q, k, v and sink.
    ``deterministic``: the backward gives the same bits on every run (on Hopper the Gluon
    backward adds dQ with atomics, in no fixed order; this keeps the Triton backward)."""
    args = (q, k, v, mask, scale, causal, causal_offset, bshd, allow_tf32, window_left, window_right, softcap,
            alibi_slopes, sink, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, bool(deterministic))
    return _attn_fwd(*args)


__all__ = ["KERNELS_INTERPRETED", "flash_attention", "launch"]
