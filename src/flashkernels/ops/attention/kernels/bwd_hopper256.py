"""Flash attention backward for Hopper (sm_90) at head dim 256, warp-specialized, in Gluon.

Why a kernel of its own: kernels/bwd_hopper.py keeps dK_w and dV_w (64 keys x D fp32 each) in each
consumer warpgroup's registers, 256 registers a thread at D = 256. Here (FA3's hdim-256 shape,
BLOCK_M = BLOCK_N = 64, two consumer warpgroups) the two warpgroups split
dK, dV and dQ along D: warpgroup w owns dK[:, 128w : 128w + 128] and dV[:, 128w : 128w + 128]
(64 + 64 registers a thread) for the whole loop and computes dQ_i[:, 128w : 128w + 128] = dS K.
The scores S = Q_i K^T and dP = dO_i V^T (64 x 64, contraction 256) are shared, so they are split
along the keys (warpgroup w computes keys 32w .. 32w + 31 of both) and P and dS go through
shared memory as bf16 64 x 64 tiles, completed at a 256-thread named barrier (A for P, B for dS).

One CTA = 64 keys n0 .. n0 + 63 of one (batch, kv head); grid and CTA order as bwd_hopper
(_bwd_tile, long-first for causal grids of few waves); the GROUP = H / Hkv query heads of the kv
head are looped inside the CTA (dK / dV summed over them in registers). Partitions:
  - producer (1 warp): K, V (64 x 256 each, once), then per (query head, query block i of 64
    rows) Q_i + lse_i and dO_i + Delta_i into a 2-stage TMA ring (bwd_hopper's protocol);
  - consumer warpgroup w, per query block i:
        S_w = Q_i K_w^T, dP_w = dO_i V_w^T     (keys 32w..: two m64n32k256 wgmmas in flight)
        P_w = exp2(S_w·scale·log2e - lse_i·log2e)   overlaps dP_w; causal: 0 where key > row
        store P_w's 32 columns; barrier A
        dV_w += P^T dO_i[:, 128w..]            (A = the permuted P tile, all 64 keys)
        dS_w = scale · P_w (dP_w - Delta_i); store; barrier B
        dQ_i[:, 128w..] = dS K[:, 128w..] in two 64-column wgmmas, each added to the zeroed fp32
        dQ accumulator; dK_w += dS^T Q_i[:, 128w..]
  At the end dK_w, dV_w are stored with gl.store.
dQ (DQ_TMA, launch.HOPPER_BWD256_DQ_TMA, the default): each 64 x 64 fp32 chunk is stored into
shared memory and added by a TMA reduce-add (FA3's dQ path). No shared memory is left for a tile
of its own, so the chunks go into the halves of the ring stage's dO_i and Q_i tiles that the
warpgroup has finished with (its own columns 128w..: 16 KB each, 64 x 64 fp32), and the stage is
released one iteration later, once the reduces have read them (_dq_dk). EPI_TMA
(launch.HOPPER_BWD256_EPI_TMA, the default): dK_w / dV_w leave by TMA stores, staged in the ring
stage the last iteration did not use, +2-9% at S = 1k-4k (H100, session 9). H100, one process
(scripts/ab_attention.py --gluon --switch HOPPER_BWD256_DQ_TMA --head-dims 256 --modes bwd, FA3
grid, session 9, benchmarks/results/h100-2026-11-26-ab-bwd256-dq-tma.txt): 1.23-1.40x the
atomics, 0.92-1.05x cuDNN. Off, fp32 atomics from the registers, overlapping the next wgmma.
Budget: 0 spills (168 registers a thread at launch, 240 for the consumers); shared memory 230.8
KB of 232.4 (K, V 64 KB; the Q / dO ring 128 KB; lse / Delta; P and dS double-buffered 32 KB): no
room for a third stage.

From the helper-written ``scripts/exp_gluon_bwd256.py`` (its "split dq64" variant; the others,
a dQ of one 128-column wgmma, another dQ issue order, and S / dP on separate warpgroups, were
within 1-3% on an H200 and are kept there). Measured (H200, bf16, that script,
benchmarks/results/h200-2026-11-26-exp-gluon-bwd256.txt: B·S = 16k, H = 8, S = 1k-16k, causal
or not, and GQA B=2 S=8k 16/4): 0.76-0.86x cuDNN, 1.56-1.73x the Triton backward (with atomics).

Restrictions (launch.hopper_bwd_reason): those of bwd_hopper at D = 256.
"""
from .bwd_hopper import (CONSUMER_REGS, MAXNREG, PRODUCER_REGS, _bwd_tail_add, _bwd_tail_done,  # noqa: F401
                         _bwd_tail_handover)
