"""Thin ``torch.nn`` modules over the functional API (``flashkernels.rms_norm``, ``swiglu``,
``apply_rotary_emb``).

The backend follows the functional calls: ``$FLASHKERNELS_BACKEND``, else "auto" (Triton on a
CUDA GPU, PyTorch on a CPU).
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops.rms_norm.api import rms_norm
from ..ops.rope.api import apply_rotary_emb
from ..ops.swiglu.api import swiglu

__all__ = ["RMSNorm", "RotaryEmbedding", "SwiGLUMLP"]


class RMSNorm(nn.Module):
    """``y = x / sqrt(mean(x², -1) + eps) * (offset + weight)`` over the last dim.

    ``weight`` (hidden_size,) starts at ones, or at zeros when ``offset == 1.0`` (Gemma stores
    w - 1, so the initial scale is 1 either way). ``forward(x, residual=None)`` returns y, or
    ``(y, x + residual)`` when a residual is given (fused). See :func:`flashkernels.rms_norm` for
    ``casting_mode``.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6, offset: float = 0.0, casting_mode: str = "llama",
                 device=None, dtype=None):
        super().__init__()
        init = torch.zeros if offset == 1.0 else torch.ones
        self.weight = nn.Parameter(init(hidden_size, device=device, dtype=dtype))
        self.eps = eps
        self.offset = offset
        self.casting_mode = casting_mode

    def forward(self, x, residual=None):
        return rms_norm(x, self.weight, self.eps, residual=residual, offset=self.offset,
                        casting_mode=self.casting_mode)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[0]}, eps={self.eps}, offset={self.offset}, "
                f"casting_mode={self.casting_mode!r}")


class SwiGLUMLP(nn.Module):
    """Llama's MLP: ``down_proj(silu(gate_proj(x)) * up_proj(x))`` with the gated product fused
    (:func:`flashkernels.swiglu`). Parameter names match transformers' LlamaMLP."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False, device=None, dtype=None):
        super().__init__()
        kw = dict(bias=bias, device=device, dtype=dtype)
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, **kw)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, **kw)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, **kw)

    def forward(self, x):
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


class RotaryEmbedding(nn.Module):
    """Rotary position embedding with the standard frequencies, applied with
    :func:`flashkernels.apply_rotary_emb` (flash-attn layout, x (B, S, H, D)).

    ``inv_freq[j] = base ** (-2j / dim)`` for j < dim / 2; the tables ``cos[p, j] = cos(p *
    inv_freq[j])`` and ``sin`` (max_seqlen, dim / 2) are built in float64, stored as float32
    buffers (not saved in the state dict) and cast to x's dtype on use. ``forward(x,
    seqlen_offsets=0)`` rotates the first ``dim`` dims of each head (``interleaved`` picks the
    pair layout) and returns a new tensor.
    """

    def __init__(self, dim: int, max_seqlen: int = 2048, base: float = 10000.0, interleaved: bool = False,
                 device=None):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"dim: expected an even rotary dim >= 2, got {dim}")
        self.dim, self.max_seqlen, self.base, self.interleaved = dim, max_seqlen, base, interleaved
        inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)
        angles = torch.outer(torch.arange(max_seqlen, dtype=torch.float64, device=device), inv_freq)
        self.register_buffer("cos_cached", angles.cos().float(), persistent=False)
        self.register_buffer("sin_cached", angles.sin().float(), persistent=False)

    def forward(self, x, seqlen_offsets=0):
        return apply_rotary_emb(x, self.cos_cached.to(x.dtype), self.sin_cached.to(x.dtype),
                                self.interleaved, seqlen_offsets)

    def extra_repr(self) -> str:
        return f"{self.dim}, max_seqlen={self.max_seqlen}, base={self.base}, interleaved={self.interleaved}"
