"""Launchers for the attention kernels, registered as torch.library custom ops.

``torch.ops.flashkernels.attn_fwd`` and ``torch.ops.flashkernels.attn_bwd`` are ``triton_op``s:
torch.compile sees through them (``wrap_triton``) with no graph break, and autograd is
registered one layer up (autograd.py), outside the ops.

Both take q/k/v indexed (B, H, S, D) with any strides whose last one is 1, so (B, S, H, D)
inputs arrive as transposed views, not copies. ``bshd=True`` allocates outputs (and gradients)
laid out (B, S, H, D) in memory and returns them as (B, H, S, D) views, so a flash_attn-style
caller gets a contiguous (B, S, H, D) tensor back.

Block sizes come from :func:`fwd_config` / :func:`bwd_configs`, chosen from the head dim, dtype
and the device's shared memory; under Triton's interpreter small blocks exercise the masked paths
at small sizes.

On an H100 (sm_90) the forward of the cases :func:`hopper_fwd_reason` accepts (bf16/fp16, a head
dim of HOPPER_FWD_CONFIGS, Sq and Sk multiples of 128, q/k/v strides that TMA can read as a 2-D
matrix: (B, S, H, D) or (B, H, S, D) storage, or slices of a packed qkv; causal either alignment,
sliding window, softcap, ALiBi and the learnable sink too; packed sequences (varlen) while
HOPPER_FWD_VARLEN is on, the default; no mask) runs the
warp-specialized Gluon kernel of kernels/fwd_hopper.py instead of the Triton one: 1.25-1.40x
faster there. It fills the same out and lse, so the backward is the same. Eager calls launch it
directly; traced ones (torch.compile, make_fx) record the opaque custom op
``flashkernels::attn_fwd_hopper``, which launches it when the graph runs. It cannot go through
``wrap_triton`` like the Triton kernels (torch 2.13, triton 3.6): its TMA descriptors read the
tensors' data pointers when built, which fake tensors do not have, and Inductor would have to
emit Gluon code for it. ``FLASHKERNELS_HOPPER_FWD=0`` turns it off.

The backward of those cases runs a Gluon kernel (:func:`hopper_bwd_reason`): kernels/bwd_hopper.py
at D = 64 or 128 (every forward feature: softcap, ALiBi, the sink, sliding windows, Sq != Sk and
causal offsets; and packed sequences, flash_attn_varlen_func's, when HOPPER_BWD_VARLEN is on),
kernels/bwd_hopper256.py at D = 256 (plain attention with Sq = Sk, and the sink).
dQ is summed into an fp32 accumulator by TMA reduce-adds (fp32 atomics where HOPPER_BWD_DQ_TMA /
HOPPER_BWD256_DQ_TMA are off), in no fixed order: bitwise reproducible only with
``deterministic=True``, which keeps the Triton kernels. Eager calls launch it directly, traced ones through
``flashkernels::attn_bwd_hopper``; ``FLASHKERNELS_HOPPER_BWD=0`` turns it off.
"""
from __future__ import annotations

import functools
import heapq
import math
import os
import sys
import threading
import types
from typing import NamedTuple, Optional

import torch
from torch.library import triton_op
from torch.utils._python_dispatch import _get_current_dispatch_mode

from ..._interpreter import kernels_interpreted
from ... import _launch
from ..._launch import TmaDesc, cached_launch

from .kernels import bwd_hopper, bwd_hopper256, fwd_hopper
from .kernels.bwd import attn_bwd_dkdv_kernel, attn_bwd_dq_kernel, attn_bwd_preprocess_kernel
from .kernels.fwd import attn_fwd_kernel


class Config(NamedTuple):
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def block_d(head_dim: int) -> int:
    """Head dim padded to a power of two, at least 16 (tl.dot's smallest K)."""
    return max(16, 1 << (head_dim - 1).bit_length())


@functools.lru_cache(maxsize=None)
def _smem_limit(device_index: int) -> int:
    props = torch.cuda.get_device_properties(device_index)
    return int(getattr(props, "shared_memory_per_block_optin", 0) or 99 * 1024)


def _fit(cfg: Config, smem_fn, limit: int, shrink_n_first: bool) -> Config:
    """Shrink stages, then the streamed block, then the resident block, until smem fits."""
    bm, bn, w, st = cfg
    while smem_fn(bm, bn, st) > 0.9 * limit:
        if st > 2:
            st -= 1
        elif shrink_n_first and bn > 16:
            bn //= 2
        elif bm > 16:
            bm //= 2
        elif bn > 16:
            bn //= 2
        else:
            break
    return Config(bm, bn, w, st)


@functools.lru_cache(maxsize=None)  # per call otherwise: host time that small shapes feel
def fwd_config(head_dim: int, dtype: torch.dtype, device: torch.device) -> Config:
    """Forward blocks: BLOCK_M query rows resident, BLOCK_N keys streamed."""
    if device.type != "cuda":  # interpreter: small, unequal blocks hit every masked branch
        return Config(32, 16, 4, 1)
    bd = block_d(head_dim)
    # Measured on an H100 (bf16, FA3-paper shapes at S=4096, scripts/tune_attention.py; table in
    # docs/perf-notes.md): (128, 64, 8 warps, 3 stages) led at D=64 and 128 (424 and 465 TF/s).
    # D=256, the session-5 sweep (H200, S=4096, scripts/tune_attention.py --dims 256;
    # benchmarks/results/h200-2026-11-26-tune-d256.txt): (128, 64, 8, 2) 509 TF/s, (64, 32, 4, 2)
    # 398, the others 90-341.
    if dtype == torch.float32:  # twice the bytes a tile; picked for no spills (ptxas, sm_90a)
        cfg = Config(64, 32, 8, 2) if bd <= 128 else Config(32, 16, 4, 2)
    elif bd <= 128:
        cfg = Config(128, 64, 8, 3)
    else:
        cfg = Config(128, 64, 8, 2)
    elt = dtype.itemsize
    return _fit(cfg, lambda bm, bn, st: elt * bd * (bm + 2 * bn * st), _smem_limit(device.index or 0), True)


@functools.lru_cache(maxsize=None)
def bwd_configs(head_dim: int, dtype: torch.dtype, device: torch.device) -> tuple[Config, Config]:
    """(dK/dV config, dQ config). dK/dV keeps BLOCK_N keys resident and streams BLOCK_M queries;
    dQ keeps BLOCK_M queries resident and streams BLOCK_N keys."""
    if device.type != "cuda":
        return Config(16, 32, 4, 1), Config(32, 16, 4, 1)
    bd = block_d(head_dim)
    # Measured as the forward (bf16, S=4096, H100): the dK/dV and dQ kernels were swept one at a
    # time with the other fixed, their times adding.
    if dtype == torch.float32:  # picked for (almost) no spills (ptxas, sm_90a), not timed
        if bd <= 128:
            kv, q = Config(16, 64, 8, 2), Config(64, 32, 8, 2)
        else:
            kv, q = Config(16, 32, 8, 2), Config(32, 16, 4, 2)
    elif bd <= 64:
        kv, q = Config(32, 64, 4, 3), Config(128, 64, 8, 3)
    elif bd <= 128:
        kv, q = Config(64, 128, 8, 2), Config(128, 64, 8, 3)
    else:  # D=256, session-5 sweep (as the forward's): dK/dV (32, 32, 4, 3) 150 TF/s with the old
        # dQ, (32, 64, 8, 2) 145; dQ (128, 32, 8, 2) 164 with the old dK/dV, (64, 32, 4, 3) 145
        kv, q = Config(32, 32, 4, 3), Config(128, 32, 8, 2)
    elt = dtype.itemsize
    limit = _smem_limit(device.index or 0)
    kv = _fit(kv, lambda bm, bn, st: elt * bd * (2 * bn + 2 * bm * st), limit, False)
    q = _fit(q, lambda bm, bn, st: elt * bd * (2 * bm + 2 * bn * st), limit, True)
    return kv, q


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


# dK/dV programs own (key block, kv head) and loop over the kv head's query heads. With GQA and
# few of them (B * Hkv * key blocks below DKDV_MIN_PROGRAMS_PER_SM per SM: one layer of
# Llama-3-8B at B = 1, S = 4096 has 256 programs for 132 SMs, the causal ones uneven), the query
# heads are split over `split` programs each, whose fp32 partial dK/dV are summed afterwards
# (2 x 4 B x B x Sk x Hkv x split x D more bytes written and read). None: that heuristic; an int
# forces the split (tests; it must divide the group).
DKDV_GROUP_SPLIT: Optional[int] = None
DKDV_MIN_PROGRAMS_PER_SM = 4


def dkdv_group_split(group: int, programs: int, device: torch.device) -> int:
    """Programs per (key block, kv head) of the dK/dV kernel: a power of two dividing ``group``."""
    if DKDV_GROUP_SPLIT is not None:
        if group % DKDV_GROUP_SPLIT:
            raise ValueError(f"DKDV_GROUP_SPLIT={DKDV_GROUP_SPLIT} does not divide the group size {group}")
        return DKDV_GROUP_SPLIT
    if device.type != "cuda":
        return 1
    target = DKDV_MIN_PROGRAMS_PER_SM * _sm_count(device.index or 0)
    split = 1
    while programs * split < target and group % (2 * split) == 0:
        split *= 2
    return split


def dot_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    """fp32 inputs use IEEE dots unless TF32 is allowed, as torch's own matmuls do."""
    return "tf32" if (dtype != torch.float32 or allow_tf32) else "ieee"


def _mask_args(mask: Optional[torch.Tensor], shape: tuple[int, int, int, int], dummy: torch.Tensor):
    """(tensor, 4 strides, kind): the mask broadcast to (B, Hq, Sq, Sk) with zero strides."""
    if mask is None:
        return dummy, (0, 0, 0, 0), 0
    m = mask.expand(shape)
    # bool goes in as is (Triton loads torch.bool as i1); a .view(torch.uint8) here broke
    # Inductor's lowering under torch.compile (aten.view.dtype on bool).
    return m, m.stride(), 1 if m.dtype == torch.bool else 2


def _window_args(window_left: int, window_right: int, causal: bool, seqlen_q: int, seqlen_k: int):
    """(HAS_WINDOW, IS_CAUSAL, left, right) for the kernels. -1 (unbounded) becomes Sq + Sk, which
    no row's bound reaches; causal caps the right bound at the diagonal (as flash-attn), and a
    window that is plain causal (left unbounded, right 0) takes the causal path."""
    if causal:
        window_right = 0
    if window_left < 0 and (window_right < 0 or causal):
        return False, causal, 0, 0
    big = seqlen_q + seqlen_k
    return (True, False, window_left if window_left >= 0 else big,
            window_right if window_right >= 0 else big)


def _softcap_mode(softcap: float, q: torch.Tensor) -> int:
    """HAS_SOFTCAP: 0 off; 2 the GPU's approximate tanh for fp16/bf16 (one instruction: the
    accurate one cost 2x the forward's time on an H100); 1 the accurate tanh (fp32, interpreter)."""
    if softcap <= 0:
        return 0
    return 2 if (q.dtype != torch.float32 and q.device.type == "cuda") else 1


def _empty_like_layout(b: int, h: int, s: int, d: int, bshd: bool, like: torch.Tensor) -> torch.Tensor:
    if bshd:
        return torch.empty((b, s, h, d), dtype=like.dtype, device=like.device).transpose(1, 2)
    return torch.empty((b, h, s, d), dtype=like.dtype, device=like.device)



class _Features(NamedTuple):
    """Per-call kernel arguments for ALiBi, sinks and packed (varlen) sequences."""
    alibi: torch.Tensor
    alibi_strides: tuple[int, int]
    sink: torch.Tensor
    cu_q: torch.Tensor
    cu_k: torch.Tensor
    batch: int       # sequences (varlen) or B
    seqlen_q: int    # max_seqlen_q (varlen) or Sq
    seqlen_k: int
    lse_strides: tuple[int, int]
    varlen: bool


def _features(q, k, alibi_slopes, sink, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k) -> _Features:
    B, H, Sq, _ = q.shape
    Sk = k.shape[2]
    if alibi_slopes is None:
        alibi, astr = q, (0, 0)
    else:
        a = alibi_slopes.expand(B if cu_seqlens_q is None else cu_seqlens_q.numel() - 1, H)
        alibi, astr = a, (a.stride(0), a.stride(1))
    varlen = cu_seqlens_q is not None
    if varlen:  # q (1, H, total_q, D): the kernels index sequences, never the batch dim
        return _Features(alibi, astr, q if sink is None else sink, cu_seqlens_q, cu_seqlens_k,
                         cu_seqlens_q.numel() - 1, int(max_seqlen_q), int(max_seqlen_k), (0, Sq), True)
    return _Features(alibi, astr, q if sink is None else sink, q, q, B, Sq, Sk, (H * Sq, Sq), False)


def _batch_strides(t: torch.Tensor, varlen: bool) -> tuple[int, int, int]:
    """(b, h, s) strides for the kernels; 0 for b with packed sequences (one tensor, B = 1)."""
    return (0 if varlen else t.stride(0)), t.stride(1), t.stride(2)


# ------------------------------------------------------------------ Hopper forward (Gluon)
# Measured on an H100 (kernels/fwd_hopper.py's docstring): (BLOCK_M 128, BLOCK_N 128, 2 stages),
# within 2% of the best variant everywhere measured; at D = 64 the kernel gained nothing.
# On by default where it applies; FLASHKERNELS_HOPPER_FWD=0 turns it off (the Triton kernel then).
HOPPER_FWD_ENV = "FLASHKERNELS_HOPPER_FWD"
HOPPER_BLOCK_M, HOPPER_BLOCK_N, HOPPER_STAGES = 128, 128, 2
HOPPER_HEAD_DIM = 128
# Head dim -> (BLOCK_N, STAGES) or (BLOCK_N, STAGES, BLOCK_M) of the Gluon forward (BLOCK_M:
# HOPPER_BLOCK_M, two consumer warpgroups, unless given: 192 is three); the head dims it runs are
# this dict's keys. D = 256 (H200, scripts/exp_fwd_dims.py, FA3 grid): 1.24-1.61x the Triton
# kernel, 0.85-1.02x cuDNN; BLOCK_N 64 with 2 stages is the one config whose K/V ring fits the
# shared memory. D = 64 (H100, scripts/ab_fwd64.py, FA3 grid): three warpgroups with 2 stages
# 1.03-1.20x the Triton kernel from S = 2k (two: 0.88-1.08x), but 0.75-0.95x at S = 512-1k, so
# below HOPPER_FWD_MIN_SEQLEN[64] query rows D = 64 runs HOPPER_FWD_SHORT's build (plain calls) or
# the Triton kernel (the others).
HOPPER_FWD_CONFIGS: dict[int, tuple[int, ...]] = {64: (128, 2, 192), HOPPER_HEAD_DIM: (HOPPER_BLOCK_N, HOPPER_STAGES),
                                                  256: (64, 2)}