from .bwd_hopper_tiles import _bwd_part_tile, _bwd_tile, _ctaid
from .gluon_base import _pair_barrier, _pdl_launch_dependents, _tma_reduce_add
from .gluon_base import AVAILABLE, gl, gluon

if AVAILABLE:
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                                  warpgroup_mma, warpgroup_mma_wait)

LOG2E = gl.constexpr(1.4426950408889634)

# ---------------------------------------------------------------------------------------------
# Barriers: bwd_hopper's k_bar / v_bar / q_ready / do_ready / empty protocol and phases, with one
# K and one V tile of 64 rows; empty[s]'s two arrivals follow each warpgroup's dK wgmma (the last
# reader of Q_i and dO_i). Named barrier 15 (_pair_barrier, both consumer warpgroups) twice an
# iteration: A (both halves of P stored: each thread st.shared, fence.proxy.async, bar) before the
# dV wgmmas read P; B (both halves of dS stored) before the dQ / dK wgmmas read dS. Both
# warpgroups run every iteration (causal: the diagonal block masked), so they meet equally often.
# P / dS double-buffered by iteration: iteration t writes buffer t % 2, whose last readers (the
# wgmmas of t - 2) each warpgroup retired before barrier A of t - 1, which the writer has passed.
# ---------------------------------------------------------------------------------------------


