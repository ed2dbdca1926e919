"""Launchers for the KV-cache kernels, registered as torch.library custom ops.

* ``torch.ops.flashkernels.kvcache_append(k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx,
  block_table)`` writes k, v into the caches in place (declared ``mutates_args``, so
  torch.compile orders it before the reads of the cache);
* ``torch.ops.flashkernels.kvcache_attn(q, k_cache, v_cache, cache_seqlens, seqlen_new, ...)``
  -> (out, lse): attention of q over the cache, split-KV when ``num_splits`` > 1.

Layouts as flash-attn: q (B, Sq, Hq, D), caches (B_cache, S_cache, Hkv, D) or paged
(num_blocks, page_size, Hkv, D), every last stride 1, other strides free. ``cache_seqlens`` is a
(B,) int32 tensor here (the API turns an int into one). No autograd (inference only).

Block sizes come from :func:`attn_config`; under Triton's interpreter small blocks (16 x 16)
exercise the masked paths at small sizes. ``num_splits=0`` asks :func:`auto_num_splits`.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import torch
from torch.library import triton_op

from ..._eager import direct
from ..._interpreter import kernels_interpreted
from ..._launch import cached_launch

from ..attention.launch import _fit, _smem_limit, block_d, dot_precision
from .kernels.decode import kvcache_append_kernel, kvcache_attn_kernel, kvcache_combine_kernel


class Config(NamedTuple):
    """Tiles and launch options; ``fast``, ``evict``, ``tma`` choose the kernel's K/V path
    (kernels/decode.py ``_kv_tile``): ``fast`` unmasked full tiles and per-tile (paged: per-page)
    addresses, ``evict`` the K/V loads' eviction policy ("" or "evict_first"), ``tma`` tensor
    descriptors where :func:`tma_ok` allows (implies ``fast``). Defaults: the first version's path."""
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    fast: bool = False
    evict: str = ""
    tma: bool = False


# Splits stop at this many BLOCK_N tiles of keys each: below it the combine's extra traffic
# (num_splits x rows x D fp32, written and read) and the per-program start-up outweigh the gain.
MIN_TILES_PER_SPLIT = 4
MAX_SPLITS = 128  # as flash-attn; also any larger request (grid axis 1 stops at 65535)


def _next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


# Triton's software pipeliner (3.6) spaces a load that feeds another load's address (the page table's entry, then
# the K / V tile it locates) ceil((num_stages - 2) / 2) stages apart, so a paged cache at the contiguous cache's 4
# stages got a one-deep K / V ring (ptxas: 39 KB of shared memory, every step waiting for its own tile; contiguous:
# 102 KB, three tiles in flight). PAGED_STAGES gives paged caches at the fast decode tile the contiguous one's
# three-deep ring (104 KB, still two programs an SM). H200, session 28 (scripts/ab_decode.py --repeats 3,
# ...-s28-ab-decode-st7.txt, K+V TB/s, graph time), page 16 / 256 with 4 stages and 7: B=16 cache 8k 3.43 / 3.63
# -> 3.83 / 3.92 (one split, auto_num_splits' rule since), B=1 cache 128k 3.45 / 3.64 -> 3.70 / 3.74; contiguous
# 3.95 / 3.79.
PAGED_STAGES = 7