HOPPER_FWD_MIN_SEQLEN: dict[int, int] = {64: 2048}  # head dim -> fewest query rows the Gluon forward takes
# (packed sequences: compared with max_seqlen_q, the longest sequence's rows, which sets the grid
# as Sq does; a batch of short sequences with one long one passes. Not applied where packed sequences
# take two warpgroups: hopper_fwd_varlen_two_wg, D = 64's causal calls.)
# The plain forward (no feature flag) with two warpgroups as a persistent kernel (kernels/fwd_hopper.py
# PERSISTENT): one CTA an SM walks the tiles, and the next tile's first K / V blocks load during a
# tile's output store. Measured on the H100 (scripts/ab_attention.py --gluon --switch
# HOPPER_FWD_PERSISTENT --head-dims 128,256, FA3 grid, session 13): non-causal D = 128 +0.8-8.5%
# (1k: +8.5%), D = 256 -2.3 to +1.6%; causal, its tiles longest first across all heads, -6 to -30%
# (the CTAs that run together no longer share a head's K / V in L2), and head by head, each head's
# tiles longest first (switch HOPPER_FWD_PERSISTENT_CAUSAL), -1 to +1% to 4k, -4.5% at 8k, -25% at
# 16k (a static stride leaves the CTAs unbalanced). So: D = 128 only, causal since session 15 in
# pairs of query tiles (HOPPER_FWD_PERSISTENT_CAUSAL below).
HOPPER_FWD_PERSISTENT = True
HOPPER_FWD_PERSISTENT_DIMS = (128,)
# Causal persistent launches walk pairs of query tiles (n_m - 1 - j, j) of one head, n_m + 1 key
# blocks a pair, so every CTA's share of the work is the same (kernels/fwd_hopper._ws_tile_c; a head's
# query tiles must pair up, else the grid launch). H100, session 15 (scripts/ab_attention.py --gluon
# --switch HOPPER_FWD_PERSISTENT_CAUSAL --head-dims 128,256, 3 rounds, ...-ab-fwd-causal-pairs.txt):
# D = 128 (chained) +8.8 / +7.8 / -1.3% at 1k / 4k / 16k against the grid launch (its tiles
# last first), D = 256 (not chained) +0.2-1.3%, so D = 256 keeps the grid. (Session 13, each head's
# tiles longest first, striding by the grid: -1 to +1% to 4k, -25% at 16k, the CTAs unbalanced.)
HOPPER_FWD_PERSISTENT_CAUSAL = True
# ... up to this many query rows; longer causal calls keep the grid launch (its tiles last first).
# H100, session 16, CUDA-graph replays (scripts/ab_attention.py --gluon --graph --switch
# HOPPER_FWD_PERSISTENT_CAUSAL --seqlens 8192,16384 --rounds 5, ...-ab-fwd-causal-cap.txt), D = 128:
# +3.2% at 8k, -2.3% at 16k (there 64 pairs a head x 16 heads = 1024 pairs on 132 CTAs: 7.76 a CTA,
# so a quarter of the CTAs idle through the last pair's time, where the grid's hardware scheduler
# fills in with short tiles); with a sink or ALiBi +4.0 / +3.7% at 8k.
HOPPER_FWD_PERSISTENT_CAUSAL_MAX_ROWS = 8192
# The score features (softcap, ALiBi, sink) in the persistent (chained, paired) forward too, so that
# their cost over plain attention stays what it was before the plain forward went persistent (issue
# 5's 10%). H100, session 16, CUDA-graph replays (scripts/ab_attention.py --gluon --graph --switch
# HOPPER_FWD_PERSISTENT_FEATURES --softcap 2 / --alibi / --sink --rounds 5, D = 128, FA3 grid,
# ...-ab-fwd-persistent-features.txt), non-causal / causal at 1k, 2k, 4k, 16k: softcap +9.1 / +2.8 /
# +0.9 / -0.9%, causal +3.9 / +8.3 / +6.1 / -1.1%; sink +7.4 / +3.3 / +2.4 / +0.9%, causal +7.7 /
# +9.1 / +5.3 / -2.1%; ALiBi +11.2 / +5.4 / +3.0 / +1.2%, causal -8.8 / +2.6 / +3.8 / -2.9% (that
# build then spilled 320 B in the step between two tiles; 56 B since its |i - j| bias is an
# explicit fma: then -3.5 / +1.6 / +3.5% at 1k / 2k / 4k). 16k causal: see
# HOPPER_FWD_PERSISTENT_CAUSAL_MAX_ROWS.
HOPPER_FWD_PERSISTENT_FEATURES = True
# ALiBi's column bias (without softcap or a window: the split of hopper_softmax._softmax_step) added by
# the tensor cores, one more k = 16 wgmma a block (kernels/fwd_hopper._ws_qk: the slope in three 16-bit
# parts, in registers, times a constant tile of the keys' places), instead of one add a score (64 of a
# step's ~480 instructions at D = 128). H100, session 17, off / on in separate processes, two rounds
# (scripts/ab_attention.py --gluon --graph --also HOPPER_FWD_ALIBI_MMA=..., ...-ab-fwd-alibi-mma-2proc.txt):
# D = 128 non-causal +4.2 / +5.4% at 4k / 16k, causal +1.4 / +1.9%. D = 64 read -0.8 to +5.1% in one
# process (on timed first, which favoured it by ~1-6% there: ...-ab-fwd-alibi-mma.txt), within the noise
# of that order once the same call's no-op readings are taken off; D = 256 (an earlier form, the rows'
# operand in shared memory; H200) lost 0.5-3.3%: its wgmmas (k = 256) weigh more against its softmax.
# Both kept the add (tested on the GPU at D = 64 too: set the dims to measure it again). Session 22, paired
# CUDA-graph A/B at D = 64 (--switch HOPPER_FWD_ALIBI_MMA_DIMS --on "(64, 128)" --off "(128,)" --alibi
# --paired 24, with ALiBi's rotated key order, ...-s22-ab-alibi-mma-d64.txt), non-causal / causal: +0.9 /
# -0.4% at 2k, +1.5 / +2.0% at 4k, +1.9 / +6.0% at 16k (the fast path 484 -> 425 instructions, 0 spill);
# so D = 64 takes it too (GPU tests forced on: ...-s22-alibi-mma-d64-tests.txt). D = 256 (the final form,
# rows' operand in registers; ...-s22-ab-alibi-mma-d256.txt): -0.3 / -1.3% at 1k, +0.7 / +2.5% at 4k, +1.1 /
# +4.9% at 16k (fast path 354 -> 333 non-causal, spill 4 / 12 -> 0 B), so from 4096 query rows
# (HOPPER_FWD_ALIBI_MMA_MIN_ROWS; GPU tests forced on at every length: ...-s22-alibi-mma-d256-tests.txt).
HOPPER_FWD_ALIBI_MMA = True
HOPPER_FWD_ALIBI_MMA_DIMS = (64, 128, 256)
HOPPER_FWD_ALIBI_MMA_MIN_ROWS: dict[int, int] = {256: 4096}  # head dim -> fewest query rows
# ALiBi forwards walk each tile's key blocks from the one before the block its diagonal lies in,
# wrapping around (kernels/fwd_hopper.py ROT_N, _ws_rot0 / _ws_blk), instead of in key order: the bias
# peaks at the diagonal, so the running row max is set by the first two blocks and the lazy rescale of O
# is skipped on the rest; in key order a slope above ~0.04 (9 of 16 heads' geometric slopes) moved the
# max past LAZY_THRESHOLD on every block before the diagonal. Two-warpgroup builds without a window or
# packed sequences (their blocks start at lo; TRIM's warpgroups stop at their own diagonals) nor softcap
# (not measured with it; its D = 128 causal build spilled 24 -> 32 B), from HOPPER_FWD_ALIBI_ROTATE_MIN_ROWS
# query rows. H100, paired CUDA-graph A/B (scripts/ab_attention.py
# --gluon --paired 24 --switch HOPPER_FWD_ALIBI_ROTATE --alibi --modes fwd, FA3 grid, session 22,
# ...-s22-ab-alibi-rotate.txt), non-causal / causal: D = 128 -1.1 / +0.1% at 1k, +1.9 / +1.5% at 4k,
# +3.7 / +4.6% at 16k; D = 256 -3.0 / -2.8%, +1.8 / +2.6%, +6.2 / +5.2%; D = 64 0%, +0.8 / +1.0%, +0.9 /
# -0.3%; at 2k / 8k (...-s22-ab-alibi-rotate-2k-8k.txt) D = 128 -0.5 / +0.2%, +2.9 / +2.8%, D = 256 -0.3 /
# +0.4%, +4.4 / +4.4%. `bench features --paired 40` (D = 128, 4k causal): ALiBi over plain 1.139 -> 1.116. Starting
# at the diagonal's own block instead read D = 128 1k non-causal -7.7% (that block takes the longer
# ALiBi step, first in the tile with no P V wgmma to hide it).
HOPPER_FWD_ALIBI_ROTATE = True
# head dim -> fewest query rows that rotate (D = 256: 1k lost, 2k even)
HOPPER_FWD_ALIBI_ROTATE_MIN_ROWS: dict[int, int] = {256: 4096}


def hopper_fwd_alibi_rotate(alibi: bool, other_features: bool, block_m: int, head_dim: int = 128,
                            rows: int = 4096) -> bool:
    """Whether the Gluon forward walks its key blocks from the diagonal (kernels/fwd_hopper.py ROT_N):
    HOPPER_FWD_ALIBI_ROTATE, ALiBi without softcap, a window or packed sequences (``other_features``),
    two warpgroups (BLOCK_M 128), at least HOPPER_FWD_ALIBI_ROTATE_MIN_ROWS[head_dim] query rows."""
    return (HOPPER_FWD_ALIBI_ROTATE and alibi and not other_features and block_m == HOPPER_BLOCK_M
            and rows >= _rows_floor(HOPPER_FWD_ALIBI_ROTATE_MIN_ROWS, head_dim))


def _rows_floor(floors: dict, head_dim) -> int:
    """floors[head_dim], else 0 (looked up by ==: head_dim may be a SymInt)."""
    return next((n for d, n in floors.items() if d == head_dim), 0)


# A persistent forward's tiles as one stream of key blocks (kernels/fwd_hopper.py CHAIN): a tile's first
# q·kᵀ wgmma is issued with the previous tile's last p·v one, and its Q loads while that tile runs (two
# sets of Q buffers: D <= 128 only, D = 256's ring fills the shared memory). H100, session 15
# (scripts/ab_attention.py --gluon --switch HOPPER_FWD_CHAIN --rounds 5, FA3 grid, D = 128
# non-causal, ...-ab-fwd-chain.txt): +3.0 / +1.5 / +0.8 / -0.4% at 1k / 2k / 4k / 16k.
HOPPER_FWD_CHAIN = True
HOPPER_FWD_CHAIN_MAX_DIM = 128
# The chained forward's output store waited for in the next tile's first loop step, not at the tile
# boundary (kernels/fwd_hopper.py CHAIN = 2, _ws_attend_chain's DEFER): the TMA store's read of its
# staging buffer overlaps that step. H100, session 23 (scripts/ab_attention.py --gluon --paired 24
# --switch HOPPER_FWD_CHAIN_DEFER, FA3 grid, ...-s23-ab-chain-defer.txt): D = 64 1k (the short build)
# +1.2% / +1.4% non-causal / causal, D = 128 -0.9 to +0.4% (1k-16k): head dims whose chained builds
# defer (at D = 128 ALiBi's non-causal build would spill 104 B, not measured).
HOPPER_FWD_CHAIN_DEFER: tuple = (64,)
# An int64 tensor: chained forwards record their warpgroups' clocks there (kernels/fwd_hopper._probe;
# scripts/exp_chain_probe.py). None: off. HOPPER_FWD_PROBE_GLOBAL: %globaltimer (ns, one clock for all SMs)
# instead of each SM's %clock64 (the tensor then needs programs * 4 more entries: the warpgroups' starts and ends).
HOPPER_FWD_PROBE = None
HOPPER_FWD_PROBE_GLOBAL = False
# Head dim -> (BLOCK_N, STAGES, rows, causal rows): the build that runs a plain forward (no feature;
# causal with its diagonal at the top-left corner, Sq <= Sk) below that many query rows (non-causal,
# causal), where the head dim's own config loses: two warpgroups, persistent and chained (needs
# HOPPER_FWD_PERSISTENT and HOPPER_FWD_CHAIN; causal, in pairs of query tiles: Sq a multiple of 256).
# H100, session 15 (scripts/ab_fwd64.py, FA3 grid, ...-ab-fwd64-chain*.txt): non-causal 1k 413-417
# TF/s against the Triton kernel's 381-388 (2k: 423-430 against three warpgroups' 445); causal 1k /
# 2k / 4k 288 / 372 / 419 against the Triton kernel's 264 and three warpgroups' 355 at 2k, 421 at 4k. 4 stages
# instead of 3 (H200, session 31, paired, ...-s31-ab-fwd64-short-st4.txt): 0.974-1.001 at 1k / 2k.
HOPPER_FWD_SHORT: dict[int, tuple[int, int, int, int]] = {64: (128, 3, 2048, 4096)}
# Causal grid launches of the Gluon forward take their query tiles last first (kernels/fwd_hopper.py
# REVERSE_M): each head's longest tiles start first, so the last wave is short ones. H100, session
# 13 (scripts/ab_attention.py --gluon --switch HOPPER_FWD_CAUSAL_REVERSE --head-dims 64,128,256
# --seqlens 2048,4096,8192,16384, ...-ab-fwd-causal-reverse.txt): -0.6 to +1.8% to 8k, +4% / +7% /
# +9% at 16k (D = 64 / 128 / 256).
HOPPER_FWD_CAUSAL_REVERSE = True
# The same for the Triton forward's causal launches (kernels/fwd.py REVERSE_M). H100, session 13
# (scripts/ab_attention.py --switch TRITON_FWD_CAUSAL_REVERSE --head-dims 64,128 --seqlens
# 1024,4096,16384, ...-ab-triton-fwd-causal-reverse.txt): -1.3 to 0% at 1k and 4k, +1.4% / +4.9% at
# 16k (D = 64 / 128).
TRITON_FWD_CAUSAL_REVERSE = True
# bf16 softcap forwards with no other score feature (ALiBi, sink, window) and a cap at most this fix
# the online softmax's row max at its bound softcap·log2 e (kernels/hopper_softmax.py: SOFTCAP = 2):
# no block computes a row max or rescales O, and p = 2^((t - 1)·softcap·log2 e) >= 2^-116 at 40 (a
# normal float in fp32 and bf16; not in fp16, whose P would flush: fp16 keeps the running max).
# H100, paired CUDA-graph A/B (scripts/ab_attention.py --gluon --paired 30 --switch
# HOPPER_FWD_SOFTCAP_STATIC_MAX --on 40.0 --off 0.0 --softcap 30, FA3 grid, S 4k / 16k, session 21,
# ...-s21-softcap-static.txt): D = 128 +3.8-4.2% (causal 16k +0.6%),
# D = 256 causal +12 / +18% (non-causal +0.4-1.7%), D = 64 causal +4.7 / +5.5%; D = 64 non-causal
# -1.4 / -1.7%, which keeps the running max (HOPPER_FWD_SOFTCAP_DYNAMIC). 0: off.
HOPPER_FWD_SOFTCAP_STATIC_MAX = 40.0
HOPPER_FWD_SOFTCAP_DYNAMIC = {(64, False)}  # (head dim, causal) builds that keep the running max


def _hopper_fwd_softcap_mode(softcap: float, other_features: bool, D: int = 128, causal: bool = True,
                             dtype: torch.dtype = torch.bfloat16):
    """The Gluon forward's SOFTCAP constexpr: False (no cap), True, or 2 (the row max fixed at its
    bound: HOPPER_FWD_SOFTCAP_STATIC_MAX; bf16 only)."""
    if softcap <= 0:
        return False
    if (dtype == torch.bfloat16 and not other_features and softcap <= HOPPER_FWD_SOFTCAP_STATIC_MAX
            and (D, bool(causal)) not in HOPPER_FWD_SOFTCAP_DYNAMIC):
        return 2
    return True


def hopper_fwd_chained(head_dim: int) -> bool:
    """Whether a persistent forward at ``head_dim`` runs its tiles chained (HOPPER_FWD_CHAIN, two sets
    of Q buffers: up to HOPPER_FWD_CHAIN_MAX_DIM)."""
    return HOPPER_FWD_CHAIN and head_dim <= HOPPER_FWD_CHAIN_MAX_DIM


def hopper_fwd_chain_flag(head_dim: int):
    """The kernel's CHAIN value of a chained build at ``head_dim``: 2 where HOPPER_FWD_CHAIN_DEFER
    names it, else True."""
    return 2 if head_dim in HOPPER_FWD_CHAIN_DEFER else True


# The non-causal persistent forward's last round split by key blocks (kernels/fwd_hopper.py SPLIT_TAIL), at these
# head dims (chained builds, CHAIN True, without a feature), when that round is at least half full: the tiles left
# after the whole rounds (tiles mod programs; the FA3-paper grid's 2048 tiles at D = 128 leave 68 of 132 CTAs a
# 16th round) cut into key-block units spread evenly over every CTA, the parts merged through a workspace
# (:func:`_split_tail_buffers`). H200, session 28 (scripts/exp_tile_rounds.py, ...-s28-exp-tile-rounds.txt): at
# S = 16896, where the tiles fill the rounds, the forward reads 1.032x the TF/s of S = 16384 at D = 128 (cuDNN
# 1.028x): the most the split can give. Measured (H200, session 28, scripts/ab_attention.py --gluon --paired 20
# --switch HOPPER_FWD_SPLIT_TAIL --causal 0, FA3-paper shapes, ...-s28-ab-split-tail2.txt), on / off: 1k -5.9%
# (8 key blocks a tile: the tail's segments, unchained, and their merges cost more than the round they save),
# 4k +0.6% [+0.0, +1.3], 16k +2.3% [+1.6, +2.6]; so from HOPPER_FWD_SPLIT_TAIL_MIN_KEYS keys.
HOPPER_FWD_SPLIT_TAIL: tuple = (128,)
HOPPER_FWD_SPLIT_TAIL_MIN_KEYS = 4096


def hopper_fwd_split_tail(head_dim, causal: bool, features: bool, keys: Optional[int] = None) -> bool:
    """Whether a persistent forward at ``head_dim`` over ``keys`` keys (None: enough) splits its last round
    (HOPPER_FWD_SPLIT_TAIL, from HOPPER_FWD_SPLIT_TAIL_MIN_KEYS keys): not causal, no feature (window, softcap,
    ALiBi, sink, packed sequences), chained without DEFER. (The launcher splits only a last round at least half
    full.)"""
    return (any(d == head_dim for d in HOPPER_FWD_SPLIT_TAIL) and not causal and not features
            and (keys is None or keys >= HOPPER_FWD_SPLIT_TAIL_MIN_KEYS) and hopper_fwd_chained(head_dim)
            and hopper_fwd_chain_flag(head_dim) is True)


def _split_tail_buffers(programs: int, head_dim: int, device) -> dict:
    """SPLIT_TAIL's workspace, fresh a call: Part (fp32, two slots of 64 rows x (head_dim + 2) a CTA) and Flags
    (int32 zeros, one a slot)."""
    return dict(Part=torch.empty(programs * 2 * 64 * (head_dim + 2), dtype=torch.float32, device=device),
                Flags=torch.zeros(programs * 2, dtype=torch.int32, device=device))


def hopper_fwd_short(head_dim: int, rows: int, causal: bool, plain: bool) -> bool:
    """Whether a forward of ``rows`` query rows runs HOPPER_FWD_SHORT's build: a plain call (``plain``:
    no feature, not packed; causal with its diagonal top-left) below its row limit (causal: rows a
    multiple of 256, whole pairs of query tiles), with persistent chained launches on."""
    cfg = next((c for d, c in HOPPER_FWD_SHORT.items() if d == head_dim), None)  # (SymInt: by ==)
    if cfg is None or not plain or not (HOPPER_FWD_PERSISTENT and hopper_fwd_chained(head_dim)):
        return False
    return rows < cfg[3] and rows % (2 * HOPPER_BLOCK_M) == 0 if causal else rows < cfg[2]