@gluon.jit
def _bwd256_producer(desc_q, desc_k, desc_v, desc_do, desc_lse, desc_delta, k_smem, v_smem, q_smem, do_smem,
              lse_smem, delta_smem, k_bar, v_bar, q_ready, do_ready, empty, S, H, GROUP,
              q_rb, q_rh, q_ch, k_rb, k_rh, k_ch, v_rb, v_rh, v_ch, do_rb, do_rh, do_ch,
              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr,
              LONG_FIRST: gl.constexpr, TAIL_PARTS: gl.constexpr, tile_base, Flags):
    if TAIL_PARTS:  # (a part of a tile: some of its query blocks; kernels/bwd_hopper.py's tail launch)
        b, hk, n0, i0, n_blocks = _bwd_part_tile(gl.program_id(0), S, H // GROUP, tile_base, BLOCK_M, BLOCK_N,
                                                 TAIL_PARTS)
    else:
        b, hk, n0, i0, n_blocks = _bwd_tile(S, H // GROUP, BLOCK_M, BLOCK_N, CAUSAL, LONG_FIRST)
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
    if TAIL_PARTS:
        _bwd_tail_done(Flags, TAIL_PARTS)


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
           HALF: gl.constexpr, DQ_N: gl.constexpr, DQ_TMA: gl.constexpr, desc_dq, dq_row, dq_col):
    """The end of an iteration, once the dS tile is complete (dV_w += P^T dO_i,w in flight):
    dQ_i columns 128W.. = dS K[:, 128W..] (A = dS, 64 queries x 64 keys) in two wgmmas of DQ_N = 64
    columns, then dK_w += dS^T Q_i,w. Returns (dv, dk). wgmma groups retire in issue order: issue
    dQ0, dQ1, dK; wait(2) -> dV, dQ0 retired; dQ0 out (overlaps dQ1, dK); wait(1) -> dQ1 ...
    (In flight at once: dV, dQ0, dQ1, dK = 192 registers.)

    Atomics (DQ_TMA off): dQ0 and dQ1 added with fp32 atomics from the registers (dQ1's overlap
    dK), then the ring stage released (``empty_s``).
    DQ_TMA: each 64 x 64 fp32 chunk staged in shared memory this warpgroup no longer reads and
    added by a TMA reduce-add at (dq_row, dq_col (+ DQ_N)) of desc_dq's 2-D view (FA3's dQ path,
    without a tile of its own: no shared memory is left for one). dQ0 goes into this warpgroup's
    half of dO_i (columns 128W..: 64 rows x 128 bf16 = 16 KB = 64 x 64 fp32), free once its dV
    wgmma retired (the other warpgroup reads only its own half in dV, and its dP_i, which reads
    all of dO_i, retired before it reached barrier B); dQ1 into its half of Q_i once the dK wgmma
    (the last reader; the other warpgroup's S_i retired before barrier A) retired. The stage is
    not released here: the caller does it once the reduces have read the chunks (tma.store_wait)."""
    gl.static_assert(2 * DQ_N == HALF)
    dq0_tok = warpgroup_mma(ds_buf, k_smem.slice(W * HALF, DQ_N, dim=1), dq_zero, use_acc=False, is_async=True)
    dq1_tok = warpgroup_mma(ds_buf, k_smem.slice(W * HALF + DQ_N, DQ_N, dim=1), dq_zero, use_acc=False,
                            is_async=True)
    dk_tok = warpgroup_mma(ds_buf.permute((1, 0)), q_s.slice(W * HALF, HALF, dim=1), dk, is_async=True)
    dv, dq0, _, _ = warpgroup_mma_wait(2, deps=(dv_tok, dq0_tok, p_buf, k_smem))
    if DQ_TMA:
        # (the stage as fp32 [64, 128]: the same 128-byte-swizzled 8 KB column chunks, so columns
        # 64W.. of it are bf16 columns 128W.. of the tile)
        st_do = do_s._reinterpret(gl.float32, [do_s.shape[0], HALF], desc_dq.layout).slice(W * DQ_N, DQ_N, dim=1)
        st_do.store(dq0)
        fence_async_shared()
        gl.thread_barrier()  # every thread's stores before the one thread's TMA
        _tma_reduce_add(desc_dq, [dq_row, dq_col], st_do)
        dq1, _, _ = warpgroup_mma_wait(1, deps=(dq1_tok, ds_buf, k_smem))
        dk, _, _, _ = warpgroup_mma_wait(0, deps=(dk_tok, ds_buf, q_s, do_s))
        st_q = q_s._reinterpret(gl.float32, [q_s.shape[0], HALF], desc_dq.layout).slice(W * DQ_N, DQ_N, dim=1)
        st_q.store(dq1)
        fence_async_shared()
        gl.thread_barrier()
        _tma_reduce_add(desc_dq, [dq_row, dq_col + DQ_N], st_q)
    else:
        gl.atomic_add(dq_ptr, dq0, sem="relaxed")  # overlaps dQ1, dK
        dq1, _, _ = warpgroup_mma_wait(1, deps=(dq1_tok, ds_buf, k_smem))
        gl.atomic_add(dq_ptr + DQ_N, dq1, sem="relaxed")  # overlaps dK
        dk, _, _, _ = warpgroup_mma_wait(0, deps=(dk_tok, ds_buf, q_s, do_s))
        mbarrier.arrive(empty_s)  # dV_i (dO_i) and dK_i (Q_i) retired: the stage is free
    return dv, dk


