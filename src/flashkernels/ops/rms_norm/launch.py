"""Launchers for the RMSNorm kernels, registered as torch.library custom ops.

``torch.ops.flashkernels.rms_norm_fwd`` and ``torch.ops.flashkernels.rms_norm_bwd`` are
``triton_op``s (torch.compile traces through them with ``wrap_triton``); autograd is registered
one layer up (autograd.py).

dW: each backward program keeps an fp32 partial sum over its rows in a (programs, N) buffer;
a second small kernel adds the partials in a fixed order (deterministic, no atomics).

Both take (..., N) tensors as the caller has them (so autograd sees no view between the op and
the caller's tensors) and walk them as (M, N) rows (``rows``: any row stride, so a column slice
of a wider tensor needs no copy; a copy only for a non-unit last stride or leading dims that do
not flatten); outputs are allocated contiguous in the input's shape.
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


# The single-block backward loads row r + 1 while it reduces row r (the kernel's PREFETCH, 1);
# 0 loads each row in its own iteration (scripts/tune_ops.py's A/B).
BWD_PREFETCH = 1
# Program p takes rows p, p + P, ... (all P programs walk the tensor together, as an elementwise
# kernel's blocks do) instead of a block of rows_per_program: on the H100 (16384 x 4096 bf16,
# scripts/tune_ops.py, session 11) 151.8 -> 145.3 us with 16 warps (147.0 with 8); blocks of rows
# gained nothing from deeper prefetch, 2- or 4-row tiles (tried, removed) or other warp / program
# counts (~151.5 us).
BWD_STRIDED = True
# The backward's warps at rows of 4096+ columns (with BWD_STRIDED; the forward keeps block_config's).
# Without dh only: the fused residual norm's backward (dh too) ran 191.9 us with 8 warps against
# 200.8 with 16 (16384 x 4096, tune_ops.py --dh).
BWD_MIN_WARPS_WIDE = 16
BWD_PROGRAMS_PER_SM = 2

# The dW reduction: a program sums up to DW_REDUCE_ROWS partial rows as one tree (tl.sum) over
# DW_REDUCE_ELEMS // rows columns, so that all the partials (2 per SM) come in one load and the
# kernel is one memory latency instead of a chain of them (was 32 rows x 64 columns a program,
# 9 dependent loads: 6.7 us for 4096 columns on the H100).
DW_REDUCE_ROWS = 1024
DW_REDUCE_ELEMS = 8192


def dw_reduce_config(programs: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_P): columns a reduce program owns, partial rows summed as one tile."""
    block_p = min(DW_REDUCE_ROWS, _next_pow2(programs))
    return max(16, DW_REDUCE_ELEMS // block_p), block_p


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


def rows(t: torch.Tensor) -> torch.Tensor:
    """(M, N) view of ``t`` (..., N); a copy only when the last stride is not 1 or the leading
    dims do not flatten into one row stride (reshape decides)."""
    if t.stride(-1) != 1:
        t = t.contiguous()
    return t.reshape(-1, t.shape[-1])


def rms_norm_fwd_impl(
    x: torch.Tensor, weight: Optional[torch.Tensor], residual: Optional[torch.Tensor],
    eps: float, offset: float, mode: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (..., N) and residual (like x) or None, any strides; weight (N,) with unit stride or
    None. Returns y (x's shape, contiguous), h = x + residual (the same; an empty (0, N) tensor
    without residual), and rstd (M,) float32 over the M = x.numel() // N rows."""
    N = x.shape[-1]
    x2 = rows(x)
    M = x2.shape[0]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    h = torch.empty(x.shape if residual is not None else (0, N), dtype=x.dtype, device=x.device)
    rstd = torch.empty((M,), dtype=torch.float32, device=x.device)
    if M == 0 or N == 0:
        return y, h, rstd
    block, single, num_warps = block_config(N, x.device)
    r2 = rows(residual) if residual is not None else x2
    y2 = y.view(M, N)
    h2 = h.view(M, N) if residual is not None else y2
    cached_launch(rms_norm_fwd_kernel, (M,),
        x2, r2, weight if weight is not None else x2, y2, h2, rstd,
        x2.stride(0), r2.stride(0), y2.stride(0), h2.stride(0) if residual is not None else 0,
        N, eps, offset,
        HAS_WEIGHT=weight is not None, HAS_RESIDUAL=residual is not None, MODE=mode,
        BLOCK=block, SINGLE=single, num_warps=num_warps,
    )
    return y, h, rstd


def rms_norm_bwd_impl(
    dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor], rstd: torch.Tensor,
    dh: Optional[torch.Tensor], offset: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """dy (..., N), x (like dy) the normalized input (h with a residual), rstd (M,) float32, dh
    (like dy) or None (the gradient arriving at h); any strides. Returns dx (x's shape,
    contiguous, x's dtype), which is the residual's gradient too, and dweight (N,) in weight's
    dtype, summed over rows in fp32 (an empty tensor without weight)."""
    N = x.shape[-1]
    x2, dy2 = rows(x), rows(dy)
    dh2 = rows(dh) if dh is not None else None
    M = x2.shape[0]
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    dx2 = dx.view(M, N)
    has_w = weight is not None
    programs, rows_per_program = bwd_programs(M, x.device)
    if not has_w:
        dw = torch.empty((0,), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        if has_w:
            dw = torch.zeros((N,), dtype=weight.dtype, device=x.device)
        return dx, dw
    block, single, num_warps = block_config(N, x.device)
    if block >= 4096 and single and BWD_STRIDED and dh is None:
        num_warps = max(num_warps, BWD_MIN_WARPS_WIDE)
    # The chunked path accumulates into its row (zeros); the single-block path writes it whole.
    alloc = torch.empty if single else torch.zeros
    partial = alloc((programs if has_w else 1, N), dtype=torch.float32, device=x.device)
    cached_launch(rms_norm_bwd_kernel, (programs,),
        x2, weight if has_w else x2, rstd, dy2, dh2 if dh2 is not None else dy2, dx2, partial,
        x2.stride(0), dy2.stride(0), dh2.stride(0) if dh2 is not None else 0, dx2.stride(0),
        partial.stride(0) if has_w else 0,
        M, N, rows_per_program, offset,
        HAS_WEIGHT=has_w, HAS_DH=dh2 is not None, BLOCK=block, SINGLE=single,
        PREFETCH=BWD_PREFETCH, STRIDED=BWD_STRIDED and single,
        num_warps=num_warps,
    )
    if has_w:
        dw = torch.empty((N,), dtype=weight.dtype, device=x.device)
        block_n, block_p = dw_reduce_config(programs)
        cached_launch(rms_norm_dw_reduce_kernel, (triton_cdiv(N, block_n),),
            partial, dw, programs, N, partial.stride(0), BLOCK_N=block_n, BLOCK_P=block_p)
    return dx, dw


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


# The custom ops are the same functions (flashkernels._eager: eager calls skip the dispatcher).
rms_norm_fwd = triton_op("flashkernels::rms_norm_fwd", mutates_args=())(rms_norm_fwd_impl)
rms_norm_bwd = triton_op("flashkernels::rms_norm_bwd", mutates_args=())(rms_norm_bwd_impl)


# Decided once, at import (see flashkernels._interpreter.kernels_interpreted).
KERNELS_INTERPRETED = kernels_interpreted(rms_norm_fwd_kernel)