def hopper_fwd_alibi_mma(head_dim: int, alibi: bool, softcap_or_window: bool, rows: int = 4096) -> bool:
    """Whether the Gluon forward adds ALiBi's column bias with the tensor cores (kernels/fwd_hopper.py
    ALIBI_MMA): HOPPER_FWD_ALIBI_MMA, a head dim of HOPPER_FWD_ALIBI_MMA_DIMS, ALiBi without softcap or a
    window (packed sequences are window builds), at least HOPPER_FWD_ALIBI_MMA_MIN_ROWS[head_dim] query
    rows."""
    return (HOPPER_FWD_ALIBI_MMA and head_dim in HOPPER_FWD_ALIBI_MMA_DIMS and alibi and not softcap_or_window
            and rows >= _rows_floor(HOPPER_FWD_ALIBI_MMA_MIN_ROWS, head_dim))


def hopper_fwd_persistent(head_dim: int, block_m: int, features: bool, causal: bool = False,
                          score_features: bool = False) -> bool:
    """Whether the Gluon forward runs persistent for this build: HOPPER_FWD_PERSISTENT, a head dim of
    HOPPER_FWD_PERSISTENT_DIMS, two warpgroups, no window or packed sequences (``features``), the
    score features (softcap, ALiBi, sink: ``score_features``) only with HOPPER_FWD_PERSISTENT_FEATURES,
    not causal unless HOPPER_FWD_PERSISTENT_CAUSAL."""
    return (HOPPER_FWD_PERSISTENT and head_dim in HOPPER_FWD_PERSISTENT_DIMS and block_m == HOPPER_BLOCK_M
            and not features and (not score_features or HOPPER_FWD_PERSISTENT_FEATURES)
            and (not causal or HOPPER_FWD_PERSISTENT_CAUSAL))


# Packed sequences (flash_attn_varlen_func) in the Gluon forward (kernels/fwd_hopper.py VARLEN):
# on. `bench varlen` (H100, session 9, CUDA-graph GPU time, two runs): 0.88-0.89x dense non-causal,
# 0.93x causal, where the Triton varlen forward reads 0.70-0.73x. (Session 8's eager timings had
# spread 0.56-1.10x: the host's launch cost, not the kernel.)
HOPPER_FWD_VARLEN = True
# The VARLEN build's grid over the packed query tiles (kernels/fwd_hopper._ws_tile_varlen's NB > 0):
# total_q // BLOCK_M + n CTAs a head, at most one of them empty a sequence, instead of n times the
# longest sequence's tiles (in `bench varlen`'s case 47% of those CTAs had no rows, and 256 more
# empty ones a head cost 6-7% non-causal / 15-17% causal). H100, `bench varlen`'s case, three rounds
# alternating (scripts/exp_varlen_grid.py, session 14): +2.5-3.2% non-causal, +1.1-2.8% causal.
# Up to HOPPER_FWD_VARLEN_PACKED_MAX - 1 sequences: each CTA loads that many offsets (its producer
# warp into 24 registers).
HOPPER_FWD_VARLEN_PACKED = True
HOPPER_FWD_VARLEN_PACKED_MAX = 256
# The packed-tile VARLEN build persistent (kernels/fwd_hopper._ws_producer_dyn / _ws_consumer_dyn), at
# these head dims (two consumer warpgroups): one CTA an SM, each taking the next packed tile from a
# counter (a zeroed int32 a call) until none is left, so the K_0 load of a tile and its Q's overlap the
# last tile's output store and the long sequences' tiles do not wait behind a CTA's static share. A
# list-scheduling count over `bench varlen`'s lengths (session 25: a tile n · 1.7 µs + 3.0 µs a grid
# CTA, + 1.9 µs persistent) predicted 0.85 -> 0.90x dense non-causal, 0.79 -> 0.87x causal; a static
# stride of the tiles instead: 0.83x / 0.78x (lengths 242-1977: a CTA's share of ~17 tiles of 2-16
# blocks varies by ~30%). Measured (H200, session 25, scripts/ab_varlen.py, `bench varlen`'s case,
# paired CUDA-graph replays, two calls): D = 128 +3.3-3.9% non-causal (0.85 -> 0.88x dense), +5.5-6.0%
# causal (0.89 -> 0.94x); D = 256 (H 8) +0.1-0.2% / +0.8-1.2%: D = 128 only.
# D = 64 named here takes two warpgroups for packed sequences (its config has three) at any max_seqlen_q
# (hopper_fwd_varlen_two_wg): H200, session 26, with HOPPER_FWD_VARLEN_QSETS too, against the default (the
# Triton kernel below 2048 rows; ...-s26-ab-varlen-d64.txt): +4.1% causal (0.908 -> 0.943x dense), -0.1%
# non-causal (0.837x); for causal calls only since session 27 (HOPPER_FWD_VARLEN_PERSISTENT_CAUSAL below: from
# 2048 rows non-causal lost 2% against the three-warpgroup build it replaces).
HOPPER_FWD_VARLEN_PERSISTENT: tuple = (128,)
# ... and these head dims for causal calls only (two sets of Q buffers too, HOPPER_FWD_VARLEN_QSETS below). D = 64,
# H200, session 27 (scripts/ab_varlen.py --head-dims 64 --variants grid,persistent,qsets [--scale 4], paired
# CUDA-graph replays, ...-s27-ab-varlen-d64-x{1,4}.txt): with two Q sets over the default, causal +3.4% on
# `bench varlen`'s lengths (the Triton kernel: 0.913 -> 0.948x dense) and +2.8% on them x 4 (968-7908, the
# three-warpgroup grid from 2048 rows: 0.903 -> 0.929x); non-causal +0.0% and -2.0%, so not for those.
HOPPER_FWD_VARLEN_PERSISTENT_CAUSAL: tuple = (64,)
# The persistent varlen launch with two sets of Q buffers (kernels/fwd_hopper._ws_producer_dyn's QSETS = 2): the
# next tile's Q loads while this one runs, not after its output store, at these of
# HOPPER_FWD_VARLEN_PERSISTENT's head dims (up to HOPPER_FWD_CHAIN_MAX_DIM: D = 256's ring fills the shared memory).
# With one set, each tile's first S waits for its Q's load, issued once both warpgroups stored the last tile's
# output. Measured (H200, session 26, scripts/ab_varlen.py --variants persistent,qsets,grid, `bench varlen`'s
# case, ...-s26-ab-varlen-qsets.txt): D = 128 +4.8% non-causal (0.884 -> 0.927x dense), +6.2% causal
# (0.940 -> 0.998x). (The tiles chained as the dense forward's, docs/patches/s26-varlen-chain.patch: -5.4% /
# -10%, its loop's P operand copied into the wgmma's registers every step.)
HOPPER_FWD_VARLEN_QSETS: tuple = (64, 128)
# Head dim -> (rows, stages): packed sequences whose longest has fewer query rows (max_seqlen_q) take the
# two-warpgroup persistent launch (hopper_fwd_varlen_two_wg), causal or not, with a K / V ring of that many stages.
# D = 64, H200, session 28 (scripts/ab_varlen.py --head-dims 64 --variants grid,pub-defer,pub-defer-st3 [--scale 4],
# paired CUDA-graph replays, ...-s28-ab-varlen-d64-x{1,4}.txt), on `bench varlen`'s lengths (242-1977): non-causal
# +2.3% over the Triton kernel (0.846 -> 0.867x dense; two stages +1.6%), causal +1.8% over two stages (0.957 ->
# 0.979x). On those lengths x 4 (968-7908, past the 2048-row floor) three stages lost 0.5% causal and 2.2%
# non-causal against the three-warpgroup grid, so the floor stays there.
HOPPER_FWD_VARLEN_SHORT: dict[int, tuple[int, int]] = {64: (2048, 3)}


# With two Q sets, at these head dims: VARLEN_PUB, the producer publishes each tile's sequence with its index, so
# that the consumers' tile decode skips its search (a 128-wide load of the offsets and a reduction across the
# warpgroup, before the sequence's four offsets' loads); VARLEN_DEFER, a consumer waits for a tile's output store
# (its read of the Q buffer) only once it has decoded the next tile, then releases the buffer. H200, session 27
# (scripts/ab_varlen.py --variants qsets,pub,defer,pub-defer, paired CUDA-graph replays, `bench varlen`'s case,
# ...-s27-ab-varlen-late.txt), over two Q sets alone: D = 128 both +0.7% non-causal (0.930 -> 0.936x dense), +1.6%
# causal; PUB alone -0.1 / +0.7%, DEFER alone -0.3 / -0.1%; D = 64 causal both +1.6% (0.943 -> 0.961x).
HOPPER_FWD_VARLEN_PUB: tuple = (64, 128)
HOPPER_FWD_VARLEN_DEFER: tuple = (64, 128)


# At these head dims the causal forward's ALiBi (the kernel's CAUSAL, without softcap or a window) takes the split's
# "before" form on the blocks the diagonal crosses too (kernel ALIBI = 2, hopper_softmax._softmax_step): a row's keys
# after its diagonal are masked anyway, so no score there needs |diag - j| (the crossing block's step: D = 128
# persistent, its longest loop 872 -> 668-702 instructions, spill 40 -> 0 B). H200, session 27 (scripts/ab_attention.py
# --gluon --paired 20 --switch HOPPER_FWD_ALIBI_CAUSAL_SPLIT --alibi --causal 1, FA3-paper shapes,
# ...-s27-ab-alibi-csplit.txt), on / off at 1k / 4k / 16k: D = 128 +8.6 / +1.2 / +1.8%, D = 256 +0.8 / +2.2 / +2.6%,
# D = 64 +0.4 / -0.1 / -2.8% (not taken there).
HOPPER_FWD_ALIBI_CAUSAL_SPLIT: tuple = (128, 256)


def hopper_fwd_alibi_mode(head_dim, alibi: bool, causal: bool, softcap: bool):
    """The forward kernel's ALIBI: False without slopes; 2 for the kernel's CAUSAL builds without softcap (the
    split's builds) at the head dims of HOPPER_FWD_ALIBI_CAUSAL_SPLIT (the split's form on the diagonal's blocks
    too); else True."""
    if not alibi:
        return False
    return 2 if causal and not softcap and head_dim in HOPPER_FWD_ALIBI_CAUSAL_SPLIT else True


def hopper_fwd_varlen_short_stages(head_dim, rows: Optional[int]) -> int:
    """The K / V stages HOPPER_FWD_VARLEN_SHORT gives packed sequences of at most ``rows`` query rows each (their
    max_seqlen_q; None: not known) at ``head_dim``; 0: none (the head dim's config)."""
    cfg = next((c for d, c in HOPPER_FWD_VARLEN_SHORT.items() if d == head_dim), None)  # (SymInt: by ==)
    return cfg[1] if cfg is not None and rows is not None and rows < cfg[0] else 0


def hopper_fwd_varlen_two_wg(head_dim, causal: bool, rows: Optional[int] = None) -> bool:
    """Whether packed sequences at ``head_dim`` take two consumer warpgroups (BLOCK_M 128) whatever
    HOPPER_FWD_CONFIGS says, and any max_seqlen_q (HOPPER_FWD_MIN_SEQLEN not applied): the head dims of
    HOPPER_FWD_VARLEN_PERSISTENT, for a ``causal`` call HOPPER_FWD_VARLEN_PERSISTENT_CAUSAL's, and below
    HOPPER_FWD_VARLEN_SHORT's rows (``rows``: max_seqlen_q) its head dims, whose dynamic scheduler needs them
    (D = 64's config has three)."""
    return HOPPER_FWD_VARLEN_PACKED and (any(d == head_dim for d in HOPPER_FWD_VARLEN_PERSISTENT) or (
        causal and any(d == head_dim for d in HOPPER_FWD_VARLEN_PERSISTENT_CAUSAL))
        or hopper_fwd_varlen_short_stages(head_dim, rows) > 0)


def hopper_fwd_varlen_qsets(head_dim) -> int:
    """The persistent varlen forward's sets of Q buffers at ``head_dim`` (HOPPER_FWD_VARLEN_QSETS): 2 or 1."""
    return 2 if head_dim in HOPPER_FWD_VARLEN_QSETS and head_dim <= HOPPER_FWD_CHAIN_MAX_DIM else 1


# The persistent varlen launch's tiles longest first (kernels/fwd_hopper._ws_sort_starts: the sequences by
# their key counts, each one's query tiles from its last; 1: the heads innermost, 2: head by head) for up
# to HOPPER_FWD_VARLEN_SORT_MAX sequences (the order costs each CTA's producer one pass over the offsets).
# Off: 1 over the unsorted persistent launch (same call as above) D = 128 -2.8% non-causal / -2.6%
# causal, D = 256 -2.4% / +4.0% (the count predicted +1.7% / +7.5% at D = 128).
HOPPER_FWD_VARLEN_SORT = 0
HOPPER_FWD_VARLEN_SORT_MAX = 64
_INT32_MAX = 2**31 - 1
_GRID_Y_MAX = 65535  # the Gluon grid is (S / BLOCK_M, B * H)
hopper_fwd_launches = 0  # Gluon forward launches in this process (tests, `flashkernels check`)
hopper_fwd_plan_hits = 0  # of them, launched from a plan (hopper_fwd, HOPPER_FWD_PLANS)


@functools.lru_cache(maxsize=None)
def _capability(device_index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device_index)


def hopper_fwd_config(head_dim: int, alibi: bool = False) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, STAGES) of the Gluon forward at ``head_dim`` (a key of HOPPER_FWD_CONFIGS).
    With ALiBi, BLOCK_M 128: three warpgroups' 160 registers spill there (24 B alone, 96-316 B with
    softcap and the sink, compile_check), two warpgroups' 240 do not."""
    # (a lookup by ==: traced, head_dim may be a SymInt, which does not hash)
    block_n, stages, *block_m = next(c for d, c in HOPPER_FWD_CONFIGS.items() if d == head_dim)
    return (block_m[0] if block_m and not alibi else HOPPER_BLOCK_M), block_n, stages


def hopper_fwd_device_reason(device: torch.device) -> Optional[str]:
    """Why this machine cannot run the Gluon forward on ``device`` (None: it can): Gluon's
    availability, ``$FLASHKERNELS_HOPPER_FWD``, the interpreter, a CUDA device of capability 9.0."""
    if not fwd_hopper.AVAILABLE:
        return fwd_hopper.UNAVAILABLE_REASON
    if os.environ.get(HOPPER_FWD_ENV, "").strip() == "0":
        return f"turned off ({HOPPER_FWD_ENV}=0)"
    if KERNELS_INTERPRETED:
        return "Triton's interpreter is on (TRITON_INTERPRET=1)"
    if device.type != "cuda":
        return f"tensors on {device.type}, not on a CUDA GPU"
    cap = _capability(device.index if device.index is not None else torch.cuda.current_device())
    if tuple(cap) != (9, 0):
        return f"compute capability {cap[0]}.{cap[1]}: the kernel is built for 9.0 (Hopper, sm_90a)"
    return None


def _traced(q: torch.Tensor) -> bool:
    """True when the launcher is being traced (torch.compile, make_fx, fake or functional
    tensors, any dispatch mode). The Gluon launch cannot go through ``wrap_triton`` (its TMA
    descriptors read data pointers when built), so traced calls reach it through the opaque
    custom op ``flashkernels::attn_fwd_hopper`` instead (see the end of this file)."""
    return type(q) is not torch.Tensor or torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None


class _HopperView(NamedTuple):
    """A (B, H, S, D) tensor as the 2-D row-major matrix its TMA descriptor reads: row m of head h
    of batch b is row ``b * rb + h * rh + m``, its D values start at column ``h * ch``."""
    rows: int
    cols: int
    row_stride: int
    rb: int
    rh: int
    ch: int


def _hopper_view(t: torch.Tensor) -> Optional[_HopperView]:
    """The 2-D view of ``t`` ((B, H, S, D), unit last stride) for the Gluon kernel's TMA, or None
    when its strides have none. Two families: rows of one head are rows of the matrix and heads
    are further rows (sh and sb multiples of ss: (B, H, S, D) contiguous, for one), or heads sit
    side by side in the columns of each token's row (sb a multiple of ss and the heads within
    one row: (B, S, H, D) contiguous, or q/k/v sliced from a packed qkv projection). TMA needs
    the row stride a multiple of 16 bytes. (Memoised on shape and strides: a call asks for the
    same few views up to seven times; traced sizes, which do not hash, are computed each time.)"""
    shape, stride, size = t.shape, t.stride(), t.element_size()
    try:
        return _hopper_view_of(shape, stride, size)
    except TypeError:  # SymInt sizes
        return _hopper_view_of.__wrapped__(shape, stride, size)


@functools.lru_cache(maxsize=4096)
def _hopper_view_of(shape, stride, element_size: int) -> Optional[_HopperView]:
    B, H, S, D = shape
    sb, sh, ss, sd = stride
    if sd != 1 or ss <= 0 or (ss * element_size) % 16:
        return None
    rb = 0 if B == 1 else sb // ss
    if B > 1 and sb != rb * ss:
        return None
    if H == 1 or (sh % ss == 0 and sh > 0):
        rh = 0 if H == 1 else sh // ss
        return _HopperView((B - 1) * rb + (H - 1) * rh + S, D, ss, rb, rh, 0)
    if 0 < sh and (H - 1) * sh + D <= ss:
        return _HopperView((B - 1) * rb + S, (H - 1) * sh + D, ss, rb, 0, sh)
    return None