@gluon.jit
def _bwd256_consumer(W: gl.constexpr, DQ, DK, DV, sm_scale, k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem,
              p_smem, ds_smem, k_bar, v_bar, q_ready, do_ready, empty, S, H, GROUP,
              HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
              CAUSAL: gl.constexpr, OUT_BSHD: gl.constexpr, LONG_FIRST: gl.constexpr, DQ_TMA: gl.constexpr,
              desc_dq, EPI_TMA: gl.constexpr, desc_dk, desc_dv, TAIL_PARTS: gl.constexpr, tile_base, Part, Flags):
    """Consumer warpgroup W: scores of keys n0 + 32W .. + 31; dK, dV, dQ columns 128W .. + 127.
    DQ (fp32, H heads) and DK / DV (H / GROUP heads) contiguous (B, S, heads, D) when OUT_BSHD,
    else (B, heads, S, D) (strides from S and the head counts, as bwd_hopper). DQ_TMA: dQ by TMA
    reduce-adds through desc_dq (DQ's 2-D view, launch._grad_desc), each iteration's stage
    released in the next one, after the S / dP wgmmas are issued, once the reduces have read it.
    EPI_TMA (with DQ_TMA): dK_w and dV_w go out by TMA stores (desc_dk / desc_dv: 64 x 128 tiles of
    DK / DV's 2-D views), staged in this warpgroup's column half of the ring stage the last
    iteration did not use: both warpgroups are past its last readers (their S / dP / dV / dK
    wgmmas and dQ reduces of iteration t - 1 retired before their release of it at iteration t,
    and each passed the other's pair barrier B of the last iteration) and the producer loads
    nothing more into it."""
    dtype: gl.constexpr = k_smem.dtype
    HKV = H // GROUP
    if TAIL_PARTS:  # (a part of a tile: some of its query blocks; kernels/bwd_hopper.py's tail launch)
        b, hk, n0, i0, n_blocks = _bwd_part_tile(gl.program_id(0), S, HKV, tile_base, BLOCK_M, BLOCK_N, TAIL_PARTS)
    else:
        b, hk, n0, i0, n_blocks = _bwd_tile(S, HKV, BLOCK_M, BLOCK_N, CAUSAL, LONG_FIRST)
    HALF: gl.constexpr = HEAD_DIM // 2  # this warpgroup's columns of dK, dV, dQ
    DQ_N: gl.constexpr = HALF // 2      # columns of one dQ wgmma (two a block)
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
        if DQ_TMA:  # the last iteration's stage, once its dQ reduces have read their chunks of it
            if t > 0:
                tma.store_wait(0)    # (the issuing thread)
                gl.thread_barrier()  # ... before the warpgroup's arrival
                mbarrier.arrive(empty.index((t - 1) % STAGES))
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
        # so that dQ's adds overlap the dK wgmma. (Atomics:) row pointers in int64: 2 base registers +
        # immediate column offsets in the REDGs (int32 offsets cost a 64-bit address per column group).
        if DQ_TMA:  # DQ (B, S, H, D) as (B·S, H·D), else (B, H, S, D) as (B·H·S, D)
            dq_ptr = dq_base  # (unused)
            if OUT_BSHD:
                dq_row = b * S + m0
                dq_col = (hk * GROUP + g) * HEAD_DIM + W * HALF
            else:
                dq_row = (b * H + hk * GROUP + g) * S + m0
                dq_col = W * HALF
        else:
            dq_ptr = (dq_base + g * q_sh + (m0 + dq_rows).to(gl.int64)[:, None] * q_ss) + dq_cols[None, :]
            dq_row = 0
            dq_col = 0
        dv, dk = _dq_dk(W, dv_tok, dk, ds_buf, p_buf, k_smem, q_s, do_s, dq_ptr, dq_zero, empty.index(s),
                        HALF, DQ_N, DQ_TMA, desc_dq, dq_row, dq_col)
    if DQ_TMA:
        tma.store_wait(0)  # (the shared memory must outlive the last reduces' reads)

    # dK_w (already scaled), dV_w, summed over the group's query heads: columns 128W.. of 64 keys.
    if TAIL_PARTS:  # a part: handed over, or the tile's parts merged and stored (as kernels/bwd_hopper.py's
        # _bwd_tail_out, written out here: through it, with the output pointers made before the branch, this build
        # spilled 332-832 B; session 31, compile_check)
        pid = _ctaid(0)
        first = (pid // TAIL_PARTS) * (TAIL_PARTS - 1)  # the tile's first slot pair
        p = pid % TAIL_PARTS
        t_rows = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, kv_layout))
        t_offs = t_rows[:, None] * HALF + gl.arange(0, HALF, layout=gl.SliceLayout(0, kv_layout))[None, :]
        if p < TAIL_PARTS - 1:
            _bwd_tail_handover(dk, dv, t_offs, t_rows, Part, Flags, (first + p) * 2 + W, BLOCK_N * HALF)
        else:  # (stored from the registers, dK_w then dV_w: one partial in registers at a time)
            o_offs = b * k_sb + hk * k_sh + (n0 + t_rows)[:, None] * k_ss + W * HALF + \
                gl.arange(0, HALF, layout=gl.SliceLayout(0, kv_layout))[None, :]
            dk = _bwd_tail_add(dk, t_offs, t_rows, Part, Flags, first, 0, W, BLOCK_N * HALF, TAIL_PARTS)
            gl.store(DK + o_offs, dk.to(DK.dtype.element_ty))
            dv = _bwd_tail_add(dv, t_offs, t_rows, Part, Flags, first, 1, W, BLOCK_N * HALF, TAIL_PARTS)
            gl.store(DV + o_offs, dv.to(DV.dtype.element_ty))
    else:
        _bwd256_out(W, dk, dv, DK, DV, q_smem, do_smem, S, b, hk, n0, HKV, k_sb, k_sh, k_ss, HEAD_DIM, HALF,
                    BLOCK_N, STAGES, OUT_BSHD, GROUP * n_blocks, EPI_TMA, DQ_TMA, desc_dk, desc_dv, kv_layout)


