"""Launchers for the RMSNorm kernels, registered as torch.library custom ops.

``torch.ops.flashkernels.rms_norm_fwd`` and ``torch.ops.flashkernels.rms_norm_bwd`` are
``triton_op``s (torch.compile traces through them with ``wrap_triton``); autograd is registered
one layer up (autograd.py).

dW: each backward program keeps an fp32 partial sum over its rows in a (programs, N) buffer;
a second small kernel adds the partials in a fixed order (deterministic, no atomics).

Both take 2-d (M, N) row views whose last stride is 1 (any row stride: a column slice of a wider
tensor needs no copy); outputs are allocated contiguous.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch.library import triton_op

from ..._interpreter import kernels_interpreted
from ..._launch import cached_launch

from .kernels.rms_norm import rms_norm_bwd_kernel, rms_norm_dw_reduce_kernel, rms_norm_fwd_kernel

MODES = {"llama": 0, "gemma": 1, "none": 2}

# Widest row kept whole in registers on a GPU (Liger's limit too); wider rows are walked in
# chunks of this width. Not measured on our card yet (issue 4's benchmarks will).
GPU_MAX_BLOCK = 65536
# Under the interpreter a small limit sends 4097+ columns down the chunked path, so the CPU
# tests exercise both paths at small sizes.
INTERPRETER_MAX_BLOCK = 4096


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def block_config(n: int, device: torch.device) -> tuple[int, bool, int]:
    """(BLOCK, SINGLE, num_warps) for rows of ``n`` columns."""
    max_block = GPU_MAX_BLOCK if device.type == "cuda" else INTERPRETER_MAX_BLOCK
    block = min(_next_pow2(n), max_block)
    # Liger's heuristic (more warps for wider rows); to be tuned with the bandwidth benchmarks.
    num_warps = 32 if block >= 32768 else 16 if block >= 8192 else 8 if block >= 2048 else 4
    return block, n <= block, num_warps


# The single-block backward loads row r + 1 while it reduces row r (the kernel's PREFETCH);
# scripts/tune_ops.py turns it off for the A/B.
BWD_PREFETCH = True
BWD_PROGRAMS_PER_SM = 2

# The dW reduction: columns a program owns, and partial rows it sums as one tree (tl.sum).
DW_REDUCE_BLOCK = 64
DW_REDUCE_ROWS = 32


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def bwd_programs(m: int, device: torch.device) -> tuple[int, int]:
    """(num_programs, rows_per_program) for the backward over ``m`` rows."""
    if m == 0:
        return 0, 1
    # Two programs per SM keep the dW partial buffer small (programs x N fp32) while filling the
    # GPU: measured on the H100 (scripts/tune_ops.py, 16384 x 4096 bf16, 2026-11-25) 2 per SM
    # beat 1, 4, 8 and 16 (160 vs 170, 200, 260 us with the row prefetch). The interpreter uses
    # 4 programs so that programs own several rows, as on a GPU.
    target = BWD_PROGRAMS_PER_SM * _sm_count(device.index or 0) if device.type == "cuda" else 4
    rows = -(-m // min(m, target))
    return -(-m // rows), rows


def rms_norm_fwd_impl(
    x: torch.Tensor, weight: Optional[torch.Tensor], residual: Optional[torch.Tensor],
    eps: float, offset: float, mode: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (M, N) and residual (M, N) or None with unit last stride; weight (N,) or None.
    Returns y (M, N), h (M, N) = x + residual (an empty (0, N) tensor without residual), and
    rstd (M,) float32."""
    M, N = x.shape
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    h = torch.empty((M if residual is not None else 0, N), dtype=x.dtype, device=x.device)
    rstd = torch.empty((M,), dtype=torch.float32, device=x.device)
    if M == 0 or N == 0:
        return y, h, rstd
    block, single, num_warps = block_config(N, x.device)
    r = residual if residual is not None else x
    cached_launch(rms_norm_fwd_kernel, (M,),
        x, r, weight if weight is not None else x, y, h if residual is not None else y, rstd,
        x.stride(0), r.stride(0), y.stride(0), h.stride(0) if residual is not None else 0,
        N, eps, offset,
        HAS_WEIGHT=weight is not None, HAS_RESIDUAL=residual is not None, MODE=mode,
        BLOCK=block, SINGLE=single, num_warps=num_warps,
    )
    return y, h, rstd


def rms_norm_bwd_impl(
    dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor], rstd: torch.Tensor,
    dh: Optional[torch.Tensor], offset: float, has_residual: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dy (M, N), x (M, N) the normalized input (h with a residual), rstd (M,) float32, dh (M, N)
    or None (the gradient arriving at h). Returns dx (M, N) in x's dtype; dweight (N,) in
    weight's dtype, summed over rows in fp32 (an empty tensor without weight); and dresidual, a
    copy of dx written by the same kernel (an empty (0, N) tensor unless ``has_residual``)."""
    M, N = x.shape
    dx = torch.empty((M, N), dtype=x.dtype, device=x.device)
    dr = torch.empty((M if has_residual else 0, N), dtype=x.dtype, device=x.device)
    has_w = weight is not None
    programs, rows = bwd_programs(M, x.device)
    if not has_w:
        dw = torch.empty((0,), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        if has_w:
            dw = torch.zeros((N,), dtype=weight.dtype, device=x.device)
        return dx, dw, dr
    block, single, num_warps = block_config(N, x.device)
    # The chunked path accumulates into its row (zeros); the single-block path writes it whole.
    alloc = torch.empty if single else torch.zeros
    partial = alloc((programs if has_w else 1, N), dtype=torch.float32, device=x.device)
    cached_launch(rms_norm_bwd_kernel, (programs,),
        x, weight if has_w else x, rstd, dy, dh if dh is not None else dy, dx,
        dr if has_residual else dx, partial,
        x.stride(0), dy.stride(0), dh.stride(0) if dh is not None else 0, dx.stride(0),
        dr.stride(0) if has_residual else 0, partial.stride(0) if has_w else 0,
        M, N, rows, offset,
        HAS_WEIGHT=has_w, HAS_DH=dh is not None, STORE_DR=has_residual, BLOCK=block, SINGLE=single,
        PREFETCH=BWD_PREFETCH, num_warps=num_warps,
    )
    if has_w:
        dw = torch.empty((N,), dtype=weight.dtype, device=x.device)
        cached_launch(rms_norm_dw_reduce_kernel, (triton_cdiv(N, DW_REDUCE_BLOCK),),
            partial, dw, programs, N, partial.stride(0), BLOCK_N=DW_REDUCE_BLOCK, BLOCK_P=DW_REDUCE_ROWS)
    return dx, dw, dr


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


# The custom ops are the same functions (flashkernels._eager: eager calls skip the dispatcher).
rms_norm_fwd = triton_op("flashkernels::rms_norm_fwd", mutates_args=())(rms_norm_fwd_impl)
rms_norm_bwd = triton_op("flashkernels::rms_norm_bwd", mutates_args=())(rms_norm_bwd_impl)


# Decided once, at import (see flashkernels._interpreter.kernels_interpreted).
KERNELS_INTERPRETED = kernels_interpreted(rms_norm_fwd_kernel)
