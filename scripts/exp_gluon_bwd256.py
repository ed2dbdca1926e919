"""Experiment: a warp-specialized flash-attention backward in Gluon for Hopper at head dim D = 256.

    PYTHONPATH=src python scripts/exp_gluon_bwd256.py --compile-only [--sass]   # any machine (no GPU)
    PYTHONPATH=src python scripts/exp_gluon_bwd256.py [--quick] [--variants a,b]  # H100 / H200: check, time

Why: the library has no Gluon backward at D = 256: kernels/bwd_hopper.py keeps dK_w and dV_w
(64 keys x D fp32 each) in each consumer warpgroup's registers, 256 registers a thread at D = 256.
So D = 256 runs the portable Triton backward (kernels/bwd.py: a dK/dV kernel + a dQ kernel),
0.46-0.52x cuDNN and 0.68-0.84x FlashAttention-2 on an H200 (bf16, B·S = 16k, H = 8).

Design (FA3's hdim-256 shape: BLOCK_M = BLOCK_N = 64, 2 MMA warpgroups, dQ by fp32 atomics).
One CTA = 64 keys n0 .. n0 + 63 of one (batch, kv head); grid (S / 64, B·Hkv), or (B·Hkv, S / 64)
("long first", bwd_hopper's rule) for causal grids of at most 4 waves. The GROUP = H / Hkv query
heads of the kv head are looped inside the CTA (dK / dV summed over them in registers), as in
bwd_hopper. gl.warp_specialize partitions:
  - producer (1 warp): every TMA load: K, V (64 x 256 each, once), then per (query head, query
    block i of 64 rows) Q_i + lse_i and dO_i + Delta_i into a 2-stage ring (bwd_hopper's protocol);
  - two consumer warpgroups, w = 0, 1. Warpgroup w owns dK[:, 128w : 128w + 128] and
    dV[:, 128w : 128w + 128] (64 keys x 128 fp32 each = 64 + 64 registers a thread) for the whole
    loop, and computes dQ_i[:, 128w : 128w + 128] = dS K[:, 128w..] each iteration. That split along
    D is what makes D = 256 fit: 128 accumulator registers a thread, as bwd_hopper has at D = 64.
The scores S = Q_i K^T and dP = dO_i V^T (64 x 64, contraction 256) are shared by both
warpgroups' dK / dV / dQ, so P and dS go through shared memory as bf16 64 x 64 tiles. Two ways to
split their computation (constexpr SDP_ASYM):
  SDP_ASYM 0, "split" (_consumer; FA3's split): warpgroup w computes S and dP for keys 32w .. 32w + 31
    (two m64n32k256 wgmmas in flight), P_w = exp2(S_w·scale·log2e - lse·log2e) while dP_w runs, stores
    its 32 columns of P; pair barrier A; dV_w += P^T dO_i[:, 128w..]; dS_w = scale·P_w (dP_w - Delta)
    while dV runs; stores its columns of dS; pair barrier B; dQ chunk(s), dK_w += dS^T Q_i[:, 128w..].
    P / dS double-buffered by iteration.
  SDP_ASYM 1, "asym" (_consumer_asym): warpgroup 0 computes all of S (m64n64k256) and P, warpgroup 1
    all of dP (m64n64k256) and dS, with P passed in fp32 as well (dS from the fp32 P, as the split);
    one-sided named barriers (arrive / sync: C "S issued", A "P stored", B "dS stored", D "P free").
    Why: an m64n32 wgmma reads A (64 x 16) and B (32 x 16) from shared memory per k-step, 3 KB per
    32K MACs, which may exceed the shared-memory bandwidth; m64n64 reads 4 KB per 64K MACs. The cost:
    warpgroup 0's exponentials and warpgroup 1's dS are serial, with no wgmma of the same block to
    hide behind (barrier C puts S ahead of dP on the tensor cores so that exp(S) overlaps dP).
    P, dS and the fp32 P single-buffered (barrier D orders their reuse).
  The end of each iteration (_dq_dk), with dV in flight: dQ_i's 128 columns in DQ_N-column wgmmas
  issued before dK, so that the fp32 atomics (REDG.E.ADD.F32x2; Gluon 3.6 has no TMA reduce-add)
  overlap the dK wgmma; DQ_ORDER 1 issues the second dQ chunk after the first's atomics (fewer
  registers in flight; releases the ring stage before the last atomics).
Variants timed (VARIANTS): split dq64 / dq64 order1 / dq128, asym dq64 / dq64 order1.

Barrier / phase protocol: see the comment blocks above _tile (ring, pair barriers, buffer reuse)
and above _consumer_asym (its one-sided barriers, with the no-lapping argument).

Budgets (ptxas, sm_90a, triton 3.6; --compile-only prints them per build):
  registers: launch maxnreg 168 x 384 threads = the 64K register file (1 CTA / SM); setmaxnreg 240
    for each consumer warpgroup, 24 for the producer (bwd_hopper's split). A consumer thread holds
    dK_w + dV_w 128, S / dP 16 + 16 (split) or 32 (asym), a dQ chunk 32 (DQ_N 64) or 64 (DQ_N 128,
    in flight with dV and dK). The consumer loops touch up to 229-238 of the 240; 0 bytes spilled in
    every build. The dQ atomics' row pointers are int64 (2 base registers + immediate column
    offsets: with int32 offsets ptxas built one 64-bit address per 8-column group and spilled), and
    the causal mask's aranges are offset per block (not loop-invariant, so not kept live: with them
    live ptxas spilled in the exponential phase).
  shared memory: K, V 32 KB each; Q_i, dO_i 32 KB each x 2 stages = 128 KB; lse, Delta 2 x 2 x 256 B;
    split: P, dS (8 KB each) x 2 buffers = 32 KB -> 230832 B; asym: P, dS 8 KB each + fp32 P 16 KB
    = 32 KB -> 230848 B; of the 232448 B (227 KB) a CTA may have on an H100 / H200. (Hence 2 stages,
    no dQ staging tile, and no shared-memory scratch for layout conversions.)

Implemented: causal (blocks above the diagonal skipped per CTA; the diagonal block masked; both
warpgroups compute every block, so the barrier counts match), GQA / MQA (query heads looped in the
CTA), q / k / v / dO in any layout launch._hopper_view takes ((B, S, H, D), (B, H, S, D), packed-qkv
slices), dq / dk / dv written (B, S, H, D) contiguous (OUT_BSHD, flash_attn_func's) or (B, H, S, D)
contiguous, bf16 / fp16. Restrictions: D = 256, Sq = Sk = S a multiple of 64, scale > 0, no mask /
window / softcap / ALiBi / sink / varlen / causal offset, int32 element offsets (B·S·H·D < 2^31).
``gluon_attn_bwd256`` is what the library would launch, all of it timed: Delta = rowsum(dO·O)
(launch.attn_bwd_delta), the zeroed fp32 dQ accumulator, the kernel, dQ converted to the input dtype.

GPU mode (one process, about 2-3 minutes): each variant is checked in its own subprocess, all at
once (they compile in parallel, fill Triton's cache for the timing, and a variant that deadlocks
costs only itself: a watchdog ends a process after WATCHDOG_S s without progress, the parent kills
it after CHECK_TIMEOUT_S), against the library's Triton backward (flash_attn_func(...,
deterministic=True) through autograd, on the same forward's out / lse) on CHECK_CASES (B = 1..2,
H = 2..8, Hkv dividing H down to MQA, S = 128 / 384 / 1024, causal 0 / 1, both storage layouts,
both grid orders): max |diff| <= 2e-2·max(1, max |ref|) and no NaN for dq, dk, dv. Meanwhile the
parent compiles the library kernels the timing needs. Variants that passed are timed (do_bench
medians) on B·S = 16k, H = 8 (S = 1k, 4k, 16k; causal 0 / 1) and GQA 16 / 4 at B = 2, S = 8k
causal, beside the Triton backward (autograd) and SDPA cuDNN's backward; TF/s with backward FLOPs
= 2.5 x forward (forward = 4·B·H·S²·D, halved when causal), ratios to cuDNN and to Triton, and each
variant's gradients at each timing shape compared with the Triton backward's (last column; '!' in
the summary when they differ). Everything is also appended to $OUT/exp_gluon_bwd256.txt as it comes.
"""
import argparse
import math
import os
import sys
import threading
import time
import traceback

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

# Partition register budgets and the launch's cap, as bwd_hopper: 3 warpgroups x 128 threads x 168
# registers = the 64K-register file (1 CTA / SM), consumers at 240, the producer warp at 24.
CONSUMER_REGS = gl.constexpr(240)
PRODUCER_REGS = gl.constexpr(24)
MAXNREG = 168
LOG2E = gl.constexpr(1.4426950408889634)
HEAD_DIM = 256
BLOCK = 64  # BLOCK_M = BLOCK_N = 64; every TMA tile has 64 rows
STAGES = 2
LONG_FIRST_WAVES = 4  # launch.HOPPER_BWD_LONG_FIRST_WAVES
WATCHDOG_S = 100  # no progress for this long: exit (a deadlocked kernel)
CHECK_TIMEOUT_S = 240  # all the per-variant check processes together