def hopper_fwd_layout_reason(q, k, v, mask, scale, causal, causal_offset, bshd, window_left, window_right,
                             softcap, alibi_slopes, sink, cu_seqlens_q, check_pointers: bool = True,
                             head_dims: Optional[tuple] = None, varlen_ok: bool = False) -> Optional[str]:
    """Why these arguments (attn_fwd_impl's) are not a case of the Gluon forward, None when they
    are; shapes, strides and features only, no device query (unit-testable on CPU tensors).
    ``check_pointers=False`` skips the 16-byte alignment of the data pointers (fake tensors have
    none; the custom op checks them when it runs). ``bshd`` does not matter: the kernel writes
    either output layout. The features the kernel has (causal at any causal_offset, sliding window,
    softcap, ALiBi, sink, Sq != Sk) pass here; :func:`hopper_bwd_reason` refuses them itself.
    ``head_dims``: the head dims accepted (default: the forward's, ``HOPPER_FWD_CONFIGS``).
    ``varlen_ok``: packed sequences (q (1, H, total_q, D)) pass, any total (the kernel masks each
    sequence's last blocks)."""
    B, H, S, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    head_dims = tuple(HOPPER_FWD_CONFIGS) if head_dims is None else head_dims
    if q.dtype not in (torch.bfloat16, torch.float16):
        return f"dtype {q.dtype}: bfloat16 or float16 only"
    if D not in head_dims or v.shape[3] != D:
        return f"head dim {D}: {' or '.join(map(str, head_dims))} only"
    if mask is not None:
        return "an attention mask"
    if cu_seqlens_q is not None and not varlen_ok:
        return "packed sequences (varlen)"
    if cu_seqlens_q is None and (S % HOPPER_BLOCK_M or S == 0):
        return f"seqlen {S}: a positive multiple of {HOPPER_BLOCK_M} only"
    if cu_seqlens_q is None and (Sk % HOPPER_BLOCK_M or Sk == 0):
        return f"seqlen_k {Sk}: a positive multiple of {HOPPER_BLOCK_M} only"
    # (no key tail: a block past Sk would read the next head's keys; the backward's head dims may have
    # no forward config)
    block_n = hopper_fwd_config(D)[1] if D in tuple(HOPPER_FWD_CONFIGS) else HOPPER_BLOCK_N
    if cu_seqlens_q is None and Sk % block_n:
        return f"seqlen_k {Sk}: a multiple of {block_n} (BLOCK_N at head dim {D}) only"
    # (the window, softcap, ALiBi and sink are the kernel's; its int32 index arithmetic adds up to
    # four of these)
    if max(S + Sk, abs(causal_offset), window_left, window_right) > _INT32_MAX // 4:
        return (f"causal_offset {causal_offset} or window {(window_left, window_right)}: past the kernel's "
                "int32 index arithmetic")
    if not scale > 0:
        return f"scale {scale}: positive only (the row max is taken before scaling)"
    if Hkv == 0 or H % Hkv:
        return f"{H} query heads, {Hkv} kv heads: not a multiple"
    if B * H > _GRID_Y_MAX:
        return f"B * H = {B * H} programs along grid y (at most {_GRID_Y_MAX})"
    for name, t in (("q", q), ("k", k), ("v", v)):
        view = _hopper_view(t)
        if view is None:
            return (f"{name}'s strides {tuple(t.stride())} of {tuple(t.shape)}: no 2-D view with a 16-byte "
                    "row stride for TMA")
        if view.rows > _INT32_MAX:
            return f"{name}'s 2-D view has {view.rows} rows: TMA coordinates are int32"
        if check_pointers and t.data_ptr() % 16:
            return f"{name}'s data pointer is not 16-byte aligned (TMA)"
    if B * H * S > _INT32_MAX:  # lse offsets; the output is ours, contiguous either way
        return f"{B * H * S} query rows: lse offsets are int32"
    return None


def hopper_fwd_reason(q, k, v, mask, scale, causal, causal_offset, bshd, window_left, window_right, softcap,
                      alibi_slopes, sink, cu_seqlens_q, max_seqlen_q: int = 0) -> Optional[str]:
    """None when attn_fwd_impl runs the Gluon forward (kernels/fwd_hopper.py) for these arguments,
    else why not: the machine (:func:`hopper_fwd_device_reason`), then the arguments
    (:func:`hopper_fwd_layout_reason`; traced, the data pointers are checked when the op runs),
    packed sequences (:func:`hopper_fwd_varlen_reason`; ``max_seqlen_q``: theirs).
    Cheapest first: it runs on every eager forward. Last, the head dim's HOPPER_FWD_MIN_SEQLEN
    (packed sequences: against max_seqlen_q)."""
    why = hopper_fwd_device_reason(q.device) or hopper_fwd_layout_reason(
        q, k, v, mask, scale, causal, causal_offset, bshd, window_left, window_right, softcap, alibi_slopes, sink,
        cu_seqlens_q, check_pointers=not _traced(q), varlen_ok=True)
    if why is None and cu_seqlens_q is not None:
        why = hopper_fwd_varlen_reason(q, k, cu_seqlens_q)
    if why is None:
        fewest = next((n for d, n in HOPPER_FWD_MIN_SEQLEN.items() if d == q.shape[3]), 0)  # (SymInt: by ==)
        rows = q.shape[2] if cu_seqlens_q is None else int(max_seqlen_q)
        if rows < fewest and not (cu_seqlens_q is not None and hopper_fwd_varlen_two_wg(q.shape[3], causal, rows)) and \
                not hopper_fwd_short(q.shape[3], rows, causal, _plain_call(
                q, k, causal, causal_offset, window_left, window_right, softcap, alibi_slopes, sink, cu_seqlens_q)):
            what = "seqlen" if cu_seqlens_q is None else "max_seqlen_q"
            return f"{what} {rows} at head dim {q.shape[3]}: the Triton kernel is faster below {fewest}"
    return why


def _plain_call(q, k, causal, causal_offset, window_left, window_right, softcap, alibi_slopes, sink,
                cu_seqlens_q) -> bool:
    """A forward the kernel runs without a feature flag: no window, softcap, ALiBi, sink or packed
    sequences, and if causal, its diagonal at the top-left corner (causal_offset 0, Sq <= Sk: the
    kernel's CAUSAL; other causal calls are its WINDOW builds)."""
    if cu_seqlens_q is not None or softcap > 0 or alibi_slopes is not None or sink is not None:
        return False
    if causal and (causal_offset != 0 or q.shape[2] > k.shape[2]):
        return False
    return not _window_args(window_left, window_right, causal, q.shape[2], k.shape[2])[0]


def hopper_fwd_varlen_reason(q, k, cu_seqlens_q) -> Optional[str]:
    """Why packed sequences (q (1, H, total_q, D), ``cu_seqlens_q`` (n + 1,)) that passed
    :func:`hopper_fwd_layout_reason` do not run the Gluon forward's VARLEN build, None when they
    do: its switch HOPPER_FWD_VARLEN, keys at all (a TMA descriptor has at least one row), and
    n · H CTAs along grid y."""
    if not HOPPER_FWD_VARLEN:
        return "packed sequences (varlen): turned off (launch.HOPPER_FWD_VARLEN = False)"
    if k.shape[2] == 0:
        return "packed sequences (varlen) with no keys at all (total_k 0)"
    if (cu_seqlens_q.numel() - 1) * q.shape[1] > _GRID_Y_MAX:
        return (f"{cu_seqlens_q.numel() - 1} sequences x {q.shape[1]} heads: more CTAs along grid y than "
                f"{_GRID_Y_MAX}")
    return None


@functools.lru_cache(maxsize=None)
def _hopper_smem_layout(rows: int, dtype: torch.dtype, head_dim: int = HOPPER_HEAD_DIM):
    gdt = fwd_hopper.gl.bfloat16 if dtype == torch.bfloat16 else fwd_hopper.gl.float16
    return fwd_hopper.gl.NVMMASharedLayout.get_default_for([rows, head_dim], gdt)


def _hopper_desc(t: torch.Tensor, rows: int):
    """(TMA descriptor of t's 2-D view in blocks of ``rows`` x D, (rb, rh, ch))."""
    view = _hopper_view(t)
    desc = TmaDesc(t, [view.rows, view.cols], [view.row_stride, 1], [rows, t.shape[3]],
                   _hopper_smem_layout(rows, t.dtype, t.shape[3]))
    return desc, (view.rb, view.rh, view.ch)


def hopper_fwd(q, k, v, out, lse, scale: float, causal: bool, causal_offset: int = 0, window_left: int = -1,
               window_right: int = -1, softcap: float = 0.0, alibi_slopes: Optional[torch.Tensor] = None,
               sink: Optional[torch.Tensor] = None, cu_seqlens_q: Optional[torch.Tensor] = None,
               cu_seqlens_k: Optional[torch.Tensor] = None, max_seqlen_q: int = 0, max_seqlen_k: int = 0) -> None:
    """Fill ``out`` ((B, H, Sq, D), (B, S, H, D) or (B, H, S, D) storage) and ``lse`` ((B, H, Sq)
    float32) with the Gluon kernel; the arguments (attn_fwd_impl's) must pass
    :func:`hopper_fwd_reason`. Packed sequences (``cu_seqlens_q``: B = 1, S = total_q; lse (1, H,
    total_q)): the kernel's VARLEN build, grid (total_q // BLOCK_M + n, H) over the packed query
    tiles (HOPPER_FWD_VARLEN_PACKED, fewer than HOPPER_FWD_VARLEN_PACKED_MAX sequences; where
    :func:`hopper_fwd_varlen_two_wg` says, those tiles by a dynamic scheduler in a persistent launch,
    one CTA an SM, its counter a fresh zeroed int32), else (ceil(max_seqlen_q / BLOCK_M), n · H).

    Calls without packed sequences keep a plan per shape (HOPPER_FWD_PLANS, :func:`_fwd_plan_key`): a
    repeat launches the first call's specialisation with its decisions, rebuilding only what changes
    from call to call (:func:`_fwd_plan_args`)."""
    global hopper_fwd_launches, hopper_fwd_plan_hits
    kernel = fwd_hopper.attn_fwd_hopper_kernel
    key = None
    # (no key while the launch cache's fast path is off: no plan is kept or used then)
    if HOPPER_FWD_PLANS and cu_seqlens_q is None and HOPPER_FWD_PROBE is None and _launch.enabled():
        key = _fwd_plan_key(kernel, q, k, v, out, lse, causal, causal_offset, window_left, window_right, softcap,
                            alibi_slopes, sink)
        plan = _fwd_plans.get(key)
        if plan is not None:
            args = _fwd_plan_args(plan, q, k, v, out, lse, scale, softcap, alibi_slopes, sink)
            if _launch._CHECK:  # (the GPU tests: the plan's launch is the one the full path builds)
                _check_fwd_plan(plan, args, _hopper_fwd_args(q, k, v, out, lse, scale, causal, causal_offset,
                                                             window_left, window_right, softcap, alibi_slopes, sink))
            kwargs = plan.kwargs
            if kwargs.get("SPLIT_TAIL"):  # (its workspace fresh a call)
                kwargs = dict(kwargs, **_split_tail_buffers(plan.grid[0], q.shape[3], q.device))
            _launch.launch_entry(kernel, plan.entry, plan.grid, args, kwargs)
            hopper_fwd_launches += 1
            hopper_fwd_plan_hits += 1
            return
    grid, args, kwargs = _hopper_fwd_args(q, k, v, out, lse, scale, causal, causal_offset, window_left, window_right,
                                          softcap, alibi_slopes, sink, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                          max_seqlen_k)
    cached_launch(kernel, grid, *args, fk_traceable=False, **kwargs)
    hopper_fwd_launches += 1
    if key is not None:
        entry = _launch.cached_entry(kernel, args, kwargs)
        if entry is not None:
            if len(_fwd_plans) >= _FWD_PLANS_MAX:
                _fwd_plans.clear()
            # (no tensor of this call in the plan: it would keep their memory alive)
            _fwd_plans[key] = _FwdPlan(entry, grid, args[9:30], args[31], args[1].block_shape[0], _plan_kwargs(kwargs))


