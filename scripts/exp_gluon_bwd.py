"""Experiment: a warp-specialized flash-attention backward in Gluon for Hopper (FA3's structure).

    PYTHONPATH=src python scripts/exp_gluon_bwd.py --compile-only   # any machine: sm_90a build, ptxas report
    PYTHONPATH=src python scripts/exp_gluon_bwd.py [--quick]        # H100: correctness, then timing vs cuDNN

Why: the library's Triton backward (kernels/bwd.py: a dK/dV kernel and a dQ kernel) reaches only
0.58-0.64x cuDNN on the H100 at D = 128; the forward went from 0.75x to ~1.0x cuDNN with warp
specialization in Gluon (kernels/fwd_hopper.py). This is the same treatment for the backward.

The library's kernel, kernels/bwd_hopper.py, is this one trimmed to the variant kept (DQ_MODE 1,
SCHED_FENCE 0, DQ_EARLY 1) plus what the library needs (any TMA layout, GQA looped inside the
CTA, the caller's output layout, long-first CTA order); this file keeps every variant tried, for
A/B runs. Results: benchmarks/results/h200-2026-11-26-exp-gluon-bwd*.txt, docs/perf-notes.md.

Structure of one CTA (grid (S / BLOCK_N, B·H); BLOCK_N = 128 keys of one (batch, query head h);
kv head h // GROUP; ``gl.warp_specialize``):
  - a 1-warp producer partition issues every TMA load: the CTA's K and V (two 64-row halves
    each, loaded once), then per query block i (BLOCK_M = 64 rows) Q_i with lse_i and dO_i with
    Delta_i into a ring of STAGES stages (one ready mbarrier per pair, one empty mbarrier per
    stage); lse and Delta go through 1-D TMA copies of 64 floats;
  - two consumer warpgroups (the default partition and a 4-warp worker); warpgroup w owns keys
    n0 + 64w .. n0 + 64w + 64 (K_w, V_w) and keeps dK_w, dV_w (64 x D fp32 each) in registers
    for the whole loop. Both read every ring stage.

Per query block i, in warpgroup w (transposed formulation: keys are the rows, so P^T and dS^T
come out of the wgmma accumulator already in the layout of the A operand of the dV / dK wgmmas):

    S^T  = K_w Q_i^T                      wgmma, A = K_w (smem), B = Q_i^T (smem, permuted)
    dP^T = V_w dO_i^T                     wgmma, issued right after S^T (both in flight)
    P^T  = exp2(S^T * scale*log2e - lse_i*log2e)   overlaps the dP^T wgmma (SCHED_FENCE);
                                                   causal: 0 above the diagonal, on the blocks it cuts
    dV_w += P^T dO_i                      wgmma, A = P^T (registers), B = dO_i (smem)
    dS^T = scale * P^T (dP^T - Delta_i)   (the scale folded in here: dK and dQ need it, nothing after)
    dK_w += dS^T Q_i                      wgmma, A = dS^T (registers), B = Q_i (smem)
    dS^T -> shared memory, then dQ wgmmas with A = dS (the smem tile, permuted), B = K (smem):
      DQ_MODE 1 (default, FA3's way): both warpgroups write their dS^T into one 128-key x 64 tile
        (double-buffered by iteration), meet at a 256-thread named barrier, and warpgroup w
        computes columns 64w .. 64w + 63 of dQ_i over all 128 keys: one 64 x 64 x 128 wgmma and
        64 x 64 fp32 atomics per warpgroup.
      DQ_MODE 0: each warpgroup its own 64 x 64 dS tile, dQ_i = dS_w K_w over its 64 keys, in two
        D-halves (64 x 64 x 64 wgmmas, each followed by its atomics): twice the atomics of mode 1,
        but no coupling between the warpgroups.
    wait dV, dK -> release the ring stage; wait dQ -> atomically add it into the zeroed fp32
    dQaccum (B, S, H, D) (the CTAs of all key blocks of one (b, h) add to the same rows).
      DQ_WRITER 1 (DQ_MODE 1 only; FA3's dQ writer): instead of the atomics, each consumer
        warpgroup stores its 64 x 64 fp32 dQ_i half into a 64 x 128 fp32 staging tile in shared
        memory (DQ_BUFS of them, 32 KB each; 16 STS.64 per thread instead of 16 REDG.F32x2 with
        their address registers) and arrives on dq_full; a separate WRITER_WARPS-warp partition
        (_bwd_dq_writer, in the producer's warpgroup at 24 registers) waits for it, reads it with
        LDS.128 and issues the atomics as REDG.E.ADD.F32x4 over whole 128-byte lines (per
        iteration 64 warp instructions of 4 lines each: 256 L2 requests, vs the consumers' 128
        REDG.F32x2 warp instructions of 8 rows x 32 bytes: 1024), then arrives on dq_empty.
        The consumers' loop loses the atomics' issue and memory-pipe back-pressure (and, causal,
        its spills: the 32 dQ address registers are gone).
      DQ_EARLY 1 (DQ_MODE 1): the pair barrier and the dQ_i wgmma come before the dK_i wgmma
        (issue order dV, dQ, dK); wait(1) retires dV_i and dQ_i, so the dQ atomics (or the
        staging for the writer) overlap the dK_i wgmma instead of trailing every wgmma of the
        iteration; wait(0) then retires dK_i and releases the stage.

At the end dK_w, dV_w are written with gl.store (once per CTA: not worth a TMA staging buffer).
Causal: CTA n0 only visits query blocks i >= n0 / 64 (rows >= its first key). In DQ_MODE 0
warpgroup 1 skips the compute of block n0 / 64 (entirely above its keys) but still waits on its
barriers and releases it, which keeps its barrier phases in step; in DQ_MODE 1 it computes it
(masked to zero): both warpgroups must meet at the pair barrier in every iteration.

Around the kernel (``gluon_attn_bwd``, all of it timed): Delta = rowsum(dO * O) with the
library's preprocess kernel, dQaccum zeroed, the kernel, dQ = dQaccum.to(dtype). GQA (H > Hkv):
the kernel writes dK / dV per QUERY head into fp32 (B, S, H, D) buffers and torch sums each group
afterwards (simple; costs an extra pass and H/Hkv times the dK/dV memory: fine for an experiment,
a real kernel would loop over the group's heads inside the CTA). Without GQA dK / dV are written
in the input dtype directly.

Choices and why:
  - dQ by fp32 atomics (gl.atomic_add, sem="relaxed"): Gluon 3.6 has no TMA reduce-add store
    (FA3 uses cp.reduce.async.bulk of a shared-memory tile). The PTX is
    atom.global.gpu.relaxed.add.v2.f32 (result unused), which ptxas turns into
    REDG.E.ADD.F32x2.FTZ.RN.STRONG.GPU: vectorised by 2 (the wgmma accumulator layout holds 2
    adjacent columns per thread), no return value.
  - The dQ accumulator is 64 x 64 (32 registers) in both modes: with dK_w, dV_w (128 registers)
    and the P^T / dS^T operands live, a 64 x 128 one (64 registers) made ptxas serialise every
    wgmma ("insufficient register resources").
  - lse_i / Delta_i come from shared memory (TMA) right where they are used: in the transposed
    layout each thread holds 16 of the 64 columns, 32 registers for the pair if kept live; with
    gl.load from global issued early to hide the latency, the loop spilled (184 B).
  - SCHED_FENCE = 1 (default): the fwd_hopper scheduling fence (see _sched_fence), here over the
    P^T tile; without it ptxas put the dP^T wait after the first ~8 of 32 exp2.
  - Register budgets as in the forward: 240 per consumer thread, 24 for the producer, launch
    maxnreg = 168 (3 warpgroups x 128 x 168 = the register file: 1 CTA / SM). setmaxnreg can
    only redistribute the launch allocation (168 x 384 = 64512): 2 x 240 x 128 + 24 x 128 =
    64512 exactly, so the dQ writer shares the producer's 24 (its loop spills 5 words: LDL, off
    the critical path); more for it means fewer for the consumers (232 -> 40).
  - Shared memory: K, V 2 x 32 KB, ring STAGES x (Q 16 KB + dO 16 KB + 512 B), dS^T 2 x 16 KB:
    161 KB at STAGES = 2, 194 KB at 3; DQ_WRITER adds DQ_BUFS x 32 KB (193 / 225 KB at STAGES 2;
    the limit is 227 KB).

Restrictions: q, k, v, o, do (B, S, H, D) contiguous storage (k, v with Hkv heads, H a multiple
of Hkv), bf16 or fp16, D = 128, S a multiple of 128 (the TMA descriptors are 2-D views
(B·S, heads·D): a block must not cross a batch boundary), Sq = Sk, scale > 0 (the fence tests
it); int32 offsets (B·S·H·D < 2^31). lse (B, H, S) float32 natural log, as the library's forward
returns it; no fully masked rows (none with causal, Sq = Sk).

Tried, not kept: intra-warpgroup pipelining across query blocks (with DQ_WRITER):
  - dQ_{j-1} kept in flight across the loop's back edge (loop-carried wgmma accumulator, retired
    after the S^T_j / dP^T_j issue): ptxas serialises every wgmma ("non wgmma instructions
    reading accumulator registers of a wgmma between start and end of the pipeline stage"),
    956 B spills;
  - the loop rotated so every group retires in the body that issued it (pair barrier, dQ_{j-1},
    S^T_j, dP^T_j, wait(2) -> stage dQ_{j-1}, rest of block j): dQ (32 registers), S^T and
    dP^T (64) in flight with dK, dV (128) do not fit 240: "insufficient register resources",
    all wgmmas serialised, 528 B spills; with only S^T_j issued before dQ_{j-1} is retired and
    staged (then dP^T_j), ptxas (triton 3.6's) crashed with SIGSEGV. It needs fewer live
    registers (e.g. dK or dV accumulated in two halves, or a 3-consumer layout).
Not done: a bulk (TMA) reduce-add of the staged dQ (Gluon 3.6 exposes neither
cp.reduce.async.bulk nor a shared-memory address for inline asm); persistent scheduling; causal
long-first order; GQA heads looped in the CTA.
"""
import argparse
import math
import os
import sys
import traceback

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