# ---------------------------------------------------------------------------------------------
# Barriers (all in shared memory, initialised before gl.warp_specialize):
#   k_bar, v_bar   count 1: the producer's expect-tx arrive + K's (V's) bytes; complete once, in
#                  phase 0 (consumers wait parity 0).
#   q_ready[s], do_ready[s]  count 1 (the producer's expect-tx arrive) + the bytes of Q_i and
#                  lse_i (dO_i and Delta_i).
#   empty[s]       count 2: one arrive per consumer warpgroup, once a wgmma wait retired its
#                  last wgmma reading Q_i / dO_i of the stage (dK_w += dS^T Q_i,w, issued after
#                  dV_w; with DQ_ORDER 1 the second dQ chunk, which reads only dS and K, may still
#                  run). lse_i / Delta_i were read with ld.shared before a barrier that precedes
#                  the arrive in every thread of the warpgroup (split: pair barrier B; asym: the
#                  partition's gl.thread_barrier; and Triton puts a 128-thread bar.sync of the
#                  partition before the one-thread arrive anyway).
#   SDP_ASYM 0 ("split", _consumer): named barrier 15 (_pair_barrier, 256 threads = both consumer
#   warpgroups), twice an iteration:
#     A: both halves of the P tile stored (each thread: st.shared, fence.proxy.async, bar) ->
#        the dV wgmmas (async proxy) may read P;
#     B: both halves of the dS tile stored -> the dQ and dK wgmmas may read dS.
#   Both warpgroups run the same iterations (causal included: the diagonal block is computed by
#   both, masked), so they meet at A and B the same number of times; one id serves both (a
#   warpgroup cannot reach B before A completed for all 256 threads).
#
# mbarrier.arrive is ONE thread per partition in triton 3.6 (see fwd_hopper), hence count 2; it
# follows that thread's warpgroup_mma_wait, which covers the whole warpgroup's wgmmas.
#
# Phases. Iteration t (query head t // n_blocks of the group, its query block t % n_blocks,
# counted from the CTA's first) lives in stage s = t % STAGES, on its use r = t // STAGES.
#   ready[s]: phase r completes when block t's bytes landed -> consumers wait parity r & 1.
#   empty[s]: phase r completes when both warpgroups released block t -> before loading block t
#     the producer needs phase r - 1: parity (r & 1) ^ 1 (r = 0: a fresh barrier passes at once).
#   No phase can be lapped: ready[s] phase r + 1 needs the producer past empty[s] phase r, i.e.
#   both consumers done with block t; a consumer's arrive for block t + STAGES needs ready phase
#   r + 1, so empty phase r has both its arrivals before any of phase r + 1.
#
#   (SDP_ASYM 1 ("asym", _consumer_asym) uses named barriers 12-15 instead: see above it.)
#
# P / dS tiles (split): iteration t writes buffer t % 2. Its last readers were the dV / dK / dQ wgmmas of
# iteration t - 2, in both warpgroups; each warpgroup retired its own with wait(0) at the end of
# t - 2, before arriving at barrier A of t - 1; a warpgroup writing in iteration t has passed A
# (and B) of t - 1, so the other warpgroup's reads of t - 2 are over. Within iteration t, P is
# only written before A and dS only before B, and read only after them.
# ---------------------------------------------------------------------------------------------


@gluon.jit
def _tile(S, HKV, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr, LONG_FIRST: gl.constexpr):
    """(b, kv head, n0, first query block, query blocks per query head) of this CTA (bwd_hopper's
    _bwd_tile). Causal: query rows before n0 see none of the CTA's keys."""
    if LONG_FIRST:
        pid_bh = gl.program_id(0)
        pid_n = gl.program_id(1)
    else:
        pid_n = gl.program_id(0)
        pid_bh = gl.program_id(1)
    n0 = pid_n * BLOCK_N
    if CAUSAL:
        i0 = n0 // BLOCK_M
    else:
        i0 = 0
    return pid_bh // HKV, pid_bh % HKV, n0, i0, S // BLOCK_M - i0


