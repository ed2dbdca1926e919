"""Experiment (issue 3): an attention forward written in Gluon for Hopper, FA3's intra-warpgroup
overlap by hand.

    PYTHONPATH=src python scripts/exp_gluon_fwd.py --compile-only     # any machine: sm_90a build
    PYTHONPATH=src python scripts/exp_gluon_fwd.py                    # H100: check, then time

Why: stock Triton stops at ~0.8x cuDNN in the forward on the H100 (docs/perf-notes.md, "Hopper
path experiment"): its pipeliner waits for each q·kᵀ wgmma before the softmax and for each p·v
wgmma before the next q·kᵀ, so the tensor cores idle while the exponentials run. Gluon
(`triton.experimental.gluon`, in the same triton package) exposes the pieces: TMA copies into a
ring of shared-memory stages with mbarriers, `warpgroup_mma(..., is_async=True)` and
`warpgroup_mma_wait(num_outstanding=N)`.

Schedule of one program (BLOCK_M query rows of one (batch, head), 8 warps = two warpgroups of
64 rows each, K/V in a ring of STAGES shared-memory buffers filled by TMA):

    S_0 = Q K_0^T; P_0 = softmax part of S_0
    for j in 0 .. n-2:
        issue S_{j+1} = Q K_{j+1}^T      (async)
        issue O += P_j V_j               (async)
        wait until 1 wgmma is in flight  -> S_{j+1} is ready (wgmma groups retire in order)
        P_{j+1}, alpha = online softmax of S_{j+1}   <- overlaps the P_j V_j wgmma
        wait until 0 in flight           -> O is ready;  O *= alpha
        refill this stage's K/V buffers with block j + STAGES (after a CTA barrier: the other
        warpgroup may still read them)
    O += P_{n-1} V_{n-1}; O /= l; lse = m + log2(l)

gluon_attn_fwd_ws_kernel / gluon_attention_ws: the same math, warp-specialized like FA3
(`gl.warp_specialize`): a 1-warp producer partition issues all TMA loads into the K/V ring
(per-stage ready/empty mbarriers), two consumer warpgroups (the default partition and a 4-warp
worker) each own BLOCK_M / 2 query rows; no CTA-wide barrier in the main loop, and optionally
(PINGPONG=1) an mbarrier hand-off so that the warpgroups issue their wgmmas in turn (FA3's
inter-warpgroup overlap). Barrier protocol and phases: see the comment above _ws_tile.

Not yet: persistent scheduling, causal blocks visited in the long-first order, D = 256, three
consumer warpgroups (BLOCK_M = 192 needs masked tiles).

Restrictions of the experiment: (B, S, H, D) contiguous bf16/fp16 inputs (k and v with Hkv heads,
H a multiple of Hkv: GQA); D in {64, 128}; S a multiple of 128 (the TMA descriptors are 2-D views (B·S, H·D), so a
block may not cross a batch boundary). Causal = top-left = bottom-right here (Sq = Sk).
"""
import argparse
import math
import os
import sys

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

# The Triton kernels are what this script measures: on an H100 the library would otherwise run its
# Gluon kernels for D = 64/128 (launch.hopper_fwd_reason / hopper_bwd_reason).
os.environ["FLASHKERNELS_HOPPER_FWD"] = "0"
os.environ["FLASHKERNELS_HOPPER_BWD"] = "0"

LOG2E = 1.4426950408889634


