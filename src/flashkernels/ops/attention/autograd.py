"""Autograd for the attention custom ops, registered with ``torch.library.register_autograd``.

The ops stay pure (no autograd inside them), so torch.compile traces the forward and the
backward op into its graphs, and ``torch.ops.flashkernels.attn_fwd`` is differentiable when
called directly (what ``torch.library.opcheck`` checks).

lse is differentiable too: d lse / d scores = P, so an incoming dlse folds into the backward's
row term, dS = P * (dP - (Delta - dlse)).

Eager calls (not under torch.compile) take a shorter road to the same launcher functions: a
``torch.autograd.Function`` when a gradient is needed, a direct call otherwise. Going through the
dispatcher cost ~0.2-0.4 ms of host time a call (torch.library's autograd wrapper rebuilds the
18-argument schema's default list on every call), more than the kernel itself at small shapes.
"""
from __future__ import annotations

import torch

from . import launch  # registers torch.ops.flashkernels.attn_fwd / attn_bwd


_N_INPUTS = 18  # attn_fwd's arguments


def _setup_context(ctx, inputs, output):
    (q, k, v, mask, scale, causal, causal_offset, bshd, allow_tf32, window_left, window_right, softcap,
     alibi_slopes, sink, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k) = inputs
    out, lse = output
    # Unused output gradients arrive as None, not as zeros: most callers never touch lse, and a
    # materialised zero dlse cost 4 bytes a row plus a subtraction.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(q, k, v, out, lse, mask, alibi_slopes, sink, cu_seqlens_q, cu_seqlens_k)
    ctx.args = (scale, causal, causal_offset, bshd, allow_tf32, window_left, window_right, softcap)
    ctx.maxlens = (max_seqlen_q, max_seqlen_k)


def _backward(ctx, dout, dlse, attn_bwd=None):
    q, k, v, out, lse, mask, alibi_slopes, sink, cu_q, cu_k = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    elif dout.stride(-1) != 1:
        dout = dout.contiguous()
    attn_bwd = attn_bwd or torch.ops.flashkernels.attn_bwd
    dq, dk, dv, dsink = attn_bwd(dout, q, k, v, out, lse, dlse, mask, *ctx.args,
                                 alibi_slopes, sink, cu_q, cu_k, *ctx.maxlens)
    # Gradients for q, k, v and sink; none for the mask, the ALiBi slopes (both refused by the
    # API when they require grad), the sequence offsets and the plain arguments.
    grads = [None] * _N_INPUTS
    grads[0], grads[1], grads[2] = dq, dk, dv
    grads[13] = dsink if sink is not None else None
    return tuple(grads)


torch.library.register_autograd("flashkernels::attn_fwd", _backward, setup_context=_setup_context)


class _EagerFlashAttention(torch.autograd.Function):
    """The registered autograd above, for eager calls, around the launcher functions."""

    @staticmethod
    def forward(ctx, *inputs):
        output = launch.attn_fwd_impl(*inputs)
        _setup_context(ctx, inputs, output)
        return output

    @staticmethod
    def backward(ctx, dout, dlse):
        return _backward(ctx, dout, dlse, launch.attn_bwd_impl)


def flash_attention(q, k, v, mask, scale, causal, causal_offset, bshd, allow_tf32,
                    window_left=-1, window_right=-1, softcap=0.0, alibi_slopes=None, sink=None,
                    cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0):
    """Returns (out, lse) through the Triton kernels, differentiable in q, k, v and sink."""
    args = (q, k, v, mask, scale, causal, causal_offset, bshd, allow_tf32, window_left, window_right, softcap,
            alibi_slopes, sink, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    if torch.compiler.is_compiling():
        return torch.ops.flashkernels.attn_fwd(*args)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad
                                    or (sink is not None and sink.requires_grad)):
        return _EagerFlashAttention.apply(*args)
    return launch.attn_fwd_impl(*args)


__all__ = ["flash_attention", "launch"]