def _hopper_fwd_args(q, k, v, out, lse, scale: float, causal: bool, causal_offset: int = 0, window_left: int = -1,
                     window_right: int = -1, softcap: float = 0.0, alibi_slopes: Optional[torch.Tensor] = None,
                     sink: Optional[torch.Tensor] = None, cu_seqlens_q: Optional[torch.Tensor] = None,
                     cu_seqlens_k: Optional[torch.Tensor] = None, max_seqlen_q: int = 0, max_seqlen_k: int = 0):
    """:func:`hopper_fwd`'s launch of the Gluon kernel: (grid, positional arguments, keywords)."""
    B, H, S, D = q.shape
    Sk = k.shape[2]
    short = D in HOPPER_FWD_SHORT and hopper_fwd_short(D, S, causal, _plain_call(
        q, k, causal, causal_offset, window_left, window_right, softcap, alibi_slopes, sink, cu_seqlens_q))
    if short:  # (two warpgroups, persistent and chained)
        block_m, (block_n, stages) = HOPPER_BLOCK_M, next(c for d, c in HOPPER_FWD_SHORT.items() if d == D)[:2]
    else:
        block_m, block_n, stages = hopper_fwd_config(D, alibi_slopes is not None)
    varlen = cu_seqlens_q is not None
    # (the call's causal, before the window's rewrite)
    two_wg = varlen and hopper_fwd_varlen_two_wg(D, causal, int(max_seqlen_q))
    if two_wg:  # (the dynamic scheduler's build: two consumer warpgroups)
        block_m = HOPPER_BLOCK_M
        stages = hopper_fwd_varlen_short_stages(D, int(max_seqlen_q)) or stages
    if varlen:  # always the kernel's WINDOW (each sequence's offset is its own, in the kernel)
        n_seq, rows = cu_seqlens_q.numel() - 1, int(max_seqlen_q)
        big = rows + int(max_seqlen_k)  # (no row's bound reaches it)
        has_window, causal, wl, wr = _window_args(window_left, window_right, causal, rows, int(max_seqlen_k))
        if not has_window:  # causal: keys up to the diagonal; neither: every key of the sequence
            has_window, wl, wr = True, big, (0 if causal else big)
            causal = False
        cu = (cu_seqlens_q, cu_seqlens_k)
    else:
        n_seq, rows = B, S
        has_window, causal, wl, wr = _window_args(window_left, window_right, causal, S, Sk)
        if causal and (causal_offset != 0 or S > Sk):  # the kernel's CAUSAL is j <= i, every row inside Sk
            has_window, causal, wl, wr = True, False, S + Sk, 0
        cu = (lse, lse)  # (unread stand-ins)
    wg_m = 64  # q and out move in blocks of one consumer warpgroup's rows
    (dq, cq), (dk, ck), (dv, cv), (do, co) = (_hopper_desc(q, wg_m), _hopper_desc(k, block_n),
                                              _hopper_desc(v, block_n), _hopper_desc(out, wg_m))
    alibi = lse if alibi_slopes is None else alibi_slopes.expand(n_seq, H)  # (lse: an unread stand-in)
    # (S a multiple of 128: with BLOCK_M 192 the last tile's last warpgroup may have no rows; the
    # kernel skips it; VARLEN: each sequence's last tile)
    grid = (-(-rows // block_m), n_seq * H)
    persistent = short or hopper_fwd_persistent(D, block_m, has_window or varlen, causal,
                                                softcap > 0 or alibi_slopes is not None or sink is not None)
    if causal and not short:  # (causal: pairs of query tiles, _ws_tile_c; long calls keep the grid)
        persistent = persistent and grid[0] % 2 == 0 and rows <= HOPPER_FWD_PERSISTENT_CAUSAL_MAX_ROWS
    extra = {}
    if persistent:  # (one CTA an SM, at most one a tile; causal, a pair of tiles)
        grid = (min(grid[0] * grid[1] // (2 if causal else 1), _sm_count(q.device.index or 0)),)
        extra = dict(PERSISTENT=True, n_bh=n_seq * H)
        if hopper_fwd_chained(D):
            extra["CHAIN"] = hopper_fwd_chain_flag(D)
            if HOPPER_FWD_PROBE is not None:
                extra.update(Probe=HOPPER_FWD_PROBE, PROBE=2 if HOPPER_FWD_PROBE_GLOBAL else True)
            elif (not short and hopper_fwd_split_tail(D, causal, has_window or varlen or softcap > 0
                                                      or alibi_slopes is not None or sink is not None, Sk)
                  and 2 * ((-(-rows // block_m) * n_seq * H) % grid[0]) >= grid[0]):
                # (a last round at least half full: each CTA's share of it >= half a tile, so a tile's first part
                # merges at most two others; kernels/fwd_hopper._ws_seg_out)
                extra.update(SPLIT_TAIL=True, **_split_tail_buffers(grid[0], D, q.device))
    if varlen:
        extra["VARLEN"] = True
        nb = max(1 << n_seq.bit_length(), 128)  # (a power of two > n_seq, one offset a consumer thread at least)
        if HOPPER_FWD_VARLEN_PACKED and nb <= HOPPER_FWD_VARLEN_PACKED_MAX:  # (kernels/fwd_hopper._ws_tile_varlen)
            grid = (S // block_m + n_seq, H)
            extra.update(VARLEN_NB=nb, n_bh=n_seq * H)
            if two_wg:  # (a dynamic scheduler's counter)
                grid = (min(grid[0] * grid[1], _sm_count(q.device.index or 0)),)
                extra.update(PERSISTENT=True, Sched=torch.zeros(1, dtype=torch.int32, device=q.device))
                if hopper_fwd_varlen_qsets(D) == 2:
                    extra["VARLEN_QSETS"] = 2
                    if D in HOPPER_FWD_VARLEN_PUB:
                        extra["VARLEN_PUB"] = True
                    if D in HOPPER_FWD_VARLEN_DEFER:
                        extra["VARLEN_DEFER"] = True
                if HOPPER_FWD_VARLEN_SORT and n_seq <= HOPPER_FWD_VARLEN_SORT_MAX:
                    extra["VARLEN_SORT"] = int(HOPPER_FWD_VARLEN_SORT)
    elif causal and not persistent and HOPPER_FWD_CAUSAL_REVERSE:
        extra["REVERSE_M"] = True
    if hopper_fwd_alibi_mma(D, alibi_slopes is not None, softcap > 0 or has_window, rows):
        extra["ALIBI_MMA"] = True
    if hopper_fwd_alibi_rotate(alibi_slopes is not None, has_window or varlen or softcap > 0, block_m, D, rows):
        extra["ROT_N"] = True
    # (the positions _fwd_plan_args rebuilds: 0-8 and 30, 32, 33; the rest follow from the plan's key)
    args = (dq, dk, dv, do, lse, alibi, lse if sink is None else sink, scale, float(softcap), S, Sk, H,
            H // k.shape[1], causal_offset, wl, wr, alibi.stride(0), alibi.stride(1), *cq, *ck, *cv, *co,
            out, out.stride(2), *cu)  # (the row stride of out's 2-D view: its stride along S)
    kwargs = dict(HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n, STAGES=stages, CAUSAL=causal,
                  SOFTCAP=_hopper_fwd_softcap_mode(softcap, alibi_slopes is not None or sink is not None or has_window,
                                                   D, causal, q.dtype),
                  ALIBI=hopper_fwd_alibi_mode(D, alibi_slopes is not None, causal, softcap > 0), SINK=sink is not None,
                  WINDOW=has_window, num_warps=4, maxnreg=fwd_hopper.maxnreg(block_m), **extra)
    return grid, args, kwargs


# Plans of the Gluon forward's launches (hopper_fwd): the host work of an eager call's launch is
# per call (its decisions, then the launch cache's key over 34 arguments: scripts/exp_host_cpu.py);
# a plan keeps, per shape and features, the first call's grid, integer arguments and keywords and the
# launch cache's entry (no tensor), so a repeat rebuilds only its TMA descriptors, tensors and floats.
# Any attribute of this module set (or deleted) from outside (a switch, a monkeypatch) drops every plan
# (_Switches); a switch's dict changed in place does not: assign it anew, or turn HOPPER_FWD_PLANS off.
HOPPER_FWD_PLANS = True
_FWD_PLANS_MAX = 256  # (shapes x features; past it the plans start over)
_fwd_plans: dict = {}


class _FwdPlan(NamedTuple):
    entry: object  # the launch cache's entry (_launch.cached_entry) of the first call
    grid: tuple
    ints: tuple  # the first call's arguments 9-29 (shapes, offsets, the window, strides)
    out_row_stride: int  # its argument 31
    block_n: int  # K and V's TMA block rows
    kwargs: dict  # (no tensor in them: packed sequences' counter and the probe keep the full path)


def _fwd_plan_key(kernel, q, k, v, out, lse, causal, causal_offset, window_left, window_right, softcap,
                  alibi_slopes, sink) -> tuple:
    """What decides :func:`_hopper_fwd_args`'s grid, keywords and integer arguments, and the launch
    cache's key of its other arguments (dtypes, 16-byte alignment), for a call without packed
    sequences; the switches are not in it (setting one drops the plans)."""
    ptrs = q.data_ptr() | k.data_ptr() | v.data_ptr() | out.data_ptr() | lse.data_ptr()
    feats = (softcap > 0, softcap <= HOPPER_FWD_SOFTCAP_STATIC_MAX)
    if alibi_slopes is not None:
        ptrs |= alibi_slopes.data_ptr()
        feats += (alibi_slopes.dtype, alibi_slopes.shape, alibi_slopes.stride())
    if sink is not None:
        ptrs |= sink.data_ptr()
        feats += (sink.dtype,)
    return (kernel, q.device, q.dtype, q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), out.shape,
            out.stride(), lse.shape, lse.stride(), bool(causal), causal_offset, window_left, window_right,
            alibi_slopes is None, sink is None, feats, ptrs % 16 == 0)


def _fwd_plan_args(plan: _FwdPlan, q, k, v, out, lse, scale, softcap, alibi_slopes, sink) -> tuple:
    """The arguments :func:`_hopper_fwd_args` builds for this call, from ``plan`` (its key's): the TMA
    descriptors, lse, ALiBi's slopes (expanded), the sink, scale, softcap and out rebuilt, every
    integer the plan's."""
    alibi = lse if alibi_slopes is None else alibi_slopes.expand(q.shape[0], q.shape[1])
    return ((_hopper_desc(q, 64)[0], _hopper_desc(k, plan.block_n)[0], _hopper_desc(v, plan.block_n)[0],
             _hopper_desc(out, 64)[0], lse, alibi, lse if sink is None else sink, scale, float(softcap))
            + plan.ints + (out, plan.out_row_stride, lse, lse))


def _same_arg(a, b) -> bool:
    if isinstance(a, TmaDesc) and isinstance(b, TmaDesc):
        return a.base is b.base and a[1:] == b[1:]
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b or (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                          and a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride())
    return type(a) is type(b) and a == b


def _plan_kwargs(kwargs: dict) -> dict:
    """A launch's keywords as a plan keeps them: without SPLIT_TAIL's workspace, which each call gets fresh."""
    return {n: x for n, x in kwargs.items() if n not in ("Part", "Flags")}


def _check_fwd_plan(plan: _FwdPlan, args: tuple, full) -> None:
    """Raise unless ``plan``'s launch (grid, keywords, ``args``) is the one the full path builds
    (``full``: :func:`_hopper_fwd_args`' result for the same call)."""
    grid, want, kwargs = full
    kwargs = _plan_kwargs(kwargs)
    if grid != plan.grid or kwargs != plan.kwargs or len(args) != len(want) or \
            not all(_same_arg(a, b) for a, b in zip(args, want)):
        raise AssertionError(f"flashkernels: a Gluon forward plan launches other arguments than the full path "
                             f"(grid {plan.grid} / {grid}, keywords {plan.kwargs} / {kwargs})")


def _hopper_fwd_features(causal_offset, window_left, window_right, softcap, alibi_slopes, sink, cu_seqlens_q=None,
                         cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0) -> dict:
    """:func:`hopper_fwd`'s keyword arguments for the features a call uses (none for a plain one)."""
    feats = {}
    if cu_seqlens_q is not None:
        feats.update(cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=int(max_seqlen_q),
                     max_seqlen_k=int(max_seqlen_k))
    if causal_offset != 0:
        feats["causal_offset"] = causal_offset
    if (window_left, window_right) != (-1, -1):
        feats.update(window_left=window_left, window_right=window_right)
    if softcap > 0:
        feats["softcap"] = softcap
    if alibi_slopes is not None:
        feats["alibi_slopes"] = alibi_slopes
    if sink is not None:
        feats["sink"] = sink
    return feats


def attn_fwd_hopper_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool,
                         bshd: bool, causal_offset: int = 0, window_left: int = -1, window_right: int = -1,
                         softcap: float = 0.0, alibi_slopes: Optional[torch.Tensor] = None,
                         sink: Optional[torch.Tensor] = None, cu_seqlens_q: Optional[torch.Tensor] = None,
                         cu_seqlens_k: Optional[torch.Tensor] = None, max_seqlen_q: int = 0,
                         max_seqlen_k: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gluon forward as an opaque op for traced graphs (eager calls launch it directly): the
    arguments (attn_fwd_impl's of the same names, packed sequences too) passed
    :func:`hopper_fwd_reason` when traced; the data pointers, which only exist now, are checked
    here (a misaligned one runs the Triton kernel)."""
    B, H, S, D = q.shape
    out = _empty_like_layout(B, H, S, D, bshd, q)
    lse = torch.empty((B, H, S), dtype=torch.float32, device=q.device)
    if any(t.data_ptr() % 16 for t in (q, k, v)):
        return _attn_fwd_triton(q, k, v, None, scale, causal, causal_offset, bshd, False, out, lse, window_left,
                                window_right, softcap, alibi_slopes, sink,
                                _features(q, k, alibi_slopes, sink, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                          max_seqlen_k))
    hopper_fwd(q, k, v, out, lse, scale, causal,
               **_hopper_fwd_features(causal_offset, window_left, window_right, softcap, alibi_slopes, sink,
                                      cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k))
    return out, lse


# ------------------------------------------------------------------ Hopper backward (Gluon)
# kernels/bwd_hopper.py: 0.79-0.84x cuDNN where the Triton backward reads 0.58-0.62x (H200,
# scripts/exp_gluon_bwd.py); kernels/bwd_hopper256.py (D = 256): 0.76-0.86x cuDNN, 1.56-1.73x the
# Triton backward (H200, scripts/exp_gluon_bwd256.py). The forward's cases without its features;
# FLASHKERNELS_HOPPER_BWD=0 turns it off.
HOPPER_BWD_ENV = "FLASHKERNELS_HOPPER_BWD"
HOPPER_BWD_BLOCK_M = 64
HOPPER_BWD_HEAD_DIMS = (64, 128, 256)  # kernels/bwd_hopper.py at 64 and 128, kernels/bwd_hopper256.py at 256
# Measured (H200, scripts/ab_bwd_order.py, benchmarks/results/h200-2026-11-26-ab-bwd-order.txt;
# causal, 132 SMs): long-first won by 32% at 1.9 waves (B=1, S=4k, 32/8 heads), 12% at 3.9, 1-2.5%
# at 7.8 (the GQA shapes: B=4 S=4k, B=2 S=8k) and lost 2-21% at 15.5 waves and 11% at 31 (MHA).
HOPPER_BWD_LONG_FIRST_WAVES = 8
# Packed sequences in the Gluon backward (kernels/bwd_hopper.py VARLEN): on. Its first H100 builds
# faulted off the 128-row grid (an unaligned 1-D TMA start) and stored dK / dV at the query start;
# both fixed, and test_hopper_bwd_varlen.py passed on the H100 (session 8). False sends varlen
# backwards to the Triton kernels (a switch for bisecting, as HOPPER_BWD_ENV is for the whole path).
HOPPER_BWD_VARLEN = True
# dQ_i into the fp32 accumulator by a TMA reduce-add from shared memory (kernels/bwd_hopper.py
# DQ_TMA, FA3's path) instead of fp32 atomics from registers, at D = 64 / 128. Measured on the
# H100 (scripts/ab_attention.py --gluon --switch HOPPER_BWD_DQ_TMA, FA3 grid, session 8): D = 128
# +10-16%, D = 64 +1-9%. At D = 256 (kernels/bwd_hopper256.py DQ_TMA, HOPPER_BWD256_DQ_TMA) the
# chunks are staged in the Q / dO ring stage's halves the warpgroup has finished with (no shared
# memory is left for a tile of their own).
HOPPER_BWD_DQ_TMA = True
HOPPER_BWD256_DQ_TMA = True
# The causal settings (of the kernel's CAUSAL flag) whose D = 64 / 128 builds split the consumers'
# pair barrier into an arrive and a sync with the dK wgmma between (kernels/bwd_hopper.py SPLIT_BAR).
# H100, paired CUDA-graph A/B (scripts/ab_attention.py --gluon --paired 30 --switch
# HOPPER_BWD_SPLIT_BAR --on "(True,)" --off "()", FA3 grid, S 4k / 16k, session 20,
# ...-s20-ab-splitbar-final.txt): causal +1.3 / +1.4% at D = 128, +2.6 / +3.3% at D = 64; forced on
# for non-causal builds -5.7 / -6.5% at D = 128 and 0% at D = 64 (...-s20-ab-dqwriter-splitbar.txt).
HOPPER_BWD_SPLIT_BAR: tuple = (True,)
# The causal settings whose D = 64 / 128 builds (with HOPPER_BWD_DQ_TMA) have the producer warp
# issue the dQ reduces, an iteration's once its stage is released (kernels/bwd_hopper.py
# PROD_WRITER). H100, paired CUDA-graph A/B (scripts/ab_attention.py --gluon --paired 30 --switch
# HOPPER_BWD_PROD_WRITER, on = every build, off = none, FA3 grid, S 4k / 16k, session 21,
# ...-s21-ab-prodwriter.txt): causal +2.2 / +3.1% at D = 128, +1.2 / +1.3% at D = 64 (over
# SPLIT_BAR); non-causal -2.7 / -3.5% at D = 128, -0.8 / -0.4% at D = 64.
HOPPER_BWD_PROD_WRITER: tuple = (True,)
# D = 256: dK / dV out by TMA stores staged in shared memory (kernels/bwd_hopper256.py EPI_TMA)
# instead of from the registers (with HOPPER_BWD256_DQ_TMA only): +2-9% at S = 1k-4k, where the
# CTAs' loops are short (H100, session 9, scripts/ab_attention.py --gluon --switch
# HOPPER_BWD256_EPI_TMA --head-dims 256 --modes bwd --rounds 3, ...-ab-bwd256-epi-tma.txt).
HOPPER_BWD256_EPI_TMA = True
# Stages of the backward's Q / dO ring: 2, or what this dict gives by (head dim, plain non-causal
# build: no causal mask, window, softcap, ALiBi or varlen). D = 128 plain non-causal: 3 (231 KB of
# shared memory, 8 B of spill), +3.4-5.9% over 2 at S = 1k-16k (H100, session 9,
# scripts/ab_attention.py --gluon --switch HOPPER_BWD_STAGES --on "{(128, True): 3}" --off "{}",
# benchmarks/results/h100-2026-11-26-ab-bwd-stages-r3.txt, run with the dict then keyed by head
# dim); its causal build lost 0.4-10% with 3 (48 B of spill; H200, session 31, with SPLIT_BAR and PROD_WRITER, paired:
# -0.9% / -1.1% at 4k / 16k, 44 B, ...-s31-ab-bwd128-causal-st3.txt), D = 64 with 3 or 4 read -1-+4%
# (noise-level) and D = 256 has no room for a third.
HOPPER_BWD_STAGES: dict[tuple[int, bool], int] = {(128, True): 3}
# D = 64 without features: 128 query rows an iteration (kernels/bwd_hopper.py BLOCK_M = 128, the
# warpgroups split dQ_i by rows; FA3's tile at D = 64) instead of 64, halving the per-iteration
# waits, barriers and dQ reduces for the same tensor-core work (Nsight Compute, session 12: the
# 64-row backward ran the tensor pipe at 41% against cuDNN's 49%). Measured on the H100, FA3 grid:
# +5-20% (scripts/ab_attention.py --gluon --switch HOPPER_BWD_M128 --modes bwd --head-dims 64
# --seqlens 1024,2048,4096,8192,16384, benchmarks/results/h100-2026-11-27-ab-bwd-m128.txt).
HOPPER_BWD_M128 = True
# The plain non-causal backward's last round filled (kernels/bwd_hopper.py PDL_TRIGGER, TAIL_PARTS), at these head
# dims, from HOPPER_BWD_TAIL_MIN_KEYS keys. Its CTAs (a 128-key tile each, one an SM) run in rounds: the FA3-paper
# grid's 2048 tiles at D = 128 are 15.5 rounds on 132 SMs, the last on half of them (3.1% of the time; the forward's
# count, session 28). Here the last rows of tiles (whole (batch, kv head) rows, hopper_bwd_tail_plan) are a second
# launch of TAIL_PARTS CTAs a tile, each over a part of its query blocks, their dK / dV merged through a workspace;
# made with programmatic dependent launch after a main grid whose CTAs let it start at once, its parts fill the SMs
# the main grid's last round leaves idle. The main grid is the build without the tail (its code unchanged: a split
# inside one kernel changed ptxas's schedule of the block loop and cost 0.5-5%, session 29). H200, session 29
# (scripts/ab_attention.py --gluon --paired 20 --switch HOPPER_BWD_TAIL, FA3-paper shapes, ...-s29-ab-bwd-tail*.txt),
# on / off: D = 128 +0.9% / +1.7% at 4k / 16k (-0.8% at 1k, hence the key floor), D = 64 +1.3% / +1.5%. D = 256
# (kernels/bwd_hopper256.py, 64-key tiles, 2048 of them on the FA3 grid), session 30 (...-s30-ab-bwd-tail256.txt):
# +1.0% / +1.7% at 4k / 16k, -0.3% at 1k.
HOPPER_BWD_TAIL: tuple = (64, 128, 256)
HOPPER_BWD_TAIL_MIN_KEYS = 4096
HOPPER_BWD_TAIL_MAX_PARTS = 3
# A tail part's cost beyond its share of the tile's blocks, in tiles (its K / V loads and pipeline start, the
# hand-over or the merge): hopper_bwd_tail_plan's model.
HOPPER_BWD_TAIL_PART_COST = 0.03
# (head dim, causal) -> the fewest keys (Sk) at which the plain backward (no feature) stops storing dK / dV by TMA
# stores staged in shared memory no iteration reads again (kernels/bwd_hopper.py EPI_TMA), None: no bound; absent:
# the register stores. Where the loop is short, the epilogue weighs; where it is long, what counts is that with the
# epilogue changed ptxas schedules the block loop differently (the same instruction count, as session 29 saw), which
# may gain or lose a few %. H200, session 31 (scripts/ab_attention.py --gluon --paired 20 --switch HOPPER_BWD_EPI_TMA,
# FA3-paper shapes, ...-s31-ab-bwd-epi*.txt), on / off:
#   non-causal at 1k / 2k / 4k / 8k / 16k: D = 64 +5.8 / +3.5 / +2.5 / +1.7 / +1.0%; D = 128 +3.6 / -0.5 / -2.8 /
#   -4.3 / -5.1%;
#   causal at 1k / 4k / 16k: D = 64 +4.9 / -0.2 / -3.7%; D = 128 (its 2-stage ring: dK_w staged in the warpgroup's dQ
#   tile after the last reduce) +7.5 / +2.6 / +0.3%.
HOPPER_BWD_EPI_TMA: dict = {(64, False): None, (128, False): 2048, (64, True): 4096, (128, True): None}
# head dim -> the fewest keys (Sk) at which the plain non-causal backward (no feature, no tail launch) stops writing
# dQ itself (kernels/bwd_hopper.py DQ_CONVERT: the last warpgroup of each (batch, kv head) row converts the row's fp32
# accumulator, out of line so the block loops keep their registers), None: no bound; absent: `dq.copy_(dq_acc)`
# after the kernel (48 µs on the FA3-paper grid at any S, H200, session 32). H200, session 32 (scripts/ab_attention.py
# --gluon --paired 12 --switch HOPPER_BWD_DQ_CONVERT, FA3-paper shapes, MHA, ...-s32-ab-dq-convert.txt), on / off:
# D = 128 +1.3% / +1.7% at 1k / 2k, D = 64 -1.9% / -0.2% (its loop 25 instructions longer). Session 33 (H200,
# the same A/B at D = 128 with {128: None}, two rounds, ...-s33-ab-dq-convert.txt): +1.2 / +1.2% at 1k, +2.0 / +2.1% at
# 2k, 1.000 / 0.999 at 4k, 1.000 / 1.000 at 8k (from 4k a row's conversion by one warpgroup is as long as the copy it
# saves). The backward's GPU test files with it forced on at D = 64 / 128 and any length: 424 / 4, the 4 a build
# forced to PROD_WRITER (now kept off here), 16 / 0 after (...-s33-tests-dq-convert-*.txt); the sanitizers clean.
# GQA (a row of GROUP heads for one warpgroup to convert) tested, not timed.
HOPPER_BWD_DQ_CONVERT: dict = {128: 4096}
hopper_bwd_launches = 0  # Gluon backward launches in this process


def hopper_bwd_tail(head_dim: int, causal: bool, features: bool, keys: int) -> bool:
    """Whether the Gluon backward at ``head_dim`` over ``keys`` keys may fill its last round with a tail launch
    (HOPPER_BWD_TAIL, from HOPPER_BWD_TAIL_MIN_KEYS keys): the plain geometry, not causal, no feature (a window or
    Sq != Sk, softcap, ALiBi, packed sequences). hopper_bwd_tail_plan then says how."""
    return (any(d == head_dim for d in HOPPER_BWD_TAIL) and not causal and not features
            and keys >= HOPPER_BWD_TAIL_MIN_KEYS)


def _bwd_finish(main: int, tail: int, parts: int, sms: int, cost: float) -> float:
    """When the last SM finishes (in tiles' times): ``main`` whole tiles, started in order on ``sms`` SMs, each
    taking the next when free, then ``tail`` tiles as ``parts`` parts each (1 / parts + cost a part)."""
    rounds, left = divmod(main, sms)
    free = [float(rounds + 1)] * left + [float(rounds)] * (sms - left)
    heapq.heapify(free)
    for _ in range(tail * parts):
        heapq.heappush(free, heapq.heappop(free) + 1.0 / parts + cost)
    return max(free)


def hopper_bwd_tail_plan(rows: int, key_blocks: int, sms: int) -> Optional[tuple[int, int]]:
    """(tail rows, parts) for a backward of ``rows`` (batch, kv head) rows of ``key_blocks`` tiles on ``sms`` SMs,
    or None: of the last 1 .. rows - 1 rows (at most two rounds of tiles) as a tail of 2 .. HOPPER_BWD_TAIL_MAX_PARTS
    parts a tile, the one whose modelled finish (_bwd_finish, HOPPER_BWD_TAIL_PART_COST a part) is earliest, fewer
    rows and parts first at a tie; None unless it beats the whole grid's ceil(tiles / sms) rounds by a tenth of a
    round."""
    return _bwd_tail_plan(rows, key_blocks, sms, HOPPER_BWD_TAIL_MAX_PARTS, HOPPER_BWD_TAIL_PART_COST)


@functools.lru_cache(maxsize=256)
def _bwd_tail_plan(rows: int, key_blocks: int, sms: int, max_parts: int, cost: float) -> Optional[tuple[int, int]]:
    tiles = rows * key_blocks
    best, best_time = None, -(-tiles // sms) - 0.1
    for tail_rows in range(1, rows):
        if tail_rows * key_blocks > 2 * sms:
            break
        for parts in range(2, max_parts + 1):
            t = _bwd_finish(tiles - tail_rows * key_blocks, tail_rows * key_blocks, parts, sms, cost)
            if t < best_time - 1e-9:
                best, best_time = (tail_rows, parts), t
    return best


def _bwd_tile_keys(head_dim: int) -> int:
    """Keys a CTA of the Gluon backward: 128 (two warpgroups of 64) at D = 64 / 128 (kernels/bwd_hopper.py), 64 at
    D = 256 (bwd_hopper256.py: the warpgroups split D)."""
    return 64 if head_dim == 256 else HOPPER_BLOCK_N


def _bwd_tail_slot(head_dim: int) -> int:
    """fp32 elements of a tail part's warpgroup's dK_w (or dV_w): 64 keys x D (kernels/bwd_hopper.py), 64 keys x
    D / 2 at D = 256 (bwd_hopper256.py's warpgroups split D)."""
    return 64 * (head_dim // 2 if head_dim == 256 else head_dim)


def _bwd_tail_sizes(tiles: int, parts: int, head_dim: int) -> tuple[int, int]:
    """(Part slots, Part fp32 elements) of a tail launch over ``tiles`` tiles in ``parts`` parts: dK_w and dV_w
    (_bwd_tail_slot) for each earlier part's two warpgroups."""
    slots = tiles * (parts - 1) * 2
    return slots, slots * 2 * _bwd_tail_slot(head_dim)


def _bwd_tail_buffers(tiles: int, parts: int, head_dim: int, scratch: torch.Tensor) -> dict:
    """The tail launch's workspace, fresh a call: Part (fp32, dK_w and dV_w (_bwd_tail_slot) for each earlier
    part's warpgroup) in the storage of ``scratch`` (dQ's output, which only the copy after the kernels writes)
    where it fits, else its own; Flags (int32 zeros, one a Part slot, then the launch's counter)."""
    slots, need = _bwd_tail_sizes(tiles, parts, head_dim)
    if scratch.untyped_storage().nbytes() >= 4 * need:
        part = torch.empty(0, dtype=torch.float32, device=scratch.device).set_(scratch.untyped_storage(), 0, (need,))
    else:
        part = torch.empty(need, dtype=torch.float32, device=scratch.device)
    return dict(Part=part, Flags=torch.zeros(slots + 1, dtype=torch.int32, device=scratch.device))


def hopper_bwd_tail_bytes(B: int, H: int, Hkv: int, S: int, D: int, causal: bool, sms: int,
                          element_size: int = 2) -> int:
    """The bytes the tail launch's workspace adds (0 where the backward has none) for the plain geometry Sq = Sk = S,
    no feature: its flags, and its Part where dQ's output (B·S·H·D elements) cannot hold it (_bwd_tail_buffers):
    memory.attention_memory's term."""
    block_n = _bwd_tile_keys(D)
    if not hopper_bwd_tail(D, causal, False, S) or S % block_n:
        return 0
    plan = hopper_bwd_tail_plan(B * Hkv, S // block_n, sms)
    if plan is None:
        return 0
    slots, elems = _bwd_tail_sizes(plan[0] * (S // block_n), plan[1], D)
    part = elems * 4
    return (slots + 1) * 4 + (part if part > B * S * H * D * element_size else 0)


def hopper_bwd_block_m(head_dim: int, features: bool) -> int:
    """Query rows an iteration of kernels/bwd_hopper.py: 128 at D = 64 without the feature flags
    (softcap, ALiBi, window, varlen; causal is no feature) while HOPPER_BWD_M128, else 64."""
    return 128 if HOPPER_BWD_M128 and head_dim == 64 and not features else HOPPER_BWD_BLOCK_M


def hopper_bwd_stages(head_dim: int, plain_noncausal: bool) -> int:
    """Stages of the Gluon backward's Q / dO ring for this build (HOPPER_BWD_STAGES, else 2)."""
    return HOPPER_BWD_STAGES.get((head_dim, plain_noncausal), 2)


def hopper_bwd_reason(do, q, k, v, mask, scale, causal, causal_offset, bshd, window_left, window_right, softcap,
                      alibi_slopes, sink, cu_seqlens_q) -> Optional[str]:
    """None when attn_bwd_impl runs the Gluon backward (kernels/bwd_hopper.py, bwd_hopper256.py at
    D = 256), else why not: the forward's conditions (:func:`hopper_fwd_reason`) at the backward's
    head dims, and packed sequences (varlen: at D = 64 / 128 with bshd, n · Hkv <= 65535); at
    D = 64 / 128 all of the forward's features (ALiBi with a GQA group of at most
    bwd_hopper.ALIBI_GROUP_MAX query heads), at D = 256 only the sink (no window, Sq = Sk, no
    causal_offset, no softcap, no ALiBi); its own switch, a TMA view of dO, and int32 element
    offsets into the dQ accumulator and the per-head dK / dV."""
    if os.environ.get(HOPPER_BWD_ENV, "").strip() == "0":
        return f"turned off ({HOPPER_BWD_ENV}=0)"
    why = hopper_fwd_device_reason(q.device)
    if why is not None:
        return why
    traced = _traced(q)
    why = hopper_fwd_layout_reason(q, k, v, mask, scale, causal, causal_offset, bshd, window_left, window_right,
                                   softcap, alibi_slopes, sink, cu_seqlens_q, check_pointers=not traced,
                                   head_dims=HOPPER_BWD_HEAD_DIMS, varlen_ok=True)
    if why is not None:
        return why
    if cu_seqlens_q is not None and not HOPPER_BWD_VARLEN:
        return "packed sequences (varlen): turned off (launch.HOPPER_BWD_VARLEN = False)"
    if cu_seqlens_q is not None:  # kernels/bwd_hopper.py's VARLEN
        if q.shape[3] == 256:
            return "packed sequences (varlen) at head dim 256 (kernels/bwd_hopper256.py has no VARLEN)"
        if not bshd:
            return "packed sequences (varlen) with bshd=False (the kernel writes them as (total, H, D))"
        if (cu_seqlens_q.numel() - 1) * k.shape[1] > _GRID_Y_MAX:
            return (f"{cu_seqlens_q.numel() - 1} sequences x {k.shape[1]} kv heads: more CTAs along grid y "
                    f"than {_GRID_Y_MAX}")
    if q.shape[3] == 256:  # kernels/bwd_hopper256.py: plain geometry, no score features
        Sq, Sk = q.shape[2], k.shape[2]
        if _window_args(window_left, window_right, causal, Sq, Sk)[0]:
            return f"a sliding window {(window_left, window_right)} at head dim 256"
        if Sq != Sk or causal_offset != 0:
            return f"Sq != Sk or a causal offset at head dim 256 ({Sq} queries, {Sk} keys, offset {causal_offset})"
        if softcap > 0 or alibi_slopes is not None:
            return f"{'softcap' if softcap > 0 else 'ALiBi'} at head dim 256 (its backward kernel has neither)"
    if alibi_slopes is not None and q.shape[1] // k.shape[1] > bwd_hopper.ALIBI_GROUP_MAX:
        return (f"ALiBi with {q.shape[1] // k.shape[1]} query heads a kv head (at most "
                f"{bwd_hopper.ALIBI_GROUP_MAX}: the kernel holds the group's slopes)")
    view = _hopper_view(do)
    if view is None:
        return f"dO's strides {tuple(do.stride())}: no 2-D view with a 16-byte row stride for TMA"
    if view.rows > _INT32_MAX:
        return f"dO's 2-D view has {view.rows} rows: TMA coordinates are int32"
    if not traced and do.data_ptr() % 16:
        return "dO's data pointer is not 16-byte aligned (TMA)"
    if max(q.numel(), k.numel()) > _INT32_MAX:
        return f"{max(q.numel(), k.numel())} elements in q or k: the dQ / dK / dV offsets are int32"
    return None


@functools.lru_cache(maxsize=None)
def _rows_smem_layout(rows: int):
    return fwd_hopper.gl.NVMMASharedLayout.get_default_for([rows], fwd_hopper.gl.float32)


def hopper_bwd_epi_tma(D: int, keys: int, causal: bool, features: dict) -> bool:
    """Whether kernels/bwd_hopper.py's launch with these ``features`` (its flags) over ``keys`` keys stores dK / dV
    by TMA (EPI_TMA): the dQ reduce by TMA, the plain geometry (no feature flag), and (D, causal) in
    HOPPER_BWD_EPI_TMA with fewer keys than its bound."""
    if not features.get("DQ_TMA") or any(features.get(n) for n in ("SOFTCAP", "ALIBI", "WINDOW", "VARLEN")):
        return False
    return _keys_below(HOPPER_BWD_EPI_TMA, lambda d_c: d_c[0] == D and d_c[1] == causal, keys)


def _keys_below(bounds: dict, match, keys: int) -> bool:
    """Whether ``bounds`` (a switch: key -> the fewest keys at which it stops, None: no bound) has a key ``match``
    accepts (a test by ==: traced sizes are SymInts, which do not hash) with ``keys`` below its bound."""
    for k, bound in bounds.items():
        if match(k):
            return bound is None or keys < bound
    return False


def hopper_bwd_dq_convert(D: int, keys: int, other: bool, features: dict) -> bool:
    """Whether kernels/bwd_hopper.py's launch with these ``features`` (its flags) over ``keys`` keys writes dQ itself
    (DQ_CONVERT): the dQ reduce by TMA from the consumers (not PROD_WRITER's producer), not ``other`` (causal, a
    feature flag or a tail launch), and D in HOPPER_BWD_DQ_CONVERT with fewer keys than its bound."""
    if not features.get("DQ_TMA") or features.get("PROD_WRITER") or other:
        return False
    return _keys_below(HOPPER_BWD_DQ_CONVERT, lambda d: d == D, keys)


def _grad_desc(t: torch.Tensor, bshd: bool, rows: int, cols: int = 0):
    """TMA descriptor of a backward output (the fp32 dQ accumulator, dK, dV: a (B, H, S, D) view of
    contiguous (B, S, H, D) storage when ``bshd``, else of contiguous (B, H, S, D)) as the kernels'
    DQ_TMA / EPI_TMA address it: (B·S, H·D), else (B·H·S, D), in tiles of ``rows`` x ``cols``
    (default D / 2: one consumer warpgroup's half of dQ_i in bwd_hopper; bwd_hopper256 adds
    64-column dQ chunks and stores 128-column halves of dK / dV)."""
    B, H, S, D = t.shape
    cols = cols or D // 2
    shape = [B * S, H * D] if bshd else [B * H * S, D]
    return TmaDesc(t, shape, [shape[1], 1], [rows, cols], _grad_smem_layout(rows, cols, t.dtype))


@functools.lru_cache(maxsize=None)
def _grad_smem_layout(rows: int, cols: int, dtype: torch.dtype):
    gl = fwd_hopper.gl
    gdt = {torch.float32: gl.float32, torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}[dtype]
    return gl.NVMMASharedLayout.get_default_for([rows, cols], gdt)


def _rows_desc(t: torch.Tensor, rows: int):
    """1-D TMA descriptor of a contiguous float32 tensor (lse, Delta), blocks of ``rows``."""
    flat = t.view(-1)
    return TmaDesc(flat, [flat.numel()], [1], [rows], _rows_smem_layout(rows))


class _BwdGeom(NamedTuple):
    """The Gluon backward's launch decisions for one call (:func:`_hopper_bwd_geom`), from shapes and features only,
    no tensor: what a backward plan keeps (HOPPER_BWD_PLANS)."""
    kernel: object  # bwd_hopper's or bwd_hopper256's
    dims: tuple  # (B, H, S, D, Hkv, Sk) of q and k
    n_seq: int  # B, or the packed sequences' count
    varlen: bool
    bshd: bool
    causal: bool  # the kernel's CAUSAL (a causal call off the plain diagonal is its WINDOW)
    window: tuple  # (WINDOW, wl, wr)
    block_m: int  # the Q / dO / lse / Delta tiles' rows
    block_n: int  # keys a CTA
    grid: tuple
    long_first: bool
    ctas: int
    tail: Optional[tuple]  # (tail rows, parts) of the tail launch (hopper_bwd_tail_plan), or None
    feats: tuple  # the kernel's feature keywords in launch order: (name, flag) or (name, (buffer, rows, cols)), a
    # TMA descriptor of the dQ accumulator / dK / dV (_grad_desc)
    stages: int


def _hopper_bwd_geom(q, k, causal: bool, bshd: bool, softcap: float, alibi: bool, causal_offset: int,
                     window_left: int, window_right: int, cu_seqlens_q, max_seqlen_q: int,
                     max_seqlen_k: int) -> _BwdGeom:
    """:func:`attn_bwd_hopper_impl`'s decisions for these shapes and features (``alibi``: whether slopes are given)."""
    B, H, S, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    varlen = cu_seqlens_q is not None
    if varlen:  # (1, H, total, D); the kernel takes each sequence's lengths and bottom-right offset
        n_seq, Sq_max, Sk_max = cu_seqlens_q.numel() - 1, int(max_seqlen_q), int(max_seqlen_k)
    else:
        n_seq, Sq_max, Sk_max = B, S, Sk
    # The kernel's WINDOW (row i sees keys i + off - left .. i + off + right) for every call but
    # the plain geometry (Sq = Sk, causal on the diagonal i = j or not at all), as hopper_fwd's;
    # VARLEN's offset is each sequence's own, in the kernel
    has_window, causal_, wl, wr = _window_args(window_left, window_right, causal, Sq_max, Sk_max)
    if not varlen and causal_ and (causal_offset != 0 or S != Sk):
        has_window, causal_, wl, wr = True, False, S + Sk, 0
    elif not varlen and not has_window and (causal_offset != 0 or S != Sk):  # (ALiBi's distance holds the offset)
        has_window, wl, wr = True, S + Sk, S + Sk
    featured = has_window or softcap > 0 or alibi or varlen
    rows = HOPPER_BWD_BLOCK_M  # the K / V tiles: 64 rows (a consumer warpgroup's keys)
    block_m = hopper_bwd_block_m(D, featured) if D != 256 else rows  # the Q / dO / lse / Delta tiles
    # keys a CTA (_bwd_tile_keys): 128 at D = 64 / 128, 64 at D = 256
    kernel = bwd_hopper256.attn_bwd_hopper256_kernel if D == 256 else bwd_hopper.attn_bwd_hopper_kernel
    block_n = _bwd_tile_keys(D)
    # causal with few CTAs (up to HOPPER_BWD_LONG_FIRST_WAVES waves of one a SM): longest first
    # (kernels/bwd_hopper_tiles._bwd_tile)
    key_blocks = triton_cdiv(Sk_max, block_n)  # (varlen: CTAs past a sequence's keys visit no query block)
    ctas = n_seq * Hkv * key_blocks
    long_first = causal and ctas <= HOPPER_BWD_LONG_FIRST_WAVES * _sm_count(q.device.index or 0)
    grid = (n_seq * Hkv, key_blocks) if long_first else (key_blocks, n_seq * Hkv)
    tail = None  # the last rows' tiles as a tail launch (hopper_bwd_tail_plan)
    if ctas > 0 and hopper_bwd_tail(D, causal_, featured, Sk):
        tail = hopper_bwd_tail_plan(n_seq * Hkv, key_blocks, _sm_count(q.device.index or 0))
    if D == 256:  # (hopper_bwd_reason refused softcap, ALiBi, windows and Sq != Sk there)
        feats = {}
        if HOPPER_BWD256_DQ_TMA:
            feats.update(DQ_TMA=True, desc_dq=("dq", rows, 64))
            if HOPPER_BWD256_EPI_TMA:
                feats.update(EPI_TMA=True, desc_dk=("dk", 64, 128), desc_dv=("dv", 64, 128))
    else:
        feats = dict(SOFTCAP=softcap > 0, ALIBI=bool(alibi), WINDOW=has_window)
        if varlen:
            feats["VARLEN"] = True
        if HOPPER_BWD_DQ_TMA:  # (a warpgroup's part of dQ_i: 64 rows x D / 2, or with 128 rows 64 x D)
            feats.update(DQ_TMA=True, desc_dq=("dq", 64, D if block_m == 128 else 0))
            if causal_ in HOPPER_BWD_PROD_WRITER:
                feats["PROD_WRITER"] = True
        if causal_ in HOPPER_BWD_SPLIT_BAR:
            feats["SPLIT_BAR"] = True
        if hopper_bwd_epi_tma(D, Sk, causal_, feats):
            feats.update(EPI_TMA=True, desc_dk=("dk", 64, D), desc_dv=("dv", 64, D))
        if hopper_bwd_dq_convert(D, Sk, causal_ or featured or tail is not None, feats):
            feats["DQ_CONVERT"] = True
    return _BwdGeom(kernel, (B, H, S, D, Hkv, Sk), n_seq, varlen, bool(bshd), causal_, (has_window, wl, wr), block_m,
                    block_n, grid, long_first, ctas, tail, tuple(feats.items()),
                    hopper_bwd_stages(D, not (causal_ or featured)))


def _hopper_bwd_launches(g: _BwdGeom, do, q, k, v, lse, delta, dq, dk, dv, dq_acc, scale, softcap, alibi_slopes,
                         causal_offset, cu_seqlens_q, cu_seqlens_k, cnt=None) -> list:
    """[(grid, positional arguments, keywords)] of the Gluon backward's launches for geometry ``g`` and these
    tensors: the whole grid, or the main grid and the tail launch (``g.tail``; its workspace fresh, in dq's
    storage where it fits). ``dq_acc`` the zeroed fp32 accumulator, ``dk`` / ``dv`` the outputs; with DQ_CONVERT
    the kernel writes ``dq`` too, ``cnt`` its rows' counters (int32 zeros)."""
    B, H, S, D, Hkv, Sk = g.dims
    rows = HOPPER_BWD_BLOCK_M
    (dsq, cq), (dsk, ck), (dsv, cv), (dsdo, cdo) = (_hopper_desc(q, g.block_m), _hopper_desc(k, rows),
                                                    _hopper_desc(v, rows), _hopper_desc(do, g.block_m))
    bufs = dict(dq=dq_acc, dk=dk, dv=dv)
    features = {n: (_grad_desc(bufs[x[0]], g.bshd, x[1], x[2]) if type(x) is tuple else x) for n, x in g.feats}
    if D == 256:
        extra = ()
    else:
        _, wl, wr = g.window
        alibi = lse if alibi_slopes is None else alibi_slopes.expand(g.n_seq, H)  # (lse: an unread stand-in)
        cu = (cu_seqlens_q, cu_seqlens_k) if g.varlen else (q, q)  # (unread stand-ins)
        extra = (alibi, float(softcap), alibi.stride(0), alibi.stride(1), Sk, causal_offset, wl, wr, *cu)
    # lse / Delta: 1-D TMA descriptors, or (VARLEN) the tensors: a sequence's rows start anywhere,
    # and a TMA copy's start must be 16-byte aligned (kernels/bwd_hopper._bwd_producer)
    lse_arg, delta_arg = ((lse.contiguous(), delta.contiguous()) if g.varlen else
                          (_rows_desc(lse.contiguous(), g.block_m), _rows_desc(delta, g.block_m)))
    args = (dsq, dsk, dsv, dsdo, lse_arg, delta_arg, dq_acc, dk, dv, scale, S, H, H // Hkv, *cq, *ck, *cv, *cdo,
            *extra)
    consts = dict(HEAD_DIM=D, BLOCK_M=g.block_m, BLOCK_N=g.block_n, CAUSAL=g.causal, STAGES=g.stages,
                  OUT_BSHD=g.bshd, LONG_FIRST=g.long_first, num_warps=4, maxnreg=bwd_hopper.MAXNREG, **features)
    if features.get("DQ_CONVERT"):
        consts.update(DQO=dq, Cnt=cnt)
    if g.tail is None:
        return [(g.grid, args, consts)]
    # the main grid without the tail's rows, its CTAs letting the tail launch start at once; the tail launch by
    # programmatic dependent launch, TAIL_PARTS CTAs a tile of its rows
    tail_rows, parts = g.tail
    main_rows = g.grid[1] - tail_rows  # (>= 1: the plan leaves the main grid a row at least)
    tail_bufs = _bwd_tail_buffers(tail_rows * g.grid[0], parts, D, dq)
    tail_consts = {n: c for n, c in consts.items() if n not in ("EPI_TMA", "desc_dk", "desc_dv")}  # (registers)
    return [((g.grid[0], main_rows), args, dict(PDL_TRIGGER=True, **consts)),
            ((tail_rows * g.grid[0] * parts,), args, dict(TAIL_PARTS=parts, tile_base=main_rows * g.grid[0],
                                                          launch_pdl=True, **tail_bufs, **tail_consts))]


def _hopper_bwd_run(g: _BwdGeom, entries, do, q, k, v, lse, delta, scale, softcap, alibi_slopes, causal_offset,
                    cu_seqlens_q, cu_seqlens_k):
    """The Gluon backward of geometry ``g``: (dq, dk, dv) laid out as attn_bwd_impl's. ``entries``: the launch
    cache's entries of its launches (a plan's), launched straight; None: through cached_launch."""
    global hopper_bwd_launches
    B, H, S, D, Hkv, Sk = g.dims
    dq = _empty_like_layout(B, H, S, D, g.bshd, q)
    dk = _empty_like_layout(B, Hkv, Sk, D, g.bshd, k)
    dv = _empty_like_layout(B, Hkv, Sk, D, g.bshd, v)
    convert = ("DQ_CONVERT", True) in g.feats  # (the kernel writes dq: its rows' counters after the accumulator,
    # zeroed with it)
    n = B * H * S * D
    acc = torch.zeros(n + (B * Hkv if convert else 0), dtype=torch.float32, device=q.device)
    dq_acc = acc[:n].view(B, H, S, D) if not g.bshd else acc[:n].view(B, S, H, D).transpose(1, 2)
    cnt = acc[n:].view(torch.int32) if convert else None
    if g.ctas == 0:  # (varlen, no keys: every gradient zero)
        return dq.zero_(), dk.zero_(), dv.zero_()
    launches = _hopper_bwd_launches(g, do, q, k, v, lse, delta, dq, dk, dv, dq_acc, scale, softcap, alibi_slopes,
                                    causal_offset, cu_seqlens_q, cu_seqlens_k, cnt)
    if entries is None:
        for grid, args, kwargs in launches:
            cached_launch(g.kernel, grid, *args, fk_traceable=False, **kwargs)
        if getattr(_bwd_record, "last", None) is _RECORD:  # (attn_bwd_impl asks for the plan: the geometry and the
            # launch cache's entries)
            _bwd_record.last = (g, tuple(_launch.cached_entry(g.kernel, args, kwargs) for _, args, kwargs in launches))
    else:
        for (grid, args, kwargs), entry in zip(launches, entries):
            _launch.launch_entry(g.kernel, entry, grid, args, kwargs)
    hopper_bwd_launches += 1
    if not convert:
        dq.copy_(dq_acc)
    return dq, dk, dv


def attn_bwd_hopper_impl(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lse: torch.Tensor,
                         delta: torch.Tensor, scale: float, causal: bool, bshd: bool, softcap: float = 0.0,
                         alibi_slopes: Optional[torch.Tensor] = None, causal_offset: int = 0, window_left: int = -1,
                         window_right: int = -1, cu_seqlens_q: Optional[torch.Tensor] = None,
                         cu_seqlens_k: Optional[torch.Tensor] = None, max_seqlen_q: int = 0,
                         max_seqlen_k: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) laid out as attn_bwd_impl's, from the Gluon kernel; ``delta`` from
    :func:`attn_bwd_delta`; the features (attn_fwd_impl's of the same names: softcap, ALiBi slopes,
    Sq != Sk, a causal_offset, a sliding window, packed sequences) as the forward had them (a sink
    needs nothing here: the forward's lse includes it; attn_bwd_impl computes dsink). Eager calls
    come here (or, repeats of a shape, launch its plan: attn_bwd_impl), traced ones through the opaque op
    ``flashkernels::attn_bwd_hopper``."""
    # (traced, the pointers were not known when the op was chosen: a rare misaligned view gets
    # an aligned copy, in the same layout)
    q, k, v, do = (t.clone() if t.data_ptr() % 16 else t for t in (q, k, v, do))
    g = _hopper_bwd_geom(q, k, causal, bshd, softcap, alibi_slopes is not None, causal_offset, window_left,
                         window_right, cu_seqlens_q, max_seqlen_q, max_seqlen_k)
    return _hopper_bwd_run(g, None, do, q, k, v, lse, delta, scale, softcap, alibi_slopes, causal_offset,
                           cu_seqlens_q, cu_seqlens_k)


# Plans of the eager Gluon backward (attn_bwd_impl), as the forward's (hopper_fwd): per shape and features, the first
# call's decisions (_BwdGeom) and the launch cache's entries of its launches (Delta's, then the kernel's), so a repeat
# skips hopper_bwd_reason, the decisions and the launch cache's keys, and rebuilds only its tensors, TMA descriptors
# and floats (_hopper_bwd_launches, shared with the full path). The key (_bwd_plan_key) holds what hopper_bwd_reason
# and the decisions read; setting any attribute of this module drops every plan (_Switches). With
# FLASHKERNELS_LAUNCH_CACHE=check (the GPU tests) a hit also asks hopper_bwd_reason and rebuilds the decisions, and
# raises unless they are the plan's (launch_entry then compares each kernel with Triton's own lookup).
HOPPER_BWD_PLANS = True
_BWD_PLANS_MAX = 256
_bwd_plans: dict = {}
_RECORD = object()
# .last = _RECORD: attn_bwd_impl asks _hopper_bwd_run for (geometry, the launch cache's entries) there; per thread
# (autograd runs each device's backward on a thread of its own)
_bwd_record = threading.local()
hopper_bwd_plan_hits = 0  # Gluon backward launches from a plan in this process


class _BwdPlan(NamedTuple):
    geom: _BwdGeom
    entries: tuple  # the launch cache's entries of _hopper_bwd_launches' launches
    delta_entry: object  # ... and of Delta's (_delta_launch)


def _bwd_plan_key(do, q, k, v, out, lse, scale, causal, causal_offset, bshd, window_left, window_right, softcap,
                  alibi_slopes, sink) -> tuple:
    """What decides whether attn_bwd_impl runs the Gluon backward (hopper_bwd_reason, for an untraced call without a
    mask or packed sequences), its :func:`_hopper_bwd_geom` and the launch cache's keys of its launches and Delta's:
    the device, dtypes, shapes and strides, the features, whether every pointer is 16-byte aligned, the two switches
    in the environment; not the switches of this module (setting one drops the plans)."""
    ptrs = q.data_ptr() | k.data_ptr() | v.data_ptr() | do.data_ptr() | out.data_ptr() | lse.data_ptr()
    feats = (softcap > 0,)
    if alibi_slopes is not None:
        ptrs |= alibi_slopes.data_ptr()
        feats += (alibi_slopes.dtype, alibi_slopes.shape, alibi_slopes.stride())
    env = os.environ
    return (q.device, q.dtype, k.dtype, v.dtype, do.dtype, out.dtype, lse.dtype, q.shape, q.stride(), k.shape,
            k.stride(), v.shape, v.stride(), do.shape, do.stride(), out.shape, out.stride(), lse.shape, lse.stride(),
            bool(causal), causal_offset, bool(bshd), window_left, window_right, feats, sink is None, scale > 0,
            ptrs % 16 == 0, env.get(HOPPER_BWD_ENV), env.get(HOPPER_FWD_ENV))


def attn_fwd_impl(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
    scale: float, causal: bool, causal_offset: int, bshd: bool, allow_tf32: bool,
    window_left: int = -1, window_right: int = -1, softcap: float = 0.0,
    alibi_slopes: Optional[torch.Tensor] = None, sink: Optional[torch.Tensor] = None,
    cu_seqlens_q: Optional[torch.Tensor] = None, cu_seqlens_k: Optional[torch.Tensor] = None,
    max_seqlen_q: int = 0, max_seqlen_k: int = 0, deterministic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flash attention forward. q (B, Hq, Sq, D), k/v (B, Hkv, Sk, D) with unit last stride;
    mask None or broadcastable to (B, Hq, Sq, Sk). Returns out (B, Hq, Sq, D), lse (B, Hq, Sq)
    float32 natural log (-inf for fully masked rows).
    window_left/right: row i sees keys i + causal_offset - left .. i + causal_offset + right
    (-1 = unbounded; causal sets right = 0). softcap > 0: scores = softcap * tanh(scores / softcap).
    alibi_slopes (Hq,) or (B, Hq) fp32: adds -slope * |i + causal_offset - j|.
    sink (Hq,) fp32: one more logit per row's softmax, with no value.
    cu_seqlens_q/k (n + 1,) int32: q, k, v hold n packed sequences as (1, H, total, D); the
    diagonal is aligned bottom-right per sequence (causal_offset is ignored); lse is (1, Hq, total_q).
    deterministic: for the backward (attn_bwd_impl's); the forward is deterministic either way.
    On an H100 the cases :func:`hopper_fwd_reason` accepts run the Gluon kernel (same outputs)."""
    B, H, Sq, D = q.shape
    out = _empty_like_layout(B, H, Sq, D, bshd, q)
    lse = torch.empty((B, H, Sq), dtype=torch.float32, device=q.device)
    f = _features(q, k, alibi_slopes, sink, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    if out.numel() == 0 or f.batch == 0:
        if sink is not None:  # rows that see no key: all mass on the sink
            return out.zero_(), lse.copy_(sink.view(1, H, 1).expand(B, H, Sq))
        return out.zero_(), lse.fill_(-math.inf)
    if hopper_fwd_reason(q, k, v, mask, scale, causal, causal_offset, bshd, window_left, window_right, softcap,
                         alibi_slopes, sink, cu_seqlens_q, f.seqlen_q) is None:
        # (packed sequences: their keywords, only then: a plain call is the op's plain call)
        packed = {} if cu_seqlens_q is None else dict(cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                                                      max_seqlen_q=f.seqlen_q, max_seqlen_k=f.seqlen_k)
        if _traced(q):  # an opaque op in the graph, which runs the Gluon kernel when the graph runs
            return torch.ops.flashkernels.attn_fwd_hopper(q, k, v, scale, causal, bshd, causal_offset, window_left,
                                                          window_right, softcap, alibi_slopes, sink, **packed)
        hopper_fwd(q, k, v, out, lse, scale, causal,
                   **_hopper_fwd_features(causal_offset, window_left, window_right, softcap, alibi_slopes, sink),
                   **packed)
        return out, lse
    return _attn_fwd_triton(q, k, v, mask, scale, causal, causal_offset, bshd, allow_tf32, out, lse, window_left,
                            window_right, softcap, alibi_slopes, sink, f)


def _attn_fwd_triton(q, k, v, mask, scale, causal, causal_offset, bshd, allow_tf32, out, lse, window_left=-1,
                     window_right=-1, softcap=0.0, alibi_slopes=None, sink=None, f=None):
    """attn_fwd_impl's Triton kernel launch into ``out`` and ``lse`` (``f``: its _features)."""
    B, H, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    if f is None:
        f = _features(q, k, None, None, None, None, 0, 0)
    # int(): under dynamic-shape tracing D is a SymInt, which lru_cache cannot hash; the head dim
    # is a constexpr of the kernels anyway, so it is specialised either way.
    cfg = fwd_config(int(D), q.dtype, q.device)
    m, ms, kind = _mask_args(mask, (B, H, Sq, Sk), q)
    has_window, causal, wl, wr = _window_args(window_left, window_right, causal, f.seqlen_q, f.seqlen_k)
    grid = (triton_cdiv(f.seqlen_q, cfg.block_m) * f.batch * H,)
    cached_launch(
        attn_fwd_kernel, grid,
        q, k, v, m, out, lse, f.alibi, f.sink, f.cu_q, f.cu_k, scale,
        *_batch_strides(q, f.varlen), *_batch_strides(k, f.varlen), *_batch_strides(v, f.varlen),
        *_batch_strides(out, f.varlen),
        ms[0], ms[1], ms[2], ms[3],
        *f.lse_strides, *f.alibi_strides,
        H, H // Hkv, f.seqlen_q, f.seqlen_k, causal_offset, wl, wr, float(softcap),
        HEAD_DIM=D, BLOCK_D=block_d(D), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        IS_CAUSAL=causal, MASK_KIND=kind, DOT_PRECISION=dot_precision(q.dtype, allow_tf32),
        HAS_WINDOW=has_window, HAS_SOFTCAP=_softcap_mode(softcap, q), HAS_ALIBI=alibi_slopes is not None,
        HAS_SINK=sink is not None, VARLEN=f.varlen, SCALE_POSITIVE=scale > 0,
        REVERSE_M=causal and TRITON_FWD_CAUSAL_REVERSE,  # (always passed: torch.compile's wrapper of a
        # traced launch wants every argument; without it, it assumed every input mutated and then failed
        # on a bool mask)
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out, lse


def _delta_launch(out: torch.Tensor, do: torch.Tensor, delta: torch.Tensor):
    """(grid, positional arguments, keywords) of :func:`attn_bwd_delta`'s kernel for these tensors."""
    B, H, Sq, D = out.shape
    pre_m = 64 if out.device.type == "cuda" else 32
    return ((triton_cdiv(Sq, pre_m) * B * H,),
            (out, do, delta, out.stride(0), out.stride(1), out.stride(2), do.stride(0), do.stride(1), do.stride(2),
             H, Sq),
            dict(HEAD_DIM=D, BLOCK_D=block_d(D), BLOCK_M=pre_m))


def attn_bwd_delta(out: torch.Tensor, do: torch.Tensor, lse: torch.Tensor, dlse: Optional[torch.Tensor]) -> torch.Tensor:
    """The backward's row term Delta = rowsum(dO * out) - dlse, (B, H, Sq) float32 (dlse None: 0)."""
    B, H, Sq, D = out.shape
    delta = torch.empty((B, H, Sq), dtype=torch.float32, device=out.device)
    if Sq > 0 and B * H > 0:
        grid, args, kwargs = _delta_launch(out, do, delta)
        cached_launch(attn_bwd_preprocess_kernel, grid, *args, **kwargs)
    if dlse is not None:  # d lse / d scores = P: fold it into the row term (in place: no copy)
        delta.sub_(dlse)
    return delta


def _sink_grad(sink: torch.Tensor, lse: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """d loss / d sink, (H,) float32: -sum over batch and rows of P_sink · Delta, P_sink = exp(sink - lse) (the
    sink's probability, which the forward's lse includes; Delta = rowsum(dO · out) - dlse, attn_bwd_delta's)."""
    return -(torch.exp(sink.view(1, -1, 1) - lse) * delta).sum(dim=(0, 2))


def _keep_bwd_plan(key, last, out, do, delta) -> None:
    """Keep the plan of a backward the full path just launched (``last``: _hopper_bwd_run's record, its geometry and
    its launches' entries), when the launch cache holds an entry for each of them and Delta's (no tensor kept)."""
    g, entries = last
    _, args, kwargs = _delta_launch(out, do, delta)
    delta_entry = _launch.cached_entry(attn_bwd_preprocess_kernel, args, kwargs)
    if delta_entry is None or any(e is None for e in entries):
        return
    if len(_bwd_plans) >= _BWD_PLANS_MAX:
        _bwd_plans.clear()
    _bwd_plans[key] = _BwdPlan(g, entries, delta_entry)


def _bwd_plan_run(plan: _BwdPlan, do, q, k, v, out, lse, dlse, mask, scale, causal, causal_offset, bshd, window_left,
                  window_right, softcap, alibi_slopes, sink, dsink):
    """attn_bwd_impl's Gluon backward from ``plan`` (its key's): Delta and the kernel's launches from their kept
    entries, the tensors and floats this call's. With FLASHKERNELS_LAUNCH_CACHE=check, first the full path's
    decisions: hopper_bwd_reason must accept the call and the geometry be the plan's."""
    global hopper_bwd_plan_hits
    g = plan.geom
    if _launch._CHECK:
        why = hopper_bwd_reason(do, q, k, v, mask, scale, causal, causal_offset, bshd, window_left, window_right,
                                softcap, alibi_slopes, sink, None)
        full = _hopper_bwd_geom(q, k, causal, bshd, softcap, alibi_slopes is not None, causal_offset, window_left,
                                window_right, None, 0, 0)
        if why is not None or full != g:
            raise AssertionError(f"flashkernels: a Gluon backward plan launches other than the full path ({why}; "
                                 f"geometry {g} / {full})")
    B, H, Sq, D = out.shape
    delta = torch.empty((B, H, Sq), dtype=torch.float32, device=out.device)
    grid, args, kwargs = _delta_launch(out, do, delta)
    _launch.launch_entry(attn_bwd_preprocess_kernel, plan.delta_entry, grid, args, kwargs)
    if dlse is not None:
        delta.sub_(dlse)
    if sink is not None:  # (attn_bwd_impl's)
        dsink = _sink_grad(sink, lse, delta)
    dq, dk, dv = _hopper_bwd_run(g, plan.entries, do, q, k, v, lse, delta, scale, softcap, alibi_slopes,
                                 causal_offset, None, None)
    hopper_bwd_plan_hits += 1
    return dq, dk, dv, dsink


def attn_bwd_impl(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
    lse: torch.Tensor, dlse: Optional[torch.Tensor], mask: Optional[torch.Tensor],
    scale: float, causal: bool, causal_offset: int, bshd: bool, allow_tf32: bool,
    window_left: int = -1, window_right: int = -1, softcap: float = 0.0,
    alibi_slopes: Optional[torch.Tensor] = None, sink: Optional[torch.Tensor] = None,
    cu_seqlens_q: Optional[torch.Tensor] = None, cu_seqlens_k: Optional[torch.Tensor] = None,
    max_seqlen_q: int = 0, max_seqlen_k: int = 0, deterministic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flash attention backward: (dq, dk, dv, dsink), dq/dk/dv shaped and laid out like q, k, v's
    (B, H, S, D); dsink (Hq,) fp32 (empty without a sink). ``dlse`` (B, Hq, Sq) or None is the
    gradient arriving at lse. The other arguments are attn_fwd's. On an H100 the cases
    :func:`hopper_bwd_reason` accepts run the Gluon backward, whose dQ atomics make it run-to-run
    nondeterministic in the last bits: ``deterministic=True`` keeps the Triton kernels."""
    B, H, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    dsink = torch.zeros((H if sink is not None else 0,), dtype=torch.float32, device=q.device)
    key = plan = None
    if HOPPER_BWD_PLANS and not deterministic and q.is_cuda and q.numel() and mask is None and cu_seqlens_q is None \
            and _launch.enabled() and not _traced(q):  # (an eager call: its plan, if a first call made one)
        key = _bwd_plan_key(do, q, k, v, out, lse, scale, causal, causal_offset, bshd, window_left, window_right,
                            softcap, alibi_slopes, sink)
        plan = _bwd_plans.get(key)
        if plan is not None:
            return _bwd_plan_run(plan, do, q, k, v, out, lse, dlse, mask, scale, causal, causal_offset, bshd,
                                 window_left, window_right, softcap, alibi_slopes, sink, dsink)
    if not deterministic and q.numel() and hopper_bwd_reason(do, q, k, v, mask, scale, causal, causal_offset, bshd, window_left,
                                       window_right, softcap, alibi_slopes, sink, cu_seqlens_q) is None:
        delta = attn_bwd_delta(out, do, lse, dlse)
        if sink is not None:  # as below (the kernel's P^T = exp(S - lse) already has the sink's share)
            dsink = _sink_grad(sink, lse, delta)
        feats = {}  # (keywords, only those used: a plain call is the op's plain call)
        if softcap > 0:
            feats["softcap"] = softcap
        if alibi_slopes is not None:
            feats["alibi_slopes"] = alibi_slopes
        if causal_offset != 0:
            feats["causal_offset"] = causal_offset
        if (window_left, window_right) != (-1, -1):
            feats.update(window_left=window_left, window_right=window_right)
        if cu_seqlens_q is not None:
            feats.update(cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=int(max_seqlen_q),
                         max_seqlen_k=int(max_seqlen_k))
        if _traced(q):  # an opaque op in the graph, which runs the Gluon kernel when the graph runs
            return (*torch.ops.flashkernels.attn_bwd_hopper(do, q, k, v, lse, delta, scale, causal, bshd, **feats),
                    dsink)
        if key is None:
            return (*attn_bwd_hopper_impl(do, q, k, v, lse, delta, scale, causal, bshd, **feats), dsink)
        _bwd_record.last = _RECORD
        try:
            dq, dk, dv = attn_bwd_hopper_impl(do, q, k, v, lse, delta, scale, causal, bshd, **feats)
            last = _bwd_record.last
            if last is not _RECORD:  # (launched by _hopper_bwd_run's full path: keep its plan)
                _keep_bwd_plan(key, last, out, do, delta)
        finally:
            _bwd_record.last = None
        return dq, dk, dv, dsink
    dq = _empty_like_layout(B, H, Sq, D, bshd, q)
    dk = _empty_like_layout(B, Hkv, Sk, D, bshd, k)
    dv = _empty_like_layout(B, Hkv, Sk, D, bshd, v)
    f = _features(q, k, alibi_slopes, sink, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    if B * H == 0 or D == 0:
        return dq, dk, dv, dsink
    kv_cfg, q_cfg = bwd_configs(int(D), q.dtype, q.device)  # int(): see attn_fwd_impl
    bd = block_d(D)
    prec = dot_precision(q.dtype, allow_tf32)
    m, ms, kind = _mask_args(mask, (B, H, Sq, Sk), q)
    has_window, causal, wl, wr = _window_args(window_left, window_right, causal, f.seqlen_q, f.seqlen_k)
    delta = attn_bwd_delta(out, do, lse, dlse)
    if sink is not None:  # d lse / d sink = P_sink, d out / d sink = -P_sink * out
        dsink = _sink_grad(sink, lse, delta)
    if Sq == 0 or Sk == 0 or f.batch == 0:  # nothing attends: every other gradient is zero
        return dq.zero_(), dk.zero_(), dv.zero_(), dsink
    flags = dict(IS_CAUSAL=causal, MASK_KIND=kind, DOT_PRECISION=prec, HAS_WINDOW=has_window,
                 HAS_SOFTCAP=_softcap_mode(softcap, q), HAS_ALIBI=alibi_slopes is not None, VARLEN=f.varlen)
    kv_programs = triton_cdiv(f.seqlen_k, kv_cfg.block_n) * f.batch * Hkv
    split = dkdv_group_split(H // Hkv, kv_programs, q.device)
    if split > 1:  # fp32 partial sums, one per (kv head, share of its query heads), added below
        dk_out = torch.empty((B, Sk, Hkv * split, D), dtype=torch.float32, device=q.device).transpose(1, 2)
        dv_out = torch.empty_like(dk_out)
    else:
        dk_out, dv_out = dk, dv
    cached_launch(
        attn_bwd_dkdv_kernel, (kv_programs * split,),
        q, k, v, m, do, lse, delta, dk_out, dv_out, f.alibi, f.cu_q, f.cu_k, scale,
        *_batch_strides(q, f.varlen), *_batch_strides(k, f.varlen), *_batch_strides(v, f.varlen),
        ms[0], ms[1], ms[2], ms[3],
        *_batch_strides(do, f.varlen), *_batch_strides(dk_out, f.varlen), *_batch_strides(dv_out, f.varlen),
        *f.lse_strides, *f.alibi_strides,
        H, Hkv, H // Hkv, split, f.seqlen_q, f.seqlen_k, causal_offset, wl, wr, float(softcap),
        HEAD_DIM=D, BLOCK_D=bd, BLOCK_M=kv_cfg.block_m, BLOCK_N=kv_cfg.block_n, **flags,
        num_warps=kv_cfg.num_warps, num_stages=kv_cfg.num_stages,
    )
    if split > 1:
        for part, grad in ((dk_out, dk), (dv_out, dv)):
            grad.copy_(part.unflatten(1, (Hkv, split)).sum(dim=2))
    cached_launch(
        attn_bwd_dq_kernel, (triton_cdiv(f.seqlen_q, q_cfg.block_m) * f.batch * H,),
        q, k, v, m, do, lse, delta, dq, f.alibi, f.cu_q, f.cu_k, scale,
        *_batch_strides(q, f.varlen), *_batch_strides(k, f.varlen), *_batch_strides(v, f.varlen),
        ms[0], ms[1], ms[2], ms[3],
        *_batch_strides(do, f.varlen), *_batch_strides(dq, f.varlen),
        *f.lse_strides, *f.alibi_strides,
        H, H // Hkv, f.seqlen_q, f.seqlen_k, causal_offset, wl, wr, float(softcap),
        HEAD_DIM=D, BLOCK_D=bd, BLOCK_M=q_cfg.block_m, BLOCK_N=q_cfg.block_n, **flags,
        num_warps=q_cfg.num_warps, num_stages=q_cfg.num_stages,
    )
    return dq, dk, dv, dsink


# The custom ops are the same functions: torch.compile and opcheck go through them; eager calls
# may call the functions directly (autograd.py), skipping the dispatcher's per-call overhead.
attn_fwd = triton_op("flashkernels::attn_fwd", mutates_args=())(attn_fwd_impl)
attn_bwd = triton_op("flashkernels::attn_bwd", mutates_args=())(attn_bwd_impl)
# Opaque (not a triton_op): traced graphs call it, and it launches the Gluon kernel when they run.
attn_fwd_hopper = torch.library.custom_op("flashkernels::attn_fwd_hopper", mutates_args=())(attn_fwd_hopper_impl)


attn_bwd_hopper = torch.library.custom_op("flashkernels::attn_bwd_hopper", mutates_args=())(attn_bwd_hopper_impl)


@attn_bwd_hopper.register_fake
def _attn_bwd_hopper_fake(do, q, k, v, lse, delta, scale, causal, bshd, softcap=0.0, alibi_slopes=None,
                          causal_offset=0, window_left=-1, window_right=-1, cu_seqlens_q=None, cu_seqlens_k=None,
                          max_seqlen_q=0, max_seqlen_k=0):
    B, H, S, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    return (_empty_like_layout(B, H, S, D, bshd, q), _empty_like_layout(B, Hkv, Sk, D, bshd, k),
            _empty_like_layout(B, Hkv, Sk, D, bshd, v))


@attn_fwd_hopper.register_fake
def _attn_fwd_hopper_fake(q, k, v, scale, causal, bshd, causal_offset=0, window_left=-1, window_right=-1, softcap=0.0,
                          alibi_slopes=None, sink=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0,
                          max_seqlen_k=0):
    B, H, S, D = q.shape
    return _empty_like_layout(B, H, S, D, bshd, q), q.new_empty((B, H, S), dtype=torch.float32)


# Decided once, at import (see flashkernels._interpreter.kernels_interpreted).
KERNELS_INTERPRETED = kernels_interpreted(attn_fwd_kernel)


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


class _Switches(types.ModuleType):
    """This module's type: setting or deleting any of its attributes from outside (a switch such as
    HOPPER_FWD_CHAIN, a test's monkeypatch, _sm_count) drops the Gluon forward's and backward's plans,
    which hold decisions those attributes made (hopper_fwd, attn_bwd_impl). The module's own global
    statements (the launch counters) do not pass here."""

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        _fwd_plans.clear()
        _bwd_plans.clear()

    def __delattr__(self, name):
        super().__delattr__(name)
        _fwd_plans.clear()
        _bwd_plans.clear()


sys.modules[__name__].__class__ = _Switches