@gluon.jit
def _producer(desc_q, desc_k, desc_v, desc_do, desc_lse, desc_delta, k_smem, v_smem, q_smem, do_smem,
              lse_smem, delta_smem, k_bar, v_bar, q_ready, do_ready, empty, S, H, GROUP,
              q_rb, q_rh, q_ch, k_rb, k_rh, k_ch, v_rb, v_rh, v_ch, do_rb, do_rh, do_ch,
              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr,
              LONG_FIRST: gl.constexpr):
    b, hk, n0, i0, n_blocks = _tile(S, H // GROUP, BLOCK_M, BLOCK_N, CAUSAL, LONG_FIRST)
    # row m of head h of batch b: row b*rb + h*rh + m, column h*ch of each 2-D view (launch._hopper_view);
    # a 64 x 256 block is 4 TMA messages of 64 x 64 (128-byte swizzle), one expect for all
    mbarrier.expect(k_bar, desc_k.block_type.nbytes)
    tma.async_copy_global_to_shared(desc_k, [b * k_rb + hk * k_rh + n0, hk * k_ch], k_bar, k_smem)
    mbarrier.expect(v_bar, desc_v.block_type.nbytes)
    tma.async_copy_global_to_shared(desc_v, [b * v_rb + hk * v_rh + n0, hk * v_ch], v_bar, v_smem)
    for t in range(GROUP * n_blocks):  # (query head of the group, query block), as the consumers
        s = t % STAGES
        mbarrier.wait(empty.index(s), ((t // STAGES) & 1) ^ 1)
        h = hk * GROUP + t // n_blocks
        m0 = (i0 + t % n_blocks) * BLOCK_M
        row_l = (b * H + h) * S + m0  # lse / Delta (B, H, S) as one 1-D tensor
        mbarrier.expect(q_ready.index(s), desc_q.block_type.nbytes + desc_lse.block_type.nbytes)
        tma.async_copy_global_to_shared(desc_q, [b * q_rb + h * q_rh + m0, h * q_ch], q_ready.index(s),
                                        q_smem.index(s))
        tma.async_copy_global_to_shared(desc_lse, [row_l], q_ready.index(s), lse_smem.index(s))
        mbarrier.expect(do_ready.index(s), desc_do.block_type.nbytes + desc_delta.block_type.nbytes)
        tma.async_copy_global_to_shared(desc_do, [b * do_rb + h * do_rh + m0, h * do_ch], do_ready.index(s),
                                        do_smem.index(s))
        tma.async_copy_global_to_shared(desc_delta, [row_l], do_ready.index(s), delta_smem.index(s))


@gluon.jit
def _pair_barrier(x):
    """Named barrier 15 over both consumer warpgroups (256 threads); returns x (bwd_hopper's:
    Gluon 3.6 has no named-barrier API; Triton's warp-specialize lowering uses ids 0..2 here)."""
    return gl.inline_asm_elementwise("bar.sync 15, 256; mov.b32 $0, $1;", "=r,r", [x], dtype=gl.int32,
                                     is_pure=False, pack=1)


@gluon.jit
def _causal_mask(p, shift, col_layout: gl.constexpr, row_layout: gl.constexpr):
    """p with 0 where key > query row: tile column c is key c + shift + (the tile's first row), so
    the key is past row r iff c + shift > r. The aranges offset by the per-block shift are not
    loop-invariant, so they are not hoisted into registers kept across the loop (with the keys'
    aranges kept live, ptxas spilled in the exponential phase)."""
    cols = gl.arange(0, p.shape[1], layout=col_layout) + shift
    rows = gl.arange(0, p.shape[0], layout=row_layout)
    return gl.where(cols[None, :] <= rows[:, None], p, 0.0)


@gluon.jit
def _dq_dk(W: gl.constexpr, dv_tok, dk, ds_buf, p_buf, k_smem, q_s, do_s, dq_ptr, dq_zero, empty_s,
           HALF: gl.constexpr, DQ_N: gl.constexpr, DQ_ORDER: gl.constexpr):
    """The end of an iteration, once the dS tile is complete (dV_w += P^T dO_i,w in flight):
    dQ_i columns 128W.. = dS K[:, 128W..] (A = dS, 64 queries x 64 keys) by chunks of DQ_N columns
    added into the fp32 accumulator with atomics, dK_w += dS^T Q_i,w, the ring stage released.
    Returns (dv, dk). wgmma groups retire in issue order; dQ goes before dK so that the atomics
    overlap the dK wgmma.
      DQ_N 128: issue dQ, dK; wait(1) -> dV, dQ retired; atomics; wait(0) -> dK; release.
      DQ_N 64, DQ_ORDER 0: issue dQ0, dQ1, dK; wait(2) -> dV, dQ0; atomics; wait(1) -> dQ1;
        atomics; wait(0) -> dK; release. (In flight at once: dV, dQ0, dQ1, dK = 192 registers.)
      DQ_N 64, DQ_ORDER 1: issue dQ0, dK; wait(1) -> dV, dQ0; atomics; issue dQ1; wait(1) -> dK;
        release (dQ1 reads only dS and K); wait(0) -> dQ1; atomics. (At most 160 registers in
        flight; dQ1's atomics trail this warpgroup's last wgmma.)"""
    if DQ_N == HALF:
        dq_tok = warpgroup_mma(ds_buf, k_smem.slice(W * HALF, DQ_N, dim=1), dq_zero, use_acc=False, is_async=True)
        dk_tok = warpgroup_mma(ds_buf.permute((1, 0)), q_s.slice(W * HALF, HALF, dim=1), dk, is_async=True)
        dv, dq, _, _ = warpgroup_mma_wait(1, deps=(dv_tok, dq_tok, p_buf, k_smem))
        gl.atomic_add(dq_ptr, dq, sem="relaxed")  # overlaps dK
        dk, _, _, _ = warpgroup_mma_wait(0, deps=(dk_tok, ds_buf, q_s, do_s))
        mbarrier.arrive(empty_s)  # dV_i (dO_i) and dK_i (Q_i) retired: the stage is free
    else:
        gl.static_assert(2 * DQ_N == HALF)
        dq0_tok = warpgroup_mma(ds_buf, k_smem.slice(W * HALF, DQ_N, dim=1), dq_zero, use_acc=False,
                                is_async=True)
        if DQ_ORDER == 0:
            dq1_tok = warpgroup_mma(ds_buf, k_smem.slice(W * HALF + DQ_N, DQ_N, dim=1), dq_zero, use_acc=False,
                                    is_async=True)
            dk_tok = warpgroup_mma(ds_buf.permute((1, 0)), q_s.slice(W * HALF, HALF, dim=1), dk, is_async=True)
            dv, dq0, _, _ = warpgroup_mma_wait(2, deps=(dv_tok, dq0_tok, p_buf, k_smem))
            gl.atomic_add(dq_ptr, dq0, sem="relaxed")  # overlaps dQ1, dK
            dq1, _, _ = warpgroup_mma_wait(1, deps=(dq1_tok, ds_buf, k_smem))
            gl.atomic_add(dq_ptr + DQ_N, dq1, sem="relaxed")  # overlaps dK
            dk, _, _, _ = warpgroup_mma_wait(0, deps=(dk_tok, ds_buf, q_s, do_s))
            mbarrier.arrive(empty_s)
        else:
            dk_tok = warpgroup_mma(ds_buf.permute((1, 0)), q_s.slice(W * HALF, HALF, dim=1), dk, is_async=True)
            dv, dq0, _, _ = warpgroup_mma_wait(1, deps=(dv_tok, dq0_tok, p_buf, k_smem))
            gl.atomic_add(dq_ptr, dq0, sem="relaxed")  # overlaps dK
            dq1_tok = warpgroup_mma(ds_buf, k_smem.slice(W * HALF + DQ_N, DQ_N, dim=1), dq_zero, use_acc=False,
                                    is_async=True)
            dk, _, _ = warpgroup_mma_wait(1, deps=(dk_tok, q_s, do_s))
            mbarrier.arrive(empty_s)  # dV_i, dK_i retired (dQ1 reads dS and K only): the stage is free
            dq1, _, _ = warpgroup_mma_wait(0, deps=(dq1_tok, ds_buf, k_smem))
            gl.atomic_add(dq_ptr + DQ_N, dq1, sem="relaxed")
    return dv, dk


@gluon.jit
def _consumer(W: gl.constexpr, DQ, DK, DV, sm_scale, k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem,
              p_smem, ds_smem, k_bar, v_bar, q_ready, do_ready, empty, S, H, GROUP,
              HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
              CAUSAL: gl.constexpr, OUT_BSHD: gl.constexpr, LONG_FIRST: gl.constexpr, DQ_N: gl.constexpr,
              DQ_ORDER: gl.constexpr):
    """Consumer warpgroup W: scores of keys n0 + 32W .. + 31; dK, dV, dQ columns 128W .. + 127.
    DQ (fp32, H heads) and DK / DV (H / GROUP heads) contiguous (B, S, heads, D) when OUT_BSHD,
    else (B, heads, S, D) (strides from S and the head counts, as bwd_hopper)."""
    dtype: gl.constexpr = k_smem.dtype
    HKV = H // GROUP
    b, hk, n0, i0, n_blocks = _tile(S, HKV, BLOCK_M, BLOCK_N, CAUSAL, LONG_FIRST)
    HALF: gl.constexpr = HEAD_DIM // 2  # this warpgroup's columns of dK, dV, dQ
    KW: gl.constexpr = BLOCK_N // 2     # this warpgroup's keys of S, dP
    if OUT_BSHD:
        q_sb = S * H * HEAD_DIM
        q_sh = HEAD_DIM
        q_ss = H * HEAD_DIM
        k_sb = S * HKV * HEAD_DIM
        k_sh = HEAD_DIM
        k_ss = HKV * HEAD_DIM
    else:
        q_sb = H * S * HEAD_DIM
        q_sh = S * HEAD_DIM
        q_ss = HEAD_DIM
        k_sb = HKV * S * HEAD_DIM
        k_sh = S * HEAD_DIM
        k_ss = HEAD_DIM
    # wgmma accumulators (instruction m = 16, k = 16 for 16-bit inputs, n = the tile's width):
    # s_layout S_w / dP_w (BLOCK_M x KW), kv_layout dK_w / dV_w (BLOCK_N x HALF), dq_layout a dQ chunk.
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, KW, 16])
    kv_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                        instr_shape=[16, HALF, 16])
    dq_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                        instr_shape=[16, DQ_N, 16])
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)  # along the query rows (2 a thread)
    col_s: gl.constexpr = gl.SliceLayout(0, s_layout)  # along the keys

    k_w = k_smem.slice(W * KW, KW)  # keys 32W .. of K and V, all 256 columns
    v_w = v_smem.slice(W * KW, KW)
    qk_scale = sm_scale * LOG2E
    dq_rows = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, dq_layout))
    dq_cols = gl.arange(0, DQ_N, layout=gl.SliceLayout(0, dq_layout))
    dq_base = DQ + b * q_sb + (hk * GROUP) * q_sh + W * HALF  # + the head's and the rows' offsets, per t

    dk = gl.zeros([BLOCK_N, HALF], gl.float32, layout=kv_layout)
    dv = gl.zeros([BLOCK_N, HALF], gl.float32, layout=kv_layout)
    s_zero = gl.zeros([BLOCK_M, KW], gl.float32, layout=s_layout)
    dq_zero = gl.zeros([BLOCK_M, DQ_N], gl.float32, layout=dq_layout)

    mbarrier.wait(k_bar, 0)
    mbarrier.wait(v_bar, 0)
    for t in range(GROUP * n_blocks):  # (query head of the group, query block), as the producer
        s = t % STAGES
        ph = (t // STAGES) & 1
        g = t // n_blocks
        m0 = (i0 + t - g * n_blocks) * BLOCK_M
        q_s = q_smem.index(s)
        do_s = do_smem.index(s)
        p_buf = p_smem.index(t % 2)
        ds_buf = ds_smem.index(t % 2)

        # S_w and dP_w, both in flight.
        mbarrier.wait(q_ready.index(s), ph)
        s_tok = warpgroup_mma(q_s, k_w.permute((1, 0)), s_zero, use_acc=False, is_async=True)
        mbarrier.wait(do_ready.index(s), ph)
        dp_tok = warpgroup_mma(do_s, v_w.permute((1, 0)), s_zero, use_acc=False, is_async=True)
        sc = warpgroup_mma_wait(1, deps=(s_tok, ))
        # P_w (overlaps the dP_w wgmma); lse_i: 2 rows a thread, from shared memory (TMA)
        lse2 = lse_smem.index(s).load(row_s) * LOG2E
        p = gl.exp2(sc * qk_scale - lse2[:, None])
        if CAUSAL:
            if m0 < n0 + W * KW + KW:  # the diagonal cuts this block: keys > query rows get P = 0
                p = _causal_mask(p, n0 + W * KW - m0, col_s, row_s)
        p_buf.slice(W * KW, KW, dim=1).store(p.to(dtype))
        fence_async_shared()  # this thread's generic-proxy stores, before the wgmmas read them
        _pair_barrier(m0)     # A: the whole P tile is in shared memory
        # dV_w += P^T dO_i,w (A = P^T: the permuted tile, both warpgroups' keys)
        dv_tok = warpgroup_mma(p_buf.permute((1, 0)), do_s.slice(W * HALF, HALF, dim=1), dv, is_async=True)
        dp, _, _, _, _ = warpgroup_mma_wait(1, deps=(dp_tok, k_w, v_w, q_s, do_s))  # dP_w (dV_w in flight)
        delta = delta_smem.index(s).load(row_s)
        ds = p * (dp - delta[:, None]) * sm_scale  # scale folded in: dK and dQ need no scaling after
        ds_buf.slice(W * KW, KW, dim=1).store(ds.to(dtype))
        fence_async_shared()
        _pair_barrier(m0)     # B: the whole dS tile is in shared memory
        # dQ_i columns 128W.. = dS K[:, 128W..] (A = dS, 64 queries x 64 keys), issued before dK_w
        # so that the atomics overlap the dK wgmma. Row pointers in int64: 2 base registers +
        # immediate column offsets in the REDGs (int32 offsets cost a 64-bit address per column group).
        dq_ptr = (dq_base + g * q_sh + (m0 + dq_rows).to(gl.int64)[:, None] * q_ss) + dq_cols[None, :]
        dv, dk = _dq_dk(W, dv_tok, dk, ds_buf, p_buf, k_smem, q_s, do_s, dq_ptr, dq_zero, empty.index(s),
                        HALF, DQ_N, DQ_ORDER)

    # dK_w (already scaled), dV_w, summed over the group's query heads: columns 128W.. of 64 keys.
    o_rows = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, kv_layout))
    o_cols = gl.arange(0, HALF, layout=gl.SliceLayout(0, kv_layout))
    o_offs = b * k_sb + hk * k_sh + (n0 + o_rows)[:, None] * k_ss + W * HALF + o_cols[None, :]
    gl.store(DK + o_offs, dk.to(DK.dtype.element_ty))
    gl.store(DV + o_offs, dv.to(DV.dtype.element_ty))


