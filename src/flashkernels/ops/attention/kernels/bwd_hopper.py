"""Flash attention backward for Hopper (sm_90), warp-specialized, in Gluon: kernel code only.

Why: the Triton backward (kernels/bwd.py: a dK/dV kernel and a dQ kernel, 7 matmuls a block
pair) reaches 0.58-0.62x cuDNN on Hopper; this kernel, FA3's structure, computes dQ in the same
pass as dK/dV (5 matmuls a block pair, dQ added into an fp32 accumulator) with the exponentials overlapping the
tensor cores: 0.79-0.84x cuDNN where the Triton backward reads 0.58-0.62x (H200, bf16, D = 128,
B·S = 16k at S = 4k and 16k, and GQA 32/8 at S = 8k: ``python scripts/exp_gluon_bwd.py``, where
its variants live; benchmarks/results/h200-2026-11-26-exp-gluon-bwd.txt).

Structure of one CTA (grid over (B·Hkv, S / BLOCK_N): see _bwd_tile for the order; BLOCK_N = 128 keys of one (batch, kv head),
visited by each of the GROUP = H / Hkv query heads that share it, one after another, so dK and
dV sum over the group in registers; ``gl.warp_specialize``):
  - a 1-warp producer partition issues every TMA load: the CTA's K and V (two 64-row halves
    each, loaded once), then per (query head, query block i of BLOCK_M = 64 rows; 128 at D = 64
    without the feature flags, FA3's tile there) Q_i with lse_i and dO_i with
    Delta_i into a ring of STAGES stages (ready mbarriers per tile, one empty mbarrier a stage);
    lse and Delta (B, H, S) fp32 arrive by 1-D TMA copies of BLOCK_M floats (VARLEN: loads);
  - two consumer warpgroups (the default partition and a 4-warp worker); warpgroup w owns keys
    n0 + 64w .. n0 + 64w + 63 (K_w, V_w) and keeps dK_w, dV_w (64 x D fp32 each) in registers
    for the whole loop.

Per query block i, in warpgroup w (keys are the rows, so P^T and dS^T come out of the wgmma
accumulator in the register layout of the A operand of the dV / dK wgmmas):

    S^T  = K_w Q_i^T, dP^T = V_w dO_i^T          two async wgmmas in flight
    P^T  = exp2(S^T·scale·log2e - lse_i·log2e)   overlaps the dP^T wgmma; causal: 0 where key > row
    dV_w += P^T dO_i                             A = P^T from registers
    dS^T = scale · P^T (dP^T - Delta_i)          (the scale folded in: dK and dQ need no scaling)
    both warpgroups store their dS^T into one 128-key x 64 shared tile (double-buffered by
    iteration), meet at a 256-thread named barrier, and warpgroup w computes columns
    w·D/2 .. (w + 1)·D/2 - 1 of dQ_i = dS K over all 128 keys (BLOCK_M = 128: rows 64w .. 64w + 63,
    all D columns; +5-20% over 64-row blocks at D = 64: H100, FA3 grid, scripts/ab_attention.py --gluon
    --switch HOPPER_BWD_M128, session 13)
    dK_w += dS^T Q_i                             A = dS^T from registers, issued after dQ_i
    dQ_i's columns go to the zeroed fp32 dQ accumulator while the dK wgmma runs: with DQ_TMA
    (launch's default) through a shared-memory tile and one TMA reduce-add
    (cp.reduce.async.bulk.tensor, built through Gluon's op builder: tma.py 3.6 has no wrapper;
    FA3's dQ path), else with ``atomic_add`` from registers (``REDG.E.ADD.F32x2``, 16 a thread).
    On the H100 the TMA reduce made the backward 10-16% faster at D = 128 and 1-9% at D = 64
    (FA3 grid, scripts/ab_attention.py --gluon --switch HOPPER_BWD_DQ_TMA, session 8): 0.91-1.00x
    cuDNN at D = 128, where the atomics read 0.82-0.87x.
    Causal builds split the pair barrier (SPLIT_BAR, launch.HOPPER_BWD_SPLIT_BAR): an arrive after
    this warpgroup's dS^T store, a sync before its dQ_i wgmma, the dK_i wgmma issued between (so
    the order is dV_i, dK_i, dQ_i, and dQ_i's staging follows all three). On the blocks the diagonal
    crosses the two warpgroups' work differs, and the one that comes first has tensor work queued
    while it waits: causal +1-3%, but non-causal -6% at D = 128, where the warpgroups arrive together
    and the staging's overlap with dK_i is what counts (H100, bf16, FA3 grid at S 4k / 16k,
    scripts/ab_attention.py --gluon --paired 30, docs/perf-notes.md session 20).
    Causal builds also hand the dQ reduces to the producer warp (PROD_WRITER,
    launch.HOPPER_BWD_PROD_WRITER): the consumers store dQ_i's tiles and release the stage; the
    producer, once it waited for that release (to reuse the stage), issues the two reduces, waits
    for their reads of the tiles and arrives at dq_free, which the consumers wait for before the
    next store. The TMA issue and its wait leave the consumers' instruction stream: causal +2-3% at
    D = 128, +1% at D = 64; non-causal -3% at D = 128 (H100, bf16, FA3 grid at S 4k / 16k,
    scripts/ab_attention.py --gluon --paired 30, perf-notes session 21).

At the end dK_w and dV_w are stored with gl.store (once per CTA), or with EPI_TMA (launch.HOPPER_BWD_EPI_TMA) by TMA
stores staged in shared memory no iteration reads again (_bwd_epi_tma). Causal: the CTA with keys from
n0 visits only the query blocks with rows >= n0 (WINDOW: see below).

The plain non-causal backward's last round (launch.HOPPER_BWD_TAIL): the grid without its last rows of tiles
(PDL_TRIGGER: each CTA lets the next launch start first thing), then those rows' tiles as a second launch of
TAIL_PARTS CTAs a tile (each a part of the tile's query blocks, the parts' dK / dV merged through a workspace), by
programmatic dependent launch: its parts fill the SMs the main grid's last round leaves idle (+1.5-1.7% at 16k on
an H200, docs/perf-notes.md session 29). The main grid's code is the plain build's: a split decided inside one
kernel moved ptxas's schedule of the block loop and cost 0.5-5% (docs/patches/s29-bwd-split-tail.patch).

Features (constexpr flags, each off in the plain build, whose SASS they leave as it was; the
forward's semantics, hopper_softmax._softmax_step, in its order and rounding, so that P^T matches the
forward's lse; the gradients as kernels/bwd.py's):
  - SOFTCAP: t = tanh.approx(S^T·scale/softcap), P^T = exp2(t·softcap·log2e - lse_i·log2e), and
    dS^T = scale · P^T (1 - t²) (dP^T - Delta_i) (d(softcap·tanh(x·scale/softcap))/dx). P^T goes
    to 16 bits (the dV operand) before the causal mask and P^T (1 - t²) stays in fp32: with t and
    P^T both in fp32 across the mask's branch the causal loop spilled.
  - ALIBI: -slope·|i - j| added to the (capped) scores before the exponential, the slope over the
    scores' scale as the forward computes it; a GQA group's slopes ((H,) or (B, H) through a
    pointer and strides) go to shared memory once per CTA (launch.py: at most ALIBI_GROUP_MAX
    query heads a kv head), the loop reads query head g's. No gradient to the slopes.
  - the sink needs no flag: the forward's lse includes it, so P^T = exp(S^T - lse) is already
    right (Delta = rowsum(dO·O) holds: the sink has no value); dsink = -sum exp(sink - lse)·Delta
    is torch code in launch.attn_bwd_impl, as for the Triton backward.
  - WINDOW (as the forward's: row i sees keys i + off - left .. i + off + right, off =
    causal_offset), which the launcher passes for every call but the plain geometry (Sq = Sk,
    causal on the diagonal i = j or not at all): sliding windows, Sq != Sk (the grid over Sk / 128
    key blocks, S being Sq), any causal offset (right = 0), and ALiBi with an offset (the distance
    is |i + off - j|). A CTA visits the query blocks whose rows see one of its keys (none: its dK,
    dV are 0); the blocks the window cuts are masked (a row that sees no key, lse = -inf, lies in
    those only: its P^T is 0 there).
  - VARLEN (packed sequences, flash_attn_varlen_func's; OUT_BSHD): q, k, v, dO are (1, H, total,
    D), CuQ / CuK int32 offsets; the grid's y (x with LONG_FIRST) runs over (sequence, kv head), its
    key blocks over the longest sequence, and a CTA whose keys start past its sequence's visits no
    query block (its K / V loads are wasted; it stores nothing). Each CTA reads its sequence's
    bounds and bottom-right offset seqlen_k - seqlen_q (CAUSAL, WINDOW and ALiBi use it as WINDOW
    uses causal_offset); its TMA tiles start at
    the sequence's rows, so the last query / key block reads the next sequence's rows (or TMA's
    zeros past the tensor); lse and Delta come by the producer warp's masked loads (desc_lse,
    desc_delta are fp32 pointers: a 1-D TMA copy must start 16-byte aligned, h·total_q + q0 + m0 a
    multiple of 4, else an illegal instruction on the H100, as any sequence start off that grid
    gave); on such a block P^T is selected to 0 past seqlen_q / seqlen_k (a select,
    their lse being anything), the dQ atomics are masked to the sequence's rows and the dK / dV
    stores to its keys.
  The features' i + off - j (and their masks) come from one value a thread plus constants (see
  _bwd_consumer), not from the 16 column indices the plain build's mask keeps. Softcap with
  ALiBi masks (causal or window) before the exponential on every block (no branch: it spilled).

Restrictions (the launcher, launch.hopper_bwd_reason, checks every one): those of the forward
(fwd_hopper.py: bf16/fp16, Sq and Sk multiples of 128 (packed sequences: any lengths), 2-D TMA
views of q, k, v, dO, scale > 0, no mask; every one of its features) at D = 64 or 128
(launch.HOPPER_BWD_HEAD_DIMS), packed sequences as well (the forward's VARLEN too), ALiBi with at most ALIBI_GROUP_MAX query heads a kv head, plus int32 element offsets into the dQ
accumulator and the dK / dV outputs (B·S·H·D < 2^31). GQA costs no memory or pass beyond MHA's
(the group's heads loop inside the CTA, as FA3's); it does make B·Hkv·Sk / 128 CTAs, GROUP times
fewer than MHA's.

Without a Gluon that imports (see gluon_base.AVAILABLE) the definitions below are inert.
"""
from .bwd_hopper_tiles import (_bwd_part_tile, _bwd_tile, _bwd_tile_again, _ctaid, _diag_cuts,  # noqa: F401
                               _opaque, _varlen_cuts, _varlen_keep, _window_cuts, _window_keep)