MAXNREG = 168  # 3 warpgroups x 128 threads x 168 = the 64K-register file: 1 CTA / SM


# ---------------------------------------------------------------------------------------------
# Barriers (all in shared memory, initialised before gl.warp_specialize):
#   k_bar, v_bar   count 1: the producer's expect-tx arrive + both halves' bytes; complete once
#                  (phase 0).
#   q_ready[s], do_ready[s]  count 1 (the producer's expect-tx arrive) + the TMA bytes.
#   empty[s]       count 2: one arrive per consumer warpgroup, once its last wgmmas reading
#                  Q_i and dO_i of that stage (dK += dS^T Q_i, dV += P^T dO_i) retired (lse_i,
#                  Delta_i: read with ld.shared before that).
#   (DQ_MODE 1 also syncs the two consumer warpgroups with named barrier 15: _pair_barrier.)
#   DQ_WRITER 1: dq_full[b] count 2 (one arrive per consumer warpgroup, after all 128 threads
#                  stored their dQ half: gl.thread_barrier, then the one-thread arrive);
#                dq_empty[b] count 1 (the writer's arrive after its last ld.shared of the tile).
#                Block j uses buffer b = j % DQ_BUFS on its use r = j // DQ_BUFS: the writer
#                waits dq_full[b] parity r & 1; a consumer waits dq_empty[b] parity (r & 1) ^ 1
#                (phase r - 1: the writer is done with block j - DQ_BUFS; r = 0 passes on the
#                fresh barrier). No phase can be lapped: dq_empty phase r needs dq_full phase r,
#                which needs both consumers, which the pair barrier keeps within one iteration
#                of each other.
#
# As in fwd_hopper: mbarrier.arrive is ONE thread per partition in triton 3.6 (the thread id is
# rebased per partition), hence count 2; that thread arrives after its own
# warpgroup_mma_wait, which covers the whole warpgroup's wgmma.
#
# Phases. Query block j (counted from the CTA's first block) lives in stage s = j % STAGES, on
# its use r = j // STAGES of that stage.
#   ready[s]: phase r completes when block j's bytes landed -> consumers wait parity r & 1.
#   empty[s]: phase r completes when both warpgroups released block j -> before loading block j
#     the producer needs phase r - 1: parity (r & 1) ^ 1 (r = 0: parity 1 on a fresh barrier,
#     which passes at once).
#   A consumer must wait every phase of ready[s] in order, even for a block it does not compute
#   (causal, warpgroup 1's first block): a wait for parity p returns at once while the barrier
#   sits in a phase of the other parity, so skipping one would desynchronise it.
# ---------------------------------------------------------------------------------------------


@gluon.jit
def _bwd_tile(S, H, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr):
    """(pid_bh, b, h, n0, first query block, number of query blocks) of this CTA."""
    pid_n = gl.program_id(0)
    pid_bh = gl.program_id(1)
    n0 = pid_n * BLOCK_N
    if CAUSAL:
        i0 = n0 // BLOCK_M  # query rows before n0 see none of the CTA's keys
    else:
        i0 = 0
    return pid_bh, pid_bh // H, pid_bh % H, n0, i0, S // BLOCK_M - i0