@gluon.jit
def _named_bar(x, ASM: gl.constexpr):
    """A named-barrier instruction over both consumer warpgroups (ASM: "bar.sync ID, 256; ..." or
    "bar.arrive ID, 256; ..."); returns x (an operand, so the statement stays where it is)."""
    return gl.inline_asm_elementwise(ASM, "=r,r", [x], dtype=gl.int32, is_pure=False, pack=1)


# SDP_ASYM 1: named barriers, each between the two consumer warpgroups (256 threads), one side
# arriving (bar.arrive: no wait), the other waiting (bar.sync):
#   C (id 12): warpgroup 0 issued S_t -> warpgroup 1 may issue dP_t (so that S_t, on the critical
#              path through the exponentials, goes to the tensor cores first).
#   A (id 13): warpgroup 0 stored P_t (bf16 for the dV wgmmas, fp32 for dS) -> warpgroup 1 reads it.
#   B (id 14): warpgroup 1 stored dS_t -> warpgroup 0's dQ / dK wgmmas may read it.
#   D (id 15): arrived by warpgroup 1 at the top of iteration t + 1, i.e. once it retired every
#              wgmma of iteration t (its dV read P_t) and loaded P_t (fp32) -> warpgroup 0 may
#              overwrite P with P_{t+1} (P, dS and the fp32 P are single-buffered). (At the top,
#              iteration 0 included: arrivals and waits pair up one to one.)
# dS_{t+1} (written by warpgroup 1 after A_{t+1}) is safe against warpgroup 0's dQ_t / dK_t: warpgroup
# 0 arrives at A_{t+1} only after its wait(0) of iteration t. No barrier can be lapped (a warp
# arriving twice before the other side waited): warpgroup 0 arrives at C_{t+1} after waiting B_t,
# which follows warpgroup 1's wait on C_t; at A_{t+1} after waiting D_{t+1} (warpgroup 1 past A_t);
# warpgroup 1 arrives at B_{t+1} after waiting A_{t+1} (warpgroup 0 past B_t) and at D_{t+1} after
# waiting A_t (warpgroup 0 past D_t). Both warpgroups run the same iterations, so every barrier
# has as many arrivals as waits and none is left pending at the end.
_BAR_C_ARRIVE = gl.constexpr("bar.arrive 12, 256; mov.b32 $0, $1;")
_BAR_C_SYNC = gl.constexpr("bar.sync 12, 256; mov.b32 $0, $1;")
_BAR_A_ARRIVE = gl.constexpr("bar.arrive 13, 256; mov.b32 $0, $1;")
_BAR_A_SYNC = gl.constexpr("bar.sync 13, 256; mov.b32 $0, $1;")
_BAR_B_ARRIVE = gl.constexpr("bar.arrive 14, 256; mov.b32 $0, $1;")
_BAR_B_SYNC = gl.constexpr("bar.sync 14, 256; mov.b32 $0, $1;")
_BAR_D_ARRIVE = gl.constexpr("bar.arrive 15, 256; mov.b32 $0, $1;")
_BAR_D_SYNC = gl.constexpr("bar.sync 15, 256; mov.b32 $0, $1;")


@gluon.jit
def _consumer_asym(W: gl.constexpr, DQ, DK, DV, sm_scale, k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem,
                   p_smem, ds_smem, p32_smem, k_bar, v_bar, q_ready, do_ready, empty, S, H, GROUP,
                   HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                   CAUSAL: gl.constexpr, OUT_BSHD: gl.constexpr, LONG_FIRST: gl.constexpr, DQ_N: gl.constexpr,
              DQ_ORDER: gl.constexpr):
    """SDP_ASYM 1, consumer warpgroup W: warpgroup 0 computes all of S_t = Q_i K^T (64 x 64, K = 256)
    and P_t; warpgroup 1 all of dP_t = dO_i V^T and dS_t = P_t (dP_t - Delta_i) (P_t in fp32 through
    shared memory); then, as in _consumer, warpgroup W accumulates dK, dV columns 128W.. and
    computes dQ_i's columns 128W... Every S / dP wgmma is m64n64 (not _consumer's m64n32)."""
    dtype: gl.constexpr = k_smem.dtype
    HKV = H // GROUP
    b, hk, n0, i0, n_blocks = _tile(S, HKV, BLOCK_M, BLOCK_N, CAUSAL, LONG_FIRST)
    HALF: gl.constexpr = HEAD_DIM // 2
    if OUT_BSHD:
        q_sb = S * H * HEAD_DIM
        q_sh = HEAD_DIM
        q_ss = H * HEAD_DIM
        k_sb = S * HKV * HEAD_DIM
        k_sh = HEAD_DIM
        k_ss = HKV * HEAD_DIM
    else:
        q_sb = H * S * HEAD_DIM
        q_sh = S * HEAD_DIM
        q_ss = HEAD_DIM
        k_sb = HKV * S * HEAD_DIM
        k_sh = S * HEAD_DIM
        k_ss = HEAD_DIM
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    kv_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                        instr_shape=[16, HALF, 16])
    dq_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                        instr_shape=[16, DQ_N, 16])
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    col_s: gl.constexpr = gl.SliceLayout(0, s_layout)

    qk_scale = sm_scale * LOG2E
    dq_rows = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, dq_layout))
    dq_cols = gl.arange(0, DQ_N, layout=gl.SliceLayout(0, dq_layout))
    dq_base = DQ + b * q_sb + (hk * GROUP) * q_sh + W * HALF

    dk = gl.zeros([BLOCK_N, HALF], gl.float32, layout=kv_layout)
    dv = gl.zeros([BLOCK_N, HALF], gl.float32, layout=kv_layout)
    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=s_layout)
    dq_zero = gl.zeros([BLOCK_M, DQ_N], gl.float32, layout=dq_layout)
    p_buf = p_smem.index(0)
    ds_buf = ds_smem.index(0)

    mbarrier.wait(k_bar, 0)
    mbarrier.wait(v_bar, 0)
    for t in range(GROUP * n_blocks):
        s = t % STAGES
        ph = (t // STAGES) & 1
        g = t // n_blocks
        m0 = (i0 + t - g * n_blocks) * BLOCK_M
        q_s = q_smem.index(s)
        do_s = do_smem.index(s)
        if W == 1:
            # D_t: iteration t - 1 is over here (its wait(0) retired every wgmma, P32_{t-1} loaded):
            # warpgroup 0 may store P_t. (At the top of the loop, so arrivals and waits pair up 1:1.)
            _named_bar(m0, _BAR_D_ARRIVE)
        if W == 0:
            mbarrier.wait(q_ready.index(s), ph)
            s_tok = warpgroup_mma(q_s, k_smem.permute((1, 0)), s_zero, use_acc=False, is_async=True)
            _named_bar(m0, _BAR_C_ARRIVE)  # C: S_t issued
            sc, _, _ = warpgroup_mma_wait(0, deps=(s_tok, q_s, k_smem))
            lse2 = lse_smem.index(s).load(row_s) * LOG2E
            p = gl.exp2(sc * qk_scale - lse2[:, None])
            if CAUSAL:
                if m0 < n0 + BLOCK_N:  # the diagonal block: keys > query rows get P = 0
                    p = _causal_mask(p, n0 - m0, col_s, row_s)
            _named_bar(m0, _BAR_D_SYNC)  # D_t: warpgroup 1 is done with P_{t-1}
            p_buf.store(p.to(dtype))
            p32_smem.store(p)
            fence_async_shared()
            gl.thread_barrier()  # this warpgroup's own dV wgmma reads all 4 warps' P stores
            _named_bar(m0, _BAR_A_ARRIVE)  # A: P_t stored
            mbarrier.wait(do_ready.index(s), ph)
            dv_tok = warpgroup_mma(p_buf.permute((1, 0)), do_s.slice(0, HALF, dim=1), dv, is_async=True)
            _named_bar(m0, _BAR_B_SYNC)  # B: dS_t stored by warpgroup 1
        else:
            mbarrier.wait(do_ready.index(s), ph)
            _named_bar(m0, _BAR_C_SYNC)  # C: S_t issued first
            dp_tok = warpgroup_mma(do_s, v_smem.permute((1, 0)), s_zero, use_acc=False, is_async=True)
            dp, _, _ = warpgroup_mma_wait(0, deps=(dp_tok, do_s, v_smem))
            delta = delta_smem.index(s).load(row_s)
            dpm = (dp - delta[:, None]) * sm_scale
            _named_bar(m0, _BAR_A_SYNC)  # A: P_t stored by warpgroup 0
            dv_tok = warpgroup_mma(p_buf.permute((1, 0)), do_s.slice(HALF, HALF, dim=1), dv, is_async=True)
            p32 = p32_smem.load(s_layout)
            ds = p32 * dpm  # scale folded in
            ds_buf.store(ds.to(dtype))
            fence_async_shared()
            gl.thread_barrier()  # (this warpgroup's own dQ / dK wgmmas read all 4 warps' stores)
            _named_bar(m0, _BAR_B_ARRIVE)  # B: dS_t stored
            mbarrier.wait(q_ready.index(s), ph)
        dq_ptr = (dq_base + g * q_sh + (m0 + dq_rows).to(gl.int64)[:, None] * q_ss) + dq_cols[None, :]
        dv, dk = _dq_dk(W, dv_tok, dk, ds_buf, p_buf, k_smem, q_s, do_s, dq_ptr, dq_zero, empty.index(s),
                        HALF, DQ_N, DQ_ORDER)

    o_rows = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, kv_layout))
    o_cols = gl.arange(0, HALF, layout=gl.SliceLayout(0, kv_layout))
    o_offs = b * k_sb + hk * k_sh + (n0 + o_rows)[:, None] * k_ss + W * HALF + o_cols[None, :]
    gl.store(DK + o_offs, dk.to(DK.dtype.element_ty))
    gl.store(DV + o_offs, dv.to(DV.dtype.element_ty))