from .gluon_base import (AVAILABLE, LOG2E, UNAVAILABLE_REASON, _RELEASE_ASM, _SPIN_ASM, _bar_arrive,  # noqa: F401
                         _bar_sync, _pair_barrier, _pdl_launch_dependents, _tanh_approx, _tma_reduce_add, _varlen_seq,
                         gl, gluon)  # (UNAVAILABLE_REASON: re-exported)

if AVAILABLE:
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                                  warpgroup_mma, warpgroup_mma_wait)

# Partition register budgets and the launch's cap, as in the forward: 3 warpgroups x 128 threads
# x 168 registers = the 64K-register file, so 1 CTA / SM with 240-register consumers.
CONSUMER_REGS = gl.constexpr(240)
PRODUCER_REGS = gl.constexpr(24)
MAXNREG = 168
# ALiBi: the slopes of a GQA group's query heads are read once into shared memory (launch.py
# refuses larger groups with ALiBi)
ALIBI_GROUP_MAX = gl.constexpr(128)
# SPLIT_BAR's named barriers: SPLIT_BAR_ID + 2 (t % 2) + w, "warpgroup w's dS^T of iteration t is stored"
# (w arrives, the other warpgroup syncs; 256 threads). By iteration parity, so that a warpgroup one
# iteration ahead arrives at the other pair: it cannot complete a barrier of the iteration the other
# warpgroup has not yet waited at (with one pair it could, and both would then wait forever).
SPLIT_BAR_ID = gl.constexpr(11)


# ---------------------------------------------------------------------------------------------
# Barriers (all in shared memory, initialised before gl.warp_specialize):
#   k_bar, v_bar   count 1: the producer's expect-tx arrive + both halves' bytes; complete once.
#   q_ready[s], do_ready[s]  count 1 (the producer's expect-tx arrive) + the TMA bytes.
#   empty[s]       count 2: one arrive per consumer warpgroup, once its last wgmmas reading
#                  Q_i and dO_i of that stage (dK += dS^T Q_i, dV += P^T dO_i) retired (lse_i,
#                  Delta_i: read with ld.shared before that).
#   dq_free        (PROD_WRITER) count 1: the producer's arrive once the reduces of iteration t's dQ
#                  tiles have read them (its t-th completion); consumers wait parity (t & 1) ^ 1
#                  before storing iteration t's tiles (t = 0: passes). The producer reduces iteration
#                  t only after t released its stage, so it is never ahead of the consumers' wait.
#   Named barrier 15 (_pair_barrier) syncs the two consumer warpgroups before the dQ wgmma; with
#   SPLIT_BAR named barriers 11..14 instead (an arrive and a sync, SPLIT_BAR_ID). Triton's
#   warp-specialize lowering uses ids 0..2.
#
# mbarrier.arrive is ONE thread per partition in triton 3.6 (see fwd_hopper), hence count 2;
# that thread arrives after its own warpgroup_mma_wait, which covers the whole warpgroup.
#
# Phases. Iteration t (query head t // n_blocks of the group, its query block t % n_blocks,
# counted from the CTA's first) lives in stage s = t % STAGES, on its use r = t // STAGES.
#   ready[s]: phase r completes when block t's bytes landed -> consumers wait parity r & 1.
#   empty[s]: phase r completes when both warpgroups released block t -> before loading block t
#     the producer needs phase r - 1: parity (r & 1) ^ 1 (r = 0: a fresh barrier passes at once).
# Both warpgroups compute every block (causal: warpgroup 1's first block, entirely above its keys,
# is masked to zero), so they meet at the pair barrier in every iteration.
# ---------------------------------------------------------------------------------------------


@gluon.jit
def _dq_place(b, hk, S, H, GROUP, HEAD_DIM: gl.constexpr, OUT_BSHD: gl.constexpr, VARLEN: gl.constexpr):
    """(row, col) of the group's first query head, query row 0, in the fp32 dQ accumulator's 2-D
    view: (B·S, H·D) when OUT_BSHD (VARLEN: (total_q, H·D)), else (B·H·S, D). A warpgroup's tile
    adds _dq_wg(W); _dq_add moves it to the iteration's head and rows."""
    if VARLEN:
        return 0, (hk * GROUP) * HEAD_DIM
    elif OUT_BSHD:
        return b * S, (hk * GROUP) * HEAD_DIM
    else:
        return (b * H + hk * GROUP) * S, 0


