"""autograd.Function over the attention custom ops (kept outside them, so torch.compile traces
both the forward and the backward op into its graph)."""
from __future__ import annotations

import torch

from . import launch


class FlashAttention(torch.autograd.Function):
    """out, lse = attention(q, k, v); gradients for q, k, v (lse is not differentiable)."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale, causal, causal_offset, bshd, allow_tf32):
        out, lse = torch.ops.flashkernels.attn_fwd(q, k, v, mask, scale, causal, causal_offset,
                                                   bshd, allow_tf32)
        ctx.save_for_backward(q, k, v, out, lse, mask)
        ctx.args = (scale, causal, causal_offset, bshd, allow_tf32)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, mask = ctx.saved_tensors
        if dout.stride(-1) != 1:
            dout = dout.contiguous()
        dq, dk, dv = torch.ops.flashkernels.attn_bwd(dout, q, k, v, out, lse, mask, *ctx.args)
        return dq, dk, dv, None, None, None, None, None, None


def flash_attention(q, k, v, mask, scale, causal, causal_offset, bshd, allow_tf32):
    """Returns (out, lse) through the Triton kernels, differentiable in q, k, v."""
    return FlashAttention.apply(q, k, v, mask, scale, causal, causal_offset, bshd, allow_tf32)


__all__ = ["flash_attention", "launch"]