# H and GROUP not specialised: Triton would otherwise build one kernel per (H % 16 == 0, GROUP == 1)
# case; with them dynamic the GPU run compiles fewer kernels and --compile-only builds exactly what runs.
@gluon.jit(do_not_specialize=["H", "GROUP"])
def attn_bwd256_kernel(desc_q, desc_k, desc_v, desc_do, desc_lse, desc_delta, DQ, DK, DV, sm_scale, S, H, GROUP,
                       q_rb, q_rh, q_ch, k_rb, k_rh, k_ch, v_rb, v_rh, v_ch, do_rb, do_rh, do_ch,
                       HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                       STAGES: gl.constexpr, CAUSAL: gl.constexpr, OUT_BSHD: gl.constexpr,
                       LONG_FIRST: gl.constexpr, num_warps: gl.constexpr, DQ_N: gl.constexpr = 64,
                       SDP_ASYM: gl.constexpr = 0, DQ_ORDER: gl.constexpr = 0):
    """Grid (S // BLOCK_N, B * H // GROUP), or (B * H // GROUP, S // BLOCK_N) if LONG_FIRST; launch
    with num_warps=4 (the default partition = consumer warpgroup 0) and maxnreg=MAXNREG.
    desc_q/k/v/do: 2-D views ((rb, rh, ch) placement, launch._hopper_view), blocks of 64 x 256;
    desc_lse, desc_delta: 1-D over (B, H, S) fp32, blocks of BLOCK_M; DQ fp32 zeroed, DK, DV in
    the input dtype (layouts: _consumer). DQ_N: columns of one dQ wgmma (64: two a block; 128: one).
    SDP_ASYM: 0 _consumer (S and dP split along the keys), 1 _consumer_asym (S on warpgroup 0, dP on 1)."""
    gl.static_assert(num_warps == 4)
    gl.static_assert(BLOCK_N == 64)
    gl.static_assert(BLOCK_M == 64)
    gl.static_assert(HEAD_DIM == 256)
    dtype: gl.constexpr = desc_q.dtype
    k_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, HEAD_DIM], desc_k.layout)
    v_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, HEAD_DIM], desc_v.layout)
    q_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, HEAD_DIM], desc_q.layout)
    do_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, HEAD_DIM], desc_do.layout)
    lse_smem = gl.allocate_shared_memory(gl.float32, [STAGES, BLOCK_M], desc_lse.layout)
    delta_smem = gl.allocate_shared_memory(gl.float32, [STAGES, BLOCK_M], desc_delta.layout)
    # P, dS: 64 queries x 64 keys; 64-byte swizzle, so that each warpgroup's 32 key columns are whole
    # swizzle atoms (32 bf16) of the tile it stores into (SDP_ASYM 0). Double-buffered by iteration,
    # single-buffered with SDP_ASYM 1 (its barrier D orders the reuse; the room goes to the fp32 P).
    NBUF: gl.constexpr = 2 - SDP_ASYM
    pds_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=64, element_bitwidth=16, rank=2)
    p_smem = gl.allocate_shared_memory(dtype, [NBUF, BLOCK_M, BLOCK_N], pds_layout)
    ds_smem = gl.allocate_shared_memory(dtype, [NBUF, BLOCK_M, BLOCK_N], pds_layout)
    k_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    v_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    do_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(k_bar, count=1)
    mbarrier.init(v_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(q_ready.index(i), count=1)
        mbarrier.init(do_ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=2)
    fence_async_shared()

    # (argument tuples written out in the call: a tuple assigned to a name first would turn its
    # constexprs into tensors)
    if SDP_ASYM:
        # P_t in fp32 for warpgroup 1's dS (16 KB). Swizzled in 8-float (32-byte) units XOR-ed with
        # the row: the wgmma accumulator fragment (2 floats a thread, 8 rows x 4 threads a warp
        # instruction) stores / loads in the minimum 2 wavefronts.
        p32_layout: gl.constexpr = gl.SwizzledSharedLayout(vec=8, per_phase=1, max_phase=8, order=[1, 0])
        p32_smem = gl.allocate_shared_memory(gl.float32, [BLOCK_M, BLOCK_N], p32_layout)
        gl.warp_specialize([
            (_consumer_asym, (0, DQ, DK, DV, sm_scale, k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem,
                              p_smem, ds_smem, p32_smem, k_bar, v_bar, q_ready, do_ready, empty, S, H, GROUP,
                              HEAD_DIM, BLOCK_M, BLOCK_N, STAGES, CAUSAL, OUT_BSHD, LONG_FIRST, DQ_N, DQ_ORDER)),
            (_consumer_asym, (1, DQ, DK, DV, sm_scale, k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem,
                              p_smem, ds_smem, p32_smem, k_bar, v_bar, q_ready, do_ready, empty, S, H, GROUP,
                              HEAD_DIM, BLOCK_M, BLOCK_N, STAGES, CAUSAL, OUT_BSHD, LONG_FIRST, DQ_N, DQ_ORDER)),
            (_producer, (desc_q, desc_k, desc_v, desc_do, desc_lse, desc_delta, k_smem, v_smem, q_smem, do_smem,
                         lse_smem, delta_smem, k_bar, v_bar, q_ready, do_ready, empty, S, H, GROUP,
                         q_rb, q_rh, q_ch, k_rb, k_rh, k_ch, v_rb, v_rh, v_ch, do_rb, do_rh, do_ch,
                         BLOCK_M, BLOCK_N, STAGES, CAUSAL, LONG_FIRST)),
        ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])
        return
    gl.warp_specialize([
        (_consumer, (0, DQ, DK, DV, sm_scale, k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem, p_smem,
                     ds_smem, k_bar, v_bar, q_ready, do_ready, empty, S, H, GROUP,
                     HEAD_DIM, BLOCK_M, BLOCK_N, STAGES, CAUSAL, OUT_BSHD, LONG_FIRST, DQ_N, DQ_ORDER)),
        (_consumer, (1, DQ, DK, DV, sm_scale, k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem, p_smem,
                     ds_smem, k_bar, v_bar, q_ready, do_ready, empty, S, H, GROUP,
                     HEAD_DIM, BLOCK_M, BLOCK_N, STAGES, CAUSAL, OUT_BSHD, LONG_FIRST, DQ_N, DQ_ORDER)),
        (_producer, (desc_q, desc_k, desc_v, desc_do, desc_lse, desc_delta, k_smem, v_smem, q_smem, do_smem,
                     lse_smem, delta_smem, k_bar, v_bar, q_ready, do_ready, empty, S, H, GROUP,
                     q_rb, q_rh, q_ch, k_rb, k_rh, k_ch, v_rb, v_rh, v_ch, do_rb, do_rh, do_ch,
                     BLOCK_M, BLOCK_N, STAGES, CAUSAL, LONG_FIRST)),
    ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------

def _view_desc(t: torch.Tensor, rows: int = BLOCK):
    """(TMA descriptor, (rb, rh, ch)) of a (B, H, S, D) tensor's 2-D view (launch._hopper_view), in
    blocks of rows x D, NVMMA layout with the largest swizzle (128 B), as launch._hopper_desc."""
    from flashkernels.ops.attention import launch
    view = launch._hopper_view(t)
    assert view is not None, f"strides {t.stride()}: no 2-D TMA view"
    dt = gl.bfloat16 if t.dtype == torch.bfloat16 else gl.float16
    layout = gl.NVMMASharedLayout.get_default_for([rows, t.shape[3]], dt)
    desc = TensorDescriptor(t, [view.rows, view.cols], [view.row_stride, 1], [rows, t.shape[3]], layout)
    return desc, (view.rb, view.rh, view.ch)


def _rows_desc(t: torch.Tensor, rows: int = BLOCK):
    """1-D TMA descriptor of a contiguous fp32 tensor (lse, Delta), blocks of ``rows``."""
    flat = t.view(-1)
    return TensorDescriptor(flat, [flat.numel()], [1], [rows], gl.NVMMASharedLayout.get_default_for([rows], gl.float32))


def _empty(B, H, S, D, bshd, dtype, device, zero=False):
    """(B, H, S, D) view of a (B, S, H, D) (bshd) or (B, H, S, D) contiguous tensor."""
    fn = torch.zeros if zero else torch.empty
    if bshd:
        return fn((B, S, H, D), dtype=dtype, device=device).transpose(1, 2)
    return fn((B, H, S, D), dtype=dtype, device=device)


def gluon_attn_bwd256(do, q, k, v, out, lse, causal, scale, bshd=True, long_first=None, **opts):
    """(dq, dk, dv) as (B, H, S, D) views laid out (B, S, H, D) (bshd) or (B, H, S, D); q, k, v, do,
    out (B, H|Hkv, S, D) views readable by TMA (launch._hopper_view), lse (B, H, S) fp32 natural
    log. opts: the kernel's variant constexprs (DQ_N). Everything the library would launch: Delta,
    the zeroed fp32 dQ accumulator, the kernel, dQ's conversion."""
    from flashkernels.ops.attention import launch
    B, H, S, D = q.shape
    Hkv = k.shape[1]
    assert D == HEAD_DIM and S % BLOCK == 0 and H % Hkv == 0 and k.shape == v.shape == (B, Hkv, S, D)
    assert q.dtype in (torch.bfloat16, torch.float16) and scale > 0
    delta = launch.attn_bwd_delta(out, do, lse, None)
    dq = _empty(B, H, S, D, bshd, q.dtype, q.device)
    dk = _empty(B, Hkv, S, D, bshd, k.dtype, q.device)
    dv = _empty(B, Hkv, S, D, bshd, v.dtype, q.device)
    dq_acc = _empty(B, H, S, D, bshd, torch.float32, q.device, zero=True)
    (dsq, cq), (dsk, ck), (dsv, cv), (dsdo, cdo) = (_view_desc(q), _view_desc(k), _view_desc(v), _view_desc(do))
    ctas = B * Hkv * (S // BLOCK)
    if long_first is None:  # the library's rule (launch.attn_bwd_hopper_impl)
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count
        long_first = causal and ctas <= LONG_FIRST_WAVES * sms
    grid = (B * Hkv, S // BLOCK) if long_first else (S // BLOCK, B * Hkv)
    attn_bwd256_kernel[grid](
        dsq, dsk, dsv, dsdo, _rows_desc(lse.contiguous()), _rows_desc(delta), dq_acc, dk, dv,
        scale, S, H, H // Hkv, *cq, *ck, *cv, *cdo,
        HEAD_DIM=D, BLOCK_M=BLOCK, BLOCK_N=BLOCK, STAGES=STAGES, CAUSAL=causal, OUT_BSHD=bshd,
        LONG_FIRST=long_first, num_warps=4, maxnreg=MAXNREG, **opts)
    dq.copy_(dq_acc)
    return dq, dk, dv


# (name, kernel constexprs) of the variants built, checked and timed (see _dq_dk and _consumer_asym)
VARIANTS = [("split dq64", dict(DQ_N=64, DQ_ORDER=0)),
            ("split dq64 order1", dict(DQ_N=64, DQ_ORDER=1)),
            ("split dq128", dict(DQ_N=128)),
            ("asym dq64", dict(DQ_N=64, DQ_ORDER=0, SDP_ASYM=1)),
            ("asym dq64 order1", dict(DQ_N=64, DQ_ORDER=1, SDP_ASYM=1))]


# ---------------------------------------------------------------------------------------------
# --compile-only: sm_90a build on any machine
# ---------------------------------------------------------------------------------------------

def _sass_sequences(cubin: bytes) -> str:
    """Per loop of the kernel (>= 20 instructions, with HGMMA or TMA loads): the condensed order of
    wgmmas, their waits, barriers, mbarrier ops, exp2, REDG (dQ atomics) and spill traffic."""
    import re
    import subprocess
    import tempfile
    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        lines = subprocess.run([nvdisasm, "-c", path], capture_output=True, text=True, check=True).stdout.splitlines()
    labels = {ln[:-1]: i for i, ln in enumerate(lines) if re.match(r"^\.L_x_\d+:", ln)}
    key = re.compile(r"HGMMA|WARPGROUP\.DEPBAR\.LE gsb0, 0x[0-9]|BAR\.(?:SYNC|ARV)[^;]*|MUFU\.EX2|SYNCS\.PHASECHK|"
                     r"SYNCS\.ARRIVE[.\w]*|UTMALDG|REDG|LDL|STL")

    def ins(x):
        m = re.search(r"/\*[0-9a-f]{4}\*/\s+(.*?)\s*;", x)
        return m.group(1) if m else None

    out = []
    for i, ln in enumerate(lines):
        m = re.search(r"@!?U?P\w+\s+BRA `\((\.L_x_\d+)\)", ln)
        if not (m and labels.get(m.group(1), i) < i):
            continue
        body = [s for s in map(ins, lines[labels[m.group(1)]:i + 1]) if s]
        if len(body) < 20 or not any(("HGMMA" in s or "UTMALDG" in s) for s in body):
            continue
        seq = []
        for s in body:
            k = key.search(s)
            if not k:
                continue
            t = re.sub(r"\s+", "", k.group(0).replace("WARPGROUP.DEPBAR.LE gsb0, ", "WAIT").replace(
                "BAR.SYNC.DEFER_BLOCKING", "BAR.SYNC").replace("SYNCS.PHASECHK", "MBAR.WAIT").replace(
                "SYNCS.ARRIVE.TRANS64.A1T0", "MBAR.ARRIVE").replace("SYNCS.ARRIVE.TRANS64", "MBAR.EXPECT"))
            if seq and seq[-1][0] == t:
                seq[-1][1] += 1
            else:
                seq.append([t, 1])
        regs = max([int(r) for s in body for r in re.findall(r"\bR(\d+)\b", s)] or [0])
        out.append(f"loop {len(body)} instr, max reg R{regs}: " +
                   " ".join(f"{t}{f'x{n}' if n > 1 else ''}" for t, n in seq))
    return "\n".join(out)


def _build_args(dtype, causal, out_bshd, long_first, opts):
    """(fn, descs, ptr types, constexprs) of a build as gluon_attn_bwd256 launches it."""
    x = torch.empty(1, 1024, 2, HEAD_DIM, dtype=dtype).transpose(1, 2)  # (B, H, S, D) view of (B, S, H, D)
    lse = torch.empty(1, 2, 1024)
    descs = {n: _view_desc(x)[0] for n in ("desc_q", "desc_k", "desc_v", "desc_do")}
    descs.update(desc_lse=_rows_desc(lse), desc_delta=_rows_desc(lse))
    tt = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    ptrs = {"DQ": "*fp32", "DK": f"*{tt}", "DV": f"*{tt}"}
    consts = dict(HEAD_DIM=HEAD_DIM, BLOCK_M=BLOCK, BLOCK_N=BLOCK, STAGES=STAGES, CAUSAL=causal, OUT_BSHD=out_bshd,
                  LONG_FIRST=long_first, num_warps=4, **opts)
    fn = attn_bwd256_kernel
    for i, n in enumerate(fn.arg_names):  # constexprs left at their defaults (as a launch would)
        if fn.params[i].is_constexpr and n not in consts:
            consts[n] = fn.params[i].default
    return descs, ptrs, consts


def _loop_spill_ops(cubin: bytes) -> int:
    """LDL / STL instructions inside the kernel's loops (spill traffic that costs every iteration)."""
    import re
    return sum(int(n or 1) for ln in _sass_sequences(cubin).splitlines()
               for n in re.findall(r"\b(?:LDL|STL)(?:x(\d+))?\b", ln))


def compile_only(sass: bool) -> int:
    """Build every variant for sm_90a (bf16; causal 0 with the non-long-first grid, causal 1 with both
    grid orders; the (B, H, S, D) output layout and fp16 once) and print shared memory, registers,
    spills (and LDL / STL inside the loops), and any "wgmma serialized" warning of ptxas. Flags a build
    whose smem exceeds an H100's, whose wgmmas ptxas serialised, or that spills inside a loop (or
    more than 16 bytes anywhere). Returns the number flagged."""
    import re
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import compile_check as cc
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    bf16 = torch.bfloat16
    builds = []
    for name, kw in VARIANTS:
        builds += [(bf16, False, True, False, name, kw), (bf16, True, True, True, name, kw),
                   (bf16, True, True, False, name + " (grid not long-first)", kw)]
    builds += [(bf16, True, False, True, VARIANTS[0][0] + " (out (B, H, S, D))", VARIANTS[0][1]),
               (torch.float16, False, True, False, VARIANTS[0][0] + " fp16", VARIANTS[0][1])]
    bad = 0
    for dtype, causal, out_bshd, long_first, name, kw in builds:
        tag = f"{name} causal={int(causal)}"
        try:
            descs, ptrs, consts = _build_args(dtype, causal, out_bshd, long_first, kw)
            smem, rep = cc._compile_gluon(attn_bwd256_kernel, descs, ptrs, consts, MAXNREG, False)
            # the same build again (Triton's cache: no recompile) for its cubin
            fn = attn_bwd256_kernel
            names = fn.arg_names
            sig = {n: "constexpr" if fn.params[i].is_constexpr else mangle_type(descs[n]) if n in descs else
                   ptrs.get(n, "fp32" if n == "sm_scale" else "i32") for i, n in enumerate(names)}
            attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
                     if sig[n] != "constexpr" and n not in ("sm_scale", "H", "GROUP") and n not in descs}
            src = GluonASTSource(fn, sig, {(names.index(k),): v for k, v in consts.items()}, attrs)
            out = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "maxnreg": MAXNREG})
            spill = re.search(r"spill\s+(\d+)B", rep)
            spill_b = int(spill.group(1)) if spill else -1
            in_loop = _loop_spill_ops(out.asm["cubin"])
            # the highest register each HGMMA loop touches (the consumers', under setmaxnreg 240;
            # ptxas's "Used N registers" is the launch cap, maxnreg 168)
            loop_regs = [int(x) + 1 for x in re.findall(r"max reg R(\d+)", "\n".join(
                ln for ln in _sass_sequences(out.asm["cubin"]).splitlines() if "HGMMA" in ln))]
            flag = ""
            if smem > cc.H100_SMEM:
                flag += "  SMEM TOO LARGE"
            if "ptxas:" in rep:
                flag += "  WGMMA SERIALIZED"
            if spill_b < 0 or spill_b > 16 or in_loop:
                flag += "  SPILLS"
            bad += bool(flag)
            print(f"{tag:50s} smem {smem:>6} of {cc.H100_SMEM}  {rep}, consumer loops use {loop_regs} of 240 "
                  f"registers, LDL/STL in loops: {in_loop}{flag}", flush=True)
            if sass:
                budgets = sorted({int(x) for x in re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32\s+(\d+)",
                                                             out.asm["ptx"])})
                print(f"      setmaxnreg values in the PTX: {budgets}")
                print("\n".join("      " + ln for ln in cc.sass_loops(out.asm["cubin"]).splitlines()))
                print("\n".join("      " + ln for ln in _sass_sequences(out.asm["cubin"]).splitlines()), flush=True)
        except Exception as e:  # noqa: BLE001 - report and go on
            bad += 1
            print(f"{tag:50s} FAILED: {type(e).__name__}: {str(e)[-3000:]}", flush=True)
            traceback.print_exc(limit=-3)
    print("compile-only:", "OK (no spill in any loop, none over 16 B; no serialized wgmma; smem fits)" if not bad
          else f"{bad} build(s) flagged")
    return bad


# ---------------------------------------------------------------------------------------------
# GPU: correctness (one subprocess per variant, in parallel), then timing
# ---------------------------------------------------------------------------------------------

class _Watchdog:
    """Ends the process (exit 3) when no step reported progress for ``limit`` seconds: a deadlocked
    kernel never returns, and the device call would otherwise run to its time limit."""

    def __init__(self, limit: float, log):
        self.limit = limit
        self.log = log
        self.last = time.time()
        self.what = "start"
        threading.Thread(target=self._run, daemon=True).start()

    def step(self, what: str):
        self.last = time.time()
        self.what = what

    def _run(self):
        while True:
            time.sleep(5)
            if time.time() - self.last > self.limit:
                self.log(f"WATCHDOG: no progress for {self.limit:.0f} s at: {self.what} (a hang?); exiting")
                os._exit(3)


def _bhsd(x):
    return x.transpose(1, 2)


def _inputs(B, S, H, Hkv, bshd, seed=0):
    """q, k, v, do (B, S, heads, D) bf16: contiguous (bshd) or transposed views of (B, heads, S, D)."""
    torch.manual_seed(seed)
    if bshd:
        mk = (lambda h: torch.randn(B, S, h, HEAD_DIM, device="cuda", dtype=torch.bfloat16))
    else:
        mk = (lambda h: torch.randn(B, h, S, HEAD_DIM, device="cuda", dtype=torch.bfloat16).transpose(1, 2))
    return mk(H), mk(Hkv), mk(Hkv), mk(H)


def _triton_bwd_fn(q, k, v, do, causal):
    """A closure running the library's Triton backward through autograd on a retained graph
    (deterministic=True keeps any Gluon backward away; at D = 256 there is none anyway)."""
    from flashkernels import flash_attn_func
    qr, kr, vr = (x.detach().requires_grad_() for x in (q, k, v))
    o = flash_attn_func(qr, kr, vr, causal=causal, deterministic=True)

    def fn():
        return torch.autograd.grad(o, (qr, kr, vr), do, retain_graph=True)
    return fn


def _gluon_fn(q, k, v, do, causal, bshd, opts, long_first=None):
    """A closure running gluon_attn_bwd256 on the library forward's out and lse; (B, S, heads, D) grads."""
    from flashkernels import flash_attn_func
    out, lse, _ = flash_attn_func(q, k, v, causal=causal, return_attn_probs=True)
    scale = 1.0 / math.sqrt(HEAD_DIM)

    def fn():
        dq, dk, dv = gluon_attn_bwd256(_bhsd(do), _bhsd(q), _bhsd(k), _bhsd(v), _bhsd(out), lse, causal, scale,
                                       bshd=bshd, long_first=long_first, **opts)
        return _bhsd(dq), _bhsd(dk), _bhsd(dv)
    return fn


def _compare(got, ref):
    """(passed, message): max |diff| <= 2e-2 * max(1, max |ref|) and no NaN, for dq, dk, dv."""
    msgs, good = [], True
    for g, r, nm in zip(got, ref, ("dq", "dk", "dv")):
        g, r = g.float(), r.float()
        diff = (g - r).abs().max().item()
        tol = 2e-2 * max(1.0, r.abs().max().item())
        nan = bool(torch.isnan(g).any())
        good &= diff <= tol and not nan
        msgs.append(f"{nm} {diff:.1e}/{tol:.1e}{' NaN' if nan else ''}")
    return good, "max|diff|/tol: " + "  ".join(msgs)


# (B, S, H, Hkv, causal, (B, S, H, D) storage (else (B, H, S, D)), long_first (None: the launcher's rule))
CHECK_CASES = [(1, 128, 2, 2, False, True, None), (2, 384, 4, 4, True, True, None), (1, 1024, 8, 8, False, True, None),
               (1, 1024, 8, 8, True, True, False), (2, 384, 8, 2, True, True, None), (1, 1024, 4, 1, False, True, None),
               (2, 384, 8, 4, True, False, None), (1, 1024, 8, 2, True, True, None)]


def check(log, wd, variants) -> dict:
    """Each variant against the Triton backward on CHECK_CASES; {variant name: passed}."""
    ok = {name: True for name, _ in variants}
    for B, S, H, Hkv, causal, bshd, lf in CHECK_CASES:
        q, k, v, do = _inputs(B, S, H, Hkv, bshd)
        shape = (f"B={B} S={S} H={H}/{Hkv} causal={int(causal)} {'bshd' if bshd else 'bhsd'}"
                 + ("" if lf is None else f" long_first={int(lf)}"))
        wd.step(f"check {shape}: triton bwd")
        ref = _triton_bwd_fn(q, k, v, do, causal)()
        torch.cuda.synchronize()
        for name, opts in variants:
            wd.step(f"check {shape}: {name}")
            try:
                good, msg = _compare(_gluon_fn(q, k, v, do, causal, bshd, opts, lf)(), ref)
                ok[name] &= good
                log(f"  {shape:44s} {name:18s} {'PASS' if good else 'FAIL'}  {msg}")
            except Exception as e:  # noqa: BLE001
                ok[name] = False
                log(f"  {shape:44s} {name:18s} FAILED {type(e).__name__}: "
                    f"{str(e).splitlines()[0][:300] if str(e) else ''}")
        q = k = v = do = ref = None
        torch.cuda.empty_cache()
    return ok


def check_in_subprocesses(log, variants, timeout_s: float, while_waiting=None) -> dict:
    """check() of each variant in its own process, all at once: the variants' (and the reference's)
    Triton compiles run in parallel and land in Triton's cache for the timing that follows, and a
    variant whose kernel deadlocks (its watchdog, or the timeout, ends it) costs only itself."""
    import subprocess
    env = dict(os.environ)
    env.pop("OUT", None)
    procs = {name: subprocess.Popen([sys.executable, os.path.abspath(__file__), "--check-variant", name],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for name, _ in variants}
    deadline = time.time() + timeout_s
    if while_waiting is not None:
        try:
            while_waiting()
        except Exception as e:  # noqa: BLE001 - only a warm-up
            log(f"  (warm-up failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})")
    ok = {}
    for name, p in procs.items():
        try:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            out += f"\n  {name}: TIMEOUT after {timeout_s:.0f} s (killed)"
        lines = out.splitlines()
        keep = [ln for ln in lines if ln.startswith("  B=") or "WATCHDOG" in ln or "TIMEOUT" in ln]
        if p.returncode != 0 and not any(ln.startswith("  B=") for ln in keep):  # no result: its last lines
            keep += lines[-15:]
        for ln in keep:
            log(ln)
        ok[name] = p.returncode == 0
        log(f"  => {name}: {'PASSED' if ok[name] else f'FAILED (exit {p.returncode})'}")
    return ok


def warm_timing_compiles():
    """Compile, on small inputs, the library kernels that the timing will launch (its forward and
    Triton backward at the timing shapes' head counts and specialisations), while the check
    processes run. The dK/dV kernel's group split is pinned to 1, as the timing shapes get it."""
    from flashkernels.ops.attention import launch
    saved = launch.DKDV_GROUP_SPLIT
    launch.DKDV_GROUP_SPLIT = 1
    try:
        for H, Hkv, causal in ((8, 8, False), (8, 8, True), (16, 4, True)):
            q, k, v, do = _inputs(1, 256, H, Hkv, True)
            _triton_bwd_fn(q, k, v, do, causal)()
        torch.cuda.synchronize()
    finally:
        launch.DKDV_GROUP_SPLIT = saved


def bench(log, step, variants, quick):
    """Times each shape; step(msg): progress (the watchdog's), log(msg): results."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from flashkernels.bench.common import do_bench_median, warm_gpu
    warm_gpu()
    shapes = [(16, 1024, 8, 8, False), (16, 1024, 8, 8, True), (4, 4096, 8, 8, False), (4, 4096, 8, 8, True),
              (1, 16384, 8, 8, False), (1, 16384, 8, 8, True), (2, 8192, 16, 4, True)]
    if quick:
        shapes = [shapes[2], shapes[3], shapes[6]]
    rows = []
    log(f"{'shape':32s} {'kernel':20s} {'ms':>8s} {'TF/s':>6s} {'x cuDNN':>8s} {'x triton':>8s}  vs triton")
    for B, S, H, Hkv, causal in shapes:
        flops = 2.5 * 4 * B * H * S * S * HEAD_DIM / (2 if causal else 1)
        shape = f"B={B} S={S} H={H}/{Hkv} causal={int(causal)}"
        q, k, v, do = _inputs(B, S, H, Hkv, True)
        results, notes = [], {}
        # SDPA cuDNN: backward only, through a retained graph. GQA: enable_gqa if cuDNN takes it,
        # else k / v expanded to H heads (cuDNN's dK / dV then per query head, unsummed).
        for expand in ((False, True) if H != Hkv else (False,)):
            step(f"  > {shape} sdpa cudnn")
            try:
                kk, vv = (x.repeat_interleave(H // Hkv, 2) if expand else x for x in (k, v))
                qt, kt, vt = (x.transpose(1, 2).detach().requires_grad_() for x in (q, kk, vv))
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    ot = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal,
                                                        enable_gqa=H != Hkv and not expand)
                dot = do.transpose(1, 2)
                fn = (lambda ot=ot, qt=qt, kt=kt, vt=vt: torch.autograd.grad(ot, (qt, kt, vt), dot,
                                                                            retain_graph=True))
                fn()
                torch.cuda.synchronize()
                results.append(("sdpa cudnn", do_bench_median(fn)))
                if expand:
                    notes["sdpa cudnn"] = "k/v expanded to H heads (enable_gqa failed)"
                break
            except Exception as e:  # noqa: BLE001
                log(f"{shape:32s} sdpa cudnn{' (k/v expanded)' if expand else ''} FAILED {type(e).__name__}: "
                    f"{str(e).splitlines()[0][:200] if str(e) else ''}")
        ot = qt = kt = vt = fn = None  # free cuDNN's graph before the others run
        torch.cuda.empty_cache()
        ref = None
        cands = [("triton bwd", lambda: _triton_bwd_fn(q, k, v, do, causal))]
        cands += [(name, lambda opts=opts: _gluon_fn(q, k, v, do, causal, True, opts)) for name, opts in variants]
        for name, make in cands:
            step(f"  > {shape} {name}")
            try:
                fn = make()
                got = fn()
                torch.cuda.synchronize()
                if ref is None and name == "triton bwd":
                    ref = got
                elif ref is not None:  # this shape's results against the Triton backward's
                    good, msg = _compare(got, ref)
                    notes[name] = ("ok" if good else "MISMATCH ") + ("" if good else msg)
                got = None
                results.append((name, do_bench_median(fn)))
            except Exception as e:  # noqa: BLE001
                log(f"{shape:32s} {name} FAILED {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
            fn = None
            torch.cuda.empty_cache()
        got = dict(results)
        base, tri = got.get("sdpa cudnn"), got.get("triton bwd")
        for name, ms in results:
            tf = flops / ms / 1e9
            r1 = f"{base / ms:8.2f}" if base else f"{'-':>8s}"
            r2 = f"{tri / ms:8.2f}" if tri else f"{'-':>8s}"
            log(f"{shape:32s} {name:20s} {ms:8.3f} {tf:6.0f} {r1} {r2}  {notes.get(name, '')}")
            rows.append((shape, name, ms, tf, notes.get(name, "")))
        q = k = v = do = ref = cands = None
        torch.cuda.empty_cache()
    return rows


def summarize(log, rows):
    """One line per shape: each kernel's TF/s (x cuDNN, x the Triton backward); '!' marks a variant
    whose gradients at that shape did not match the Triton backward's."""
    log("summary: TF/s (x cuDNN, x triton bwd)")
    names = list(dict.fromkeys(r[1] for r in rows))
    for shape in dict.fromkeys(r[0] for r in rows):
        got = {r[1]: r for r in rows if r[0] == shape}
        base = got.get("sdpa cudnn", (0, 0, None))[2]
        tri = got.get("triton bwd", (0, 0, None))[2]
        log(f"  {shape:32s} " + "  ".join(
            f"{name}: {got[name][3]:.0f}" + (f" ({base / got[name][2]:.2f}x" if base else " (-") +
            (f", {tri / got[name][2]:.2f}x)" if tri else ")") + ("!" if "MISMATCH" in got[name][4] else "")
            for name in names if name in got))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compile-only", action="store_true")
    ap.add_argument("--sass", action="store_true", help="with --compile-only: per-loop SASS summaries")
    ap.add_argument("--quick", action="store_true", help="fewer timing shapes")
    ap.add_argument("--variants", default=",".join(n for n, _ in VARIANTS),
                    help="comma-separated names of VARIANTS to check and time")
    ap.add_argument("--check-variant", help=argparse.SUPPRESS)  # internal: one variant's check (a subprocess)
    args = ap.parse_args()
    if args.compile_only:
        sys.exit(1 if compile_only(args.sass) else 0)
    if args.check_variant:
        wd = _Watchdog(WATCHDOG_S, lambda m: print(m, flush=True))
        ok = check(lambda m: print(m, flush=True), wd, [(n, o) for n, o in VARIANTS if n == args.check_variant])
        sys.exit(0 if ok and all(ok.values()) else 1)

    t0 = time.time()
    out_path = os.path.join(os.environ["OUT"], "exp_gluon_bwd256.txt") if os.environ.get("OUT") else None
    if out_path:
        open(out_path, "w").close()

    def log(msg):  # printed, and appended to $OUT/exp_gluon_bwd256.txt as it comes (a timeout keeps it)
        print(msg, flush=True)
        if out_path:
            with open(out_path, "a") as f:
                f.write(msg + "\n")

    chosen = [(n, o) for n, o in VARIANTS if n in args.variants.split(",")]
    log(f"device: {torch.cuda.get_device_name()}  triton {triton.__version__}  torch {torch.__version__}")
    log("correctness vs the library's Triton backward (bf16, D=256; PASS: max|diff| <= 2e-2*max(1, max|ref|), "
        "no NaN), one process per variant:")
    for name, opts in chosen:
        log(f"  variant {name}: {opts}")
    ok = check_in_subprocesses(log, chosen, CHECK_TIMEOUT_S, warm_timing_compiles)
    passed = [(n, o) for n, o in chosen if ok[n]]
    log(f"(checks done at {time.time() - t0:.0f} s; timed: {', '.join(n for n, _ in passed) or 'none'})")
    wd = _Watchdog(WATCHDOG_S, log)
    log("timing (bf16, D=256, backward only; FLOPs = 2.5 x forward; do_bench median; last column: the shape's "
        "dq/dk/dv vs the Triton backward's):")
    def step(msg):  # progress: stdout only, and the watchdog
        wd.step(msg)
        print(msg, flush=True)
    rows = bench(log, step, passed, args.quick)
    summarize(log, rows)
    log(f"(total {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