@gluon.jit
def _bwd256_out(W: gl.constexpr, dk, dv, DK, DV, q_smem, do_smem, S, b, hk, n0, HKV, k_sb, k_sh, k_ss,
                HEAD_DIM: gl.constexpr, HALF: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                OUT_BSHD: gl.constexpr, n_iter, EPI_TMA: gl.constexpr, DQ_TMA: gl.constexpr, desc_dk, desc_dv,
                kv_layout: gl.constexpr):
    """Warpgroup W's dK_w, dV_w (64 keys from n0 x columns 128W..) stored: by TMA from the ring stage the last of
    the n_iter iterations did not use (EPI_TMA), else from the registers."""
    dtype: gl.constexpr = q_smem.dtype
    if EPI_TMA:
        gl.static_assert(DQ_TMA)  # (the stage's release argument above is DQ_TMA's)
        gl.static_assert(STAGES == 2)
        free = n_iter % STAGES  # the stage the last iteration did not use
        ep_k = q_smem.index(free).slice(W * HALF, HALF, dim=1)
        ep_v = do_smem.index(free).slice(W * HALF, HALF, dim=1)
        ep_k.store(dk.to(dtype))
        ep_v.store(dv.to(dtype))
        fence_async_shared()
        gl.thread_barrier()  # every thread's stores before the one thread's TMA
        if OUT_BSHD:  # DK / DV (B, S, Hkv, D) as (B·S, Hkv·D), else (B, Hkv, S, D) as (B·Hkv·S, D)
            row = b * S + n0
            col = hk * HEAD_DIM + W * HALF
        else:
            row = (b * HKV + hk) * S + n0
            col = W * HALF
        tma.async_copy_shared_to_global(desc_dk, [row, col], ep_k)
        tma.async_copy_shared_to_global(desc_dv, [row, col], ep_v)
        tma.store_wait(0)
    else:
        o_rows = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, kv_layout))
        o_cols = gl.arange(0, HALF, layout=gl.SliceLayout(0, kv_layout))
        o_offs = b * k_sb + hk * k_sh + (n0 + o_rows)[:, None] * k_ss + W * HALF + o_cols[None, :]
        gl.store(DK + o_offs, dk.to(DK.dtype.element_ty))
        gl.store(DV + o_offs, dv.to(DV.dtype.element_ty))


