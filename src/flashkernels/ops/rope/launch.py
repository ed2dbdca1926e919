"""Launchers for the RoPE kernel, registered as torch.library custom ops.

* ``torch.ops.flashkernels.rope(x, cos, sin, pos, pos_mode, offset, seq_dim, interleaved,
  full_table, conj)`` -> a new tensor in x's memory order (``torch.empty_like``: a dense x
  permuted, e.g. a (B, H, S, D) view of (B, S, H, D) memory, gives the same permutation;
  otherwise contiguous);
* ``torch.ops.flashkernels.rope_qk(q, k, cos, sin, pos, pos_mode, seq_dim, full_table, conj)``
  -> (q_out, k_out), both tensors in one launch, each in its input's memory order;
* ``torch.ops.flashkernels.rope_inplace(x, ...)`` (same arguments as ``rope``) writes into x.

x, q, k are 4-d with the sequence on dim ``seq_dim`` (1: (B, S, H, D), 2: (B, H, S, D)) and
last-dim stride 1; other strides are free. cos/sin are 3-d (Bc, S_tab, W) with Bc 1 or B,
contiguous, of x's dtype; W = rotary_dim when ``full_table`` (Hugging Face) else rotary_dim/2
(flash-attn). ``pos_mode``/``pos``/``offset``: see kernels/rope.py. Autograd in autograd.py.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.library import triton_op

from ..._interpreter import kernels_interpreted
from ..._launch import cached_launch

from .kernels.rope import rope_kernel

# About 2048 elements of each half a program, 8 warps. H100, x (4, 4096, 32, 128) bf16
# (scripts/tune_ops.py --ops rope, session 12, three sweeps in one call): 8 warps 96.3-97.0 us
# (97.9-98.5% of the copy) against 97.9-98.6 us with 4 (+1.6-2.3%); 4096 elements the same;
# several tokens a program (2, 4, 8, tried as a constexpr loop) 0-5% slower.
ELEMS = 2048
NUM_WARPS = 8


def _next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _bshd_strides(t: torch.Tensor, seq_dim: int) -> tuple[int, int, int]:
    """(batch, seq, head) strides of ``t`` seen as (B, S, H, D)."""
    if seq_dim == 1:
        return t.stride(0), t.stride(1), t.stride(2)
    return t.stride(0), t.stride(2), t.stride(1)


def _launch(x, out, k, kout, cos, sin, pos, pos_mode: int, offset: int, seq_dim: int,
            interleaved: bool, full_table: bool, conj: bool) -> None:
    B, D = x.shape[0], x.shape[3]
    S = x.shape[seq_dim]
    H = x.shape[3 - seq_dim]
    HK = k.shape[3 - seq_dim] if k is not None else 0
    W = cos.shape[-1]
    r_half = W // 2 if full_table else W
    if x.numel() == 0 and (k is None or k.numel() == 0):
        return
    block_r = _next_pow2(r_half)
    rest = D - 2 * r_half
    block_p = _next_pow2(rest) if rest > 0 else 0
    block_h = min(_next_pow2(max(H, HK)), max(1, ELEMS // block_r))
    n_hb = triton_cdiv(H, block_h) + (triton_cdiv(HK, block_h) if k is not None else 0)
    scb = cos.stride(0) if cos.shape[0] > 1 else 0
    if pos is None:
        pos_t, spb, sps = cos, 0, 0  # never read (POS_MODE 0)
    else:
        pos_t = pos
        spb = pos.stride(0)
        sps = pos.stride(1) if pos.dim() == 2 else 0
    kk, ko = (k, kout) if k is not None else (x, out)
    cached_launch(rope_kernel, (B * S, n_hb),
        x, out, kk, ko, cos, sin, pos_t,
        S, H, HK, D, r_half, offset, cos.shape[-2],
        *_bshd_strides(x, seq_dim), *_bshd_strides(out, seq_dim),
        *_bshd_strides(kk, seq_dim), *_bshd_strides(ko, seq_dim),
        scb, cos.stride(1), spb, sps,
        POS_MODE=pos_mode, INTERLEAVED=interleaved, FULL_TABLE=full_table, CONJ=conj,
        HAS_K=k is not None, BLOCK_H=block_h, BLOCK_R=block_r, BLOCK_P=block_p,
        num_warps=NUM_WARPS)


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def rope_impl(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: Optional[torch.Tensor],
         pos_mode: int, offset: int, seq_dim: int, interleaved: bool, full_table: bool,
         conj: bool) -> torch.Tensor:
    out = torch.empty_like(x)
    _launch(x, out, None, None, cos, sin, pos, pos_mode, offset, seq_dim, interleaved, full_table, conj)
    return out


def rope_inplace_impl(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: Optional[torch.Tensor],
                 pos_mode: int, offset: int, seq_dim: int, interleaved: bool, full_table: bool,
                 conj: bool) -> None:
    # Each program reads a pair before it writes it, and no two programs touch one element.
    _launch(x, x, None, None, cos, sin, pos, pos_mode, offset, seq_dim, interleaved, full_table, conj)


def rope_qk_impl(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            pos: Optional[torch.Tensor], pos_mode: int, seq_dim: int, full_table: bool,
            conj: bool) -> tuple[torch.Tensor, torch.Tensor]:
    q_out, k_out = torch.empty_like(q), torch.empty_like(k)
    _launch(q, q_out, k, k_out, cos, sin, pos, pos_mode, 0, seq_dim, False, full_table, conj)
    return q_out, k_out


# The custom ops are the same functions (flashkernels._eager: eager calls skip the dispatcher).
rope = triton_op("flashkernels::rope", mutates_args=())(rope_impl)
rope_qk = triton_op("flashkernels::rope_qk", mutates_args=())(rope_qk_impl)
rope_inplace = triton_op("flashkernels::rope_inplace", mutates_args=("x",))(rope_inplace_impl)


# Decided once, at import (see flashkernels._interpreter.kernels_interpreted).
KERNELS_INTERPRETED = kernels_interpreted(rope_kernel)