@gluon.jit
def _dq_wg(W, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr):
    """(rows, cols) of warpgroup W's dQ tile from the block's: BLOCK_M 128, its 64 rows x D; else
    all rows x its D / 2 columns."""
    if BLOCK_M == 128:
        return W * 64, 0
    else:
        return 0, W * (HEAD_DIM // 2)


@gluon.jit
def _dq_add(desc_dq, tile, row0, col0, g, m0, S, HEAD_DIM: gl.constexpr, OUT_BSHD: gl.constexpr):
    """The TMA reduce-add of a dQ tile placed at (row0, col0) (_dq_place + _dq_wg) for query head g
    of the group and the query rows from m0 (VARLEN: the packed rows, the sequence's start included)."""
    if OUT_BSHD:
        _tma_reduce_add(desc_dq, [row0 + m0, col0 + g * HEAD_DIM], tile)
    else:
        _tma_reduce_add(desc_dq, [row0 + g * S + m0, col0], tile)


@gluon.jit
def _dq_reduce(desc_dq, dq_smem, t, i0, n_blocks, row0, col0, q0, S, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr,
               OUT_BSHD: gl.constexpr, VARLEN: gl.constexpr):
    """PROD_WRITER: the TMA reduce-adds of iteration t's dQ tiles (dq_smem[0], dq_smem[1], the two
    consumer warpgroups') into the fp32 accumulator, where the consumers' DQ_TMA path adds them;
    (row0, col0): _dq_place's."""
    g = t // n_blocks
    m0 = (i0 + t - g * n_blocks) * BLOCK_M
    if VARLEN:
        m0 = q0 + m0
    for w in gl.static_range(2):
        dm, dc = _dq_wg(w, HEAD_DIM, BLOCK_M)
        _dq_add(desc_dq, dq_smem.index(w), row0 + dm, col0 + dc, g, m0, S, HEAD_DIM, OUT_BSHD)


@gluon.jit
def _bwd_producer(desc_q, desc_k, desc_v, desc_do, desc_lse, desc_delta, k_smem, v_smem, q_smem, do_smem,
                  lse_smem, delta_smem, k_bar, v_bar, q_ready, do_ready, empty, S, H, GROUP,
                  q_rb, q_rh, q_ch, k_rb, k_rh, k_ch, v_rb, v_rh, v_ch, do_rb, do_rh, do_ch,
                  causal_offset, window_left, window_right, CuQ, CuK,
                  BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr,
                  LONG_FIRST: gl.constexpr, WINDOW: gl.constexpr, VARLEN: gl.constexpr, PROD_WRITER: gl.constexpr,
                  desc_dq, dq_smem, dq_free, HEAD_DIM: gl.constexpr, OUT_BSHD: gl.constexpr,
                  TAIL_PARTS: gl.constexpr, tile_base, Flags):
    # row m of head h of batch b: row b*rb + h*rh + m, column h*ch of each 2-D view (launch._hopper_view);
    # VARLEN (one batch of S = total_q rows): row h*rh + q0 + m of sequence b, whose rows start at q0 (keys: k0)
    if VARLEN:
        b, hk, n0, i0, n_blocks, q0, k0, seqlen_q, _, _ = _bwd_tile(S, H // GROUP, BLOCK_M, BLOCK_N, CAUSAL,
                                                                    LONG_FIRST, causal_offset, window_left,
                                                                    window_right, WINDOW, CuQ, CuK, VARLEN)
        # lse / Delta by loads (desc_lse, desc_delta: fp32 pointers here): a 1-D TMA copy needs a
        # 16-byte aligned start (h * total_q + q0 + m0 a multiple of 4), else an illegal instruction
        lrows = gl.arange(0, BLOCK_M, layout=gl.BlockedLayout([BLOCK_M // 32], [32], [1], [0]))
        row_k = hk * k_rh + k0 + n0
        row_v = hk * v_rh + k0 + n0
        kv_pred = n_blocks > 0  # a key block past the sequence's keys loads no K / V (the consumers wait for none)
    else:
        if TAIL_PARTS:  # (a part of a tile: some of its query blocks)
            b, hk, n0, i0, n_blocks = _bwd_part_tile(gl.program_id(0), S, H // GROUP, tile_base, BLOCK_M, BLOCK_N,
                                                     TAIL_PARTS)
        else:
            b, hk, n0, i0, n_blocks = _bwd_tile(S, H // GROUP, BLOCK_M, BLOCK_N, CAUSAL, LONG_FIRST, causal_offset,
                                                window_left, window_right, WINDOW)
        row_k = b * k_rb + hk * k_rh + n0
        row_v = b * v_rb + hk * v_rh + n0
        kv_pred = True
        q0 = 0
    if PROD_WRITER:
        row0, col0 = _dq_place(b, hk, S, H, GROUP, HEAD_DIM, OUT_BSHD, VARLEN)
    # K and V once (K_w, V_w: the rows of consumer warpgroup w), then the Q / dO ring.
    mbarrier.expect(k_bar, 2 * desc_k.block_type.nbytes, pred=kv_pred)
    for w in gl.static_range(2):
        tma.async_copy_global_to_shared(desc_k, [row_k + w * 64, hk * k_ch], k_bar, k_smem.slice(w * 64, 64),
                                        pred=kv_pred)
    mbarrier.expect(v_bar, 2 * desc_v.block_type.nbytes, pred=kv_pred)
    for w in gl.static_range(2):
        tma.async_copy_global_to_shared(desc_v, [row_v + w * 64, hk * v_ch], v_bar, v_smem.index(w), pred=kv_pred)
    # t runs over (query head of the group, query block): the group's heads one after another
    n_iter = GROUP * n_blocks
    for t in range(n_iter):
        s = t % STAGES
        mbarrier.wait(empty.index(s), ((t // STAGES) & 1) ^ 1)
        if PROD_WRITER:  # iteration t - STAGES released its stage, after its dQ tiles were stored: add them
            if t >= STAGES:
                _dq_reduce(desc_dq, dq_smem, t - STAGES, i0, n_blocks, row0, col0, q0, S, HEAD_DIM, BLOCK_M,
                           OUT_BSHD, VARLEN)
        h = hk * GROUP + t // n_blocks
        m0 = (i0 + t % n_blocks) * BLOCK_M
        if VARLEN:  # (a block past the sequence's end reads the next one's rows, or TMA's zeros: masked)
            m0 = q0 + m0
            row_l = h * S + m0
            row_q = h * q_rh + m0
            row_do = h * do_rh + m0
        else:
            row_l = (b * H + h) * S + m0  # lse / Delta (B, H, S) as one 1-D tensor
            row_q = b * q_rb + h * q_rh + m0
            row_do = b * do_rb + h * do_rh + m0
        # Q_i with lse_i (needed together: P^T), dO_i with Delta_i (dP^T, dS^T)
        if VARLEN:  # (the sequence's rows; past them 0, their P^T selected to 0 by the consumers)
            lmask = lrows < seqlen_q - (m0 - q0)
            lse_smem.index(s).store(gl.load(desc_lse + row_l + lrows, mask=lmask, other=0.0))  # racecheck: varlen-state
            delta_smem.index(s).store(gl.load(desc_delta + row_l + lrows, mask=lmask, other=0.0))  # racecheck: varlen-state
            gl.thread_barrier()  # every lane's stores before the (one-thread, release) arrive below
            mbarrier.expect(q_ready.index(s), desc_q.block_type.nbytes)
            tma.async_copy_global_to_shared(desc_q, [row_q, h * q_ch], q_ready.index(s), q_smem.index(s))
            mbarrier.expect(do_ready.index(s), desc_do.block_type.nbytes)
            tma.async_copy_global_to_shared(desc_do, [row_do, h * do_ch], do_ready.index(s), do_smem.index(s))
        else:
            mbarrier.expect(q_ready.index(s), desc_q.block_type.nbytes + desc_lse.block_type.nbytes)
            tma.async_copy_global_to_shared(desc_q, [row_q, h * q_ch], q_ready.index(s), q_smem.index(s))
            tma.async_copy_global_to_shared(desc_lse, [row_l], q_ready.index(s), lse_smem.index(s))
            mbarrier.expect(do_ready.index(s), desc_do.block_type.nbytes + desc_delta.block_type.nbytes)
            tma.async_copy_global_to_shared(desc_do, [row_do, h * do_ch], do_ready.index(s), do_smem.index(s))
            tma.async_copy_global_to_shared(desc_delta, [row_l], do_ready.index(s), delta_smem.index(s))
        if PROD_WRITER:
            if t >= STAGES:  # (the loads first: the reduce's read of dq_smem overlaps them)
                tma.store_wait(0)
                mbarrier.arrive(dq_free)  # the consumers may store the next dQ tiles
    if PROD_WRITER:  # the last STAGES iterations' dQ tiles
        for t in range(gl.maximum(n_iter - STAGES, 0), n_iter):
            mbarrier.wait(empty.index(t % STAGES), (t // STAGES) & 1)
            _dq_reduce(desc_dq, dq_smem, t, i0, n_blocks, row0, col0, q0, S, HEAD_DIM, BLOCK_M, OUT_BSHD, VARLEN)
            tma.store_wait(0)
            mbarrier.arrive(dq_free)
    if TAIL_PARTS:
        _bwd_tail_done(Flags, TAIL_PARTS)


@gluon.jit
def _bwd_tail_done(Flags, TAIL_PARTS: gl.constexpr):
    """The end of a tail launch's producer warp. The launch must end after the launch before it (the main grid,
    which it may overlap under programmatic dependent launch): the last of its producer threads to count itself in
    (an atomic counter after the parts' flags) waits for that grid (griddepcontrol.wait), so the stream's next work,
    which reads both (the dQ accumulator), finds both done."""
    n_flags = gl.num_programs(0) // TAIL_PARTS * (TAIL_PARTS - 1) * 2  # (the counter after the parts' flags)
    lane = gl.arange(0, 32, layout=gl.BlockedLayout([1], [32], [1], [0]))  # (one a thread of the warp)
    old = gl.inline_asm_elementwise("atom.global.add.u32 $0, [$1], 1;", "=r,l", [Flags + n_flags + lane * 0],
                                    dtype=gl.int32, is_pure=False, pack=1)
    gl.inline_asm_elementwise("{ .reg .pred p; setp.eq.u32 p, $1, $2; @p griddepcontrol.wait; mov.b32 $0, 0; }",
                              "=r,r,r", [old, lane * 0 + (gl.num_programs(0) * 32 - 1)], dtype=gl.int32,
                              is_pure=False, pack=1)


@gluon.jit
def _bwd_tail_handover(dk, dv, offs, o_rows, Part, Flags, slot, SPAN: gl.constexpr):
    """A tail part's dK / dV partial sums (this warpgroup's, SPAN fp32 each at offsets ``offs``) into its slot of
    Part, then the slot's flag released (each thread, after the warpgroup's barrier)."""
    gl.store(Part + slot * (2 * SPAN) + offs, dk)
    gl.store(Part + slot * (2 * SPAN) + SPAN + offs, dv)
    gl.thread_barrier()  # (the warpgroup's named barrier) every thread's stores before the releases
    gl.inline_asm_elementwise(_RELEASE_ASM, "=r,l", [Flags + slot + o_rows * 0], dtype=gl.int32, is_pure=False,
                              pack=1)


@gluon.jit
def _bwd_tail_add(acc, offs, o_rows, Part, Flags, first, half: gl.constexpr, W: gl.constexpr, SPAN: gl.constexpr,
                  TAIL_PARTS: gl.constexpr):
    """acc (dK_w: half 0, dV_w: half 1) plus the tile's earlier parts' (each once its flag is set), in part
    order after this part's own."""
    for q in gl.static_range(TAIL_PARTS - 1):
        slot = (first + q) * 2 + W
        zero = gl.inline_asm_elementwise(_SPIN_ASM, "=r,l", [Flags + slot + o_rows * 0], dtype=gl.int32,
                                         is_pure=False, pack=1)  # (0, once the flag is set)
        acc += gl.load(Part + slot * (2 * SPAN) + half * SPAN + offs + zero[:, None])
    return acc


@gluon.jit
def _bwd_tail_out(dk, dv, dk_ptrs, dv_ptrs, o_rows, o_cols, pid, Part, Flags, W: gl.constexpr,
                  HEAD_DIM: gl.constexpr, TAIL_PARTS: gl.constexpr):
    """TAIL_PARTS' end of warpgroup W's dK_w, dV_w in part p = pid % TAIL_PARTS of its tile. p < TAIL_PARTS - 1:
    written (fp32) to its slot of Part, then its flag in Flags released. The last part, the tile's CTA started
    last: the earlier parts' partials added to its own in part order (the same order at every call: dK and dV
    stay bitwise reproducible), dK_w then dV_w (one partial in registers at a time), and stored."""
    SPAN: gl.constexpr = 64 * HEAD_DIM  # (dK_w or dV_w: 64 keys x D fp32)
    offs = o_rows[:, None] * HEAD_DIM + o_cols[None, :]
    first = (pid // TAIL_PARTS) * (TAIL_PARTS - 1)  # the tile's first slot pair
    p = pid % TAIL_PARTS
    if p < TAIL_PARTS - 1:
        _bwd_tail_handover(dk, dv, offs, o_rows, Part, Flags, (first + p) * 2 + W, SPAN)
    else:
        dk = _bwd_tail_add(dk, offs, o_rows, Part, Flags, first, 0, W, SPAN, TAIL_PARTS)
        gl.store(dk_ptrs, dk.to(dk_ptrs.dtype.element_ty))
        dv = _bwd_tail_add(dv, offs, o_rows, Part, Flags, first, 1, W, SPAN, TAIL_PARTS)
        gl.store(dv_ptrs, dv.to(dv_ptrs.dtype.element_ty))


@gluon.jit
def _dq_convert(DQ, DQO, Cnt, S, H, GROUP, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, OUT_BSHD: gl.constexpr,
                LONG_FIRST: gl.constexpr):
    """DQ_CONVERT's end of a consumer warpgroup: once this warpgroup's dQ reduces are complete in global memory, each
    of its threads counts itself in its (batch, kv head) row's counter (Cnt, int32 zeros, one a row); the warpgroup
    that counts last (every CTA of the row, two warpgroups of 128 threads each, is in) converts the row's dQ: GROUP
    query heads x S rows x HEAD_DIM of DQ (fp32, the accumulator) into DQO (its dtype, the same layout)."""
    b, hk, _, HKV = _bwd_tile_again(H, GROUP, BLOCK_N, LONG_FIRST)
    lane = gl.arange(0, 128, layout=gl.BlockedLayout([1], [32], [4], [0]))
    # (the thread that issued the warpgroup's reduces) their writes done, not only their reads of shared memory
    # (tma.store_wait's .read form), and ordered before this thread's generic-proxy release below
    gl.inline_asm_elementwise("cp.async.bulk.wait_group 0; fence.proxy.async.global; mov.b32 $0, 0;", "=r", [],
                              dtype=gl.int32, is_pure=False, pack=1)
    gl.thread_barrier()  # (the warpgroup's named barrier) every thread after the issuing thread's wait
    old = gl.inline_asm_elementwise("atom.acq_rel.gpu.global.add.u32 $0, [$1], 1;", "=r,l",
                                    [Cnt + (b * HKV + hk) + lane * 0], dtype=gl.int32, is_pure=False, pack=1)
    last = gl.max((old == (S // BLOCK_N) * 256 - 1).to(gl.int32), axis=0)  # (the row's CTAs x 256 threads)
    if last > 0:
        _dq_convert_row(DQ, DQO, b, hk, S, H, GROUP, HEAD_DIM, OUT_BSHD)


@gluon.jit(noinline=True)
def _dq_convert_row(DQ, DQO, b, hk, S, H, GROUP, HEAD_DIM: gl.constexpr, OUT_BSHD: gl.constexpr):
    """_dq_convert's conversion of row (b, hk): after an acquire fence, its GROUP query heads x S rows x HEAD_DIM of
    DQ (fp32) into DQO, 64-row tiles. A function of its own (noinline): inline after the block loop it took the loops
    registers (compile_check: 152 B of spill at D = 128 against 12 B)."""
    gl.inline_asm_elementwise("fence.acq_rel.gpu; mov.b32 $0, 0;", "=r", [], dtype=gl.int32, is_pure=False,
                              pack=1)
    cvt: gl.constexpr = gl.BlockedLayout([1, 4], [128 // HEAD_DIM, HEAD_DIM // 4], [4, 1], [1, 0])
    rows = gl.arange(0, 64, layout=gl.SliceLayout(1, cvt))
    cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, cvt))
    if OUT_BSHD:
        base = (b * S * H + hk * GROUP).to(gl.int64) * HEAD_DIM
        sh = HEAD_DIM
        ss = H * HEAD_DIM
    else:
        base = (b * H + hk * GROUP).to(gl.int64) * S * HEAD_DIM
        sh = S * HEAD_DIM
        ss = HEAD_DIM
    for g in range(GROUP):
        for r0 in range(0, S, 64):
            offs = base + g * sh + (r0 + rows)[:, None] * ss + cols[None, :]
            gl.store(DQO + offs, gl.load(DQ + offs).to(DQO.dtype.element_ty))


@gluon.jit
def _bwd_consumer(W: gl.constexpr, DQ, DK, DV, Alibi, sm_scale, softcap, k_smem, v_smem, q_smem, do_smem, lse_smem,
                  delta_smem, ds_smem, slope_smem, k_bar, v_bar, q_ready, do_ready, empty, S, H, GROUP, alibi_sb,
                  alibi_sh, SK, causal_offset, window_left, window_right, CuQ, CuK, HEAD_DIM: gl.constexpr,
                  BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr,
                  OUT_BSHD: gl.constexpr, LONG_FIRST: gl.constexpr, SOFTCAP: gl.constexpr, ALIBI: gl.constexpr,
                  WINDOW: gl.constexpr, VARLEN: gl.constexpr, DQ_TMA: gl.constexpr, dq_smem, desc_dq,
                  SPLIT_BAR: gl.constexpr, PROD_WRITER: gl.constexpr, dq_free, TAIL_PARTS: gl.constexpr, tile_base,
                  Part, Flags, EPI_TMA: gl.constexpr, desc_dk, desc_dv, DQ_CONVERT: gl.constexpr, DQO, Cnt):
    """Consumer warpgroup W: keys n0 + 64W .. n0 + 64W + 63 of the CTA's tile, for every query
    head of their kv head's group. DQ (fp32, H heads) and DK / DV (H / GROUP heads) are
    contiguous (B, S, heads, D) when OUT_BSHD, else (B, heads, S, D) (strides from S and the
    head counts: runtime strides cost ptxas 100-300 B of spills in the loop). VARLEN (OUT_BSHD,
    B = 1): packed sequence b's rows q0 .., k0 ..; keys past its seqlen_k and query rows past its
    seqlen_q (the neighbour's rows, or TMA's zeros) get P^T = dS^T = 0 by a select (their lse may
    be anything: never a product with 0), and neither their dQ nor their dK / dV is written."""
    dtype: gl.constexpr = k_smem.dtype
    HKV = H // GROUP
    if VARLEN:  # (causal_offset: the sequence's own, bottom-right)
        b, hk, n0, i0, n_blocks, q0, k0, seqlen_q, seqlen_k, causal_offset = _bwd_tile(
            S, HKV, BLOCK_M, BLOCK_N, CAUSAL, LONG_FIRST, causal_offset, window_left, window_right, WINDOW, CuQ, CuK,
            VARLEN)
    elif TAIL_PARTS:  # (a part of a tile: some of its query blocks)
        b, hk, n0, i0, n_blocks = _bwd_part_tile(gl.program_id(0), S, HKV, tile_base, BLOCK_M, BLOCK_N, TAIL_PARTS)
    else:
        b, hk, n0, i0, n_blocks = _bwd_tile(S, HKV, BLOCK_M, BLOCK_N, CAUSAL, LONG_FIRST, causal_offset,
                                            window_left, window_right, WINDOW)
    n0w = n0 + W * 64
    FEATURES: gl.constexpr = SOFTCAP or ALIBI or WINDOW or VARLEN
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
    # The part of dQ_i this warpgroup computes: with BLOCK_M = 128 (D = 64, launch.hopper_bwd_block_m)
    # query rows 64W .. 64W + 63, all D columns (FA3's dQ split at D = 64), else all BLOCK_M rows,
    # columns W·D/2 .. (W + 1)·D/2 - 1
    DQ_ROWS: gl.constexpr = BLOCK_M == 128
    DQ_M: gl.constexpr = 64 if DQ_ROWS else BLOCK_M
    DQ_N: gl.constexpr = HEAD_DIM if DQ_ROWS else HEAD_DIM // 2
    # wgmma accumulators (instruction m = 16, k = 16 for 16-bit inputs, n = the tile's width).
    # st_layout: S^T / dP^T, 64 keys x BLOCK_M queries; kv_layout: dK_w / dV_w, 64 keys x D;
    # dq_layout: this warpgroup's half of dQ_i, DQ_M queries x DQ_N columns.
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
    if SOFTCAP:  # scores softcap * tanh(q·kᵀ · scale / softcap), in log2 units (as fwd_hopper)
        cap_scale = sm_scale / softcap
        qk_scale = softcap * LOG2E
    else:
        cap_scale = sm_scale
        qk_scale = sm_scale * LOG2E
    offs_n = n0w + gl.arange(0, 64, layout=row_st)
    offs_mq = gl.arange(0, BLOCK_M, layout=col_st)
    if ALIBI:
        # The slopes of the group's query heads over the scores' scale (fwd_hopper's expression),
        # one a thread, into this warpgroup's row of shared memory; the loop reads query head g's
        # (a global load and a division in every iteration cost the loop registers: it spilled)
        gi = gl.arange(0, ALIBI_GROUP_MAX, layout=gl.BlockedLayout([1], [32], [4], [0]))
        slopes = gl.load(Alibi + b * alibi_sb + (hk * GROUP + gi) * alibi_sh, mask=gi < GROUP, other=0.0)
        slope_row = slope_smem._reinterpret(gl.float32, [2, ALIBI_GROUP_MAX], slope_smem.layout).index(W)
        slope_row.store(slopes.to(gl.float32) * LOG2E / qk_scale)
        gl.thread_barrier()  # (this warpgroup's 128 threads: a named barrier in a partition)
    LANE_DIFF: gl.constexpr = FEATURES or (CAUSAL and DQ_ROWS)  # (128 rows: the plain causal mask's 32 column indices spilled)
    if LANE_DIFF:
        # i - j for query i = m0 + c, key j = n0w + r (ALiBi's distance, the causal and window
        # masks) as dx + d_reg, dx = m0 - n0w + d_lane: in the wgmma accumulator's layout thread (warp w,
        # lane l) holds rows r = 16w + l // 4 + 8a and columns c = 8b + 2(l % 4) + e, so the lane's
        # part of c - r (d_lane) is one value a thread and the register's (d_reg) constants: the
        # loop adds immediates to one value (16 column indices would hold 16 registers; with the
        # plain causal mask's, offs_n <= m0 + offs_mq, the softcap loop spilled). _opaque keeps
        # d_lane from being computed ahead of the partition's register reallocation (it spilled).
        offs_r = gl.arange(0, 64, layout=row_st)
        d_lane = (offs_mq & 6)[None, :] - (offs_r & ~8)[:, None] - _opaque(W * 64)
        d_reg = (offs_mq & ~6)[None, :] - (offs_r & 8)[:, None]
        d_regf = d_reg.to(gl.float32)
    dq_rows = gl.arange(0, DQ_M, layout=gl.SliceLayout(1, dq_layout))
    dq_cols = gl.arange(0, DQ_N, layout=gl.SliceLayout(0, dq_layout))
    dq_offs = dq_rows[:, None] * q_ss + dq_cols[None, :]
    if VARLEN:
        dq_base = DQ + q0 * q_ss + (hk * GROUP) * q_sh + W * DQ_N
        dq_rows_lane = dq_rows & ~8  # (row m0 + r is the sequence's iff r < seqlen_q - m0: as _varlen_keep)
        dq_rows_reg = dq_rows & 8
    elif DQ_ROWS:
        dq_base = DQ + b * q_sb + (hk * GROUP) * q_sh + (W * 64) * q_ss  # + the head's offset, per t
    else:
        dq_base = DQ + b * q_sb + (hk * GROUP) * q_sh + W * DQ_N  # + the head's offset, per t

    if DQ_TMA and not VARLEN and not PROD_WRITER:  # this warpgroup's tile's place for the group's first
        # query head (two registers across the loop; re-read from the CTA's id in the loop instead
        # (_bwd_tile_again) they cost 40-50 instructions an iteration, an integer division)
        dq_row0, dq_col0 = _dq_place(b, hk, S, H, GROUP, HEAD_DIM, OUT_BSHD, False)
        dq_m0, dq_c0 = _dq_wg(W, HEAD_DIM, BLOCK_M)
        dq_row0 += dq_m0
        dq_col0 += dq_c0

    dk = gl.zeros([64, HEAD_DIM], gl.float32, layout=kv_layout)
    dv = gl.zeros([64, HEAD_DIM], gl.float32, layout=kv_layout)
    st_zero = gl.zeros([64, BLOCK_M], gl.float32, layout=st_layout)
    dq_zero = gl.zeros([DQ_M, DQ_N], gl.float32, layout=dq_layout)

    if VARLEN:  # (a key block past the sequence's keys: no K / V arrive, no iteration reads them)
        kv_pred = n_blocks > 0
    else:
        kv_pred = True
    mbarrier.wait(k_bar, 0, pred=kv_pred)
    mbarrier.wait(v_bar, 0, pred=kv_pred)

    for t in range(GROUP * n_blocks):  # (query head of the group, query block), as the producer
        s = t % STAGES
        ph = (t // STAGES) & 1
        g = t // n_blocks
        m0 = (i0 + t - g * n_blocks) * BLOCK_M
        q_s = q_smem.index(s)
        do_s = do_smem.index(s)
        if ALIBI:  # query head g's slope, [1] broadcast over the tile
            slope = slope_smem.index(W * ALIBI_GROUP_MAX + g).load(col_st)[None, :]  # [1, 1]

        # S^T and dP^T, both in flight.
        mbarrier.wait(q_ready.index(s), ph)
        st_tok = warpgroup_mma(k_w, q_s.permute((1, 0)), st_zero, use_acc=False, is_async=True)
        mbarrier.wait(do_ready.index(s), ph)
        dpt_tok = warpgroup_mma(v_w, do_s.permute((1, 0)), st_zero, use_acc=False, is_async=True)
        st = warpgroup_mma_wait(1, deps=(st_tok, ))
        # P^T (overlaps the dP^T wgmma). lse_i / Delta_i come from shared memory where they are
        # used: in this layout each thread holds 16 of the 64 columns, 32 registers for the pair
        # if kept live across the waits (loaded early from global memory, the loop spilled).
        if FEATURES:
            # The forward's scores (hopper_softmax._softmax_step: cap, bias, in that order and rounding)
            lse2 = lse_smem.index(s).load(col_st) * LOG2E
            dx = (m0 - n0) + d_lane  # i + off - j = dx + d_reg (off: 0 unless WINDOW or VARLEN)
            if WINDOW or VARLEN:
                dx = dx + causal_offset
            if SOFTCAP:  # t = tanh(S·scale / softcap); d(softcap·t)/d(q·kᵀ) = scale·(1 - t²)
                st = _tanh_approx(st * cap_scale)
                if ALIBI:  # (1 - t²) here with ALiBi, after the exponential without: fewer spills each
                    gt = 1.0 - st * st
            sb = st
            if ALIBI:  # - slope·|i - j|, in the scores' units
                sb = sb - slope * gl.abs(dx.to(gl.float32) + d_regf)
                if SOFTCAP and CAUSAL:  # (masked before the exponential, every block: no branch, no spills)
                    sb = gl.where(dx >= -d_reg, sb, float("-inf"))
                    if VARLEN:  # (bottom-right, Sq > Sk: rows that see no key, lse -inf: +inf here, P = 0)
                        lse2 = gl.where(lse2 == float("-inf"), float("inf"), lse2)
                if SOFTCAP and WINDOW:  # (likewise; a row that sees no key has lse -inf: +inf here, P = 0)
                    sb = gl.where(_window_keep(dx, d_reg, window_left, window_right), sb, float("-inf"))
                    lse2 = gl.where(lse2 == float("-inf"), float("inf"), lse2)
            pt = gl.exp2(sb * qk_scale - lse2[None, :])
            if SOFTCAP:
                if not ALIBI:
                    gt = 1.0 - st * st
                # P^T to 16 bits (the dV operand) before the causal mask's branch and P^T·(1 - t²)
                # in fp32 (dS^T's): across the branch, 48 registers (t and P^T in fp32, 64: the
                # causal loop spilled 350 B)
                pt16 = pt.to(dtype)
                pt = pt * gt
                if CAUSAL and not ALIBI:
                    if _diag_cuts(m0, n0w, causal_offset, VARLEN):  # keys > query rows get P = 0
                        keep = dx >= -d_reg
                        pt16 = gl.where(keep, pt16, 0.0)
                        pt = gl.where(keep, pt, 0.0)
                if WINDOW and not ALIBI:
                    if _window_cuts(m0 - n0w + causal_offset, window_left, window_right):
                        keep = _window_keep(dx, d_reg, window_left, window_right)
                        pt16 = gl.where(keep, pt16, 0.0)
                        pt = gl.where(keep, pt, 0.0)
                if VARLEN:
                    if _varlen_cuts(m0, n0w, seqlen_q, seqlen_k):
                        keep = _varlen_keep(m0, n0w, seqlen_q, seqlen_k, offs_mq, offs_r)
                        pt16 = gl.where(keep, pt16, 0.0)
                        pt = gl.where(keep, pt, 0.0)
            else:
                if CAUSAL:
                    if _diag_cuts(m0, n0w, causal_offset, VARLEN):  # keys > query rows get P = 0
                        pt = gl.where(dx >= -d_reg, pt, 0.0)
                if WINDOW:
                    if _window_cuts(m0 - n0w + causal_offset, window_left, window_right):
                        pt = gl.where(_window_keep(dx, d_reg, window_left, window_right), pt, 0.0)
                if VARLEN:
                    if _varlen_cuts(m0, n0w, seqlen_q, seqlen_k):
                        pt = gl.where(_varlen_keep(m0, n0w, seqlen_q, seqlen_k, offs_mq, offs_r), pt, 0.0)
                pt16 = pt.to(dtype)
            dpt, _, _, _, _ = warpgroup_mma_wait(0, deps=(dpt_tok, k_w, v_w, q_s, do_s))
            pt_op = gl.convert_layout(pt16, a_layout)
            dv_tok = warpgroup_mma(pt_op, do_s, dv, is_async=True)
        else:
            lse2 = lse_smem.index(s).load(col_st) * LOG2E
            pt = gl.exp2(st * qk_scale - lse2[None, :])
            if CAUSAL:
                if m0 < n0w + 64:  # the diagonal cuts this block: keys > query rows get P = 0
                    if DQ_ROWS:  # (i - j = (m0 - n0) + d_lane + d_reg, as the features' masks)
                        pt = gl.where((m0 - n0) + d_lane >= -d_reg, pt, 0.0)
                    else:
                        pt = gl.where(offs_n[:, None] <= (m0 + offs_mq)[None, :], pt, 0.0)
            dpt, _, _, _, _ = warpgroup_mma_wait(0, deps=(dpt_tok, k_w, v_w, q_s, do_s))
            pt_op = gl.convert_layout(pt.to(dtype), a_layout)
            dv_tok = warpgroup_mma(pt_op, do_s, dv, is_async=True)
        delta = delta_smem.index(s).load(col_st)
        dst16 = (pt * (dpt - delta[None, :]) * sm_scale).to(dtype)
        dst_op = gl.convert_layout(dst16, a_layout)
        # Both warpgroups' dS^T in one 128-key x BLOCK_M tile (rows 64W .. written here). Buffer
        # t % 2 was last read by the dQ wgmmas of iteration t - 2, which both warpgroups retired
        # before the pair barrier of iteration t - 1, which this warpgroup has passed.
        ds_all = ds_smem.index(t % 2)
        ds_all.slice(W * 64, 64).store(dst16)
        fence_async_shared()  # each thread's generic-proxy stores, before the wgmmas read them
        if SPLIT_BAR:  # the pair barrier as an arrive (this warpgroup's dS^T is stored) and a sync (the
            # other's is), with the dK_i wgmma issued between: the warpgroup that comes first has tensor
            # work queued while it waits (see the barriers' notes above the producer)
            par = (t % 2) * 2
            _bar_arrive(m0, SPLIT_BAR_ID + par + W, 256)
            dk_tok = warpgroup_mma(dst_op, q_s, dk, is_async=True)
            _bar_sync(m0, SPLIT_BAR_ID + 1 + par - W, 256)
        else:
            _pair_barrier(m0)
        if DQ_ROWS:  # rows 64W .. of dS_i (its columns 64W .. of the 128 x 128 dS^T tile) times all of K
            dq_tok = warpgroup_mma(ds_all.slice(W * 64, 64, dim=1).permute((1, 0)), k_smem, dq_zero,
                                   use_acc=False, is_async=True)
        else:  # all of dS_i times columns W·D/2 .. of K
            dq_tok = warpgroup_mma(ds_all.permute((1, 0)), k_smem.slice(W * DQ_N, DQ_N, dim=1), dq_zero,
                                   use_acc=False, is_async=True)
        if SPLIT_BAR:  # (issued dV_i, dK_i, dQ_i: dQ_i retires last, with the others)
            dv, dk, dq, _, _, _, _, _, _ = warpgroup_mma_wait(
                0, deps=(dv_tok, dk_tok, dq_tok, pt_op, dst_op, ds_all, k_smem, q_s, do_s))
            if not PROD_WRITER:  # (PROD_WRITER: after the dQ tile's store, which the release announces)
                mbarrier.arrive(empty.index(s))  # dV_i (dO_i) and dK_i (Q_i) retired: the stage is free
        else:
            # dK_i after dQ_i (groups retire in issue order: dV_i, dQ_i, dK_i): wait(1) retires dV_i
            # and dQ_i, so the dQ atomics overlap the dK_i wgmma instead of trailing every wgmma of
            # the iteration (+1-5% over issuing dK_i first, exp_gluon_bwd.py's DQ_EARLY on an H200).
            dk_tok = warpgroup_mma(dst_op, q_s, dk, is_async=True)
            if DQ_TMA and not PROD_WRITER:
                tma.store_wait(0)  # (the issuing thread) this warpgroup's previous reduce has read dq_smem[W]
                gl.thread_barrier()  # (the warpgroup's named barrier) ... before any thread overwrites it
            dv, dq, _, _, _ = warpgroup_mma_wait(1, deps=(dv_tok, dq_tok, pt_op, ds_all, k_smem))
        if PROD_WRITER:  # dQ_i into shared memory; the producer adds it once this iteration released its stage
            mbarrier.wait(dq_free, (t & 1) ^ 1)  # the reduce of iteration t - 1's tiles has read them (t = 0: passes)
            dq_w = dq_smem.index(W)
            dq_w.store(dq)
            fence_async_shared()  # each thread's stores, before the producer's TMA reads them
            gl.thread_barrier()  # ... every thread's, before the one thread's empty arrive below
            if SPLIT_BAR:
                mbarrier.arrive(empty.index(s))  # the stage is free, and dQ_i's tile stored
        elif DQ_TMA:  # dQ_i through shared memory, added by one TMA reduce (FA3's dQ path)
            if SPLIT_BAR:  # (after the wgmmas' wait: measured faster than before it, session 20)
                tma.store_wait(0)  # (the issuing thread) this warpgroup's previous reduce has read dq_smem[W]
                gl.thread_barrier()  # (the warpgroup's named barrier) ... before any thread overwrites it
            dq_w = dq_smem.index(W)
            dq_w.store(dq)
            fence_async_shared()
            gl.thread_barrier()  # every thread's stores before the one thread's TMA
            # dQ accumulator (B, S, H, D) as (B·S, H·D), else (B, H, S, D) as (B·H·S, D). VARLEN
            # ((1, total_q, H, D)): the block's rows past the sequence add zeros (their dS^T is 0)
            # to the next sequence's rows, or fall past the tensor (TMA drops them)
            if VARLEN:  # (q0 and hk live anyway)
                _tma_reduce_add(desc_dq, [q0 + m0, (hk * GROUP + g) * HEAD_DIM + W * DQ_N], dq_w)
            else:
                _dq_add(desc_dq, dq_w, dq_row0, dq_col0, g, m0, S, HEAD_DIM, OUT_BSHD)
        elif VARLEN:  # the sequence's rows only (past them: the next sequence's, or past the tensor)
            gl.atomic_add(dq_base + g * q_sh + m0 * q_ss + dq_offs, dq, mask=(dq_rows_reg < (seqlen_q - m0) - dq_rows_lane)[:, None],
                          sem="relaxed")
        else:
            gl.atomic_add(dq_base + g * q_sh + m0 * q_ss + dq_offs, dq, sem="relaxed")
        if not SPLIT_BAR:
            dk, _, _, _ = warpgroup_mma_wait(0, deps=(dk_tok, dst_op, q_s, do_s))
            mbarrier.arrive(empty.index(s))  # dV_i (dO_i) and dK_i (Q_i) retired: the stage is free

    if DQ_TMA and not PROD_WRITER:
        tma.store_wait(0)  # (the shared memory must outlive the last reduce's reads)
    if DQ_CONVERT:  # (the row's last warpgroup converts its dQ)
        _dq_convert(DQ, DQO, Cnt, S, H, GROUP, HEAD_DIM, BLOCK_N, OUT_BSHD, LONG_FIRST)
    # dK_w (already scaled), dV_w, summed over the group's query heads.
    if FEATURES:  # the tile's place read again, not kept across the loop (it spilled)
        b, hk, n0, HKV = _bwd_tile_again(H, GROUP, BLOCK_N, LONG_FIRST)
        n0w = n0 + W * 64
        if WINDOW:  # (the keys' count)
            S = SK
        if OUT_BSHD:
            k_sb = S * HKV * HEAD_DIM
            k_ss = HKV * HEAD_DIM
        else:
            k_sb = HKV * S * HEAD_DIM
            k_sh = S * HEAD_DIM
    o_rows = gl.arange(0, 64, layout=gl.SliceLayout(1, kv_layout))
    o_cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, kv_layout))
    if TAIL_PARTS:  # a part: handed over, or the tile's parts merged and stored (its place read again from fresh
        # reads of the CTA's id and the sizes: values the loop need not keep)
        pid = _ctaid(0)
        b, hk, n0, _, _ = _bwd_part_tile(pid, _opaque(S), _opaque(H) // _opaque(GROUP), _opaque(tile_base),
                                         BLOCK_M, BLOCK_N, TAIL_PARTS)
        n0w = n0 + W * 64
        o_offs = b * k_sb + hk * k_sh + (n0w + o_rows)[:, None] * k_ss + o_cols[None, :]
        _bwd_tail_out(dk, dv, DK + o_offs, DV + o_offs, o_rows, o_cols, pid, Part, Flags, W, HEAD_DIM, TAIL_PARTS)
    elif VARLEN:  # sequence b's keys only (B = 1, OUT_BSHD)
        _, k0, _, seqlen_k = _varlen_seq(CuQ, CuK, b)  # (q0, k0, seqlen_q, seqlen_k)
        o_offs = hk * k_sh + (k0 + n0w + o_rows)[:, None] * k_ss + o_cols[None, :]
        o_mask = (o_rows < seqlen_k - n0w)[:, None]
        gl.store(DK + o_offs, dk.to(DK.dtype.element_ty), mask=o_mask)
        gl.store(DV + o_offs, dv.to(DV.dtype.element_ty), mask=o_mask)
    elif EPI_TMA:
        _bwd_epi_tma(W, dk, dv, q_smem, do_smem, desc_dk, desc_dv, S, b, hk, n0w, HKV, GROUP * n_blocks, HEAD_DIM,
                     BLOCK_M, STAGES, OUT_BSHD, dq_smem, dq_free, PROD_WRITER)
    else:
        o_offs = b * k_sb + hk * k_sh + (n0w + o_rows)[:, None] * k_ss + o_cols[None, :]
        gl.store(DK + o_offs, dk.to(DK.dtype.element_ty))
        gl.store(DV + o_offs, dv.to(DV.dtype.element_ty))


@gluon.jit
def _bwd_epi_tma(W: gl.constexpr, dk, dv, q_smem, do_smem, desc_dk, desc_dv, S, b, hk, n0w, HKV, n_iter,
                 HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, STAGES: gl.constexpr, OUT_BSHD: gl.constexpr,
                 dq_smem=None, dq_free=None, PROD_WRITER: gl.constexpr = False):
    """EPI_TMA: warpgroup W's dK_w, dV_w (64 keys from n0w, all D columns) out by two TMA stores (desc_dk /
    desc_dv: launch._grad_desc's 64 x D tiles), staged in shared memory that no iteration reads again.
    The last of the n_iter >= 1 iterations used stage (n_iter - 1) % STAGES. Stage (n_iter - 2) % STAGES
    held iteration n_iter - 2 (or no iteration at all), which both warpgroups finished before either
    passed the pair barrier of iteration n_iter - 1 (each arrives there after its wgmmas of n_iter - 2
    retired; with SPLIT_BAR, at its arrive); likewise stage (n_iter - 3) % STAGES with three stages. The
    producer loads nothing after iteration n_iter - 1, so those tiles are free. BLOCK_M 128 (D = 64): Q / dO
    tiles of 128 x 64, rows 64W .. of stage n_iter - 2's for dK_w / dV_w. BLOCK_M 64 (D = 128): warpgroup 0
    takes the Q tiles and warpgroup 1 the dO tiles, stage n_iter - 2's for dV_w and, with three stages, stage
    n_iter - 3's for dK_w; with two, dK_w goes to the warpgroup's own dQ tile (fp32 64 x D / 2: the bytes of
    a 16-bit 64 x D tile) once the last dQ reduce has read it (PROD_WRITER: dq_free)."""
    dtype: gl.constexpr = q_smem.dtype
    free = (n_iter + STAGES - 2) % STAGES
    if BLOCK_M == 128:
        ep_k = q_smem.index(free).slice(W * 64, 64)
        ep_v = do_smem.index(free).slice(W * 64, 64)
    elif STAGES == 2:  # dK_w in this warpgroup's dQ tile, once the last reduce has read it
        if PROD_WRITER:  # (the producer's reduce of iteration n_iter - 1: dq_free's n_iter-th completion)
            mbarrier.wait(dq_free, (n_iter & 1) ^ 1)
        else:  # (the issuing thread waited after the loop; every thread waits for it)
            gl.thread_barrier()
        ep_k = dq_smem._reinterpret(dtype, [2, 64, HEAD_DIM], desc_dk.layout).index(W)
        if W == 0:
            ep_v = q_smem.index(free)
        else:
            ep_v = do_smem.index(free)
    else:
        gl.static_assert(STAGES >= 3)
        free2 = (n_iter + STAGES - 3) % STAGES
        if W == 0:
            ep_k = q_smem.index(free2)
            ep_v = q_smem.index(free)
        else:
            ep_k = do_smem.index(free2)
            ep_v = do_smem.index(free)
    ep_k.store(dk.to(dtype))
    ep_v.store(dv.to(dtype))
    fence_async_shared()
    gl.thread_barrier()  # (the warpgroup's named barrier) every thread's stores before the one thread's TMA
    if OUT_BSHD:  # DK / DV (B, S, Hkv, D) as (B·S, Hkv·D), else (B, Hkv, S, D) as (B·Hkv·S, D)
        row = b * S + n0w
        col = hk * HEAD_DIM
    else:
        row = (b * HKV + hk) * S + n0w
        col = 0
    tma.async_copy_shared_to_global(desc_dk, [row, col], ep_k)
    tma.async_copy_shared_to_global(desc_dv, [row, col], ep_v)
    tma.store_wait(0)  # (the shared memory must outlive the stores' reads)


@gluon.jit
def attn_bwd_hopper_kernel(desc_q, desc_k, desc_v, desc_do, desc_lse, desc_delta, DQ, DK, DV, sm_scale, S, H, GROUP,
                           q_rb, q_rh, q_ch, k_rb, k_rh, k_ch, v_rb, v_rh, v_ch, do_rb, do_rh, do_ch,
                           Alibi, softcap, alibi_sb, alibi_sh, SK, causal_offset, window_left, window_right,
                           CuQ, CuK, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                           STAGES: gl.constexpr, CAUSAL: gl.constexpr, OUT_BSHD: gl.constexpr,
                           LONG_FIRST: gl.constexpr, num_warps: gl.constexpr, SOFTCAP: gl.constexpr = False,
                           ALIBI: gl.constexpr = False, WINDOW: gl.constexpr = False, VARLEN: gl.constexpr = False,
                           DQ_TMA: gl.constexpr = False, desc_dq=None, SPLIT_BAR: gl.constexpr = False,
                           PROD_WRITER: gl.constexpr = False, PDL_TRIGGER: gl.constexpr = False,
                           TAIL_PARTS: gl.constexpr = 0, tile_base=0, Part=None, Flags=None,
                           EPI_TMA: gl.constexpr = False, desc_dk=None, desc_dv=None,
                           DQ_CONVERT: gl.constexpr = False, DQO=None, Cnt=None):
    """Grid (B * H // GROUP, S // BLOCK_N) if LONG_FIRST else (S // BLOCK_N, B * H // GROUP) (see
    _bwd_tile); launch with num_warps=4 (the default partition = consumer
    warpgroup 0) and maxnreg=MAXNREG. desc_q/k/v/do: 2-D views (fwd_hopper's (rb, rh, ch)
    placement), blocks of 64 rows (desc_q, desc_do: BLOCK_M); desc_lse, desc_delta: 1-D over (B, H, S) fp32, blocks of
    BLOCK_M; DQ fp32, zeroed, (B, S, H, D) contiguous when OUT_BSHD, else (B, H, S, D); DK, DV
    likewise with H // GROUP heads and SK keys. S is Sq; the grid's key blocks cover SK (= S unless
    WINDOW). SOFTCAP: the forward's scores were softcap * tanh(scores * sm_scale / softcap),
    softcap > 0. ALIBI: they had -Alibi[b * alibi_sb + h * alibi_sh] * |i + off - j| added (GROUP
    <= ALIBI_GROUP_MAX; off = causal_offset with WINDOW, else 0). WINDOW (not with CAUSAL): row i
    saw the keys i + off - window_left .. i + off + window_right (both >= 0; an unbounded side is
    Sq + Sk). VARLEN (OUT_BSHD): q, k, v, dO are (1, H, total, D) packed sequences, CuQ / CuK
    their int32 (n + 1,) offsets; grid (S // BLOCK_N, n · H // GROUP) (LONG_FIRST: swapped) with S
    = max_seqlen_k rounded up to BLOCK_N; S stays total_q (lse / Delta (1, H, total_q)); each
    sequence's diagonal bottom-right (causal_offset is not read); CAUSAL or WINDOW per sequence.
    DQ_TMA: dQ_i goes through shared memory into DQ by a TMA reduce-add (desc_dq: launch._grad_desc,
    tiles of BLOCK_M x D / 2; BLOCK_M 128: 64 x D) instead of fp32 atomics from registers.
    SPLIT_BAR: the consumers' pair barrier as an arrive and a sync with the dK wgmma issued between
    (launch.HOPPER_BWD_SPLIT_BAR: the causal builds).
    PROD_WRITER (with DQ_TMA): the producer warp issues the dQ reduces, the consumers only store the
    tiles (launch.HOPPER_BWD_PROD_WRITER: the causal builds).
    PDL_TRIGGER: each CTA lets the next launch of the stream start first thing (griddepcontrol.launch_dependents):
    a tail launch (below) made with programmatic dependent launch then fills the SMs this grid's last round
    leaves idle. TAIL_PARTS (the plain non-causal geometry, no feature): a tail launch, a 1-D grid of TAIL_PARTS
    CTAs a tile, for the tiles from tile_base in _bwd_tile's launch order, each CTA a part of its tile's query
    blocks (_bwd_part_tile); Part (fp32, (TAIL_PARTS - 1) · 2 · 2 · 64 · D a tile) holds the earlier parts'
    dK_w / dV_w and Flags (int32 zeros, one per Part slot of 64 keys) their hand-over (_bwd_tail_out).
    EPI_TMA (DQ_TMA, the plain geometry, causal or not: no feature or TAIL_PARTS): dK / dV out by TMA stores of
    64 x D tiles (desc_dk / desc_dv: launch._grad_desc) staged in shared memory no iteration reads again
    (_bwd_epi_tma), instead of from the registers.
    DQ_CONVERT (DQ_TMA, the plain non-causal geometry without TAIL_PARTS or PDL_TRIGGER): the last warpgroup of
    each (batch, kv head) row writes the row's dQ into DQO (q's dtype, DQ's layout) from DQ (_dq_convert), Cnt
    (int32 zeros, B · H / GROUP) counting the row's warpgroups' threads in.
    The pointers of the features off are not read."""
    gl.static_assert(num_warps == 4)
    gl.static_assert(not DQ_CONVERT or (DQ_TMA and not (CAUSAL or SOFTCAP or ALIBI or WINDOW or VARLEN or PROD_WRITER
                                                        or PDL_TRIGGER) and TAIL_PARTS == 0))
    gl.static_assert(TAIL_PARTS == 0 or (TAIL_PARTS >= 2 and not (CAUSAL or LONG_FIRST or SOFTCAP or ALIBI or WINDOW
                                                                   or VARLEN or PROD_WRITER or SPLIT_BAR)))
    if PDL_TRIGGER:  # (the tail launch after this grid may start now: it reads nothing this grid writes)
        _pdl_launch_dependents()
    gl.static_assert(BLOCK_N == 2 * 64)
    # BLOCK_M 128: D = 64 without the feature flags (register room: S^T and dP^T are 64 x 128 fp32)
    gl.static_assert(BLOCK_M == 64 or (BLOCK_M == 128 and HEAD_DIM == 64 and not (SOFTCAP or ALIBI or WINDOW
                                                                                  or VARLEN)))
    gl.static_assert(HEAD_DIM == 64 or HEAD_DIM == 128)  # the warpgroups split dQ_i's D in halves (BLOCK_M 128: rows)
    gl.static_assert(not (CAUSAL and WINDOW))
    gl.static_assert(OUT_BSHD or not VARLEN)
    gl.static_assert(DQ_TMA or not PROD_WRITER)
    gl.static_assert(not EPI_TMA or (DQ_TMA and TAIL_PARTS == 0 and not (SOFTCAP or ALIBI or WINDOW or VARLEN)))
    dtype: gl.constexpr = desc_q.dtype
    # K as one 128-row tile (the dQ wgmma reads all of it), loaded in the two 64-row halves the
    # warpgroups use (same NVMMA layout: 128-byte swizzle, rows of 256 bytes).
    k_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, HEAD_DIM], desc_k.layout)
    v_smem = gl.allocate_shared_memory(dtype, [2, 64, HEAD_DIM], desc_v.layout)
    q_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, HEAD_DIM], desc_q.layout)
    do_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, HEAD_DIM], desc_do.layout)
    if VARLEN:  # (desc_lse, desc_delta: pointers; the producer warp stores the rows)
        lse_smem = gl.allocate_shared_memory(gl.float32, [STAGES, BLOCK_M],
                                             gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
        delta_smem = gl.allocate_shared_memory(gl.float32, [STAGES, BLOCK_M],
                                               gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
    else:
        lse_smem = gl.allocate_shared_memory(gl.float32, [STAGES, BLOCK_M], desc_lse.layout)
        delta_smem = gl.allocate_shared_memory(gl.float32, [STAGES, BLOCK_M], desc_delta.layout)
    ds_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_M], dtype)
    ds_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_N, BLOCK_M], ds_layout)
    if DQ_TMA:  # each consumer warpgroup's dQ_i tile (fp32, BLOCK_M x D / 2; BLOCK_M 128: 64 x D) for its TMA reduce
        if BLOCK_M == 128:
            dq_smem = gl.allocate_shared_memory(gl.float32, [2, 64, HEAD_DIM], desc_dq.layout)
        else:
            dq_smem = gl.allocate_shared_memory(gl.float32, [2, BLOCK_M, HEAD_DIM // 2], desc_dq.layout)
    else:
        dq_smem = ds_smem  # (not read)
    if ALIBI:  # a row of the group's slopes for each consumer warpgroup
        slope_smem = gl.allocate_shared_memory(gl.float32, [2 * ALIBI_GROUP_MAX, 1],
                                               gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
    else:
        slope_smem = lse_smem  # (not read)
    k_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    v_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    do_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(k_bar, count=1)
    mbarrier.init(v_bar, count=1)
    if PROD_WRITER:  # completes once per iteration: the producer's reduce has read the dQ tiles
        dq_free = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        mbarrier.init(dq_free, count=1)
    else:
        dq_free = k_bar  # (not read)
    for i in gl.static_range(STAGES):
        mbarrier.init(q_ready.index(i), count=1)
        mbarrier.init(do_ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=2)
    fence_async_shared()

    # (argument tuples written out in the call: a tuple assigned to a name first would turn its
    # constexprs into tensors)
    gl.warp_specialize([
        (_bwd_consumer, (0, DQ, DK, DV, Alibi, sm_scale, softcap, k_smem, v_smem, q_smem, do_smem, lse_smem,
                         delta_smem, ds_smem, slope_smem, k_bar, v_bar, q_ready, do_ready, empty, S, H, GROUP,
                         alibi_sb, alibi_sh, SK, causal_offset, window_left, window_right, CuQ, CuK, HEAD_DIM,
                         BLOCK_M, BLOCK_N, STAGES, CAUSAL, OUT_BSHD, LONG_FIRST, SOFTCAP, ALIBI, WINDOW, VARLEN,
                         DQ_TMA, dq_smem, desc_dq, SPLIT_BAR, PROD_WRITER, dq_free, TAIL_PARTS, tile_base, Part,
                         Flags, EPI_TMA, desc_dk, desc_dv, DQ_CONVERT, DQO, Cnt)),
        (_bwd_consumer, (1, DQ, DK, DV, Alibi, sm_scale, softcap, k_smem, v_smem, q_smem, do_smem, lse_smem,
                         delta_smem, ds_smem, slope_smem, k_bar, v_bar, q_ready, do_ready, empty, S, H, GROUP,
                         alibi_sb, alibi_sh, SK, causal_offset, window_left, window_right, CuQ, CuK, HEAD_DIM,
                         BLOCK_M, BLOCK_N, STAGES, CAUSAL, OUT_BSHD, LONG_FIRST, SOFTCAP, ALIBI, WINDOW, VARLEN,
                         DQ_TMA, dq_smem, desc_dq, SPLIT_BAR, PROD_WRITER, dq_free, TAIL_PARTS, tile_base, Part,
                         Flags, EPI_TMA, desc_dk, desc_dv, DQ_CONVERT, DQO, Cnt)),
        (_bwd_producer, (desc_q, desc_k, desc_v, desc_do, desc_lse, desc_delta, k_smem, v_smem, q_smem, do_smem,
                         lse_smem, delta_smem, k_bar, v_bar, q_ready, do_ready, empty, S, H, GROUP,
                         q_rb, q_rh, q_ch, k_rb, k_rh, k_ch, v_rb, v_rh, v_ch, do_rb, do_rh, do_ch,
                         causal_offset, window_left, window_right, CuQ, CuK, BLOCK_M, BLOCK_N, STAGES, CAUSAL,
                         LONG_FIRST, WINDOW, VARLEN, PROD_WRITER, desc_dq, dq_smem, dq_free, HEAD_DIM, OUT_BSHD,
                         TAIL_PARTS, tile_base, Flags)),
    ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])