@gluon.jit
def _softmax_step(s, m_i, l_i, qk_scale, offs_m, m0, start_n,
                  BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr, s_layout: gl.constexpr):
    """Online-softmax update with scores s (raw q·kᵀ) of key block start_n: (p, alpha, m, l)."""
    if CAUSAL:
        if start_n + BLOCK_N > m0:  # only the blocks the diagonal cuts pay for the mask
            offs_n = start_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
            s = gl.where(offs_n[None, :] <= offs_m[:, None], s, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
    p = gl.exp2(s * qk_scale - m_new[:, None])
    alpha = gl.exp2(m_i - m_new)
    l_i = l_i * alpha + gl.sum(p, axis=1)
    return p, alpha, m_new, l_i


@gluon.jit
def gluon_attn_fwd_kernel(desc_q, desc_k, desc_v, desc_o, Lse, sm_scale, S, H, GROUP,
                          HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                          STAGES: gl.constexpr, CAUSAL: gl.constexpr, num_warps: gl.constexpr,
                          SCHED_FENCE: gl.constexpr = 0):
    dtype: gl.constexpr = desc_q.dtype
    pid_m = gl.program_id(0)
    pid_bh = gl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    m0 = pid_m * BLOCK_M
    row_q = b * S + m0
    row_k = b * S
    col = h * HEAD_DIM
    col_kv = (h // GROUP) * HEAD_DIM  # GQA: query heads h*GROUP .. share kv head h // GROUP

    # wgmma accumulators: instruction m = 16, k = 16 (16-bit inputs), n = the tile's width; the
    # 8 warps stack along M (two warpgroups of 64 rows).
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)

    q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD_DIM], desc_q.layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], desc_k.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], desc_v.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_bars.index(i), count=1)
        mbarrier.init(v_bars.index(i), count=1)
    fence_async_shared()

    if CAUSAL:
        n_blocks = (m0 + BLOCK_M) // BLOCK_N
    else:
        n_blocks = S // BLOCK_N

    mbarrier.expect(q_bar, desc_q.block_type.nbytes)
    tma.async_copy_global_to_shared(desc_q, [row_q, col], q_bar, q_smem)
    for i in gl.static_range(STAGES):
        ok = i < n_blocks
        mbarrier.expect(k_bars.index(i), desc_k.block_type.nbytes, pred=ok)
        tma.async_copy_global_to_shared(desc_k, [row_k + i * BLOCK_N, col_kv], k_bars.index(i), k_smem.index(i),
                                        pred=ok)
        mbarrier.expect(v_bars.index(i), desc_v.block_type.nbytes, pred=ok)
        tma.async_copy_global_to_shared(desc_v, [row_k + i * BLOCK_N, col_kv], v_bars.index(i), v_smem.index(i),
                                        pred=ok)

    qk_scale = sm_scale * 1.4426950408889634
    offs_m = m0 + gl.arange(0, BLOCK_M, layout=row_s)
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, layout=row_s)
    l_i = gl.full([BLOCK_M], 0.0, gl.float32, layout=row_s)
    acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, layout=o_layout)
    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=s_layout)

    # Block 0's scores, and its softmax.
    mbarrier.wait(q_bar, 0)
    mbarrier.wait(k_bars.index(0), 0)
    s_tok = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
    s, _, _ = warpgroup_mma_wait(0, deps=(s_tok, q_smem, k_smem.index(0)))
    p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, qk_scale, offs_m, m0, 0, BLOCK_N, CAUSAL, s_layout)
    p_op = gl.convert_layout(p.to(dtype), p_layout)

    for j in range(0, n_blocks - 1):
        stage = j % STAGES
        nxt = (j + 1) % STAGES
        # S_{j+1} first, then O += P_j V_j: both in flight.
        mbarrier.wait(k_bars.index(nxt), ((j + 1) // STAGES) & 1)
        s_tok = warpgroup_mma(q_smem, k_smem.index(nxt).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        mbarrier.wait(v_bars.index(stage), (j // STAGES) & 1)
        o_tok = warpgroup_mma(p_op, v_smem.index(stage), acc, is_async=True)
        # S_{j+1} retires first (in order); its softmax overlaps the P_j V_j wgmma.
        s, _, _ = warpgroup_mma_wait(1, deps=(s_tok, q_smem, k_smem.index(nxt)))
        p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, qk_scale, offs_m, m0, (j + 1) * BLOCK_N, BLOCK_N, CAUSAL,
                                           s_layout)
        # ptxas schedules wgmma.wait_group like an instruction without operands inside a basic block:
        # without a fence it issues the wait_group 0 below right after the first SHFL of the softmax,
        # so the softmax does not overlap the P_j V_j wgmma. A basic-block boundary after the
        # softmax pins it there (ptxas does not move it across a branch).
        if SCHED_FENCE == 1:
            # No-op mbarrier wait: K_{j+1}'s phase completed (waited above) and cannot advance before
            # this stage is refilled (after the CTA barrier of iteration j+1); its spin loop ends the
            # basic block. (Triton's membar pass puts a CTA barrier before it.)
            mbarrier.wait(k_bars.index(nxt), ((j + 1) // STAGES) & 1)
        if SCHED_FENCE == 2:
            # l_i passes through unchanged: it is a sum of exp2 values, never < 0 (NaN compares
            # false), so the loop body never runs. The loop (ptxas can neither if-convert nor drop
            # it: the body writes the outputs) ends the basic block after the whole softmax (l_i
            # depends on every exp2). Two rows per thread (pack=2): one loop per thread.
            l_i = gl.inline_asm_elementwise(
                "{ .reg .pred p; mov.b32 $0, $2; mov.b32 $1, $3; fence_loop: "
                "setp.lt.f32 p, $0, 0f00000000; setp.lt.or.f32 p, $1, 0f00000000, p; "
                "@!p bra fence_done; add.f32 $0, $0, 0f3F800000; add.f32 $1, $1, 0f3F800000; "
                "bra fence_loop; fence_done: }",
                "=r,=r,r,r", [l_i], dtype=gl.float32, is_pure=False, pack=2)
        acc, _, _ = warpgroup_mma_wait(0, deps=(o_tok, p_op, v_smem.index(stage)))
        acc = acc * gl.convert_layout(alpha, row_o)[:, None]
        # P_{j+1} into the operand registers only now: until the wait above, the P_j V_j wgmma still
        # reads them (writing them earlier makes ptxas retire that wgmma before the softmax).
        p_op = gl.convert_layout(p.to(dtype), p_layout)
        # Both warpgroups are done with K_j (last iteration) and V_j: refill the stage.
        gl.thread_barrier()
        refill = j + STAGES
        ok = refill < n_blocks
        mbarrier.expect(k_bars.index(stage), desc_k.block_type.nbytes, pred=ok)
        tma.async_copy_global_to_shared(desc_k, [row_k + refill * BLOCK_N, col_kv], k_bars.index(stage),
                                        k_smem.index(stage), pred=ok)
        mbarrier.expect(v_bars.index(stage), desc_v.block_type.nbytes, pred=ok)
        tma.async_copy_global_to_shared(desc_v, [row_k + refill * BLOCK_N, col_kv], v_bars.index(stage),
                                        v_smem.index(stage), pred=ok)

    last = n_blocks - 1
    mbarrier.wait(v_bars.index(last % STAGES), (last // STAGES) & 1)
    o_tok = warpgroup_mma(p_op, v_smem.index(last % STAGES), acc, is_async=True)
    acc, _, _ = warpgroup_mma_wait(0, deps=(o_tok, p_op, v_smem.index(last % STAGES)))

    mbarrier.invalidate(q_bar)
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(k_bars.index(i))
        mbarrier.invalidate(v_bars.index(i))

    out = acc / gl.convert_layout(l_i, row_o)[:, None]
    lse = (m_i + gl.log2(l_i)) * 0.6931471805599453
    gl.store(Lse + pid_bh * S + offs_m, lse)
    # Q's buffer is free (every q·kᵀ has retired): stage the output tile there for the TMA store.
    gl.thread_barrier()
    q_smem.store(out.to(dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(desc_o, [row_q, col], q_smem)
    tma.store_wait(pendings=0)


def _descs(q, k, v, out, block_m, block_n):
    D = q.shape[3]
    dt = gl.bfloat16 if q.dtype == torch.bfloat16 else gl.float16
    lq = gl.NVMMASharedLayout.get_default_for([block_m, D], dt)
    lk = gl.NVMMASharedLayout.get_default_for([block_n, D], dt)

    def desc(t, blk, lay):  # (B, S, H, D) contiguous as the 2-D (B * S, H * D)
        t2 = t.view(t.shape[0] * t.shape[1], t.shape[2] * D)
        return TensorDescriptor(t2, list(t2.shape), list(t2.stride()), blk, lay)

    return desc(q, [block_m, D], lq), desc(k, [block_n, D], lk), desc(v, [block_n, D], lk), desc(out, [block_m, D], lq)


def gluon_attention(q, k, v, causal=False, sm_scale=None, block_m=128, block_n=128, stages=2, num_warps=8,
                    sched_fence=0):
    """out (B, S, H, D), lse (B, H, S) natural log. See the module docstring for the restrictions."""
    B, S, H, D = q.shape
    Hkv = k.shape[2]
    assert k.shape == v.shape == (B, S, Hkv, D) and H % Hkv == 0
    assert q.is_contiguous() and k.is_contiguous() and v.is_contiguous()
    assert q.dtype in (torch.bfloat16, torch.float16) and D in (64, 128) and S % max(block_m, block_n) == 0
    sm_scale = 1.0 / math.sqrt(D) if sm_scale is None else sm_scale
    out = torch.empty_like(q)
    lse = torch.empty((B, H, S), device=q.device, dtype=torch.float32)
    dq, dk, dv, do = _descs(q, k, v, out, block_m, block_n)
    gluon_attn_fwd_kernel[(S // block_m, B * H)](dq, dk, dv, do, lse, sm_scale, S, H, H // Hkv, HEAD_DIM=D,
                                                  BLOCK_M=block_m, BLOCK_N=block_n, STAGES=stages, CAUSAL=causal,
                                                  num_warps=num_warps, SCHED_FENCE=sched_fence)
    return out, lse


# ---------------------------------------------------------------------------------------------
# Warp-specialized variant (FA3's structure): a 1-warp producer partition issues every TMA load;
# NUM_WG consumer warpgroups (4 warps each, WG_M query rows each; the default partition is
# consumer 0, a worker partition is consumer 1) read the same K/V ring. No CTA-wide barrier in
# the main loop: all hand-offs are mbarriers.
#
# Barriers (all in shared memory, initialised before gl.warp_specialize):
#   q_bars[w]   count 1: the producer's expect-tx arrive; completes once (phase 0) when Q_w landed.
#   k_ready[s], v_ready[s]  count 1 (the producer's expect-tx arrive) + the TMA bytes.
#   k_empty[s], v_empty[s]  count NUM_WG: one arrive per consumer warpgroup.
#   turn[w]     count 1 (ping-pong only): "warpgroup w may issue its wgmmas now".
#
# Arrive semantics (triton 3.6, ArriveBarrierOp -> LLVM): mbarrier.arrive is predicated on
# "thread id == 0" where the thread id is relative to the partition (the warp-specialize
# lowering rebases it), so ONE thread per partition arrives: one arrive per consumer warpgroup,
# hence count NUM_WG on the empty barriers and 1 on the turn barriers. That thread arrives
# after its own warpgroup_mma_wait: a wgmma is one warpgroup-wide operation, so once it has
# retired for one warp its shared-memory reads are over for the whole warpgroup (CUTLASS's
# consumer_release relies on the same). The expect-tx arrives of the producer are one thread too.
#
# Phases. Block j lives in stage s = j % STAGES, on its use r = j // STAGES of that stage.
#   ready[s]: phase r completes when block j's bytes landed -> consumers wait parity r & 1.
#   empty[s]: phase r completes when both warpgroups released block j -> before loading block j
#     (use r of stage s) the producer needs phase r - 1 complete: parity (r - 1) & 1 = (r & 1) ^ 1;
#     for r = 0 that is parity 1 on a fresh barrier (current phase 0), which returns at once.
#   No barrier can run more than one phase ahead of a waiter: ready[s] phase r + 1 needs the
#   producer to have seen empty[s] phase r, i.e. both consumers done waiting on ready phase r;
#   a consumer's arrive for use r + 1 needs ready phase r + 1, so empty phase r has both arrivals.
#   turn (ping-pong): each warpgroup issues its wgmmas at n_blocks + 1 points (S_0; S_{j+1} with
#     P_j V_j for j < n - 1; the last P V). At its k-th point warpgroup w waits turn[w], issues,
#     arrives turn[1 - w]. Warpgroup 0 goes first: its k-th wait needs warpgroup 1's (k-1)-th
#     arrive = phase k - 1 of turn[0]: parity (k - 1) & 1 = (k + 1) & 1 (k = 0: parity 1, passes at
#     once). Warpgroup 1's k-th wait needs warpgroup 0's k-th arrive = phase k of turn[1]:
#     parity k & 1. In general parity (k + 1 - w) & 1. Strict alternation: at most one phase
#     ahead. Warpgroup 1's last arrive is never waited on (harmless).
# ---------------------------------------------------------------------------------------------


@gluon.jit
def _ws_tile(S, H, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr):
    pid_m = gl.program_id(0)
    pid_bh = gl.program_id(1)
    m0 = pid_m * BLOCK_M
    if CAUSAL:
        n_blocks = (m0 + BLOCK_M) // BLOCK_N
    else:
        n_blocks = S // BLOCK_N
    return pid_bh, pid_bh // H, pid_bh % H, m0, n_blocks


@gluon.jit
def _ws_producer(desc_q, desc_k, desc_v, q_smem, k_smem, v_smem, q_bars, k_ready, k_empty, v_ready, v_empty,
                 S, H, GROUP, HEAD_DIM: gl.constexpr, WG_M: gl.constexpr, NUM_WG: gl.constexpr,
                 BLOCK_N: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr):
    _, b, h, m0, n_blocks = _ws_tile(S, H, NUM_WG * WG_M, BLOCK_N, CAUSAL)
    row_k = b * S
    col_kv = (h // GROUP) * HEAD_DIM
    for w in gl.static_range(NUM_WG):
        mbarrier.expect(q_bars.index(w), desc_q.block_type.nbytes)
        tma.async_copy_global_to_shared(desc_q, [b * S + m0 + w * WG_M, h * HEAD_DIM], q_bars.index(w),
                                        q_smem.index(w))
    for j in range(n_blocks):
        s = j % STAGES
        ph = ((j // STAGES) & 1) ^ 1  # previous use of stage s released (fresh barrier: passes)
        mbarrier.wait(k_empty.index(s), ph)
        mbarrier.expect(k_ready.index(s), desc_k.block_type.nbytes)
        tma.async_copy_global_to_shared(desc_k, [row_k + j * BLOCK_N, col_kv], k_ready.index(s), k_smem.index(s))
        mbarrier.wait(v_empty.index(s), ph)
        mbarrier.expect(v_ready.index(s), desc_v.block_type.nbytes)
        tma.async_copy_global_to_shared(desc_v, [row_k + j * BLOCK_N, col_kv], v_ready.index(s), v_smem.index(s))


@gluon.jit
def _ws_consumer(W: gl.constexpr, desc_o, Lse, sm_scale, q_smem, k_smem, v_smem, q_bars, k_ready, k_empty, v_ready,
                 v_empty, turn, S, H, HEAD_DIM: gl.constexpr, WG_M: gl.constexpr, NUM_WG: gl.constexpr,
                 BLOCK_N: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr, SCHED_FENCE: gl.constexpr,
                 PINGPONG: gl.constexpr):
    """Consumer warpgroup W: query rows m0 + W*WG_M .. + WG_M of the CTA's tile."""
    dtype: gl.constexpr = desc_o.dtype
    pid_bh, b, h, m0, n_blocks = _ws_tile(S, H, NUM_WG * WG_M, BLOCK_N, CAUSAL)
    m0w = m0 + W * WG_M
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    q_w = q_smem.index(W)
    my_turn = turn.index(W)
    next_turn = turn.index((W + 1) % NUM_WG)

    qk_scale = sm_scale * 1.4426950408889634
    offs_m = m0w + gl.arange(0, WG_M, layout=row_s)
    m_i = gl.full([WG_M], float("-inf"), gl.float32, layout=row_s)
    l_i = gl.full([WG_M], 0.0, gl.float32, layout=row_s)
    acc = gl.zeros([WG_M, HEAD_DIM], gl.float32, layout=o_layout)
    s_zero = gl.zeros([WG_M, BLOCK_N], gl.float32, layout=s_layout)

    mbarrier.wait(q_bars.index(W), 0)
    # issue point k = 0: S_0
    if PINGPONG:
        mbarrier.wait(my_turn, (1 - W) & 1)
    mbarrier.wait(k_ready.index(0), 0)
    s_tok = warpgroup_mma(q_w, k_smem.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
    if PINGPONG:
        mbarrier.arrive(next_turn)
    s, _, _ = warpgroup_mma_wait(0, deps=(s_tok, q_w, k_smem.index(0)))
    mbarrier.arrive(k_empty.index(0))
    p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, qk_scale, offs_m, m0w, 0, BLOCK_N, CAUSAL, s_layout)
    p_op = gl.convert_layout(p.to(dtype), p_layout)

    for j in range(0, n_blocks - 1):
        stage = j % STAGES
        nxt = (j + 1) % STAGES
        # issue point k = j + 1: S_{j+1}, then O += P_j V_j
        if PINGPONG:
            mbarrier.wait(my_turn, (j + 2 - W) & 1)
        mbarrier.wait(k_ready.index(nxt), ((j + 1) // STAGES) & 1)
        s_tok = warpgroup_mma(q_w, k_smem.index(nxt).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        mbarrier.wait(v_ready.index(stage), (j // STAGES) & 1)
        o_tok = warpgroup_mma(p_op, v_smem.index(stage), acc, is_async=True)
        if PINGPONG:
            mbarrier.arrive(next_turn)
        s, _, _ = warpgroup_mma_wait(1, deps=(s_tok, q_w, k_smem.index(nxt)))
        mbarrier.arrive(k_empty.index(nxt))  # S_{j+1} retired: K_{j+1} released by this warpgroup
        p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, qk_scale, offs_m, m0w, (j + 1) * BLOCK_N, BLOCK_N, CAUSAL,
                                           s_layout)
        if SCHED_FENCE == 2:  # see gluon_attn_fwd_kernel: pins wait_group 0 after the softmax
            l_i = gl.inline_asm_elementwise(
                "{ .reg .pred p; mov.b32 $0, $2; mov.b32 $1, $3; fence_loop: "
                "setp.lt.f32 p, $0, 0f00000000; setp.lt.or.f32 p, $1, 0f00000000, p; "
                "@!p bra fence_done; add.f32 $0, $0, 0f3F800000; add.f32 $1, $1, 0f3F800000; "
                "bra fence_loop; fence_done: }",
                "=r,=r,r,r", [l_i], dtype=gl.float32, is_pure=False, pack=2)
        acc, _, _ = warpgroup_mma_wait(0, deps=(o_tok, p_op, v_smem.index(stage)))
        mbarrier.arrive(v_empty.index(stage))  # P_j V_j retired: V_j released
        acc = acc * gl.convert_layout(alpha, row_o)[:, None]
        p_op = gl.convert_layout(p.to(dtype), p_layout)

    last = n_blocks - 1
    if PINGPONG:  # issue point k = n_blocks
        mbarrier.wait(my_turn, (n_blocks + 1 - W) & 1)
    mbarrier.wait(v_ready.index(last % STAGES), (last // STAGES) & 1)
    o_tok = warpgroup_mma(p_op, v_smem.index(last % STAGES), acc, is_async=True)
    if PINGPONG:
        mbarrier.arrive(next_turn)
    acc, _, _ = warpgroup_mma_wait(0, deps=(o_tok, p_op, v_smem.index(last % STAGES)))
    mbarrier.arrive(v_empty.index(last % STAGES))

    out = acc / gl.convert_layout(l_i, row_o)[:, None]
    lse = (m_i + gl.log2(l_i)) * 0.6931471805599453
    gl.store(Lse + pid_bh * S + offs_m, lse)
    # This warpgroup's Q buffer is free (its q·kᵀ wgmmas all retired; only it reads Q_w): stage
    # the output rows there for the TMA store.
    q_w.store(out.to(dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(desc_o, [b * S + m0w, h * HEAD_DIM], q_w)
    tma.store_wait(pendings=0)


@gluon.jit
def gluon_attn_fwd_ws_kernel(desc_q, desc_k, desc_v, desc_o, Lse, sm_scale, S, H, GROUP,
                             HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                             STAGES: gl.constexpr, CAUSAL: gl.constexpr, num_warps: gl.constexpr,
                             SCHED_FENCE: gl.constexpr = 0, PINGPONG: gl.constexpr = 0,
                             CONSUMER_REGS: gl.constexpr = 240, PRODUCER_REGS: gl.constexpr = 24):
    """Launch with num_warps=4 (the default partition = consumer warpgroup 0); desc_q / desc_o have
    blocks of WG_M = BLOCK_M // 2 rows."""
    NUM_WG: gl.constexpr = 2
    WG_M: gl.constexpr = BLOCK_M // NUM_WG
    gl.static_assert(num_warps == 4)
    dtype: gl.constexpr = desc_q.dtype
    q_smem = gl.allocate_shared_memory(dtype, [NUM_WG, WG_M, HEAD_DIM], desc_q.layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], desc_k.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], desc_v.layout)
    q_bars = gl.allocate_shared_memory(gl.int64, [NUM_WG, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [NUM_WG, 1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for w in gl.static_range(NUM_WG):
        mbarrier.init(q_bars.index(w), count=1)
        mbarrier.init(turn.index(w), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=NUM_WG)
        mbarrier.init(v_empty.index(i), count=NUM_WG)
    fence_async_shared()

    # (the argument tuples are written out in the call: a tuple assigned to a name first would turn
    # its constexprs into tensors)
    gl.warp_specialize([
        (_ws_consumer, (0, desc_o, Lse, sm_scale, q_smem, k_smem, v_smem, q_bars, k_ready, k_empty, v_ready, v_empty,
                        turn, S, H, HEAD_DIM, WG_M, NUM_WG, BLOCK_N, STAGES, CAUSAL, SCHED_FENCE, PINGPONG)),
        (_ws_consumer, (1, desc_o, Lse, sm_scale, q_smem, k_smem, v_smem, q_bars, k_ready, k_empty, v_ready, v_empty,
                        turn, S, H, HEAD_DIM, WG_M, NUM_WG, BLOCK_N, STAGES, CAUSAL, SCHED_FENCE, PINGPONG)),
        (_ws_producer, (desc_q, desc_k, desc_v, q_smem, k_smem, v_smem, q_bars, k_ready, k_empty, v_ready, v_empty,
                        S, H, GROUP, HEAD_DIM, WG_M, NUM_WG, BLOCK_N, STAGES, CAUSAL)),
    ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])


WS_MAXNREG = 168  # 3 warpgroups x 128 threads x 168 = the 64K-register file: 1 CTA / SM


def gluon_attention_ws(q, k, v, causal=False, sm_scale=None, block_m=128, block_n=128, stages=2, sched_fence=0,
                       pingpong=0, consumer_regs=240, producer_regs=24, maxnreg=WS_MAXNREG):
    """Warp-specialized gluon_attention: same inputs, restrictions and outputs."""
    B, S, H, D = q.shape
    Hkv = k.shape[2]
    assert k.shape == v.shape == (B, S, Hkv, D) and H % Hkv == 0
    assert q.is_contiguous() and k.is_contiguous() and v.is_contiguous()
    assert q.dtype in (torch.bfloat16, torch.float16) and D in (64, 128) and S % max(block_m, block_n) == 0
    sm_scale = 1.0 / math.sqrt(D) if sm_scale is None else sm_scale
    out = torch.empty_like(q)
    lse = torch.empty((B, H, S), device=q.device, dtype=torch.float32)
    dq, dk, dv, do = _descs(q, k, v, out, block_m // 2, block_n)
    gluon_attn_fwd_ws_kernel[(S // block_m, B * H)](dq, dk, dv, do, lse, sm_scale, S, H, H // Hkv, HEAD_DIM=D,
                                                     BLOCK_M=block_m, BLOCK_N=block_n, STAGES=stages,
                                                     CAUSAL=causal, num_warps=4, SCHED_FENCE=sched_fence,
                                                     PINGPONG=pingpong, CONSUMER_REGS=consumer_regs,
                                                     PRODUCER_REGS=producer_regs, maxnreg=maxnreg)
    return out, lse


def _sass_loop_sequences(cubin: bytes) -> str:
    """For each loop (backward predicated branch) of >= 20 instructions that issues HGMMA or TMA loads:
    its condensed sequence of the ops that matter here (wgmma, its waits, CTA/named barriers, mbarrier
    waits/arrives, exp2, TMA), the BAR.SYNC count and the highest register index it touches."""
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
    key = re.compile(r"HGMMA|WARPGROUP\.DEPBAR\.LE gsb0, 0x[0-9]|BAR\.SYNC[^;]*|MUFU\.EX2|SYNCS\.PHASECHK|"
                     r"SYNCS\.ARRIVE[.\w]*|UTMALDG|UTMASTG")

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
        bars = sum("BAR.SYNC" in s for s in body)
        regs = max([int(r) for s in body for r in re.findall(r"\bR(\d+)\b", s)] or [0])
        out.append(f"loop {len(body)} instr, BAR.SYNC {bars}, max reg R{regs}: " +
                   " ".join(f"{t}{f'x{n}' if n > 1 else ''}" for t, n in seq))
    return "\n".join(out)


def compile_only(configs, ws_configs):
    """Build for sm_90a without a GPU (GluonASTSource + ptxas), print registers / spills / smem."""
    import re

    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import compile_check as cc

    def build(fn, descs, consts, options):
        sig = {}
        args = dict(zip(("desc_q", "desc_k", "desc_v", "desc_o"), descs))
        for i, name in enumerate(fn.arg_names):
            if fn.params[i].is_constexpr:
                sig[name] = "constexpr"
            elif name in args:
                sig[name] = mangle_type(args[name])
            elif name == "Lse":
                sig[name] = "*fp32"
            elif name == "sm_scale":
                sig[name] = "fp32"
            else:
                sig[name] = "i32"
        names = fn.arg_names
        src = GluonASTSource(fn, sig, {(names.index(k),): v for k, v in consts.items()})
        return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)

    bad = 0
    B, S, H = 1, 1024, 2
    for D, bm, bn, stages, causal, fence in configs:
        q = torch.empty(B, S, H, D, dtype=torch.bfloat16)
        consts = dict(HEAD_DIM=D, BLOCK_M=bm, BLOCK_N=bn, STAGES=stages, CAUSAL=causal, num_warps=8,
                      SCHED_FENCE=fence)
        tag = f"gluon fwd bf16 D={D} ({bm}, {bn}, 8 warps, {stages} stages) causal={int(causal)} fence={fence}"
        try:
            out = build(gluon_attn_fwd_kernel, _descs(q, q, q, q, bm, bn), consts, {"num_warps": 8})
            print(f"{tag:60s} smem {out.metadata.shared:>6}  {cc.ptxas_report(out.asm['ptx'])}")
            print("\n".join("      " + ln for ln in cc.sass_loops(out.asm["cubin"]).splitlines()))
        except Exception as e:  # noqa: BLE001 - report and go on
            bad += 1
            print(f"{tag:60s} FAILED: {type(e).__name__}: {str(e)[-3000:]}")
            import traceback
            traceback.print_exc(limit=-3)
    for D, bm, bn, stages, causal, fence, pp in ws_configs:
        q = torch.empty(B, S, H, D, dtype=torch.bfloat16)
        consts = dict(HEAD_DIM=D, BLOCK_M=bm, BLOCK_N=bn, STAGES=stages, CAUSAL=causal, num_warps=4,
                      SCHED_FENCE=fence, PINGPONG=pp, CONSUMER_REGS=240, PRODUCER_REGS=24)
        tag = f"gluon ws D={D} ({bm}, {bn}, {stages} stages) causal={int(causal)} fence={fence} pingpong={pp}"
        try:
            out = build(gluon_attn_fwd_ws_kernel, _descs(q, q, q, q, bm // 2, bn), consts,
                        {"num_warps": 4, "maxnreg": WS_MAXNREG})
            ptx = out.asm["ptx"]
            # register budgets of the partitions: what the kernel's setmaxnreg instructions ask for
            budgets = sorted({int(x) for x in re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32\s+(\d+)", ptx)})
            print(f"{tag:60s} smem {out.metadata.shared:>6}  warps {out.metadata.num_warps}  "
                  f"{cc.ptxas_report(ptx)} (launch maxnreg; setmaxnreg values {budgets})")
            print("\n".join("      " + ln for ln in _sass_loop_sequences(out.asm["cubin"]).splitlines()))
        except Exception as e:  # noqa: BLE001 - report and go on
            bad += 1
            print(f"{tag:60s} FAILED: {type(e).__name__}: {str(e)[-3000:]}")
            import traceback
            traceback.print_exc(limit=-3)
    return bad


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compile-only", action="store_true")
    args = ap.parse_args()
    # (D, BLOCK_M, BLOCK_N, STAGES, CAUSAL, SCHED_FENCE)
    base = [(128, 128, 128, 2, False), (128, 128, 128, 2, True), (128, 128, 64, 3, False),
            (64, 128, 128, 2, False), (64, 128, 128, 3, True)]
    # (D, BLOCK_M, BLOCK_N, STAGES, CAUSAL, SCHED_FENCE, PINGPONG) of the warp-specialized kernel
    # (BLOCK_M = 2 consumer warpgroups x BLOCK_M / 2 rows; 256 = 128 rows per warpgroup, D = 64 only:
    # at D = 128 it spills).
    ws_configs = [(128, 128, 128, 2, False, 2, 0), (128, 128, 128, 2, False, 2, 1), (128, 128, 128, 2, False, 0, 1),
                  (128, 128, 64, 3, False, 2, 1),
                  (128, 128, 128, 2, True, 2, 0), (128, 128, 128, 2, True, 2, 1),
                  (64, 128, 128, 2, False, 2, 1), (64, 256, 64, 3, False, 2, 0), (64, 256, 64, 3, False, 2, 1),
                  (64, 128, 128, 2, True, 2, 1), (64, 256, 64, 3, True, 2, 1)]
    if args.compile_only:
        configs = [c + (f,) for c in base for f in (0, 1, 2)]
        sys.exit(1 if compile_only(configs, ws_configs) else 0)
    configs = [c + (f,) for c in base for f in (0, 2)]  # fence=1 only in --compile-only

    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import flashkernels
    from flashkernels.bench.common import do_bench_median, warm_gpu
    warm_gpu()
    shapes = [(16384 // S, S, 2048 // D, 2048 // D, D) for D, S in ((128, 4096), (128, 16384), (64, 4096))]
    shapes.append((2, 8192, 32, 8, 128))  # the GQA shape
    for B, S, H, Hkv, D in shapes:
        q = torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(B, S, Hkv, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        for causal in (False, True) if H == Hkv else (True,):
            flops = 4 * B * H * S * S * D / (2 if causal else 1)
            qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
            gqa = H != Hkv
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                ref = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, enable_gqa=gqa).transpose(1, 2)
                cudnn = flops / do_bench_median(lambda: F.scaled_dot_product_attention(
                    qt, kt, vt, is_causal=causal, enable_gqa=gqa)) / 1e9
            _, ref_lse, _ = flashkernels.flash_attn_func(q, k, v, causal=causal, return_attn_probs=True)
            ours = flops / do_bench_median(lambda: flashkernels.flash_attn_func(q, k, v, causal=causal)) / 1e9
            print(f"B={B} S={S} H={H}/{Hkv} D={D} causal={int(causal)}: cudnn {cudnn:.0f} TF/s, flashkernels "
                  f"{ours:.0f}", flush=True)
            runs = [(f"gluon ({bm}, {bn}, {st}) fence={fe}",
                     lambda bm=bm, bn=bn, st=st, fe=fe: gluon_attention(q, k, v, causal, block_m=bm, block_n=bn,
                                                                        stages=st, sched_fence=fe))
                    for d, bm, bn, st, c, fe in configs if d == D and c == causal]
            runs += [(f"gluon-ws ({bm}, {bn}, {st}) fence={fe} pingpong={pp}",
                      lambda bm=bm, bn=bn, st=st, fe=fe, pp=pp: gluon_attention_ws(
                          q, k, v, causal, block_m=bm, block_n=bn, stages=st, sched_fence=fe, pingpong=pp))
                     for d, bm, bn, st, c, fe, pp in ws_configs if d == D and c == causal and S % bm == 0]
            for name, fn in runs:
                try:
                    out, lse = fn()
                    torch.cuda.synchronize()
                    err = (out.float() - ref.float()).abs().max().item()
                    lse_err = (lse - ref_lse).abs().max().item()
                    tf = flops / do_bench_median(fn) / 1e9
                except Exception as e:  # noqa: BLE001 - an experiment: report and go on
                    print(f"  {name}: FAILED {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}",
                          flush=True)
                    continue
                print(f"  {name}: {tf:6.0f} TF/s ({tf / cudnn:.2f}x cudnn, {tf / ours:.2f}x flashkernels), "
                      f"max err out {err:.2e} (vs cuDNN) lse {lse_err:.2e} (vs flashkernels)", flush=True)


if __name__ == "__main__":
    main()