def attn_config(rows: int, head_dim: int, dtype: torch.dtype, device: torch.device, paged: bool = False) -> Config:
    """BLOCK_M packed query rows (Sq x group) resident, BLOCK_N keys streamed a step.

    Decode (rows = group <= 16) uses BLOCK_M = 16, tl.dot's minimum; chunked prefill up to 64.
    On the GPU: decode at head dim <= 128 in 16-bit types takes (16, 64, 4 warps, 4 stages; a paged
    cache PAGED_STAGES) with the ``fast`` path (unmasked full tiles, per-tile / per-page addresses):
    three 64-key K and V buffers in flight (102 KB, two programs an SM) where (16, 128, 8, 2) had one
    (and, until session 28, the paged caches' 4 stages had one too). H100, bf16,
    D=128, Hq/Hkv 32/8, one process, CUDA-graph GPU time (scripts/ab_decode.py, 2026-11-26),
    K+V TB/s contiguous / paged 16 / paged 256: B=16 cache 8192 2.73 / 2.67 / 2.74 (two splits;
    was 2.64 / 2.47 / 2.52), B=1 cache 128k 2.57 / 2.53 / 2.59 (was 2.58 / 2.53 / 2.56); SDPA
    cuDNN 2.84 / 2.79. Session 12 (one-load combine, one split at B=16 contiguous): 2.80 / 2.67 /
    2.75 and 2.74 / 2.67 / 2.74; cuDNN's own tile (16, 128, 4 warps, 3 stages) and a 6-stage ring
    read the same within 1% contiguous. Other tiles were picked for no register spills at sm_90a
    (scripts/compile_check_kvcache.py). All shrink to the device's shared memory."""
    if device.type != "cuda":  # interpreter: small blocks hit every masked branch on small shapes
        return Config(16, 16, 4, 1)
    bd = block_d(head_dim)
    if dtype == torch.float32:  # twice the bytes a tile: (64, 32) spilled ~1 KB at D=128, 11 KB at 256
        return Config(min(32 if bd >= 128 else 64, max(16, _next_pow2(rows))), 32 if bd <= 64 else 16, 8, 2)
    bm = min(64, max(16, _next_pow2(rows)))
    cfg = (Config(16, 64, 4, PAGED_STAGES if paged else 4, fast=True) if bm == 16 and bd <= 128
           else Config(bm, 64 if bd <= 128 else 32, 8, 2))
    # (K / V buffers: at most the stages; for a paged cache's ring at most its depth, ceil((stages - 2) / 2), + 1,
    # and 2 at least: a wgmma's operand ring holds one more)
    fit = _fit(cfg[:4], lambda m, n, st: dtype.itemsize * bd * (
        m + 2 * n * (max(-(-(st - 2) // 2) + 1, 2) if paged else st)), _smem_limit(device.index or 0), True)
    return Config(*fit, *cfg[4:])


def combine_config(num_splits: int, head_dim: int) -> tuple[int, int]:
    """(BLOCK_S, BLOCK_DC) of the split combine: every split in one tile, columns cut so a tile
    holds at most 4096 fp32 (32 a thread at 4 warps); at least 16 columns."""
    block_s = _next_pow2(num_splits)
    return block_s, max(16, min(block_d(head_dim), 4096 // block_s))


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return int(torch.cuda.get_device_properties(device_index).multi_processor_count)


def auto_num_splits(programs: int, capacity: int, block_n: int, device: torch.device) -> int:
    """Splits so that programs x splits fills at most two programs an SM (132 SMs on an H100; the
    decode tiles fit two an SM), rounded down so no partial wave trails, with at least
    MIN_TILES_PER_SPLIT tiles of the cache's capacity a split: flash decoding's rule.
    ``capacity`` (not the live lengths, which would need a host sync) bounds the keys; a split
    past a row's length exits at once. 1 when the grid already holds one program on 7/8 of the SMs.

    H100, bf16, D=128, Hq/Hkv 32/8 (scripts/ab_decode.py, session 12, graph time, K+V TB/s):
    B=16 cache 8192 (128 programs) contiguous 2.79-2.80 with 1 split against 2.73-2.74 with 2
    (the combine kernel and a second launch), but paged 2.23 (page 16) / 2.33 (page 256) with 1
    against 2.67 / 2.74 with 2: the page lookups need a second program an SM to hide them.
    B=1 cache 128k (8 programs): 33 splits 2.75 contiguous, 2.66 / 2.74 paged; 3 splits at B=16
    read 2.56 where 2 read 2.73 (session 7: a trailing partial wave). Those paged caches ran a one-deep K / V ring
    (see PAGED_STAGES); with it three deep, one split at B=16 (H200, session 28, ...-s28-ab-decode-st7.txt) reads 3.83
    / 3.92 (page 16 / 256) against 3.68 / 3.71 with 2, so paged caches take the contiguous rule since."""
    n_sm = _num_sms(device.index or 0) if device.type == "cuda" else 4
    if 8 * programs >= 7 * n_sm:
        return 1
    tiles = triton_cdiv(capacity, block_n)
    return max(1, min(2 * n_sm // programs, tiles // MIN_TILES_PER_SPLIT, MAX_SPLITS))


def tma_ok(k_cache: torch.Tensor, v_cache: torch.Tensor, block_table, block_n: int) -> bool:
    """Whether the K/V tiles can come through 2-d tensor descriptors: a CUDA device of compute
    capability >= 9 (or the interpreter), 16-byte aligned bases and strides (TMA's rule), and for
    a paged cache pages of a multiple of BLOCK_N stored back to back (one 2-d view of all pages)."""
    if k_cache.device.type == "cuda" and torch.cuda.get_device_capability(k_cache.device)[0] < 9:
        return False
    e = k_cache.element_size()
    for t in (k_cache, v_cache):
        if t.data_ptr() % 16 or any(st * e % 16 for st in t.stride()[:3]):
            return False
        if t.shape[-1] * e % 16:
            return False
        if block_table is not None and (t.stride(0) != t.shape[1] * t.stride(1) or t.shape[1] % block_n
                                        or t.shape[0] * t.shape[1] >= 2**31):
            return False
    return True


def _set_tma_allocator() -> None:
    """On-device tensor descriptors need a global scratch allocation per launch: give Triton
    torch's allocator unless the application set one."""
    import triton
    from triton.runtime import _allocation

    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))


def _window_args(left: int, right: int, causal: bool, capacity: int, seqlen_q: int):
    """(HAS_WINDOW, IS_CAUSAL, left, right) for the kernel: causal caps the right bound at the
    diagonal; a window that is plain causal (left unbounded, right 0) takes the causal path; an
    unbounded side becomes Sq + capacity, which no diagonal distance reaches."""
    if causal:
        right = 0
    if left < 0 and (right < 0 or causal):
        return False, causal, 0, 0
    big = seqlen_q + capacity
    return True, False, (left if left >= 0 else big), (right if right >= 0 else big)


def _capacity(k_cache: torch.Tensor, block_table: Optional[torch.Tensor]) -> tuple[int, int, int]:
    """(positions a row holds, rows or pages in the cache, page size; 1 when contiguous)."""
    if block_table is not None:
        return block_table.shape[1] * k_cache.shape[1], k_cache.shape[0], k_cache.shape[1]
    return k_cache.shape[1], k_cache.shape[0], 1


def kvcache_append_impl(
    k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    cache_seqlens: torch.Tensor, cache_batch_idx: Optional[torch.Tensor],
    block_table: Optional[torch.Tensor],
) -> None:
    """k, v (B, Sn, Hkv, D) into the caches at positions cache_seqlens[b] .. + Sn - 1."""
    B, Sn, Hkv, D = k.shape
    if B * Sn == 0:
        return
    capacity, num_rows, page = _capacity(k_cache, block_table)
    bt = block_table if block_table is not None else cache_seqlens
    bi = cache_batch_idx if cache_batch_idx is not None else cache_seqlens
    cached_launch(kvcache_append_kernel, (B * Sn,),
        k, v, k_cache, v_cache, cache_seqlens, bi, bt,
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        bt.stride(0),
        Sn, Hkv, capacity, num_rows,
        HEAD_DIM=D, BLOCK_D=_next_pow2(D), BLOCK_H=_next_pow2(Hkv), PAGE_SIZE=page,
        PAGED=block_table is not None, HAS_BATCH_IDX=cache_batch_idx is not None,
        num_warps=4,
    )


def kvcache_attn_impl(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor,
    seqlen_new: int, cache_batch_idx: Optional[torch.Tensor], cache_leftpad: Optional[torch.Tensor],
    block_table: Optional[torch.Tensor], alibi_slopes: Optional[torch.Tensor], scale: float,
    causal: bool, window_left: int, window_right: int, softcap: float, num_splits: int,
    allow_tf32: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """out (B, Sq, Hq, D) in q's dtype (contiguous), lse (B, Hq, Sq) float32 natural log.
    Batch b attends keys [cache_leftpad[b], cache_seqlens[b] + seqlen_new) of its row.
    alibi_slopes: None or (B, Hq) float32 (a zero batch stride broadcasts (Hq,) slopes)."""
    B, Sq, Hq, D = q.shape
    Hkv = k_cache.shape[2]
    group = Hq // Hkv
    out = torch.empty((B, Sq, Hq, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, Hq, Sq), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse.fill_(float("-inf"))
    capacity, num_rows, page = _capacity(k_cache, block_table)
    rows = Sq * group
    cfg = attn_config(rows, D, q.dtype, q.device, block_table is not None)
    programs = triton_cdiv(rows, cfg.block_m) * B * Hkv
    if num_splits <= 0:
        num_splits = auto_num_splits(programs, capacity, cfg.block_n, q.device)
    num_splits = max(1, min(num_splits, triton_cdiv(max(capacity, 1), cfg.block_n), MAX_SPLITS))
    has_window, causal, wl, wr = _window_args(window_left, window_right, causal, capacity, Sq)
    split = num_splits > 1
    if split:
        opart = torch.empty((num_splits, B * Hkv, rows, D), dtype=torch.float32, device=q.device)
        lpart = torch.empty((num_splits, B * Hkv, rows), dtype=torch.float32, device=q.device)
    else:
        opart, lpart = lse, lse  # never touched
    bt = block_table if block_table is not None else cache_seqlens
    bi = cache_batch_idx if cache_batch_idx is not None else cache_seqlens
    lp = cache_leftpad if cache_leftpad is not None else cache_seqlens
    al = alibi_slopes if alibi_slopes is not None else lse
    use_tma = cfg.tma and tma_ok(k_cache, v_cache, block_table, cfg.block_n)
    if use_tma and q.device.type == "cuda":
        _set_tma_allocator()
    cached_launch(kvcache_attn_kernel, (programs, num_splits),
        q, k_cache, v_cache, out, lse, opart, lpart,
        cache_seqlens, bi, lp, bt, al,
        scale, float(softcap),
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        bt.stride(0), al.stride(0) if alibi_slopes is not None else 0,
        Hkv, group, Sq, seqlen_new, capacity, num_rows,
        wl, wr, num_splits,
        HEAD_DIM=D, BLOCK_D=block_d(D), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        PAGE_SIZE=page, PAGED=block_table is not None, HAS_BATCH_IDX=cache_batch_idx is not None,
        HAS_LEFTPAD=cache_leftpad is not None, IS_CAUSAL=causal, HAS_WINDOW=has_window,
        HAS_SOFTCAP=softcap > 0, HAS_ALIBI=alibi_slopes is not None, SPLIT=split,
        DOT_PRECISION=dot_precision(q.dtype, allow_tf32),
        FAST=cfg.fast or use_tma, KV_EVICT=cfg.evict, USE_TMA=use_tma,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if split:
        block_s, block_dc = combine_config(num_splits, D)
        cached_launch(kvcache_combine_kernel, (B * Hkv * rows, triton_cdiv(D, block_dc)),
            opart, lpart, out, lse,
            out.stride(0), out.stride(1), out.stride(2),
            Hkv, group, Sq, num_splits,
            HEAD_DIM=D, BLOCK_S=block_s, BLOCK_DC=block_dc, num_warps=4,
        )
    return out, lse


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


# The custom ops are the same functions: torch.compile and opcheck go through them; eager calls
# take the *_eager forms (api.py), skipping the dispatcher's per-call host time, with
# wrap_triton's higher-order op off as inside the ops (flashkernels._eager.direct).
kvcache_append = triton_op("flashkernels::kvcache_append", mutates_args=("k_cache", "v_cache"))(kvcache_append_impl)
kvcache_attn = triton_op("flashkernels::kvcache_attn", mutates_args=())(kvcache_attn_impl)
kvcache_append_eager = direct(kvcache_append_impl)
kvcache_attn_eager = direct(kvcache_attn_impl)


# Decided once, at import (see flashkernels._interpreter.kernels_interpreted).
KERNELS_INTERPRETED = kernels_interpreted(kvcache_attn_kernel)