@gluon.jit
def _bwd_producer(desc_q, desc_k, desc_v, desc_do, desc_lse, desc_delta, k_smem, v_smem, q_smem, do_smem,
                  lse_smem, delta_smem, k_bar, v_bar, q_ready, do_ready, empty, S, H, GROUP,
                  HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                  CAUSAL: gl.constexpr):
    pid_bh, b, h, n0, i0, n_blocks = _bwd_tile(S, H, BLOCK_M, BLOCK_N, CAUSAL)
    row0 = b * S
    col_q = h * HEAD_DIM
    col_kv = (h // GROUP) * HEAD_DIM
    # K and V once (K_w, V_w: the rows of consumer warpgroup w), then the Q / dO ring.
    mbarrier.expect(k_bar, 2 * desc_k.block_type.nbytes)
    for w in gl.static_range(2):
        tma.async_copy_global_to_shared(desc_k, [row0 + n0 + w * 64, col_kv], k_bar, k_smem.slice(w * 64, 64))
    mbarrier.expect(v_bar, 2 * desc_v.block_type.nbytes)
    for w in gl.static_range(2):
        tma.async_copy_global_to_shared(desc_v, [row0 + n0 + w * 64, col_kv], v_bar, v_smem.index(w))
    for j in range(n_blocks):
        s = j % STAGES
        mbarrier.wait(empty.index(s), ((j // STAGES) & 1) ^ 1)
        row_q = row0 + (i0 + j) * BLOCK_M
        row_l = pid_bh * S + (i0 + j) * BLOCK_M  # lse / Delta (B, H, S) as one 1-D tensor
        # Q_i with lse_i (needed together: P^T), dO_i with Delta_i (dP^T, dS^T)
        mbarrier.expect(q_ready.index(s), desc_q.block_type.nbytes + desc_lse.block_type.nbytes)
        tma.async_copy_global_to_shared(desc_q, [row_q, col_q], q_ready.index(s), q_smem.index(s))
        tma.async_copy_global_to_shared(desc_lse, [row_l], q_ready.index(s), lse_smem.index(s))
        mbarrier.expect(do_ready.index(s), desc_do.block_type.nbytes + desc_delta.block_type.nbytes)
        tma.async_copy_global_to_shared(desc_do, [row_q, col_q], do_ready.index(s), do_smem.index(s))
        tma.async_copy_global_to_shared(desc_delta, [row_l], do_ready.index(s), delta_smem.index(s))


# Scheduling fence over a whole 64 x 64 fp32 tile (32 values per thread, one asm statement per
# thread: pack = 32). Why: ptxas schedules wgmma.wait_group like an instruction without operands
# inside a basic block and hoists it, so the wait for dP^T lands after the first few exp2 of P^T
# and the rest of the exponentials no longer overlap the dP^T wgmma (fwd_hopper's fence, the same
# trick; there it guards a 2-value row vector). The statement is a loop that never runs; its body
# writes every value (outputs tied to the inputs: no moves), so each must be computed before it,
# and it ends the basic block. Its condition tests the softmax scale (> 0, a kernel argument:
# ptxas cannot know it), not a P^T value: ptxas knows that ex2 is never negative and deleted a
# loop guarded by "P^T < 0" (and with a body touching only $0 it sank the other exp2 past it).
# With scale <= 0 the loop would never end: gluon_attn_bwd asserts scale > 0.
_FENCE_PACK = 32
_FENCE_ASM = gl.constexpr(
    f"{{ .reg .pred p; fence_loop: setp.le.f32 p, ${2 * _FENCE_PACK}, 0f00000000; @!p bra fence_done; " +
    " ".join(f"add.f32 ${i}, ${i}, 0f3F800000;" for i in range(_FENCE_PACK)) + " bra fence_loop; fence_done: }")
_FENCE_CONSTRAINTS = gl.constexpr(",".join(["=r"] * _FENCE_PACK + [str(i) for i in range(_FENCE_PACK)] +
                                           ["r"] * _FENCE_PACK))


@gluon.jit
def _sched_fence(x, scale):
    """x unchanged, behind a basic-block boundary (see above); scale > 0 (a runtime scalar)."""
    return gl.inline_asm_elementwise(_FENCE_ASM, _FENCE_CONSTRAINTS, [x, gl.zeros_like(x) + scale],
                                     dtype=gl.float32, is_pure=False, pack=32)


@gluon.jit
def _pair_barrier(x):
    """Named barrier 15 over both consumer warpgroups (256 threads); returns x. Gluon 3.6 has no
    named-barrier API; gl.thread_barrier() inside a partition syncs that partition only. Id 15:
    Triton's warp-specialize lowering uses the low ids (0..2 here, see the SASS)."""
    return gl.inline_asm_elementwise("bar.sync 15, 256; mov.b32 $0, $1;", "=r,r", [x], dtype=gl.int32,
                                     is_pure=False, pack=1)


@gluon.jit
def _dq_stage(dq, jb, W: gl.constexpr, dq_smem, dq_full, dq_empty, DQ_N: gl.constexpr, DQ_BUFS: gl.constexpr):
    """DQ_WRITER 1: columns 64W .. 64W + 63 of dQ of query block jb (counted from the CTA's first)
    -> the fp32 staging tile, for the dQ writer partition's atomics (see _bwd_dq_writer for the
    phases). Buffer bq = jb % DQ_BUFS on its use r = jb // DQ_BUFS: phase r - 1 of dq_empty[bq]
    (the writer has read dQ of block jb - DQ_BUFS) must have completed: parity (r & 1) ^ 1 (r = 0:
    a fresh barrier, passes at once)."""
    bq = jb % DQ_BUFS
    mbarrier.wait(dq_empty.index(bq), ((jb // DQ_BUFS) & 1) ^ 1)
    dq_smem.index(bq).slice(W * DQ_N, DQ_N, dim=1).store(dq)
    # every thread's st.shared before the one-thread arrive (release, CTA scope) that completes
    # phase r of dq_full[bq] together with the other warpgroup's
    gl.thread_barrier()
    mbarrier.arrive(dq_full.index(bq))


@gluon.jit
def _bwd_consumer(W: gl.constexpr, DQ, DK, DV, sm_scale, k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem,
                  ds_smem, dq_smem, k_bar, v_bar, q_ready, do_ready, empty, dq_full, dq_empty, S, H,
                  HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                  CAUSAL: gl.constexpr, DQ_MODE: gl.constexpr, SCHED_FENCE: gl.constexpr, DQ_WRITER: gl.constexpr,
                  DQ_BUFS: gl.constexpr, DQ_EARLY: gl.constexpr):
    """Consumer warpgroup W: keys n0 + 64W .. n0 + 64W + 64 of the CTA's tile."""
    dtype: gl.constexpr = k_smem.dtype
    pid_bh, b, h, n0, i0, n_blocks = _bwd_tile(S, H, BLOCK_M, BLOCK_N, CAUSAL)
    n0w = n0 + W * 64
    DQ_N: gl.constexpr = 64  # columns of one dQ wgmma (both modes)
    # wgmma accumulators (instruction m = 16, k = 16 for 16-bit inputs, n = the tile's width).
    # st_layout: S^T / dP^T, 64 keys x BLOCK_M queries; kv_layout: dK_w / dV_w, 64 keys x D;
    # dq_layout: a dQ_i part, BLOCK_M queries x 64 columns of D.
    st_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                        instr_shape=[16, BLOCK_M, 16])
    kv_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                        instr_shape=[16, HEAD_DIM, 16])
    dq_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                        instr_shape=[16, DQ_N, 16])
    # P^T and dS^T as the A operand (registers) of the dV / dK wgmmas: an m64 accumulator's
    # register fragment is the A fragment of the next wgmma (the convert is register-only).
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=kv_layout, k_width=2)
    col_st: gl.constexpr = gl.SliceLayout(0, st_layout)  # along the queries
    row_st: gl.constexpr = gl.SliceLayout(1, st_layout)  # along the keys

    k_w = k_smem.slice(W * 64, 64)
    v_w = v_smem.index(W)
    qk_scale = sm_scale * 1.4426950408889634
    offs_n = n0w + gl.arange(0, 64, layout=row_st)
    offs_mq = gl.arange(0, BLOCK_M, layout=col_st)
    dq_rows = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, dq_layout))
    dq_cols = gl.arange(0, DQ_N, layout=gl.SliceLayout(0, dq_layout))
    # element offsets of a dQ part inside the (b, h) slice of dQaccum (B, S, H, D): row stride H·D
    dq_offs = dq_rows[:, None] * (H * HEAD_DIM) + dq_cols[None, :]
    dq_base = DQ + (b * S) * (H * HEAD_DIM) + h * HEAD_DIM

    dk = gl.zeros([64, HEAD_DIM], gl.float32, layout=kv_layout)
    dv = gl.zeros([64, HEAD_DIM], gl.float32, layout=kv_layout)
    st_zero = gl.zeros([64, BLOCK_M], gl.float32, layout=st_layout)
    dq_zero = gl.zeros([BLOCK_M, DQ_N], gl.float32, layout=dq_layout)

    mbarrier.wait(k_bar, 0)
    mbarrier.wait(v_bar, 0)

    j_start = 0
    if CAUSAL:
        if W == 1:
            if DQ_MODE == 0:
                # Query block i0 lies entirely above warpgroup 1's keys (rows n0 .. n0 + 63 <
                # n0 + 64): nothing to compute, but its barrier phases are waited and it is
                # released (see above). (DQ_MODE 1: both warpgroups meet at the pair barrier every
                # iteration, so warpgroup 1 computes it, masked to zero.)
                mbarrier.wait(q_ready.index(0), 0)
                mbarrier.wait(do_ready.index(0), 0)
                mbarrier.arrive(empty.index(0))
                j_start = 1

    for j in range(j_start, n_blocks):
        s = j % STAGES
        ph = (j // STAGES) & 1
        m0 = (i0 + j) * BLOCK_M
        q_s = q_smem.index(s)
        do_s = do_smem.index(s)

        # S^T and dP^T, both in flight.
        mbarrier.wait(q_ready.index(s), ph)
        st_tok = warpgroup_mma(k_w, q_s.permute((1, 0)), st_zero, use_acc=False, is_async=True)
        mbarrier.wait(do_ready.index(s), ph)
        dpt_tok = warpgroup_mma(v_w, do_s.permute((1, 0)), st_zero, use_acc=False, is_async=True)
        st = warpgroup_mma_wait(1, deps=(st_tok, ))
        # P^T (overlaps the dP^T wgmma). lse_i / Delta_i come from shared memory right where they
        # are used: in the transposed layout each thread holds 16 of the 64 columns, 32 registers
        # for the pair if kept live across the wgmma waits (with gl.load from global, issued
        # early to hide the latency, the loop spilled).
        lse2 = lse_smem.index(s).load(col_st) * 1.4426950408889634
        pt = gl.exp2(st * qk_scale - lse2[None, :])
        if CAUSAL:
            if m0 < n0w + 64:  # the diagonal cuts this block: keys > query rows get P = 0
                pt = gl.where(offs_n[:, None] <= (m0 + offs_mq)[None, :], pt, 0.0)
        if SCHED_FENCE:
            pt = _sched_fence(pt, sm_scale)
        dpt, _, _, _, _ = warpgroup_mma_wait(0, deps=(dpt_tok, k_w, v_w, q_s, do_s))
        pt_op = gl.convert_layout(pt.to(dtype), a_layout)
        dv_tok = warpgroup_mma(pt_op, do_s, dv, is_async=True)
        delta = delta_smem.index(s).load(col_st)
        # scale folded into dS (dK = scale dS^T Q, dQ = scale dS K): no scaling of dK or dQ after
        dst16 = (pt * (dpt - delta[None, :]) * sm_scale).to(dtype)
        dst_op = gl.convert_layout(dst16, a_layout)
        if DQ_EARLY == 0:
            dk_tok = warpgroup_mma(dst_op, q_s, dk, is_async=True)
        # dS^T to shared memory for the dQ wgmma (its A operand must be dS = (dS^T)^T).
        if DQ_MODE == 0:
            # This warpgroup's own 64 x 64 tile; free: the previous iteration's dQ wgmmas retired
            # before its atomics. dQ_i = dS_w K_w (its 64 keys) in two D-halves: 32 accumulator
            # registers live instead of 64 (with 64, ptxas serialises the wgmmas: registers).
            ds_w = ds_smem.index(0).slice(W * 64, 64)
            ds_w.store(dst16)
            fence_async_shared()
            for c in gl.static_range(HEAD_DIM // DQ_N):
                dq_tok = warpgroup_mma(ds_w.permute((1, 0)), k_w.slice(c * DQ_N, DQ_N, dim=1), dq_zero,
                                       use_acc=False, is_async=True)
                if c == 0:
                    # dV, dK retired (wgmma groups retire in order): Q_i / dO_i released.
                    dv, dk, _, _, _, _ = warpgroup_mma_wait(1, deps=(dv_tok, dk_tok, pt_op, dst_op, q_s, do_s))
                    mbarrier.arrive(empty.index(s))
                dq, _, _ = warpgroup_mma_wait(0, deps=(dq_tok, ds_w, k_w))
                gl.atomic_add(dq_base + m0 * (H * HEAD_DIM) + c * DQ_N + dq_offs, dq, sem="relaxed")
        else:
            # Both warpgroups' dS^T in one 128-key x 64 tile (rows 64W .. 64W + 63 written here),
            # double-buffered by iteration; after the pair barrier warpgroup W computes columns
            # 64W .. 64W + 63 of dQ_i over all 128 keys: half the atomics of DQ_MODE 0.
            # Buffer j % 2 was last read by the dQ wgmmas of iteration j - 2; both warpgroups
            # retired theirs before they reached the pair barrier of iteration j - 1, which this
            # warpgroup has passed.
            ds_all = ds_smem.index(j % 2)
            ds_all.slice(W * 64, 64).store(dst16)
            fence_async_shared()  # each thread's generic-proxy stores, before the wgmmas read them
            _pair_barrier(m0)
            dq_tok = warpgroup_mma(ds_all.permute((1, 0)), k_smem.slice(W * DQ_N, DQ_N, dim=1), dq_zero,
                                   use_acc=False, is_async=True)
            if DQ_EARLY:
                # dQ_i issued before dK_i (groups in issue order: dV_i, dQ_i, dK_i): wait(1)
                # retires dV_i and dQ_i, and the dQ atomics / staging overlap the dK_i wgmma
                # instead of following it (the tensor cores then go from dK_i straight to the
                # next S^T, with only wait(0), the release and the loop turn in between).
                # Registers: dQ (32) in flight with dK, dV (128) and the dS^T operand (16).
                dk_tok = warpgroup_mma(dst_op, q_s, dk, is_async=True)
                dv, dq, _, _, _ = warpgroup_mma_wait(1, deps=(dv_tok, dq_tok, pt_op, ds_all, k_smem))
                if DQ_WRITER:
                    _dq_stage(dq, j, W, dq_smem, dq_full, dq_empty, DQ_N, DQ_BUFS)
                else:
                    gl.atomic_add(dq_base + m0 * (H * HEAD_DIM) + W * DQ_N + dq_offs, dq, sem="relaxed")
                dk, _, _, _ = warpgroup_mma_wait(0, deps=(dk_tok, dst_op, q_s, do_s))
                mbarrier.arrive(empty.index(s))  # dV_i (dO_i) and dK_i (Q_i) retired
            else:
                dv, dk, _, _, _, _ = warpgroup_mma_wait(1, deps=(dv_tok, dk_tok, pt_op, dst_op, q_s, do_s))
                mbarrier.arrive(empty.index(s))
                dq, _, _ = warpgroup_mma_wait(0, deps=(dq_tok, ds_all, k_smem))
                if DQ_WRITER:
                    _dq_stage(dq, j, W, dq_smem, dq_full, dq_empty, DQ_N, DQ_BUFS)
                else:
                    gl.atomic_add(dq_base + m0 * (H * HEAD_DIM) + W * DQ_N + dq_offs, dq, sem="relaxed")

    # Outputs: dK_w (already scaled), dV_w; (B, S, H_out, D) with H_out = H (row stride H·D).
    o_rows = gl.arange(0, 64, layout=gl.SliceLayout(1, kv_layout))
    o_cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, kv_layout))
    o_offs = (b * S + n0w + o_rows)[:, None] * (H * HEAD_DIM) + h * HEAD_DIM + o_cols[None, :]
    gl.store(DK + o_offs, dk.to(DK.dtype.element_ty))
    gl.store(DV + o_offs, dv.to(DV.dtype.element_ty))


@gluon.jit
def _bwd_dq_writer(DQ, dq_smem, dq_full, dq_empty, S, H, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr,
                   BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr, DQ_BUFS: gl.constexpr, WRITER_COLS: gl.constexpr):
    """DQ_WRITER 1: the dQ writer partition (FA3's): per query block j it waits for both consumer
    warpgroups' dQ_j halves in the fp32 staging tile dq_smem[j % DQ_BUFS] (64 x 128), reads it
    in chunks of 8 rows x WRITER_COLS columns (4 consecutive floats per thread: REDG.F32x4 if
    vectorised; full 128-byte lines per request, 4x fewer L2 requests than the consumers'
    8-row x 32-byte REDG.F32x2 pattern) and adds it into dQaccum with relaxed atomics, off the consumers' path.
    Phases: dq_full[bq] (count 2: one arrive per consumer warpgroup) completes phase r = j //
    DQ_BUFS when both halves of dQ_j are stored -> wait parity r & 1; dq_empty[bq] (count 1) phase
    r completes by this partition's arrive after its last read of dQ_j (the consumers wait for
    it before storing dQ_{j + DQ_BUFS}). Every block j of the CTA is written by both consumers in
    DQ_MODE 1 (causal included), so the writer loops over the same n_blocks."""
    pid_bh, b, h, n0, i0, n_blocks = _bwd_tile(S, H, BLOCK_M, BLOCK_N, CAUSAL)
    # chunks of 8 rows (the swizzle period: a row slice must not split it) x WRITER_COLS columns
    # (a multiple of the 32-float swizzle span); a warp instruction covers 128 / WRITER_COLS rows
    # of WRITER_COLS consecutive floats (full 128-byte lines), 4 per thread
    CH_ROWS: gl.constexpr = 8
    layout: gl.constexpr = gl.BlockedLayout([1, 4], [128 // WRITER_COLS, WRITER_COLS // 4], [gl.num_warps(), 1],
                                            [1, 0])
    rows = gl.arange(0, CH_ROWS, layout=gl.SliceLayout(1, layout))
    cols = gl.arange(0, WRITER_COLS, layout=gl.SliceLayout(0, layout))
    offs = rows[:, None] * (H * HEAD_DIM) + cols[None, :]
    base = DQ + (b * S) * (H * HEAD_DIM) + h * HEAD_DIM
    for j in range(n_blocks):
        bq = j % DQ_BUFS
        mbarrier.wait(dq_full.index(bq), (j // DQ_BUFS) & 1)
        buf = dq_smem.index(bq)
        row_ptr = base + ((i0 + j) * BLOCK_M) * (H * HEAD_DIM)
        for r in gl.static_range(BLOCK_M // CH_ROWS):
            for c in gl.static_range(HEAD_DIM // WRITER_COLS):
                vals = buf.slice(r * CH_ROWS, CH_ROWS).slice(c * WRITER_COLS, WRITER_COLS, dim=1).load(layout)
                gl.atomic_add(row_ptr + (r * CH_ROWS) * (H * HEAD_DIM) + c * WRITER_COLS + offs, vals,
                              sem="relaxed")
        # every thread's ld.shared (complete: the values are in registers) before the arrive
        gl.thread_barrier()
        mbarrier.arrive(dq_empty.index(bq))


@gluon.jit
def gluon_attn_bwd_kernel(desc_q, desc_k, desc_v, desc_do, desc_lse, desc_delta, DQ, DK, DV, sm_scale, S, H, GROUP,
                          HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                          STAGES: gl.constexpr, CAUSAL: gl.constexpr, num_warps: gl.constexpr,
                          DQ_MODE: gl.constexpr = 1, SCHED_FENCE: gl.constexpr = 1, DQ_WRITER: gl.constexpr = 0,
                          DQ_BUFS: gl.constexpr = 1, WRITER_WARPS: gl.constexpr = 1, WRITER_COLS: gl.constexpr = 32,
                          CONS_REGS: gl.constexpr = 240, AUX_REGS: gl.constexpr = 24, DQ_EARLY: gl.constexpr = 0):
    # (CONS_REGS, AUX_REGS: the setmaxnreg budgets of the consumer warpgroups and of the producer
    # (+ dQ writer) partitions; see "Register budgets" in the module docstring)
    """Grid (S // BLOCK_N, B * H); launch with num_warps=4 (the default partition = consumer
    warpgroup 0) and maxnreg=MAXNREG. desc_q/k/v/do: 2-D (B·S, heads·D), blocks of 64 rows;
    desc_lse, desc_delta: 1-D over (B, H, S) fp32, blocks of BLOCK_M; DQ (B, S, H, D) fp32,
    zeroed; DK, DV (B, S, H, D) per query head."""
    gl.static_assert(num_warps == 4)
    gl.static_assert(BLOCK_N == 2 * 64)
    gl.static_assert(BLOCK_M == 64)
    gl.static_assert(HEAD_DIM == 128)  # DQ_MODE 1: the two warpgroups split D in halves of 64
    dtype: gl.constexpr = desc_q.dtype
    # K as one 128-row tile (DQ_MODE 1 reads all of it), loaded in the two 64-row halves that the
    # warpgroups use (same NVMMA layout: 128-byte swizzle, rows of 256 bytes).
    k_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, HEAD_DIM], desc_k.layout)
    v_smem = gl.allocate_shared_memory(dtype, [2, 64, HEAD_DIM], desc_v.layout)
    q_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, HEAD_DIM], desc_q.layout)
    do_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, HEAD_DIM], desc_do.layout)
    lse_smem = gl.allocate_shared_memory(gl.float32, [STAGES, BLOCK_M], desc_lse.layout)
    delta_smem = gl.allocate_shared_memory(gl.float32, [STAGES, BLOCK_M], desc_delta.layout)
    # dS^T: DQ_MODE 0 uses buffer 0 (rows 64W.. per warpgroup), DQ_MODE 1 both (by iteration)
    ds_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_M], dtype)
    ds_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_N, BLOCK_M], ds_layout)
    # DQ_WRITER 1: fp32 dQ_i staging tiles (64 x 128, 32 KB each); a 4-float swizzle unit (the
    # writer's ld.shared.v4) XOR-ed with the row: the consumers' 8-row x 8-byte stores of the
    # wgmma accumulator layout hit distinct banks. (DQ_WRITER 0: a 512-byte placeholder.)
    dq_sl: gl.constexpr = gl.SwizzledSharedLayout(vec=4, per_phase=1, max_phase=8, order=[1, 0])
    gl.static_assert(DQ_WRITER == 0 or DQ_MODE == 1)
    gl.static_assert(DQ_EARLY == 0 or DQ_MODE == 1)
    DQ_ROWS: gl.constexpr = 1 + (BLOCK_M - 1) * DQ_WRITER
    dq_smem = gl.allocate_shared_memory(gl.float32, [DQ_BUFS, DQ_ROWS, HEAD_DIM], dq_sl)
    dq_full = gl.allocate_shared_memory(gl.int64, [DQ_BUFS, 1], mbarrier.MBarrierLayout())
    dq_empty = gl.allocate_shared_memory(gl.int64, [DQ_BUFS, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(DQ_BUFS):
        mbarrier.init(dq_full.index(i), count=2)
        mbarrier.init(dq_empty.index(i), count=1)
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
    # Register budgets (setmaxnreg): the sum over warpgroups x 128 must fit the CTA's launch
    # allocation MAXNREG x 384 = 64512: 2 x 240 + 24 (producer, and the dQ writer beside it in
    # the third warpgroup) = 504 = 3 x 168.
    if DQ_WRITER:
        gl.warp_specialize([
        (_bwd_consumer, (0, DQ, DK, DV, sm_scale, k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem, ds_smem,
                         dq_smem, k_bar, v_bar, q_ready, do_ready, empty, dq_full, dq_empty, S, H, HEAD_DIM, BLOCK_M,
                         BLOCK_N, STAGES, CAUSAL, DQ_MODE, SCHED_FENCE, DQ_WRITER, DQ_BUFS,
                         DQ_EARLY)),
        (_bwd_consumer, (1, DQ, DK, DV, sm_scale, k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem, ds_smem,
                         dq_smem, k_bar, v_bar, q_ready, do_ready, empty, dq_full, dq_empty, S, H, HEAD_DIM, BLOCK_M,
                         BLOCK_N, STAGES, CAUSAL, DQ_MODE, SCHED_FENCE, DQ_WRITER, DQ_BUFS,
                         DQ_EARLY)),
        (_bwd_producer, (desc_q, desc_k, desc_v, desc_do, desc_lse, desc_delta, k_smem, v_smem, q_smem, do_smem,
                         lse_smem, delta_smem, k_bar, v_bar, q_ready, do_ready, empty, S, H, GROUP, HEAD_DIM,
                         BLOCK_M, BLOCK_N, STAGES, CAUSAL)),
        (_bwd_dq_writer, (DQ, dq_smem, dq_full, dq_empty, S, H, HEAD_DIM, BLOCK_M, BLOCK_N, CAUSAL, DQ_BUFS,
                          WRITER_COLS)),
        ], [4, 1, WRITER_WARPS], [CONS_REGS, AUX_REGS, AUX_REGS])
    else:
        gl.warp_specialize([
        (_bwd_consumer, (0, DQ, DK, DV, sm_scale, k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem, ds_smem,
                         dq_smem, k_bar, v_bar, q_ready, do_ready, empty, dq_full, dq_empty, S, H, HEAD_DIM, BLOCK_M,
                         BLOCK_N, STAGES, CAUSAL, DQ_MODE, SCHED_FENCE, DQ_WRITER, DQ_BUFS,
                         DQ_EARLY)),
        (_bwd_consumer, (1, DQ, DK, DV, sm_scale, k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem, ds_smem,
                         dq_smem, k_bar, v_bar, q_ready, do_ready, empty, dq_full, dq_empty, S, H, HEAD_DIM, BLOCK_M,
                         BLOCK_N, STAGES, CAUSAL, DQ_MODE, SCHED_FENCE, DQ_WRITER, DQ_BUFS,
                         DQ_EARLY)),
        (_bwd_producer, (desc_q, desc_k, desc_v, desc_do, desc_lse, desc_delta, k_smem, v_smem, q_smem, do_smem,
                         lse_smem, delta_smem, k_bar, v_bar, q_ready, do_ready, empty, S, H, GROUP, HEAD_DIM,
                         BLOCK_M, BLOCK_N, STAGES, CAUSAL)),
        ], [4, 1], [CONS_REGS, AUX_REGS])


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------

def _opts(opts):
    """Keyword options of gluon_attn_bwd / build -> the kernel's constexprs (dq_writer=1 ->
    DQ_WRITER=1, ...)."""
    return {k.upper(): v for k, v in opts.items()}


def _desc(t, rows=64):
    """TMA descriptor of a (B, S, heads, D) contiguous tensor as the 2-D (B·S, heads·D), blocks of
    `rows` x D."""
    B, S, Hx, D = t.shape
    dt = gl.bfloat16 if t.dtype == torch.bfloat16 else gl.float16
    t2 = t.view(B * S, Hx * D)
    return TensorDescriptor(t2, list(t2.shape), list(t2.stride()), [rows, D],
                            gl.NVMMASharedLayout.get_default_for([rows, D], dt))


def _desc_rows(t, rows=64):
    """1-D TMA descriptor of a contiguous fp32 tensor (lse, Delta: (B, H, S) flattened), blocks of
    `rows`."""
    t1 = t.view(-1)
    return TensorDescriptor(t1, [t1.numel()], [1], [rows], gl.NVMMASharedLayout.get_default_for([rows], gl.float32))


def _delta(o, do):
    """Delta = rowsum(dO * O) (B, H, S) fp32, with the library's preprocess kernel."""
    from flashkernels.ops.attention.kernels.bwd import attn_bwd_preprocess_kernel
    B, S, H, D = o.shape
    delta = torch.empty((B, H, S), dtype=torch.float32, device=o.device)
    ot, dot = o.transpose(1, 2), do.transpose(1, 2)  # (B, H, S, D) views
    attn_bwd_preprocess_kernel[(triton.cdiv(S, 64) * B * H,)](
        ot, dot, delta, ot.stride(0), ot.stride(1), ot.stride(2), dot.stride(0), dot.stride(1), dot.stride(2),
        H, S, HEAD_DIM=D, BLOCK_D=D, BLOCK_M=64)
    return delta


def gluon_attn_bwd(do, q, k, v, o, lse, causal=False, sm_scale=None, stages=2, dq_mode=1, sched_fence=1, **opts):
    """(dq, dk, dv), each shaped and typed like q, k, v ((B, S, H|Hkv, D) contiguous). lse (B, H, S)
    fp32 natural log from the forward. See the module docstring for the restrictions."""
    B, S, H, D = q.shape
    Hkv = k.shape[2]
    assert k.shape == v.shape == (B, S, Hkv, D) and H % Hkv == 0 and o.shape == do.shape == q.shape
    assert all(t.is_contiguous() for t in (q, k, v, o, do)) and lse.is_contiguous()
    assert q.dtype in (torch.bfloat16, torch.float16) and D == 128 and S % 128 == 0
    sm_scale = 1.0 / math.sqrt(D) if sm_scale is None else sm_scale
    assert sm_scale > 0  # the scheduling fence's loop would never end otherwise (see _sched_fence)
    group = H // Hkv
    delta = _delta(o, do)
    dq_acc = torch.zeros((B, S, H, D), dtype=torch.float32, device=q.device)
    if group == 1:
        dk, dv = torch.empty_like(k), torch.empty_like(v)
    else:  # per query head, fp32; summed over each group below
        dk = torch.empty((B, S, H, D), dtype=torch.float32, device=q.device)
        dv = torch.empty_like(dk)
    gluon_attn_bwd_kernel[(S // 128, B * H)](
        _desc(q), _desc(k), _desc(v), _desc(do), _desc_rows(lse), _desc_rows(delta), dq_acc, dk, dv, sm_scale, S, H,
        group,
        HEAD_DIM=D, BLOCK_M=64, BLOCK_N=128, STAGES=stages, CAUSAL=causal, num_warps=4, DQ_MODE=dq_mode,
        SCHED_FENCE=sched_fence, maxnreg=MAXNREG, **_opts(opts))
    dq = dq_acc.to(q.dtype)
    if group > 1:
        dk = dk.view(B, S, Hkv, group, D).sum(3).to(k.dtype)
        dv = dv.view(B, S, Hkv, group, D).sum(3).to(v.dtype)
    return dq, dk, dv


# ---------------------------------------------------------------------------------------------
# --compile-only: sm_90a build on any machine
# ---------------------------------------------------------------------------------------------

def _ptx_atomics(ptx: str) -> str:
    """Distinct atomic / reduction instruction forms in the PTX, with counts."""
    import collections
    import re
    forms = collections.Counter(m.group(1) for m in re.finditer(r"\b((?:red|atom)\.[\w.]+)", ptx))
    return ", ".join(f"{f} x{n}" for f, n in sorted(forms.items())) or "none"


def build(dtype, causal, stages=2, dq_mode=1, sched_fence=1, gqa=False, **opts):
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    fn = gluon_attn_bwd_kernel
    x = torch.empty(1, 256, 2, 128, dtype=dtype)
    lse = torch.empty(1, 2, 256, dtype=torch.float32)
    descs = dict(desc_q=_desc(x), desc_k=_desc(x), desc_v=_desc(x), desc_do=_desc(x), desc_lse=_desc_rows(lse),
                 desc_delta=_desc_rows(lse))
    tt = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    ptr = dict(DQ="*fp32", DK="*fp32" if gqa else f"*{tt}",
               DV="*fp32" if gqa else f"*{tt}")
    names = fn.arg_names
    sig = {n: "constexpr" if fn.params[i].is_constexpr else mangle_type(descs[n]) if n in descs else
           ptr[n] if n in ptr else "fp32" if n == "sm_scale" else "i32" for i, n in enumerate(names)}
    consts = dict(HEAD_DIM=128, BLOCK_M=64, BLOCK_N=128, STAGES=stages, CAUSAL=causal, num_warps=4,
                  DQ_MODE=dq_mode, SCHED_FENCE=sched_fence, **_opts(opts))
    for i, n in enumerate(names):  # constexprs left at their defaults (as a launch would)
        if fn.params[i].is_constexpr and n not in consts:
            consts[n] = fn.params[i].default
    # as on a real launch: torch allocations are 16-byte aligned, S a multiple of 128, H·D of 16
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in list(ptr) + ["S"]}
    src = GluonASTSource(fn, sig, {(names.index(k),): v for k, v in consts.items()}, attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "maxnreg": MAXNREG})


def compile_only(variants) -> int:
    import re
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import compile_check as cc
    import exp_gluon_fwd as fwd_exp  # its SASS loop summary
    bad = 0
    for dtype, causal, gqa, kw in variants:
        kw = dict(kw)
        stages, dq_mode, fence = kw.pop("stages", 2), kw.pop("dq_mode", 1), kw.pop("sched_fence", 1)
        tag = (f"gluon bwd {'bf16' if dtype == torch.bfloat16 else 'fp16'} causal={int(causal)} "
               f"stages={stages} dq_mode={dq_mode} fence={fence}{' gqa(fp32 dk/dv)' if gqa else ''}"
               + "".join(f" {k}={v}" for k, v in kw.items()))
        try:
            out = build(dtype, causal, stages, dq_mode, fence, gqa, **kw)
            ptx = out.asm["ptx"]
            budgets = sorted({int(x) for x in re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32\s+(\d+)", ptx)})
            print(f"{tag:78s} smem {out.metadata.shared:>6}  {cc.ptxas_report(ptx)} "
                  f"(launch maxnreg {MAXNREG}; setmaxnreg {budgets})", flush=True)
            print(f"      atomics in PTX: {_ptx_atomics(ptx)}")
            # every loop of 20+ instructions (consumers' and the dQ writer's): HGMMA, MUFU, BAR
            # (named barriers), SYNCS (mbarrier wait / arrive), REDG, STS, LDS, LDL / STL (spills)
            loops = cc.sass_loops(out.asm["cubin"], keys=("HGMMA", "MUFU", "BAR", "SYNCS", "REDG", "STS", "LDS",
                                                          "LDL", "STL"), min_instr=20)
            print("\n".join("      " + ln for ln in cc.sass_loops(out.asm["cubin"]).splitlines()), flush=True)
            print("\n".join("      " + ln for ln in loops.splitlines()), flush=True)
            # per loop: the order of wgmmas, their waits, barriers and exp2 (where the waits landed)
            print("\n".join("      " + ln for ln in fwd_exp._sass_loop_sequences(out.asm["cubin"]).splitlines()
                             if "HGMMA" in ln), flush=True)
        except Exception as e:  # noqa: BLE001 - report and go on
            bad += 1
            print(f"{tag:78s} FAILED: {type(e).__name__}: {str(e)[-3000:]}", flush=True)
            traceback.print_exc(limit=-3)
    return bad


# ---------------------------------------------------------------------------------------------
# GPU: correctness, then timing
# ---------------------------------------------------------------------------------------------

def _lib_fwd(q, k, v, causal, scale):
    """o (B, S, H, D) and lse (B, H, S) from the library's forward (Gluon on an H100)."""
    from flashkernels.ops.attention import launch
    o, lse = launch.attn_fwd_impl(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None, scale, causal, 0,
                                  True, False)
    return o.transpose(1, 2), lse


def _lib_bwd(do, q, k, v, o, lse, causal, scale):
    """The library's Triton backward: (dq, dk, dv) (B, S, H, D). deterministic=True keeps it off the
    library's Gluon backward (kernels/bwd_hopper.py, this experiment's DQ_MODE 1 + DQ_EARLY)."""
    from flashkernels.ops.attention import launch
    t = (lambda x: x.transpose(1, 2))
    dq, dk, dv, _ = launch.attn_bwd_impl(t(do), t(q), t(k), t(v), t(o), lse, None, None, scale, causal, 0, True,
                                         False, deterministic=True)
    return t(dq), t(dk), t(dv)


def _ref_grads(q, k, v, do, causal, scale):
    """float32 autograd reference of softmax(q k^T * scale) v, (B, S, H, D) in and out."""
    B, S, H, D = q.shape
    group = H // k.shape[2]
    qf, kf, vf = (x.detach().float().transpose(1, 2).requires_grad_() for x in (q, k, v))
    ke, ve = kf.repeat_interleave(group, 1), vf.repeat_interleave(group, 1)
    s = (qf @ ke.transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(torch.ones(S, S, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    o = torch.softmax(s, -1) @ ve
    dq, dk, dv = torch.autograd.grad(o, (qf, kf, vf), do.float().transpose(1, 2))
    return tuple(g.transpose(1, 2) for g in (dq, dk, dv))


def check(log, variants):
    ok = True
    # H = 16 (a multiple of 16, as in the timing shapes: Triton specialises integer arguments on
    # divisibility by 16 and on == 1 (GROUP), so these 4 cases compile each variant exactly
    # as the timing needs it: 4 builds per variant, not 7; the GPU run must stay under 5 minutes)
    for B, S, H, Hkv in ((2, 256, 16, 16), (2, 384, 16, 16), (2, 256, 16, 8), (2, 384, 16, 8)):
        for causal in (False, True):
            torch.manual_seed(0)
            q = torch.randn(B, S, H, 128, device="cuda", dtype=torch.bfloat16)
            k, v = (torch.randn(B, S, Hkv, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
            do = torch.randn_like(q)
            scale = 1 / math.sqrt(128)
            ref = _ref_grads(q, k, v, do, causal, scale)
            o, lse = _lib_fwd(q, k, v, causal, scale)
            o = o.contiguous()
            lib = None
            cands = [("flashkernels", lambda: _lib_bwd(do, q, k, v, o, lse, causal, scale))]
            cands += [(name, lambda kw=kw: gluon_attn_bwd(do, q, k, v, o, lse, causal, scale, **kw))
                      for name, kw in variants]
            for name, fn in cands:
                tag = f"B={B} S={S} H={H}/{Hkv} causal={int(causal)} {name}"
                print(f"  > {tag}", flush=True)  # (stdout only) a hang shows where
                try:
                    got = fn()
                    torch.cuda.synchronize()
                    errs = []
                    for g, r, nm in zip(got, ref, ("dq", "dk", "dv")):
                        g = g.float()
                        rel = ((g - r).norm() / r.norm()).item()
                        errs.append((nm, (g - r).abs().max().item(), rel))
                    good = all(rel < 1e-2 for _, _, rel in errs)
                    ok &= good or name == "flashkernels"
                    msg = f"  {tag:58s} {'PASS' if good else 'FAIL'}  " + "  ".join(
                        f"{nm} max {mx:.1e} rel {rel:.1e}" for nm, mx, rel in errs)
                    if lib is None:
                        lib = got
                    else:  # against the library's Triton backward, same inputs
                        msg += "  | vs flashkernels rel " + " ".join(
                            f"{((g.float() - r.float()).norm() / r.float().norm()).item():.1e}"
                            for g, r in zip(got, lib))
                    log(msg)
                except Exception as e:  # noqa: BLE001
                    ok = False
                    log(f"  {tag:58s} FAILED {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
    return ok


def bench(log, variants, quick):
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from flashkernels.bench.common import do_bench_median, warm_gpu
    warm_gpu()
    shapes = [(4, 4096, 16, 16, False), (4, 4096, 16, 16, True), (1, 16384, 16, 16, False), (1, 16384, 16, 16, True),
              (2, 8192, 32, 8, True)]
    if quick:
        shapes = [shapes[0], shapes[1], shapes[4]]
    rows = []
    log(f"{'shape':34s} {'kernel':34s} {'ms':>8s} {'TF/s':>6s} {'x cuDNN':>8s}")
    for B, S, H, Hkv, causal in shapes:
        D = 128
        scale = 1 / math.sqrt(D)
        flops = 2.5 * 4 * B * H * S * S * D / (2 if causal else 1)
        shape = f"B={B} S={S} H={H}/{Hkv} causal={int(causal)}"
        torch.manual_seed(0)
        q = torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(B, S, Hkv, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        do = torch.randn_like(q)
        results = []
        # SDPA cuDNN: backward only, through a retained graph. GQA: enable_gqa if cuDNN takes it,
        # else k / v expanded to H heads (then cuDNN's dK / dV are per query head, unsummed).
        for expand in ((False, True) if H != Hkv else (False,)):
            print(f"  > {shape} sdpa cudnn{' (k/v expanded)' if expand else ''}", flush=True)
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
                    log(f"{shape:34s} (sdpa cudnn: enable_gqa failed, timed with k/v expanded to H heads)")
                break
            except Exception as e:  # noqa: BLE001
                log(f"{shape:34s} sdpa cudnn{' (k/v expanded)' if expand else ''} FAILED {type(e).__name__}: "
                    f"{str(e).splitlines()[0][:200] if str(e) else ''}")
        ot = qt = kt = vt = fn = None  # free cuDNN's graph before the others run
        o, lse = _lib_fwd(q, k, v, causal, scale)
        o = o.contiguous()
        cands = [("flashkernels triton bwd", lambda: _lib_bwd(do, q, k, v, o, lse, causal, scale))]
        cands += [(name, lambda kw=kw: gluon_attn_bwd(do, q, k, v, o, lse, causal, scale, **kw))
                  for name, kw in variants]
        for name, fn in cands:
            print(f"  > {shape} {name}", flush=True)  # (stdout only) a hang shows where
            try:
                fn()
                torch.cuda.synchronize()
                results.append((name, do_bench_median(fn)))
            except Exception as e:  # noqa: BLE001
                log(f"{shape:34s} {name} FAILED {type(e).__name__}: "
                    f"{str(e).splitlines()[0][:200] if str(e) else ''}")
        base = dict(results).get("sdpa cudnn")
        for name, ms in results:
            tf = flops / ms / 1e9
            ratio = f"{base / ms:8.2f}" if base else f"{'-':>8s}"
            log(f"{shape:34s} {name:34s} {ms:8.3f} {tf:6.0f} {ratio}")
            rows.append((shape, name, ms, tf))
        q = k = v = do = o = lse = cands = None  # free this shape's tensors
        torch.cuda.empty_cache()
    return rows


# (name, gluon_attn_bwd keyword arguments) of the variants run on the GPU
# (the earlier DQ_MODE 0 and STAGES 3 variants, 0.55-0.65x and 0.76-0.82x cuDNN on the H200, and
# fence 1 (within 2% of fence 0) are left out of the timing: --compile-only still builds them)
VARIANTS = [("gluon base (dq_mode=1 fence=0)", dict(dq_mode=1, sched_fence=0)),
            ("gluon dq_early", dict(dq_mode=1, sched_fence=0, dq_early=1)),
            ("gluon dq writer", dict(dq_mode=1, sched_fence=0, dq_writer=1)),
            ("gluon dq writer+early", dict(dq_mode=1, sched_fence=0, dq_writer=1, dq_early=1)),
            ("gluon dq writer+early bufs=2", dict(dq_mode=1, sched_fence=0, dq_writer=1, dq_early=1, dq_bufs=2))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compile-only", action="store_true")
    ap.add_argument("--quick", action="store_true", help="fewer timing shapes")
    args = ap.parse_args()
    if args.compile_only:
        # (dtype, causal, GQA (fp32 dK / dV per query head), gluon_attn_bwd keyword options):
        # every timed variant (both causal modes), the older ones, GQA and fp16 builds
        variants = [(torch.bfloat16, c, False, kw) for _, kw in VARIANTS for c in (False, True)]
        variants += [(torch.bfloat16, c, False, kw) for c in (False, True)
                     for kw in (dict(dq_mode=1, sched_fence=1), dict(dq_mode=0, sched_fence=1),
                                dict(dq_mode=1, sched_fence=1, stages=3),
                                dict(dq_mode=1, sched_fence=1, dq_writer=1),
                                dict(dq_mode=1, sched_fence=0, dq_writer=1, writer_warps=2))]
        variants += [(torch.bfloat16, True, True, dict(kw)) for _, kw in VARIANTS]
        variants += [(torch.float16, False, False, dict(kw)) for _, kw in (VARIANTS[0], VARIANTS[3])]
        sys.exit(1 if compile_only(variants) else 0)

    out_path = os.path.join(os.environ["OUT"], "exp_gluon_bwd.txt") if os.environ.get("OUT") else None
    if out_path:
        open(out_path, "w").close()

    def log(msg):  # printed, and appended to $OUT/exp_gluon_bwd.txt as it comes (a timeout keeps it)
        print(msg, flush=True)
        if out_path:
            with open(out_path, "a") as f:
                f.write(msg + "\n")

    log(f"device: {torch.cuda.get_device_name()}  triton {triton.__version__}  torch {torch.__version__}")
    log("correctness (bf16, D=128, vs float32 autograd; PASS = rel err < 1e-2 for dq, dk, dv):")
    check(log, VARIANTS)
    log("timing (bf16, D=128, backward only; FLOPs = 2.5 x forward):")
    rows = bench(log, VARIANTS, args.quick)
    log("summary: TF/s (x cuDNN)")
    names = list(dict.fromkeys(name for _, name, _, _ in rows))
    for shape in dict.fromkeys(sh for sh, _, _, _ in rows):
        got = {name: (ms, tf) for sh, name, ms, tf in rows if sh == shape}
        base = got.get("sdpa cudnn", (None,))[0]
        log(f"  {shape:34s} " + "  ".join(
            f"{name}: {got[name][1]:.0f}" + (f" ({base / got[name][0]:.2f}x)" if base else "")
            for name in names if name in got))


if __name__ == "__main__":
    main()