@gluon.jit
def attn_bwd_hopper256_kernel(desc_q, desc_k, desc_v, desc_do, desc_lse, desc_delta, DQ, DK, DV, sm_scale, S, H,
                              GROUP, q_rb, q_rh, q_ch, k_rb, k_rh, k_ch, v_rb, v_rh, v_ch, do_rb, do_rh, do_ch,
                              HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                              STAGES: gl.constexpr, CAUSAL: gl.constexpr, OUT_BSHD: gl.constexpr,
                              LONG_FIRST: gl.constexpr, num_warps: gl.constexpr, DQ_TMA: gl.constexpr = False,
                              desc_dq=None, EPI_TMA: gl.constexpr = False, desc_dk=None, desc_dv=None,
                              PDL_TRIGGER: gl.constexpr = False, TAIL_PARTS: gl.constexpr = 0, tile_base=0, Part=None,
                              Flags=None):
    """Grid (S // BLOCK_N, B * H // GROUP), or (B * H // GROUP, S // BLOCK_N) if LONG_FIRST; launch
    with num_warps=4 (the default partition = consumer warpgroup 0) and maxnreg=MAXNREG.
    desc_q/k/v/do: 2-D views ((rb, rh, ch) placement, launch._hopper_view), blocks of 64 x 256;
    desc_lse, desc_delta: 1-D over (B, H, S) fp32, blocks of BLOCK_M; DQ fp32 zeroed, DK, DV in
    the input dtype, (B, S, heads, D) contiguous when OUT_BSHD, else (B, heads, S, D). DQ_TMA: dQ
    added by TMA reduce-adds (desc_dq: launch._grad_desc with 64-column tiles) instead of atomics.
    EPI_TMA (with DQ_TMA): dK / dV stored by TMA (desc_dk / desc_dv: their 2-D views in 64 x 128
    tiles, launch._grad_desc's placement) instead of from the registers. PDL_TRIGGER, TAIL_PARTS, tile_base, Part,
    Flags: kernels/bwd_hopper.py's tail launch (the plain non-causal geometry), a part's dK_w / dV_w 64 x 128."""
    gl.static_assert(num_warps == 4)
    gl.static_assert(TAIL_PARTS == 0 or (TAIL_PARTS >= 2 and not (CAUSAL or LONG_FIRST)))
    if PDL_TRIGGER:  # (the tail launch after this grid may start now: it reads nothing this grid writes)
        _pdl_launch_dependents()
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
    # P, dS: 64 queries x 64 keys; 64-byte swizzle, so that each warpgroup's 32 key columns are
    # whole swizzle atoms (32 bf16) of the tile it stores into. Double-buffered by iteration.
    pds_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=64, element_bitwidth=16, rank=2)
    p_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_M, BLOCK_N], pds_layout)
    ds_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_M, BLOCK_N], pds_layout)
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
    gl.warp_specialize([
        (_bwd256_consumer, (0, DQ, DK, DV, sm_scale, k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem, p_smem,
                            ds_smem, k_bar, v_bar, q_ready, do_ready, empty, S, H, GROUP,
                            HEAD_DIM, BLOCK_M, BLOCK_N, STAGES, CAUSAL, OUT_BSHD, LONG_FIRST, DQ_TMA, desc_dq,
                            EPI_TMA, desc_dk, desc_dv, TAIL_PARTS, tile_base, Part, Flags)),
        (_bwd256_consumer, (1, DQ, DK, DV, sm_scale, k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem, p_smem,
                            ds_smem, k_bar, v_bar, q_ready, do_ready, empty, S, H, GROUP,
                            HEAD_DIM, BLOCK_M, BLOCK_N, STAGES, CAUSAL, OUT_BSHD, LONG_FIRST, DQ_TMA, desc_dq,
                            EPI_TMA, desc_dk, desc_dv, TAIL_PARTS, tile_base, Part, Flags)),
        (_bwd256_producer, (desc_q, desc_k, desc_v, desc_do, desc_lse, desc_delta, k_smem, v_smem, q_smem, do_smem,
                            lse_smem, delta_smem, k_bar, v_bar, q_ready, do_ready, empty, S, H, GROUP,
                            q_rb, q_rh, q_ch, k_rb, k_rh, k_ch, v_rb, v_rh, v_ch, do_rb, do_rh, do_ch,
                            BLOCK_M, BLOCK_N, STAGES, CAUSAL, LONG_FIRST, TAIL_PARTS, tile_base, Flags)),
    ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])
