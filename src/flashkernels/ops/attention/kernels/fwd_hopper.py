"""Flash attention forward for Hopper (sm_90), warp-specialized, in Gluon: kernel code only.

Why: stock Triton stops at ~0.8x cuDNN in the forward on the H100: its pipeliner waits for each
q·kᵀ wgmma before the softmax and for each p·v wgmma before the next q·kᵀ, so the tensor cores
idle while the exponentials run. Gluon (``triton.experimental.gluon``, in the triton package)
exposes TMA copies into shared-memory rings with mbarriers, ``warpgroup_mma(..., is_async=True)``
and ``warpgroup_mma_wait(num_outstanding=N)``, which FA3's overlap needs.

Structure of one CTA (BLOCK_M = 128 or 192 query rows of one (batch, query head); ``gl.warp_specialize``):
  - a 1-warp producer partition issues every TMA load: the Q blocks, then K_j and V_j into a
    ring of STAGES shared-memory stages (per-stage ready/empty mbarriers);
  - NUM_WG = BLOCK_M / 64 consumer warpgroups (the default partition and 4-warp workers: two, or
    three as FA3 runs D = 64, where the exponentials weigh twice as much against the wgmmas as at
    D = 128) each own WG_M = 64 query rows and read the same K/V ring. No CTA-wide barrier in the
    loop. With three (TRIM), a tile may pass SQ (a multiple of 128): the warpgroups past it only
    release the ring's blocks, and causal ones stop at their own last diagonal block.

Schedule of one consumer warpgroup (n = number of key blocks it sees):

    S_0 = Q K_0^T; P_0 = softmax part of S_0
    for j in 0 .. n-2:
        issue S_{j+1} = Q K_{j+1}^T      (async)
        issue O += P_j V_j               (async)
        wait until 1 wgmma is in flight  -> S_{j+1} is ready (wgmma groups retire in order);
                                            release K_{j+1}
        P_{j+1}, alpha = online softmax of S_{j+1}   <- overlaps the P_j V_j wgmma
        scheduling fence (see _ws_consumer)
        wait until 0 in flight           -> O is ready; release V_j; O *= alpha
    O += P_{n-1} V_{n-1}; O /= l; lse = (m + log2 l) * ln 2; O staged in Q's buffer, TMA store

Features (constexpr flags of the one kernel, each off in the plain build, whose loop they leave
as it was): SOFTCAP (s = softcap·tanh(s·scale/softcap) with tanh.approx.f32, as kernels/fwd.py on
a GPU; the row max is then taken over the tanh, times softcap·log2 e; SOFTCAP = 2, the launcher's
choice for bf16 with a cap <= 40 and no other score feature: the row max fixed at its bound
softcap·log2 e, see hopper_softmax._softmax_step), ALIBI (-slope·|i + off - j|
with |i + off - j| exact in fp32, in the raw scores' units before the max; slopes (H,) or (B, H)
through a pointer and batch/head strides; ALIBI = 2 with CAUSAL: no block takes |i - j| per score,
launch.HOPPER_FWD_ALIBI_CAUSAL_SPLIT), SINK (one more logit a row, no value: the running max
and sum start at it), WINDOW (keys i + off - left .. i + off + right, off = causal_offset; both
the producer and the consumers walk the CTA's key blocks [lo, lo + n), the union of its rows'
windows; masks only on the blocks some row of the warpgroup does not see whole; a row that sees
nothing yet takes its exponent against 0, and one that saw no key ends as out 0, lse -inf (with a
sink: out 0, lse = sink); a CTA whose rows see no key runs one block, all masked). CAUSAL is the
diagonal j <= i (causal_offset 0, Sq <= Sk); every other causal call (bottom-right with Sq != Sk,
top-left with Sq > Sk) comes as WINDOW with right = 0.
VARLEN (packed sequences, flash_attn_varlen_func's; always with WINDOW, whose bounds are then
unbounded on a side the call leaves open, right = 0 when causal): q, k, v, out are (1, H, total,
D); the grid's x runs over the packed query tiles (sequence b's from cu_seqlens_q[b] // BLOCK_M +
b, at most one empty CTA a sequence; +1-3% over a grid of the longest sequence's tiles for every
sequence: H100, session 14, scripts/exp_varlen_grid.py), its y over the heads (with more than
launch.HOPPER_FWD_VARLEN_PACKED_MAX - 1 sequences: x over the longest sequence's tiles, y over
(sequence, head)). Each CTA reads its sequence's bounds from cu_seqlens (_ws_tile_varlen) and
takes its bottom-right offset seqlen_k - seqlen_q as off (causal, window and ALiBi per sequence); its TMA tiles start at
the sequence's rows q0 / k0, so its last query / key blocks read the next sequence's rows (or
TMA's zeros past the tensor): keys from seqlen_k on are masked as outside the window (the window
mask's upper bound capped at seqlen_k - 1, so only the sequence's last key block pays for it),
a warpgroup whose rows start past seqlen_q computes nothing (no Q for it), and a CTA whose rows all
do gets no key block (the producer and every consumer agree on the count: no barrier is waited
on). lse is stored with a row mask (not by TMA: a sequence's rows start anywhere, and a 1-D TMA
copy must start 16-byte aligned); out by the TMA store when the warpgroup's 64 rows lie inside
the sequence, else by a masked gl.store from the registers (a 2-D TMA store clips at the tensor's
end only, and would write the next sequence's rows). Rows that see no key (seqlen_k = 0, or
causal with Sq > Sk): out 0, lse -inf (with a sink: lse = sink), as kernels/fwd.py's.

Restrictions (the launcher, launch.hopper_fwd_reason, checks every one): bf16 or fp16, a head dim
of launch.HOPPER_FWD_CONFIGS (128: BLOCK_N 128; 256: BLOCK_N 64; 2 stages; BLOCK_M 128), Sq and Sk
multiples of 128 and Sk of BLOCK_N (with BLOCK_M 192 the grid is ceil(Sq / 192)), H a multiple of
Hkv (GQA), scale > 0 (the row max is taken before scaling), no mask; packed sequences (any
lengths; VARLEN) while launch.HOPPER_FWD_VARLEN is on (the default). Each of q, k, v
and out is read or written through a 2-D TMA descriptor (launch._hopper_view): row m of head h of
batch b is row b*rb + h*rh + m of the matrix, its D values start at column h*ch, so (B, S, H, D)
storage (rb = S, rh = 0, ch = D), (B, H, S, D) storage (rb = H*S, rh = S, ch = 0) and slices of a
packed qkv all go through the same code; a block of 64 query rows (a warpgroup's) or BLOCK_N key
rows never crosses a (batch, head), as Sq is a multiple of 128 (warpgroups past it load nothing)
and Sk of BLOCK_N. TMA coordinates, the lse offsets and the window arithmetic are int32; the grid
is (ceil(Sq / BLOCK_M), B·H), so B·H <= 65535. lse is (B, H, Sq)
float32, natural log.

Features measured on an H200 (bf16, B = 4, S = 4096, H = 16, D = 128, triton.testing.do_bench
of launch.attn_fwd_impl; time over the plain Gluon forward's): softcap +23% non-causal / +22%
causal (a second MUFU op a score: the tanh), ALiBi +15% / +8% (two FP32 ops a score; since
session 8 one, off the diagonal's blocks: on an H100 +11% / +8%, scripts/ab_features_fwd.py),
sink +3% / 0%; with each feature (and a 1024-key window) 1.27-1.45x the Triton kernel with the same one.

Measured on an H100 (bf16, D = 128, ``python scripts/exp_gluon_fwd.py``: B·S = 16384 at S =
4096 and 16384 with H = 16, and B = 2, S = 8192, H = 32, Hkv = 8 causal): 620-640 TF/s
non-causal, 571-612 causal / GQA, 1.25-1.40x the Triton kernel (kernels/fwd.py) and up to 1.07x
cuDNN. Config: BLOCK_M = 128, BLOCK_N = 128, STAGES = 2, scheduling fence on, no ping-pong
between the warpgroups (within 2% of the best of the variants tried, everywhere measured);
register budgets 240 (consumers) / 24 (producer), launched with maxnreg = 168. At D = 64 the
same structure gained nothing over the Triton kernel (in a grid launch; see CHAIN below for the
build D = 64 runs under 2048 rows). (Measured with the experiment's kernel; this port of it at that
config compiles to the same inner-loop SASS.)

D = 256 (H200, ``scripts/exp_fwd_dims.py``, the same FA3 shapes with H = 8): BLOCK_N = 64, 2
stages (the only ring that fits the shared memory: 197 KB), 0 spills: 1.24-1.61x the Triton
kernel, 0.94-1.02x cuDNN through the public API.

Three consumer warpgroups (BLOCK_M 192, BLOCK_N 128, registers 160 / 168 / 24, launch cap 128;
0 spills): D = 64 from 2048 query rows (H100, scripts/ab_fwd64.py, session 7: 1.03-1.20x the
Triton kernel from S = 2k, 0.75-0.95x below, where launch.HOPPER_FWD_SHORT's two-warpgroup CHAIN
build runs plain calls and the Triton kernel the others). Larger BLOCK_N with three do
not fit (256: the 128-register cap; 192 is no power of two for Gluon's shapes).

PERSISTENT (two warpgroups, no window and not packed (packed: below); launch.hopper_fwd_persistent: D = 128, with
or without softcap, ALiBi and a sink, causal up to 8192 rows, and launch.HOPPER_FWD_SHORT's D = 64
build): grid (SMs,), each CTA walking its tiles in _ws_tile_c's
order (non-causal t = its id + k · SMs, head by head; causal, pairs of one head's query tiles
(n - 1 - j, j), n + 1 key blocks a pair, so every CTA's share is the same), the K / V ring's
position and the Q buffers' phases carried from tile to tile; the producer loads the next tile's
K_0 while the warpgroups store the last tile's output, then its Q once both released their Q
buffer (q_empty). H100, FA3 grid, session 13 (scripts/ab_attention.py --gluon --switch
HOPPER_FWD_PERSISTENT): non-causal D = 128 +0.8-8.5% (S = 1k +8.5%), D = 256 -2.3 to +1.6%;
causal, each head's tiles longest first and a static stride, -25% at 16k (a 2x spread of work
between CTAs); in pairs (session 15, --switch HOPPER_FWD_PERSISTENT_CAUSAL) D = 128 +8.8 / +7.8 /
-1.3% at 1k / 4k / 16k against the grid, D = 256 +0.2-1.3% (D = 256 keeps the grid).
CHAIN (PERSISTENT, D <= 128; launch.HOPPER_FWD_CHAIN, on): two sets of Q buffers, so the next
tile's Q loads while this one runs (when the producer reaches the next tile's first K / V
blocks, STAGES blocks ahead), and each consumer runs its tiles as one stream of key blocks
(_ws_attend_chain): the next tile's first q·kᵀ wgmma is issued with this tile's last p·v one, its
softmax overlaps that wgmma, and the finished tile's output is stored after it. H100, session 15
(scripts/ab_attention.py --gluon --switch HOPPER_FWD_CHAIN, 5 rounds): D = 128 non-causal +3.0 /
+1.5 / +0.8 / -0.4% at 1k / 2k / 4k / 16k over PERSISTENT alone; D = 64 at 1k (scripts/ab_fwd64.py)
417 TF/s with 3 stages against PERSISTENT's 377 and the Triton kernel's 381. A first form with
one loop over all of a CTA's blocks and the tile switch inside it read 4-5% slower from 4k on (its
loop: a branch, a Q barrier wait and the tile's scalars an iteration).

ROT_N (ALiBi without a window or packed sequences, two warpgroups; launch.HOPPER_FWD_ALIBI_ROTATE):
each tile walks its key blocks from the one before its diagonal's, wrapping around (_ws_rot0,
_ws_blk), so the row max ALiBi's bias pushes up block by block in key order is set at the start and
O's lazy rescale is skipped after: +1.5-4.6% at D = 128 from 4k, +1.8-6.2% at D = 256 from 4k (H100,
session 22, launch's note).

PERSISTENT with VARLEN (the packed-tile grid's tiles, two warpgroups; launch.HOPPER_FWD_VARLEN_PERSISTENT,
D = 128): grid (SMs,), a dynamic scheduler: the producer takes the next packed tile from a per-call
counter (Sched, an int32 zeroed by the launcher) with an atomic add, skips the tiles without rows,
and hands each tile's index to the consumers through shared memory (t_smem, published before the
tile's Q barriers complete; -1: no more), the ring's position and the Q buffers carried over
(_ws_producer_dyn, _ws_consumer_dyn). Against the grid launch, H200, session 25
(scripts/ab_varlen.py, `bench varlen`'s case): +3.3-3.9% non-causal, +5.5-6.0% causal; a static
stride of the tiles would leave CTAs up to ~30% apart (sequences of 2-16 key blocks a tile). VARLEN_SORT
(off): the counter over the sequences longest first (_ws_sort_starts): -1 to -3% at D = 128.

REVERSE_M (causal grid launches, launch.HOPPER_FWD_CAUSAL_REVERSE): CTA x of a head takes its
query tile n - 1 - x, so each head's longest tiles start first (the GPU starts CTAs in grid order)
and the last wave is short: +4 / +7 / +9% at 16k (D = 64 / 128 / 256), within +-2% below (H100, FA3
grid, scripts/ab_attention.py --gluon --switch HOPPER_FWD_CAUSAL_REVERSE, session 13).

Not done: a dynamic (atomic counter) tile scheduler (D = 256 causal keeps the grid; the pairs
above balance the static stride), P through shared memory (FA3's D = 64
config, which frees the registers BLOCK_N 192 needs); offloading
part of the exponentials to the FMA units (FA4's polynomial exp2), which softcap's tanh would
want.

Without a triton whose Gluon has these Hopper modules the definitions below are inert and
``AVAILABLE`` is False, with the reason in ``UNAVAILABLE_REASON``; the package imports either way.
"""
from .gluon_base import (AVAILABLE, LN2, LOG2E, TESTED_TRITON, UNAVAILABLE_REASON, TensorDescriptor,  # noqa: F401
                         _varlen_seq, gl, gluon)  # (re-exported: launch.py reads them here)
from .gluon_base import _RELEASE_ASM, _SPIN_ASM, _mul_rn, _rescale_lazy  # (SPLIT_TAIL's hand-over: gluon_base)
from .hopper_softmax import _softmax_step

if AVAILABLE:
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                                  warpgroup_mma, warpgroup_mma_wait)

# Partition register budgets (setmaxnreg) and the launch's register cap: 3 warpgroups x 128
# threads x 168 registers = the 64K-register file, so 1 CTA / SM with its 240-register consumers.
CONSUMER_REGS = gl.constexpr(240)
PRODUCER_REGS = gl.constexpr(24)
MAXNREG = 168
# Three consumer warpgroups (BLOCK_M 192): 4 warpgroups (the producer's warp counts as one) x 128
# threads x 128 = the file; the two worker consumers 160, the producer 24, the default partition
# what is left (168).
CONSUMER_REGS3 = gl.constexpr(160)
MAXNREG3 = 128


def maxnreg(block_m: int) -> int:
    """The launch's register cap for a tile of ``block_m`` query rows (64 a consumer warpgroup)."""
    return MAXNREG if block_m == 128 else MAXNREG3


# ---------------------------------------------------------------------------------------------
# Barriers (all in shared memory, initialised before gl.warp_specialize):
#   q_bars[w]   count 1: the producer's expect-tx arrive; completes once (phase 0) when Q_w landed.
#   k_ready[s], v_ready[s]  count 1 (the producer's expect-tx arrive) + the TMA bytes.
#   k_empty[s], v_empty[s]  count NUM_WG: one arrive per consumer warpgroup.
#
# Arrive semantics (triton 3.6, ArriveBarrierOp -> LLVM): mbarrier.arrive is predicated on
# "thread id == 0" where the thread id is relative to the partition (the warp-specialize
# lowering rebases it), so ONE thread per partition arrives: one arrive per consumer warpgroup,
# hence count NUM_WG on the empty barriers. That thread arrives after its own
# warpgroup_mma_wait: a wgmma is one warpgroup-wide operation, so once it has retired for one
# warp its shared-memory reads are over for the whole warpgroup (CUTLASS's consumer_release
# relies on the same). The expect-tx arrives of the producer are one thread too.
#
# Phases. Block j lives in stage s = j % STAGES, on its use r = j // STAGES of that stage.
#   ready[s]: phase r completes when block j's bytes landed -> consumers wait parity r & 1.
#   empty[s]: phase r completes when both warpgroups released block j -> before loading block j
#     (use r of stage s) the producer needs phase r - 1 complete: parity (r - 1) & 1 = (r & 1) ^ 1;
#     for r = 0 that is parity 1 on a fresh barrier (current phase 0), which returns at once.
#   No barrier can run more than one phase ahead of a waiter: ready[s] phase r + 1 needs the
#   producer to have seen empty[s] phase r, i.e. both consumers done waiting on ready phase r;
#   a consumer's arrive for use r + 1 needs ready phase r + 1, so empty phase r has both arrivals.
# ---------------------------------------------------------------------------------------------


@gluon.jit
def _ws_tile(pid_m, pid_bh, SQ, SK, H, causal_offset, window_left, window_right, BLOCK_M: gl.constexpr,
             BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr, WINDOW: gl.constexpr, TRIM: gl.constexpr):
    """(pid_bh, b, h, m0, lo, n_blocks) of the tile (pid_m, pid_bh) (the CTA's: its program ids;
    PERSISTENT: _ws_tile_c's): rows m0 .. m0 + BLOCK_M of (b, h) and the key
    blocks lo .. lo + n_blocks - 1 they see. CAUSAL (causal_offset 0, SQ <= SK): up to the last
    row's diagonal. WINDOW: the union of the rows' windows [i + off - left, i + off +
    right]; when no row sees a key, one block all masked (so that every CTA runs one block).
    TRIM (BLOCK_M not a multiple of BLOCK_N, the last tile may pass SQ): the rows end at SQ and
    the causal range is rounded up to whole key blocks."""
    m0 = pid_m * BLOCK_M
    if TRIM:
        m_end = gl.minimum(m0 + BLOCK_M, SQ)
    else:
        m_end = m0 + BLOCK_M
    if WINDOW:
        lo_key = gl.maximum(m0 + causal_offset - window_left, 0)
        hi_key = gl.minimum(gl.maximum(m_end + causal_offset + window_right, 0), SK)
        lo = gl.minimum(lo_key // BLOCK_N, SK // BLOCK_N - 1)
        n_blocks = gl.maximum((hi_key + BLOCK_N - 1) // BLOCK_N - lo, 1)
    elif CAUSAL:  # causal_offset 0 and SQ <= SK (the launcher passes any other causal call as WINDOW)
        lo = 0
        n_blocks = (m_end + BLOCK_N - 1) // BLOCK_N if TRIM else m_end // BLOCK_N
    else:
        lo = 0
        n_blocks = SK // BLOCK_N
    return pid_bh, pid_bh // H, pid_bh % H, m0, lo, n_blocks


@gluon.jit
def _grid_m(REVERSE_M: gl.constexpr):
    """The query tile of this CTA of the grid launch: program id 0, or with REVERSE_M counted from
    the last (the GPU starts CTAs in grid order: causal, a head's longest tiles first)."""
    if REVERSE_M:
        return gl.num_programs(0) - 1 - gl.program_id(0)
    return gl.program_id(0)


@gluon.jit
def _ws_rot0(m0, causal_offset, n_blocks, BLOCK_N: gl.constexpr, ROT_N: gl.constexpr):
    """ROT_N: the tile's first key block, the one before the block that holds its first row's
    diagonal m0 + causal_offset (clamped to the tile's blocks 0 .. n_blocks - 1); else 0 (see
    _ws_blk). (Not the diagonal's own block: a block the diagonal crosses takes the longer ALiBi
    step, whose latency the first block of a tile does not hide behind a P V wgmma.)"""
    if ROT_N:
        return gl.maximum(gl.minimum(gl.maximum(m0 + causal_offset, 0) // BLOCK_N, n_blocks - 1) - 1, 0)
    return 0


@gluon.jit
def _ws_blk(j, r0, n_blocks, ROT_N: gl.constexpr):
    """The key block (from the tile's lo) of a tile's j-th step: j, or with ROT_N the blocks from
    r0 (_ws_rot0: the one before the diagonal's) on, wrapping around to 0 .. r0 - 1. ALiBi's bias
    is largest at the diagonal, so in this order a row's running max is set by its first two
    blocks and the later ones rarely pass it: the lazy rescale of O (gluon_base._rescale_lazy) is
    skipped where, in key order, a slope above ~0.04 moved the max by more than LAZY_THRESHOLD on
    every block before the diagonal."""
    if ROT_N:
        k = j + r0
        return k - n_blocks * (k >= n_blocks).to(gl.int32)
    return j


@gluon.jit
def _ws_n_tiles(n_m, n_bh, CAUSAL: gl.constexpr):
    """How many tiles this CTA of a PERSISTENT launch runs (n_m query tiles of each of n_bh (batch,
    head) pairs; _ws_tile_c's c = 0 ..): one of every `programs` tiles; causal (n_m even: the
    launcher's condition) two of every 2 · programs, a pair (see _ws_tile_c)."""
    i = gl.program_id(0)
    g = gl.num_programs(0)
    if CAUSAL:
        return (n_bh * (n_m // 2) - i + g - 1) // g * 2
    return (n_m * n_bh - i + g - 1) // g


@gluon.jit
def _ws_tile_c(c, n_m, n_bh, CAUSAL: gl.constexpr):
    """(pid_m, pid_bh) of this CTA's c-th tile of a PERSISTENT launch: tile t = its id + c · programs,
    head by head, the query tiles of one head next to each other (the CTAs that run together share
    its K / V in L2, as the grid's order does). Causal: pair p = its id + (c // 2) · programs of each
    head's n_m / 2 pairs of query tiles (n_m - 1 - j, j), the long one first, so that every CTA's
    pairs hold the same work (n_m + 1 key blocks) and a head's pairs run next to each other. (Tried
    before: each head's tiles longest first, striding by the grid, left the CTAs unbalanced, -11% at
    1k (chained) to -25% at 16k against the grid launch; every head's longest tiles first lost the
    L2 sharing, -6 to -30%.)"""
    i = gl.program_id(0)
    g = gl.num_programs(0)
    if CAUSAL:
        half = n_m // 2
        p = i + (c // 2) * g
        j = p % half
        if c % 2 == 0:
            pid_m = n_m - 1 - j
        else:
            pid_m = j
        return pid_m, p // half
    t = i + c * g
    return t % n_m, t // n_m


@gluon.jit
def _ws_tail(n_m, n_bh, NB):
    """SPLIT_TAIL (non-causal PERSISTENT, every tile NB key blocks): (rounds, u0, u1, U). The first
    rounds · programs tiles run whole, _ws_tile_c's c < rounds; the r = tiles mod programs left (the
    last round, which would leave programs - r CTAs idle) are cut into U = r · NB units of one key
    block, and this CTA takes units u0 .. u1 - 1 (an even share, fewer than NB: parts of at most two
    tiles)."""
    i = gl.program_id(0)
    g = gl.num_programs(0)
    t = n_m * n_bh
    rounds = t // g
    u = (t - rounds * g) * NB
    return rounds, (i * u) // g, ((i + 1) * u) // g, u


@gluon.jit
def _ws_n_segs(n_m, n_bh, NB):
    """SPLIT_TAIL: the segments (a whole tile, or a run of one tile's key blocks) this CTA runs: the
    whole rounds' tiles and the 0-2 segments of its units (_ws_tail)."""
    rounds, u0, u1, _ = _ws_tail(n_m, n_bh, NB)
    n = rounds
    if u1 > u0:
        n += 1 + ((u1 - 1) // NB > u0 // NB).to(gl.int32)
    return n


@gluon.jit
def _ws_seg(c, n_m, n_bh, NB):
    """SPLIT_TAIL: (pid_m, pid_bh, k0, k1) of this CTA's c-th segment, tile (pid_m, pid_bh)'s key
    blocks k0 .. k1 - 1: whole tiles (0, NB) in _ws_tile_c's order for c < rounds; from there the
    (c - rounds)-th tile its units [u0, u1) touch (_ws_tail), tile rounds · programs + u // NB of
    unit u."""
    pid_m, pid_bh = _ws_tile_c(c, n_m, n_bh, False)
    k0 = c * 0
    k1 = k0 + NB
    rounds, u0, u1, _ = _ws_tail(n_m, n_bh, NB)
    if c >= rounds:
        ta = u0 // NB + (c - rounds)  # (the tail's tile this segment is in)
        t = rounds * gl.num_programs(0) + ta
        pid_m = t % n_m
        pid_bh = t // n_m
        k0 = gl.maximum(u0 - ta * NB, 0)
        k1 = gl.minimum(u1 - ta * NB, NB)
    return pid_m, pid_bh, k0, k1


@gluon.jit
def _ws_tile_varlen(CuQ, CuK, H, window_left, window_right, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, n_bh,
                    NB: gl.constexpr, NUM_WARPS: gl.constexpr, px, py, PUB: gl.constexpr = False, b_pub=0):
    """_ws_tile of a VARLEN build (always a WINDOW one): (pid_bh, b, h, m0, lo, n_blocks, q0, k0,
    seqlen_q, seqlen_k, off), b the packed sequence, q0 / k0 its first query / key row, off its
    causal offset seqlen_k - seqlen_q (bottom-right). The rows end at seqlen_q, the keys at
    seqlen_k (a last partial block). A CTA whose rows start past seqlen_q gets no block at all
    (n_blocks 0: not an early return before gl.warp_specialize, which faulted in the backward,
    bwd_hopper_tiles._bwd_tile); one whose rows see no key (seqlen_k 0 too) one block, all masked,
    as _ws_tile's.

    Grid: NB = 0: (the longest sequence's query tiles, n · H), every sequence's row of it as long
    (about half the CTAs empty in `bench varlen`'s case); NB > 0 (a power of two > n = n_bh / H,
    at least 32 x the caller's warps NUM_WARPS): (total_q // BLOCK_M + n, H), sequence b's tiles
    starting at x = P_b = cu_seqlens_q[b] // BLOCK_M + b (P_{b+1} - P_b >= its tiles, by at most
    one: at most one empty CTA a sequence); a CTA finds its b by counting the P_j <= x in one load
    of the offsets. (px, py): the tile's place in that grid, the CTA's program ids in a grid launch
    (PERSISTENT: _ws_sched_tile's). PUB: the tile's sequence is b_pub (the persistent producer's, published
    with the tile: _ws_producer_dyn's PUB), no search."""
    if NB:  # (None where compile_check leaves it out)
        x = px
        h = py
        if PUB:
            b = b_pub
        else:
            gl.static_assert(NB >= 32 * NUM_WARPS)  # (a layout without replicas: each offset counted once)
            j = gl.arange(0, NB, layout=gl.BlockedLayout([NB // (32 * NUM_WARPS)], [32], [NUM_WARPS], [0]))
            cu_j = gl.load(CuQ + j, mask=(j >= 1) & (j < n_bh // H), other=1 << 30)  # (sequence 0 starts at 0)
            b = gl.sum(((cu_j // BLOCK_M + j) <= x).to(gl.int32), axis=0)
        pid_bh = b * H + h
        q0, k0, seqlen_q, seqlen_k = _varlen_seq(CuQ, CuK, b)
        m0 = (x - (q0 // BLOCK_M + b)) * BLOCK_M
    else:
        pid_m = px
        pid_bh = py
        m0 = pid_m * BLOCK_M
        b = pid_bh // H
        q0, k0, seqlen_q, seqlen_k = _varlen_seq(CuQ, CuK, b)
    off = seqlen_k - seqlen_q
    m_end = gl.minimum(m0 + BLOCK_M, seqlen_q)
    lo_key = gl.maximum(m0 + off - window_left, 0)
    hi_key = gl.minimum(gl.maximum(m_end + off + window_right, 0), seqlen_k)
    lo = gl.minimum(lo_key // BLOCK_N, gl.maximum((seqlen_k + BLOCK_N - 1) // BLOCK_N - 1, 0))
    n_blocks = gl.maximum((hi_key + BLOCK_N - 1) // BLOCK_N - lo, 1)
    n_blocks = gl.where(m0 < seqlen_q, n_blocks, 0)
    return pid_bh, b, pid_bh % H, m0, lo, n_blocks, q0, k0, seqlen_q, seqlen_k, off


@gluon.jit
def _ws_load(desc, ring, ready, empty, s, ph, row, col):
    """The producer's load of one K or V block: once ring stage s is free (its empty barrier past
    phase ph), desc's block at (row, col) into it by TMA, its ready barrier counting the bytes."""
    mbarrier.wait(empty.index(s), ph)
    mbarrier.expect(ready.index(s), desc.block_type.nbytes)
    tma.async_copy_global_to_shared(desc, [row, col], ready.index(s), ring.index(s))


@gluon.jit
def _ws_load_q(desc_q, q_smem, q_bars, base, row_q, col, NUM_WG: gl.constexpr, WG_M: gl.constexpr):
    """The producer's loads of a tile's Q: warpgroup w's WG_M rows from row_q + w · WG_M into Q buffer
    base + w, each on its own barrier."""
    for w in gl.static_range(NUM_WG):
        mbarrier.expect(q_bars.index(base + w), desc_q.block_type.nbytes)
        tma.async_copy_global_to_shared(desc_q, [row_q + w * WG_M, col], q_bars.index(base + w),
                                        q_smem.index(base + w))


@gluon.jit
def _ws_sched_put(t_smem, t):
    """The producer (one warp) publishes tile t (-1: no more) to the consumers in t_smem; they read it
    (_ws_sched_get) once the tile's Q barriers complete, which the producer's arrivals on them,
    after this store, release."""
    t_smem.store(gl.full([1], t, gl.int32, layout=gl.BlockedLayout([1], [32], [1], [0])))  # racecheck: varlen-state


@gluon.jit
def _ws_sched_get(t_smem, NUM_WARPS: gl.constexpr):
    """The tile the producer published last (_ws_sched_put), read by a consumer warpgroup."""
    return gl.max(t_smem.load(gl.BlockedLayout([1], [32], [NUM_WARPS], [0])), axis=0)


@gluon.jit
def _ws_sort_starts(CuQ, CuK, n, BLOCK_M: gl.constexpr, NB: gl.constexpr):
    """The dynamic scheduler's sorted order (_ws_producer_dyn's SORT), in one warp's registers:
    (j, start_j, tiles_j, total) for sequences j < NB: sequence j has tiles_j query tiles, the
    sequences run by their key counts, most first (ties by index), so sequence j's tiles come after
    start_j of the others' (a head's), and total = Σ tiles_j. One pass over the n sequences'
    offsets (scalar loads, L1 hits after the vector loads)."""
    lay: gl.constexpr = gl.BlockedLayout([NB // 32], [32], [1], [0])
    j = gl.arange(0, NB, layout=lay)
    ok = j < n
    q_lo = gl.load(CuQ + j, mask=ok, other=0)
    tiles = (gl.load(CuQ + j + 1, mask=ok, other=0) - q_lo + BLOCK_M - 1) // BLOCK_M
    keys = gl.load(CuK + j + 1, mask=ok, other=0) - gl.load(CuK + j, mask=ok, other=0)
    start = gl.zeros([NB], gl.int32, layout=lay)
    cq = gl.load(CuQ)
    ck = gl.load(CuK)
    for i in range(n):
        cq1 = gl.load(CuQ + i + 1)
        ck1 = gl.load(CuK + i + 1)
        before = ((ck1 - ck) > keys) | (((ck1 - ck) == keys) & (i < j))
        start += gl.where(before, (cq1 - cq + BLOCK_M - 1) // BLOCK_M, 0)
        cq = cq1
        ck = ck1
    return j, start, tiles, gl.sum(tiles, axis=0)


@gluon.jit
def _ws_producer_dyn(desc_q, desc_k, desc_v, q_smem, k_smem, v_smem, q_bars, k_ready, k_empty, v_ready, v_empty,
                     q_empty, t_smem, Sched, SQ, H, GROUP, window_left, window_right, q_rh, q_ch, k_rh, k_ch, v_rh,
                     v_ch, CuQ, CuK, n_bh, WG_M: gl.constexpr, NUM_WG: gl.constexpr, BLOCK_N: gl.constexpr,
                     STAGES: gl.constexpr, NB: gl.constexpr, SORT: gl.constexpr = 0, QSETS: gl.constexpr = 1,
                     PUB: gl.constexpr = False):
    """The producer of a PERSISTENT VARLEN launch (a dynamic tile scheduler): it takes the next of
    the T = (SQ // BLOCK_M + n) · H packed tiles (_ws_tile_varlen's grid, head by head) from the
    launch's counter Sched (int32, zero at the launch) until none is left, skips a tile without
    rows (the at most one a sequence past its last tile), and for any other loads K_0, then, once
    the consumers released the last tile's Q buffers (q_empty), publishes the tile (_ws_sched_put)
    and loads every warpgroup's Q (also one whose rows start past the sequence: the next
    sequence's rows or TMA's zeros, never stored; so every Q barrier completes once a tile), then
    the rest of the tile's K / V blocks through the ring, whose position carries over. At the end
    it publishes -1 and completes the Q barriers by plain arrivals.

    SORT: the counter runs over the sequences' tiles longest first (_ws_sort_starts: the sequences by
    their keys, most first; each one's query tiles from its last, a causal sequence's longest), the
    heads innermost (1) or head by head (2; so the CTAs running together share a head's K / V in
    L2), the order in which list scheduling leaves the shortest tail; the tile goes to the
    consumers as its packed-grid index all the same.

    QSETS = 2: two sets of Q buffers and tile slots; tile c (the c-th published) goes to set c % 2
    (t_smem[c % 2], Q buffers (c % 2) · NUM_WG + w, their barriers' phase c // 2) once the consumers
    released tile c - 2's (q_empty[c % 2]), so that its Q loads while tile c - 1 runs. PUB (QSETS = 2): the
    tile's sequence published with it (t_smem[2 + c % 2]), so that the consumers need not search for it."""
    BLOCK_M: gl.constexpr = NUM_WG * WG_M
    n_x = SQ // BLOCK_M + n_bh // H
    n_t = n_x * H
    it = 0  # K / V blocks loaded so far
    tc = 0  # tiles published so far
    t = gl.atomic_add(Sched, 1)
    if SORT:
        j_s, start_s, tiles_s, per_head = _ws_sort_starts(CuQ, CuK, n_bh // H, BLOCK_M, NB)
        n_t = per_head * H
    while t < n_t:
        if SORT:  # (t in the sorted order -> its index in the packed grid)
            if SORT == 1:  # (the heads innermost)
                sel = (start_s * H <= t) & (t < (start_s + tiles_s) * H)
                loc = t - gl.max(gl.where(sel, start_s, -1), axis=0) * H
                h_s = loc % H
                loc = loc // H
            else:  # (head by head)
                h_s = t // per_head
                u = t - h_s * per_head
                sel = (start_s <= u) & (u < start_s + tiles_s)
                loc = u - gl.max(gl.where(sel, start_s, -1), axis=0)
            b_s = gl.max(gl.where(sel, j_s, -1), axis=0)
            x_s = gl.max(gl.where(sel, tiles_s, -1), axis=0) - 1 - loc
            t = h_s * n_x + gl.load(CuQ + b_s) // BLOCK_M + b_s + x_s
        _, b, h, m0, lo, n_blocks, q0, k0, _, _, _ = _ws_tile_varlen(CuQ, CuK, H, window_left, window_right, BLOCK_M,
                                                                     BLOCK_N, n_bh, NB, 1, t % n_x, t // n_x)
        hk = h // GROUP
        row_q = h * q_rh + q0 + m0
        row_k = hk * k_rh + k0 + lo * BLOCK_N
        row_v = hk * v_rh + k0 + lo * BLOCK_N
        for j in range(n_blocks):  # (0: a tile without rows, which no consumer sees)
            s = (it + j) % STAGES
            ph = (((it + j) // STAGES) & 1) ^ 1
            _ws_load(desc_k, k_smem, k_ready, k_empty, s, ph, row_k + j * BLOCK_N, hk * k_ch)
            if j == 0:
                if QSETS == 2:
                    mbarrier.wait(q_empty.index(tc & 1), ((tc >> 1) & 1) ^ 1)
                    if PUB:
                        _ws_sched_put(t_smem.index(2 + (tc & 1)), b)
                    _ws_sched_put(t_smem.index(tc & 1), t)
                    _ws_load_q(desc_q, q_smem, q_bars, (tc & 1) * NUM_WG, row_q, h * q_ch, NUM_WG, WG_M)
                else:
                    mbarrier.wait(q_empty, (tc & 1) ^ 1)
                    _ws_sched_put(t_smem, t)
                    _ws_load_q(desc_q, q_smem, q_bars, 0, row_q, h * q_ch, NUM_WG, WG_M)
            _ws_load(desc_v, v_smem, v_ready, v_empty, s, ph, row_v + j * BLOCK_N, hk * v_ch)
        it += n_blocks
        tc += (n_blocks > 0).to(gl.int32)
        t = gl.atomic_add(Sched, 1)
    if QSETS == 2:
        mbarrier.wait(q_empty.index(tc & 1), ((tc >> 1) & 1) ^ 1)
        _ws_sched_put(t_smem.index(tc & 1), -1)
        for w in gl.static_range(NUM_WG):
            mbarrier.arrive(q_bars.index((tc & 1) * NUM_WG + w))
    else:
        mbarrier.wait(q_empty, (tc & 1) ^ 1)
        _ws_sched_put(t_smem, -1)
        for w in gl.static_range(NUM_WG):
            mbarrier.arrive(q_bars.index(w))


@gluon.jit
def _ws_consumer_dyn(W: gl.constexpr, desc_o, Lse, Alibi, Sink, sm_scale, softcap, q_smem, k_smem, v_smem, q_bars,
                     k_ready, k_empty, v_ready, v_empty, q_empty, t_smem, SQ, H, window_left, window_right, alibi_sb,
                     alibi_sh, o_rh, o_ch, Out, o_rs, CuQ, CuK, n_bh, HEAD_DIM: gl.constexpr, WG_M: gl.constexpr,
                     NUM_WG: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, SOFTCAP: gl.constexpr,
                     ALIBI: gl.constexpr, SINK: gl.constexpr, NB: gl.constexpr, x_smem, ALIBI_MMA: gl.constexpr,
                     QSETS: gl.constexpr = 1, PUB: gl.constexpr = False, DEFER: gl.constexpr = False):
    """Consumer warpgroup W of a PERSISTENT VARLEN launch: the tiles _ws_producer_dyn publishes, each
    read once its Q barrier completes, until -1; its rows of each (none when they start past the
    sequence: it only releases the tile's blocks), the ring's position carried over; after each
    tile (its output stored) it releases its Q buffer (q_empty). QSETS = 2: tile c in set c % 2 (its
    index in t_smem[c % 2], its Q in buffer (c % 2) · NUM_WG + W, released on q_empty[c % 2]), the
    producer's (_ws_producer_dyn); PUB: its sequence read from t_smem[2 + c % 2] (the producer's PUB);
    DEFER: tile c's output store is not waited for at its end but once tile c + 1 is decoded, and
    its Q buffer released then (so the store's read of it overlaps the decode's loads)."""
    n_x = SQ // (NUM_WG * WG_M) + n_bh // H
    it = 0  # K / V blocks consumed so far
    tc = 0  # tiles so far
    mbarrier.wait(q_bars.index(W), 0)
    if QSETS == 2:
        t = _ws_sched_get(t_smem.index(0), 4)
    else:
        t = _ws_sched_get(t_smem, 4)
    while t >= 0:
        if PUB:
            pid_bh, b, h, m0, lo, n_blocks, q0, _, rows, seqlen_k, off = _ws_tile_varlen(
                CuQ, CuK, H, window_left, window_right, NUM_WG * WG_M, BLOCK_N, n_bh, NB, 4, t % n_x, t // n_x, True,
                _ws_sched_get(t_smem.index(2 + (tc & 1)), 4))
        else:
            pid_bh, b, h, m0, lo, n_blocks, q0, _, rows, seqlen_k, off = _ws_tile_varlen(
                CuQ, CuK, H, window_left, window_right, NUM_WG * WG_M, BLOCK_N, n_bh, NB, 4, t % n_x, t // n_x)
        if DEFER:  # (QSETS = 2) the last tile's output store has read its Q buffer: release it
            if tc > 0:
                tma.store_wait(pendings=0)
                mbarrier.arrive(q_empty.index((tc - 1) & 1))
        m0w = m0 + W * WG_M
        n_w = n_blocks
        if m0w >= rows:
            n_w = 0
        if n_w > 0:
            if QSETS == 2:  # (Q buffer (tc % 2) · NUM_WG + W, its barrier's phase tc // 2)
                _ws_attend(W, desc_o, Lse, Alibi, Sink, sm_scale, softcap, q_smem, k_smem, v_smem, q_bars, k_ready,
                           k_empty, v_ready, v_empty, SQ, pid_bh, b, h, m0w, lo, n_w, off, window_left, window_right,
                           alibi_sb, alibi_sh, 0, o_rh, o_ch, Out, o_rs, q0, rows, seqlen_k, HEAD_DIM, WG_M, BLOCK_N,
                           STAGES, False, SOFTCAP, ALIBI, SINK, True, True, it, (tc >> 1) & 1, x_smem, ALIBI_MMA,
                           False, (tc & 1) * NUM_WG, not DEFER)
            else:
                _ws_attend(W, desc_o, Lse, Alibi, Sink, sm_scale, softcap, q_smem, k_smem, v_smem, q_bars, k_ready,
                           k_empty, v_ready, v_empty, SQ, pid_bh, b, h, m0w, lo, n_w, off, window_left, window_right,
                           alibi_sb, alibi_sh, 0, o_rh, o_ch, Out, o_rs, q0, rows, seqlen_k, HEAD_DIM, WG_M, BLOCK_N,
                           STAGES, False, SOFTCAP, ALIBI, SINK, True, True, it, tc & 1, x_smem, ALIBI_MMA, False)
        for j in range(n_w, n_blocks):
            ph = ((it + j) // STAGES) & 1
            mbarrier.wait(k_ready.index((it + j) % STAGES), ph)
            mbarrier.arrive(k_empty.index((it + j) % STAGES))
            mbarrier.wait(v_ready.index((it + j) % STAGES), ph)
            mbarrier.arrive(v_empty.index((it + j) % STAGES))
        if QSETS == 2:
            if not DEFER:
                mbarrier.arrive(q_empty.index(tc & 1))
            it += n_blocks
            tc += 1
            mbarrier.wait(q_bars.index((tc & 1) * NUM_WG + W), (tc >> 1) & 1)
            t = _ws_sched_get(t_smem.index(tc & 1), 4)
        else:
            mbarrier.arrive(q_empty)  # (after _ws_attend's output store read Q_W, and t was read)
            it += n_blocks
            tc += 1
            mbarrier.wait(q_bars.index(W), tc & 1)
            t = _ws_sched_get(t_smem, 4)
    if DEFER:  # (the last tile's output store, before the CTA ends)
        tma.store_wait(pendings=0)


@gluon.jit
def _ws_producer(desc_q, desc_k, desc_v, q_smem, k_smem, v_smem, q_bars, k_ready, k_empty, v_ready, v_empty,
                 SQ, SK, H, GROUP, causal_offset, window_left, window_right,
                 q_rb, q_rh, q_ch, k_rb, k_rh, k_ch, v_rb, v_rh, v_ch, CuQ, CuK,
                 WG_M: gl.constexpr, NUM_WG: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                 CAUSAL: gl.constexpr, WINDOW: gl.constexpr, TRIM: gl.constexpr, VARLEN: gl.constexpr,
                 PERSISTENT: gl.constexpr, q_empty, n_bh, REVERSE_M: gl.constexpr, VARLEN_NB: gl.constexpr,
                 CHAIN: gl.constexpr, ROT_N: gl.constexpr, SPLIT_TAIL: gl.constexpr = False):
    if PERSISTENT:  # (the CTA's tiles, one after another; the ring's position carries over)
        n_m = SQ // (NUM_WG * WG_M)
        it = 0  # K / V blocks loaded so far
        tc = 0  # tiles so far
        if SPLIT_TAIL:  # (segments: _ws_seg)
            n_t = _ws_n_segs(n_m, n_bh, SK // BLOCK_N)
        else:
            n_t = _ws_n_tiles(n_m, n_bh, CAUSAL)
        for c in range(n_t):
            if SPLIT_TAIL:
                pid_m, pid_bh, k0, k1 = _ws_seg(c, n_m, n_bh, SK // BLOCK_N)
            else:
                pid_m, pid_bh = _ws_tile_c(c, n_m, n_bh, CAUSAL)
            _, b, h, m0, lo, n_blocks = _ws_tile(pid_m, pid_bh, SQ, SK, H, causal_offset, window_left,
                                                 window_right, NUM_WG * WG_M, BLOCK_N, CAUSAL, WINDOW, TRIM)
            hk = h // GROUP
            row_q = b * q_rb + h * q_rh + m0
            row_k = b * k_rb + hk * k_rh
            row_v = b * v_rb + hk * v_rh
            if SPLIT_TAIL:  # (the segment's key blocks k0 .. k1 - 1)
                n_blocks = k1 - k0
                row_k += k0 * BLOCK_N
                row_v += k0 * BLOCK_N
            r0 = _ws_rot0(m0, causal_offset, n_blocks, BLOCK_N, ROT_N)
            for j in range(n_blocks):
                s = (it + j) % STAGES
                ph = (((it + j) // STAGES) & 1) ^ 1
                kb = _ws_blk(j, r0, n_blocks, ROT_N) * BLOCK_N
                mbarrier.wait(k_empty.index(s), ph)
                mbarrier.expect(k_ready.index(s), desc_k.block_type.nbytes)
                tma.async_copy_global_to_shared(desc_k, [row_k + kb, hk * k_ch], k_ready.index(s),
                                                k_smem.index(s))
                if j == 0:  # Q after K_0 (which may load during the previous tile's epilogue): the Q
                    # buffers are free once every warpgroup's previous output store has read them
                    if CHAIN:  # (two sets of Q buffers, tile tc's the set tc % 2, its use tc // 2)
                        mbarrier.wait(q_empty.index(tc & 1), ((tc >> 1) & 1) ^ 1)
                        for w in gl.static_range(NUM_WG):
                            qb = (tc & 1) * NUM_WG + w
                            mbarrier.expect(q_bars.index(qb), desc_q.block_type.nbytes)
                            tma.async_copy_global_to_shared(desc_q, [row_q + w * WG_M, h * q_ch], q_bars.index(qb),
                                                            q_smem.index(qb))
                    else:
                        mbarrier.wait(q_empty, (tc & 1) ^ 1)
                        for w in gl.static_range(NUM_WG):
                            mbarrier.expect(q_bars.index(w), desc_q.block_type.nbytes)
                            tma.async_copy_global_to_shared(desc_q, [row_q + w * WG_M, h * q_ch], q_bars.index(w),
                                                            q_smem.index(w))
                mbarrier.wait(v_empty.index(s), ph)
                mbarrier.expect(v_ready.index(s), desc_v.block_type.nbytes)
                tma.async_copy_global_to_shared(desc_v, [row_v + kb, hk * v_ch], v_ready.index(s),
                                                v_smem.index(s))
            it += n_blocks
            tc += 1
        return
    if VARLEN:
        _, b, h, m0, lo, n_blocks, q0, k0, rows, _, _ = _ws_tile_varlen(CuQ, CuK, H, window_left, window_right,
                                                                        NUM_WG * WG_M, BLOCK_N, n_bh, VARLEN_NB, 1,
                                                                        gl.program_id(0), gl.program_id(1))
    else:
        _, b, h, m0, lo, n_blocks = _ws_tile(_grid_m(REVERSE_M), gl.program_id(1), SQ, SK, H, causal_offset,
                                             window_left, window_right, NUM_WG * WG_M, BLOCK_N, CAUSAL, WINDOW, TRIM)
        rows = SQ
    hk = h // GROUP  # GQA: query heads hk*GROUP .. share kv head hk
    # Row m of head h of batch b is row b*rb + h*rh + m, columns h*ch .. + D, of a tensor's 2-D view
    # (see launch._hopper_view). VARLEN (one batch of total rows): row h*rh + q0 + m of sequence b
    # (keys: k0); its last blocks read the next sequence's rows, or TMA's zeros past the tensor
    # (masked by the consumers, never stored).
    if VARLEN:
        row_q = h * q_rh + q0 + m0
        row_k = hk * k_rh + k0 + lo * BLOCK_N
        row_v = hk * v_rh + k0 + lo * BLOCK_N
    else:
        row_q = b * q_rb + h * q_rh + m0
        row_k = b * k_rb + hk * k_rh + lo * BLOCK_N
        row_v = b * v_rb + hk * v_rh + lo * BLOCK_N
    for w in gl.static_range(NUM_WG):
        if TRIM or VARLEN:  # (a warpgroup past the rows computes nothing: no Q for it)
            if m0 + w * WG_M < rows:
                mbarrier.expect(q_bars.index(w), desc_q.block_type.nbytes)
                tma.async_copy_global_to_shared(desc_q, [row_q + w * WG_M, h * q_ch], q_bars.index(w),
                                                q_smem.index(w))
        else:
            mbarrier.expect(q_bars.index(w), desc_q.block_type.nbytes)
            tma.async_copy_global_to_shared(desc_q, [row_q + w * WG_M, h * q_ch], q_bars.index(w), q_smem.index(w))
    r0 = _ws_rot0(m0, causal_offset, n_blocks, BLOCK_N, ROT_N)  # (ROT_N: no WINDOW, lo = 0)
    for j in range(n_blocks):
        s = j % STAGES
        ph = ((j // STAGES) & 1) ^ 1  # previous use of stage s released (fresh barrier: passes)
        kb = _ws_blk(j, r0, n_blocks, ROT_N) * BLOCK_N
        mbarrier.wait(k_empty.index(s), ph)
        mbarrier.expect(k_ready.index(s), desc_k.block_type.nbytes)
        tma.async_copy_global_to_shared(desc_k, [row_k + kb, hk * k_ch], k_ready.index(s), k_smem.index(s))
        mbarrier.wait(v_empty.index(s), ph)
        mbarrier.expect(v_ready.index(s), desc_v.block_type.nbytes)
        tma.async_copy_global_to_shared(desc_v, [row_v + kb, hk * v_ch], v_ready.index(s), v_smem.index(s))


@gluon.jit
def _ws_consumer(W: gl.constexpr, desc_o, Lse, Alibi, Sink, sm_scale, softcap, q_smem, k_smem, v_smem, q_bars,
                 k_ready, k_empty, v_ready, v_empty, SQ, SK, H, causal_offset, window_left, window_right,
                 alibi_sb, alibi_sh, o_rb, o_rh, o_ch, Out, o_rs, CuQ, CuK,
                 HEAD_DIM: gl.constexpr, WG_M: gl.constexpr, NUM_WG: gl.constexpr, BLOCK_N: gl.constexpr,
                 STAGES: gl.constexpr, CAUSAL: gl.constexpr, SOFTCAP: gl.constexpr, ALIBI: gl.constexpr,
                 SINK: gl.constexpr, WINDOW: gl.constexpr, TRIM: gl.constexpr, VARLEN: gl.constexpr,
                 PERSISTENT: gl.constexpr, q_empty, n_bh, REVERSE_M: gl.constexpr, VARLEN_NB: gl.constexpr,
                 CHAIN: gl.constexpr, x_smem, ALIBI_MMA: gl.constexpr, ROT_N: gl.constexpr, Probe=None,
                 PROBE: gl.constexpr = False, SPLIT_TAIL: gl.constexpr = False, Part=None, Flags=None):
    """Consumer warpgroup W: query rows m0 + W*WG_M .. + WG_M of the CTA's tile, over the CTA's key
    blocks; with TRIM over its own: causal, those up to its last row's diagonal (the tile's later
    warpgroups need up to one block more), none when its rows start past SQ (the tile's tail);
    VARLEN likewise none when they start past the sequence's seqlen_q. It
    still releases every block of the CTA's ring (the producer waits for NUM_WG arrivals), after
    each block's ready phase (so that no arrival runs a phase ahead). PERSISTENT (no window, not packed):
    the tiles of _ws_tile_c, striding by the grid, the ring's position carried from tile to tile;
    after each tile's output store the warpgroup releases its Q buffer (q_empty); with CHAIN as one
    stream of key blocks (_ws_attend_chain). ALIBI_MMA: the ALiBi column bias by the tensor cores
    (_ws_qk; the keys' tiles written once here)."""
    if ALIBI_MMA:
        _ws_alibi_keys(x_smem, W)
    if CHAIN:  # (PERSISTENT)
        _ws_attend_chain(W, desc_o, Lse, Alibi, Sink, sm_scale, softcap, q_smem, k_smem, v_smem, q_bars, k_ready,
                         k_empty, v_ready, v_empty, q_empty, SQ, SK, H, n_bh, alibi_sb, alibi_sh, o_rb, o_rh, o_ch,
                         HEAD_DIM, WG_M, NUM_WG, BLOCK_N, STAGES, CAUSAL, SOFTCAP, ALIBI, SINK, x_smem, ALIBI_MMA,
                         causal_offset, ROT_N, CHAIN == 2, Probe, PROBE, SPLIT_TAIL, Part, Flags)
    elif PERSISTENT:
        n_m = SQ // (NUM_WG * WG_M)
        it = 0  # K / V blocks consumed so far
        tc = 0  # tiles so far
        for c in range(_ws_n_tiles(n_m, n_bh, CAUSAL)):
            pid_m, pid_bh = _ws_tile_c(c, n_m, n_bh, CAUSAL)
            pid_bh, b, h, m0, lo, n_blocks = _ws_tile(pid_m, pid_bh, SQ, SK, H, causal_offset, window_left,
                                                      window_right, NUM_WG * WG_M, BLOCK_N, CAUSAL, WINDOW, TRIM)
            _ws_attend(W, desc_o, Lse, Alibi, Sink, sm_scale, softcap, q_smem, k_smem, v_smem, q_bars, k_ready,
                       k_empty, v_ready, v_empty, SQ, pid_bh, b, h, m0 + W * WG_M, lo, n_blocks, causal_offset,
                       window_left, window_right, alibi_sb, alibi_sh, o_rb, o_rh, o_ch, Out, o_rs, 0, SQ, SK,
                       HEAD_DIM, WG_M, BLOCK_N, STAGES, CAUSAL, SOFTCAP, ALIBI, SINK, WINDOW, VARLEN, it, tc & 1,
                       x_smem, ALIBI_MMA, ROT_N)
            mbarrier.arrive(q_empty)  # (after _ws_store_out's store_wait: Q_W is free)
            it += n_blocks
            tc += 1
    else:
        _ws_consumer_tile(W, desc_o, Lse, Alibi, Sink, sm_scale, softcap, q_smem, k_smem, v_smem, q_bars, k_ready,
                          k_empty, v_ready, v_empty, SQ, SK, H, causal_offset, window_left, window_right, alibi_sb,
                          alibi_sh, o_rb, o_rh, o_ch, Out, o_rs, CuQ, CuK, HEAD_DIM, WG_M, NUM_WG, BLOCK_N, STAGES,
                          CAUSAL, SOFTCAP, ALIBI, SINK, WINDOW, TRIM, VARLEN, n_bh, REVERSE_M, VARLEN_NB, x_smem,
                          ALIBI_MMA, ROT_N)


@gluon.jit
def _ws_consumer_tile(W: gl.constexpr, desc_o, Lse, Alibi, Sink, sm_scale, softcap, q_smem, k_smem, v_smem, q_bars,
                      k_ready, k_empty, v_ready, v_empty, SQ, SK, H, causal_offset, window_left, window_right,
                      alibi_sb, alibi_sh, o_rb, o_rh, o_ch, Out, o_rs, CuQ, CuK, HEAD_DIM: gl.constexpr,
                      WG_M: gl.constexpr, NUM_WG: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                      CAUSAL: gl.constexpr, SOFTCAP: gl.constexpr, ALIBI: gl.constexpr, SINK: gl.constexpr,
                      WINDOW: gl.constexpr, TRIM: gl.constexpr, VARLEN: gl.constexpr, n_bh, REVERSE_M: gl.constexpr,
                      VARLEN_NB: gl.constexpr, x_smem, ALIBI_MMA: gl.constexpr, ROT_N: gl.constexpr):
    """_ws_consumer of a grid launch: the CTA's one tile."""
    if VARLEN:  # (causal_offset: the sequence's own, bottom-right)
        pid_bh, b, h, m0, lo, n_blocks, q0, _, rows, seqlen_k, causal_offset = _ws_tile_varlen(
            CuQ, CuK, H, window_left, window_right, NUM_WG * WG_M, BLOCK_N, n_bh, VARLEN_NB, 4, gl.program_id(0),
            gl.program_id(1))
    else:
        pid_bh, b, h, m0, lo, n_blocks = _ws_tile(_grid_m(REVERSE_M), gl.program_id(1), SQ, SK, H, causal_offset,
                                                  window_left, window_right, NUM_WG * WG_M, BLOCK_N, CAUSAL, WINDOW,
                                                  TRIM)
        q0 = 0
        rows = SQ
        seqlen_k = SK
    m0w = m0 + W * WG_M
    if TRIM or VARLEN:
        n_w = n_blocks
        if CAUSAL:
            n_w = gl.minimum((m0w + WG_M + BLOCK_N - 1) // BLOCK_N, n_blocks)
        if m0w >= rows:
            n_w = 0
        if n_w > 0:
            _ws_attend(W, desc_o, Lse, Alibi, Sink, sm_scale, softcap, q_smem, k_smem, v_smem, q_bars, k_ready,
                       k_empty, v_ready, v_empty, SQ, pid_bh, b, h, m0w, lo, n_w, causal_offset, window_left,
                       window_right, alibi_sb, alibi_sh, o_rb, o_rh, o_ch, Out, o_rs, q0, rows, seqlen_k, HEAD_DIM,
                       WG_M, BLOCK_N, STAGES, CAUSAL, SOFTCAP, ALIBI, SINK, WINDOW, VARLEN, 0, 0, x_smem, ALIBI_MMA,
                       False)
        for j in range(n_w, n_blocks):
            ph = (j // STAGES) & 1
            mbarrier.wait(k_ready.index(j % STAGES), ph)
            mbarrier.arrive(k_empty.index(j % STAGES))
            mbarrier.wait(v_ready.index(j % STAGES), ph)
            mbarrier.arrive(v_empty.index(j % STAGES))
    else:
        _ws_attend(W, desc_o, Lse, Alibi, Sink, sm_scale, softcap, q_smem, k_smem, v_smem, q_bars, k_ready, k_empty,
                   v_ready, v_empty, SQ, pid_bh, b, h, m0w, lo, n_blocks, causal_offset, window_left, window_right,
                   alibi_sb, alibi_sh, o_rb, o_rh, o_ch, Out, o_rs, q0, rows, seqlen_k, HEAD_DIM, WG_M, BLOCK_N,
                   STAGES, CAUSAL, SOFTCAP, ALIBI, SINK, WINDOW, VARLEN, 0, 0, x_smem, ALIBI_MMA, ROT_N)


@gluon.constexpr_function
def _acc_layout(n):
    """A consumer warpgroup's wgmma accumulator of 64 rows x n (S: n = BLOCK_N, O: n = HEAD_DIM):
    instruction m = 16, k = 16 (16-bit inputs), n = the tile's width, 4 warps along the rows."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, n, 16])


@gluon.jit
def _ws_qk(q, k, s_zero, x_smem, qx, W: gl.constexpr, start_n, diag0, CAUSAL: gl.constexpr):
    """ALIBI_MMA's S = q · kᵀ issued (async; returns the token), plus the ALiBi column bias ±slope · (j -
    start_n) by one more k = 16 wgmma: qx (_ws_alibi_q, registers) times warpgroup W's keys' tile
    (_ws_alibi_keys), + on the blocks not after every row's diagonal, - on those after it
    (hopper_softmax._softmax_step's split)."""
    s_tok = warpgroup_mma(q, k.permute((1, 0)), s_zero, use_acc=False, is_async=True)
    sign = 0
    if not CAUSAL:  # (causal: no block lies after the diagonal)
        sign = (start_n >= diag0 + s_zero.shape[0] - 1).to(gl.int32)
    return warpgroup_mma(qx, x_smem.index(2 * W + sign).permute((1, 0)), s_tok, is_async=True)


@gluon.jit
def _ws_alibi_keys(x_smem, W: gl.constexpr):
    """Warpgroup W's keys' tiles of _ws_qk (k = 16 columns, 16-bit, written once): x_smem[2W] with c (the
    key's place in its block) in columns 0-2, x_smem[2W + 1] with it in columns 3-5; stores fenced for
    the wgmma and the warpgroup synced."""
    R: gl.constexpr = x_smem.shape[1]
    layout: gl.constexpr = gl.BlockedLayout([1, 8], [16, 2], [4, 1], [1, 0])
    col = gl.arange(0, 16, layout=gl.SliceLayout(0, layout))[None, :]
    c = gl.arange(0, R, layout=gl.SliceLayout(1, layout)).to(gl.float32)[:, None] + \
        gl.zeros([R, 16], gl.float32, layout=layout)
    x_smem.index(2 * W).store(gl.where(col < 3, c, 0.0).to(x_smem.dtype))
    x_smem.index(2 * W + 1).store(gl.where((col >= 3) & (col < 6), c, 0.0).to(x_smem.dtype))
    fence_async_shared()
    gl.thread_barrier()  # (the warpgroup's named barrier: every thread's stores before its wgmma)


@gluon.jit
def _ws_alibi_q(slope, WG_M: gl.constexpr, BLOCK_N: gl.constexpr, dtype: gl.constexpr):
    """The rows' operand of _ws_qk (registers, k = 16): in every row, the slope split in three 16-bit
    parts hi + mid + lo in columns 0-2, their negatives in 3-5, so that its product with the keys'
    tiles is +slope · c or -slope · c in fp32. bf16: exact (3 x 8 significant bits); fp16: the low
    part can be subnormal, within 7e-6 of the slope (relative) over 2^-8..1 slopes and scales 0.01..1
    (checked with torch's round-to-nearest conversions, as the kernel's)."""
    hi = slope.to(dtype).to(gl.float32)
    mid = (slope - hi).to(dtype).to(gl.float32)
    lo = (slope - hi - mid).to(dtype).to(gl.float32)
    x_acc: gl.constexpr = _acc_layout(16)
    col = gl.arange(0, 16, layout=gl.SliceLayout(0, x_acc))[None, :]
    part = gl.where(col % 3 == 0, hi, gl.where(col % 3 == 1, mid, lo))
    part = gl.where(col < 3, part, gl.where(col < 6, -part, 0.0)) + gl.zeros([WG_M, 16], gl.float32, layout=x_acc)
    return gl.convert_layout(part.to(dtype), gl.DotOperandLayout(operand_index=0, parent=_acc_layout(BLOCK_N),
                                                                 k_width=2))


@gluon.jit
def _ws_pair(q, k_smem, v_smem, k_ready, k_empty, v_ready, v_empty, i, p_op, acc, s_zero, m_i, l_i, qk_scale,
             cap_scale, slope, colbias, offs_m, m0w, diag, diag0, win_lo, win_hi, mask_lo, mask_hi, start_n,
             BLOCK_N: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr, SOFTCAP: gl.constexpr,
             ALIBI: gl.constexpr, WINDOW: gl.constexpr, s_layout: gl.constexpr, x_smem=None, qx=None,
             W: gl.constexpr = 0, ALIBI_MMA: gl.constexpr = False):
    """One step of a consumer's loop: S = q · K^T of the ring's block i + 1 and O = acc + P V of its
    block i (P: p_op) both issued; S's online softmax (_softmax_step, key block start_n) while the P V
    wgmma runs; both blocks released. Returns (p, alpha, m, l, O): O not yet rescaled by alpha."""
    stage = i % STAGES
    nxt = (i + 1) % STAGES
    # S first, then O += P V: both in flight.
    mbarrier.wait(k_ready.index(nxt), ((i + 1) // STAGES) & 1)
    if ALIBI_MMA:
        s_tok = _ws_qk(q, k_smem.index(nxt), s_zero, x_smem, qx, W, start_n, diag0, CAUSAL)
    else:
        s_tok = warpgroup_mma(q, k_smem.index(nxt).permute((1, 0)), s_zero, use_acc=False, is_async=True)
    mbarrier.wait(v_ready.index(stage), (i // STAGES) & 1)
    o_tok = warpgroup_mma(p_op, v_smem.index(stage), acc, is_async=True)
    # S retires first (in order); its softmax overlaps the P V wgmma.
    s, _, _ = warpgroup_mma_wait(1, deps=(s_tok, q, k_smem.index(nxt)))
    mbarrier.arrive(k_empty.index(nxt))  # S retired: K_{i+1} released by this warpgroup
    p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, qk_scale, cap_scale, slope, colbias, offs_m, m0w, diag, diag0,
                                       win_lo, win_hi, mask_lo, mask_hi, start_n, BLOCK_N, CAUSAL, SOFTCAP, ALIBI,
                                       WINDOW, s_layout, ALIBI_MMA)
    # Scheduling fence. ptxas schedules wgmma.wait_group like an instruction without operands
    # inside a basic block: without a fence it issues the wait_group 0 below right after the
    # first SHFL of the softmax, so the softmax does not overlap the P V wgmma. A basic-block
    # boundary after the softmax pins it there (ptxas does not move it across a branch). l_i
    # passes through unchanged: it is a sum of exp2 values, never < 0 (NaN compares false), so
    # the loop body never runs. The loop (ptxas can neither if-convert nor drop it: the body
    # writes the outputs) ends the basic block after the whole softmax (l_i depends on every
    # exp2). Two rows per thread (pack=2): one loop per thread.
    l_i = gl.inline_asm_elementwise(
        "{ .reg .pred p; mov.b32 $0, $2; mov.b32 $1, $3; fence_loop: "
        "setp.lt.f32 p, $0, 0f00000000; setp.lt.or.f32 p, $1, 0f00000000, p; "
        "@!p bra fence_done; add.f32 $0, $0, 0f3F800000; add.f32 $1, $1, 0f3F800000; "
        "bra fence_loop; fence_done: }",
        "=r,=r,r,r", [l_i], dtype=gl.float32, is_pure=False, pack=2)
    acc, _, _ = warpgroup_mma_wait(0, deps=(o_tok, p_op, v_smem.index(stage)))
    mbarrier.arrive(v_empty.index(stage))  # P V retired: V_i released
    return p, alpha, m_i, l_i, acc


@gluon.jit
def _ws_scales(sm_scale, softcap, SOFTCAP: gl.constexpr):
    """(cap_scale, qk_scale) of _softmax_step: SOFTCAP, s = softcap * tanh(q·kᵀ · scale / softcap),
    in log2 units."""
    if SOFTCAP:
        return sm_scale / softcap, softcap * LOG2E
    return sm_scale, sm_scale * LOG2E


@gluon.jit
def _ws_alibi(Alibi, b, h, alibi_sb, alibi_sh, qk_scale, BLOCK_N: gl.constexpr, ALIBI: gl.constexpr,
              s_layout: gl.constexpr):
    """(slope, colbias) of _softmax_step for (b, h): ALIBI, the slope over the scores' scale
    (qk_scale * slope = slope * log2 e) and the columns' slope · c; else 0, 0."""
    slope = 0.0
    colbias = 0.0
    if ALIBI:  # (colbias written out, not through _ws_colbias: with a plain product that form spilled 80 B in the
        # causal grid build; with _mul_rn it changes only one build's schedule, persistent softcap + ALiBi, unmeasured)
        slope = gl.load(Alibi + b * alibi_sb + h * alibi_sh).to(gl.float32) * LOG2E / qk_scale
        colbias = _mul_rn(slope, gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout)).to(gl.float32))
    return slope, colbias


@gluon.jit
def _ws_colbias(slope, BLOCK_N: gl.constexpr, ALIBI: gl.constexpr, s_layout: gl.constexpr):
    """ALIBI: the columns' slope · c of a key block (_softmax_step's colbias); else 0."""
    colbias = 0.0
    if ALIBI:
        colbias = _mul_rn(slope, gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout)).to(gl.float32))
    return colbias


@gluon.jit
def _ws_stats_init(Sink, h, WG_M: gl.constexpr, SINK: gl.constexpr, row_s: gl.constexpr):
    """(m, l, sink): the online softmax's start for head h. SINK: the sink, a key already seen, its
    logit the first max and exp2(0) = 1 in the sum; else -inf, 0 (sink 0.0, unused)."""
    if SINK:
        sink = gl.load(Sink + h).to(gl.float32)
        return (gl.full([WG_M], 0.0, gl.float32, layout=row_s) + sink * LOG2E,
                gl.full([WG_M], 1.0, gl.float32, layout=row_s), sink)
    return (gl.full([WG_M], float("-inf"), gl.float32, layout=row_s),
            gl.full([WG_M], 0.0, gl.float32, layout=row_s), 0.0)


@gluon.jit
def _ws_finish(acc, m_i, l_i, sink, WINDOW: gl.constexpr, SINK: gl.constexpr, row_o: gl.constexpr):
    """(out, lse) of a warpgroup's rows: out = acc / l, lse = (m + log2 l) · ln 2 (natural log).
    WINDOW without a sink: a row that saw no key, out 0 and lse -inf. SINK: while m is still the
    sink's logit (no key passed it by more than _softmax_step's lazy threshold), lse takes it as is (kernels/fwd.py: m · ln 2 would add two roundings, which
    d sink multiplies by a sum over every row)."""
    if WINDOW and not SINK:
        empty = l_i == 0.0
        l_safe = gl.where(empty, 1.0, l_i)
        out = acc / gl.convert_layout(l_safe, row_o)[:, None]
        lse = gl.where(empty, float("-inf"), (m_i + gl.log2(l_safe)) * LN2)
    else:  # (with a sink l >= 1)
        out = acc / gl.convert_layout(l_i, row_o)[:, None]
        lse = (m_i + gl.log2(l_i)) * LN2
    if SINK:
        lse = gl.where(m_i == sink * LOG2E, sink + gl.log2(l_i) * LN2, lse)
    return out, lse


@gluon.jit
def _ws_attend_acc(W: gl.constexpr, desc_o, Alibi, Sink, sm_scale, softcap, q_smem, k_smem, v_smem, q_bars, k_ready,
                   k_empty, v_ready, v_empty, b, h, m0w, lo, n_blocks, causal_offset, window_left, window_right,
                   alibi_sb, alibi_sh, seqlen_k, HEAD_DIM: gl.constexpr, WG_M: gl.constexpr, BLOCK_N: gl.constexpr,
                   STAGES: gl.constexpr, CAUSAL: gl.constexpr, SOFTCAP: gl.constexpr, ALIBI: gl.constexpr,
                   SINK: gl.constexpr, WINDOW: gl.constexpr, VARLEN: gl.constexpr, it0, q_phase, x_smem=None,
                   ALIBI_MMA: gl.constexpr = False, ROT_N: gl.constexpr = False, qb=0):
    """Warpgroup W's online softmax (acc, m, l, the sink) over rows m0w .. m0w + WG_M of (b, h) and
    key blocks lo .. lo + n_blocks - 1 (n_blocks >= 1) of the ring, each released after use (the
    output's end: _ws_attend's). The ring's blocks are its (it0 + j)-th (it0: the blocks earlier
    tiles of a PERSISTENT CTA used, else 0), Q_W's barrier in phase q_phase.
    VARLEN: keys from seqlen_k on masked as outside the window (the next sequence's rows, or TMA's
    zeros). ROT_N (ALiBi; no WINDOW, lo = 0): the blocks in _ws_blk's order, from the tile's
    diagonal on. qb: Q_W is Q buffer qb + W, on barrier qb + W (a persistent launch's second set of
    Q buffers: _ws_consumer_dyn's QSETS, SPLIT_TAIL's _ws_tail_segs)."""
    dtype: gl.constexpr = desc_o.dtype
    s_layout: gl.constexpr = _acc_layout(BLOCK_N)
    o_layout: gl.constexpr = _acc_layout(HEAD_DIM)
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    q_w = q_smem.index(qb + W)

    cap_scale, qk_scale = _ws_scales(sm_scale, softcap, SOFTCAP)
    slope, colbias = _ws_alibi(Alibi, b, h, alibi_sb, alibi_sh, qk_scale, BLOCK_N, ALIBI, s_layout)
    offs_m = m0w + gl.arange(0, WG_M, layout=row_s)
    diag = offs_m + causal_offset  # row i's diagonal (ALiBi, WINDOW)
    diag0 = m0w + causal_offset
    # WINDOW: row i sees keys [diag - left, diag + right]; blocks from mask_lo to mask_hi every row
    # of this warpgroup sees whole
    win_lo = diag - window_left
    win_hi = diag + window_right
    mask_lo = diag0 + WG_M - 1 - window_left
    mask_hi = diag0 + window_right - BLOCK_N + 1
    if VARLEN:  # the sequence's keys end at seqlen_k: past it as outside the window
        win_hi = gl.minimum(win_hi, seqlen_k - 1)
        mask_hi = gl.minimum(mask_hi, seqlen_k - BLOCK_N)
    m_i, l_i, sink = _ws_stats_init(Sink, h, WG_M, SINK, row_s)
    acc = gl.zeros([WG_M, HEAD_DIM], gl.float32, layout=o_layout)
    s_zero = gl.zeros([WG_M, BLOCK_N], gl.float32, layout=s_layout)
    qx = None
    if ALIBI_MMA:  # (the tile's slope)
        qx = _ws_alibi_q(slope, WG_M, BLOCK_N, dtype)

    r0 = _ws_rot0(m0w - W * WG_M, causal_offset, n_blocks, BLOCK_N, ROT_N)  # (the tile's, as the producer's)

    # Block 0's scores, and its softmax.
    mbarrier.wait(q_bars.index(qb + W), q_phase)
    st0 = it0 % STAGES
    mbarrier.wait(k_ready.index(st0), (it0 // STAGES) & 1)
    if ALIBI_MMA:
        s_tok = _ws_qk(q_w, k_smem.index(st0), s_zero, x_smem, qx, W, (lo + r0) * BLOCK_N, diag0, CAUSAL)
    else:
        s_tok = warpgroup_mma(q_w, k_smem.index(st0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
    s, _, _ = warpgroup_mma_wait(0, deps=(s_tok, q_w, k_smem.index(st0)))
    mbarrier.arrive(k_empty.index(st0))
    p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, qk_scale, cap_scale, slope, colbias, offs_m, m0w, diag, diag0,
                                       win_lo, win_hi, mask_lo, mask_hi, (lo + r0) * BLOCK_N, BLOCK_N, CAUSAL,
                                       SOFTCAP, ALIBI, WINDOW, s_layout, ALIBI_MMA)
    p_op = gl.convert_layout(p.to(dtype), p_layout)

    for j in range(0, n_blocks - 1):
        p, alpha, m_i, l_i, acc = _ws_pair(q_w, k_smem, v_smem, k_ready, k_empty, v_ready, v_empty, it0 + j, p_op,
                                           acc, s_zero, m_i, l_i, qk_scale, cap_scale, slope, colbias, offs_m, m0w,
                                           diag, diag0, win_lo, win_hi, mask_lo, mask_hi,
                                           (lo + _ws_blk(j + 1, r0, n_blocks, ROT_N)) * BLOCK_N,
                                           BLOCK_N, STAGES, CAUSAL, SOFTCAP, ALIBI, WINDOW, s_layout, x_smem, qx,
                                           W, ALIBI_MMA)
        acc = _rescale_lazy(acc, gl.convert_layout(alpha, row_o)[:, None], HEAD_DIM // 2)  # (O *= alpha)
        # P_{j+1} into the operand registers only now: until _ws_pair's last wait, the P_j V_j wgmma
        # still reads them (writing them earlier makes ptxas retire that wgmma before the softmax).
        p_op = gl.convert_layout(p.to(dtype), p_layout)

    last = it0 + n_blocks - 1
    mbarrier.wait(v_ready.index(last % STAGES), (last // STAGES) & 1)
    o_tok = warpgroup_mma(p_op, v_smem.index(last % STAGES), acc, is_async=True)
    acc, _, _ = warpgroup_mma_wait(0, deps=(o_tok, p_op, v_smem.index(last % STAGES)))
    mbarrier.arrive(v_empty.index(last % STAGES))
    return acc, m_i, l_i, sink, offs_m


@gluon.jit
def _ws_attend(W: gl.constexpr, desc_o, Lse, Alibi, Sink, sm_scale, softcap, q_smem, k_smem, v_smem, q_bars,
               k_ready, k_empty, v_ready, v_empty, SQ, pid_bh, b, h, m0w, lo, n_blocks, causal_offset, window_left,
               window_right, alibi_sb, alibi_sh, o_rb, o_rh, o_ch, Out, o_rs, q0, seqlen_q, seqlen_k,
               HEAD_DIM: gl.constexpr, WG_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
               CAUSAL: gl.constexpr, SOFTCAP: gl.constexpr, ALIBI: gl.constexpr, SINK: gl.constexpr,
               WINDOW: gl.constexpr, VARLEN: gl.constexpr, it0, q_phase, x_smem=None, ALIBI_MMA: gl.constexpr = False,
               ROT_N: gl.constexpr = False, qb=0, STORE_WAIT: gl.constexpr = True):
    """Warpgroup W's attention: rows m0w .. m0w + WG_M of (b, h) (pid_bh = b * H + h) over key blocks
    lo .. lo + n_blocks - 1 (n_blocks >= 1) of the ring (_ws_attend_acc), out and lse stored.
    VARLEN: of packed sequence b, whose rows start at q0 (SQ: total_q, lse (1, H, total_q)); out
    and lse stored for the rows below seqlen_q only (a tile that passes it: gl.store with a mask,
    from the registers, to Out, whose 2-D view has row stride o_rs; a TMA store clips only at the
    tensor's end and would write the next sequence's rows). STORE_WAIT (VARLEN): wait until the
    output's TMA store has read Q_W (else the caller does, before Q_W is loaded again:
    _ws_consumer_dyn's DEFER)."""
    dtype: gl.constexpr = desc_o.dtype
    o_layout: gl.constexpr = _acc_layout(HEAD_DIM)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    q_w = q_smem.index(qb + W)
    acc, m_i, l_i, sink, offs_m = _ws_attend_acc(W, desc_o, Alibi, Sink, sm_scale, softcap, q_smem, k_smem, v_smem,
                                                 q_bars, k_ready, k_empty, v_ready, v_empty, b, h, m0w, lo, n_blocks,
                                                 causal_offset, window_left, window_right, alibi_sb, alibi_sh,
                                                 seqlen_k, HEAD_DIM, WG_M, BLOCK_N, STAGES, CAUSAL, SOFTCAP, ALIBI,
                                                 SINK, WINDOW, VARLEN, it0, q_phase, x_smem, ALIBI_MMA, ROT_N, qb)
    out, lse = _ws_finish(acc, m_i, l_i, sink, WINDOW, SINK, row_o)
    if VARLEN:  # (a masked store, not a 1-D TMA copy: the rows start anywhere, not 16-byte aligned)
        gl.store(Lse + h * SQ + q0 + offs_m, lse, mask=offs_m < seqlen_q)
        if m0w + WG_M <= seqlen_q:
            _ws_store_out(out, q_w, desc_o, h * o_rh + q0 + m0w, h * o_ch, STORE_WAIT)
        else:  # the sequence's last rows only
            rows = m0w + gl.arange(0, WG_M, layout=row_o)
            cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
            offs = (h * o_rh + q0 + rows).to(gl.int64) * o_rs + h * o_ch
            gl.store(Out + offs[:, None] + cols[None, :], out.to(dtype), mask=(rows < seqlen_q)[:, None])
    else:
        gl.store(Lse + pid_bh * SQ + offs_m, lse)
        _ws_store_out(out, q_w, desc_o, b * o_rb + h * o_rh + m0w, h * o_ch)


@gluon.jit
def _ws_attend_chain(W: gl.constexpr, desc_o, Lse, Alibi, Sink, sm_scale, softcap, q_smem, k_smem, v_smem, q_bars,
                     k_ready, k_empty, v_ready, v_empty, q_empty, SQ, SK, H, n_bh, alibi_sb, alibi_sh, o_rb, o_rh,
                     o_ch, HEAD_DIM: gl.constexpr, WG_M: gl.constexpr, NUM_WG: gl.constexpr, BLOCK_N: gl.constexpr,
                     STAGES: gl.constexpr, CAUSAL: gl.constexpr, SOFTCAP: gl.constexpr, ALIBI: gl.constexpr,
                     SINK: gl.constexpr, x_smem=None, ALIBI_MMA: gl.constexpr = False, causal_offset=0,
                     ROT_N: gl.constexpr = False, DEFER: gl.constexpr = False, Probe=None,
                     PROBE: gl.constexpr = False, SPLIT_TAIL: gl.constexpr = False, Part=None, Flags=None):
    """PERSISTENT with CHAIN: warpgroup W's rows of every tile of this CTA (tiles t = its id + k ·
    programs, _ws_tile_c's order) as one stream of key blocks. Inside a tile the loop is
    _ws_attend's; between two tiles one step issues the next tile's first S = Q K_0^T with this
    tile's last P V wgmma, so that softmax overlaps the wgmma instead of running alone, then stores
    this tile's output; the next tile's P V accumulates from zero. Tile c's Q is in q_smem[(c % 2) ·
    NUM_WG + W] (barrier q_bars likewise, phase c // 2), released with q_empty[c % 2] after its
    output store, which stages in that buffer. The score features SOFTCAP, ALIBI and SINK as in
    _ws_attend (the slope and the sink loaded for each tile's (b, h)); ALiBi's distance |i +
    causal_offset - j| (non-causal Sq != Sk; causal builds have offset 0); ROT_N: each tile's
    blocks in _ws_blk's order. DEFER: a tile's output store is only issued at the boundary; its
    wait and the Q buffer's release come after the next tile's first loop step (at the boundary
    itself when the next tile has one block: no step to wait in). PROBE: the warpgroup's clock at
    four points of each tile's end into Probe (_probe; PROBE = 2: the global timer, and the warpgroup's start and
    end too). SPLIT_TAIL (non-causal, no feature, not DEFER): the whole rounds' tiles chained, then the last round's
    segments (_ws_tail_segs)."""
    dtype: gl.constexpr = desc_o.dtype
    s_layout: gl.constexpr = _acc_layout(BLOCK_N)
    o_layout: gl.constexpr = _acc_layout(HEAD_DIM)
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    BLOCK_M: gl.constexpr = NUM_WG * WG_M
    cap_scale, qk_scale = _ws_scales(sm_scale, softcap, SOFTCAP)
    n_m = SQ // BLOCK_M
    if SPLIT_TAIL:
        gl.static_assert(not (CAUSAL or SOFTCAP or ALIBI or SINK or DEFER or ROT_N or PROBE))
    pid_m, pid_bh = _ws_tile_c(0, n_m, n_bh, CAUSAL)
    pid_bh, b, h, m0, lo, n_blocks = _ws_tile(pid_m, pid_bh, SQ, SK, H, 0, 0, 0, BLOCK_M, BLOCK_N, CAUSAL, False,
                                              False)
    if CAUSAL:  # (causal builds have offset 0: the launcher passes any other as WINDOW)
        causal_offset = 0
    m0w = m0 + W * WG_M
    offs_m = m0w + gl.arange(0, WG_M, layout=row_s)
    r0 = _ws_rot0(m0, causal_offset, n_blocks, BLOCK_N, ROT_N)
    slope, colbias = _ws_alibi(Alibi, b, h, alibi_sb, alibi_sh, qk_scale, BLOCK_N, ALIBI, s_layout)
    m_i, l_i, sink = _ws_stats_init(Sink, h, WG_M, SINK, row_s)
    acc = gl.zeros([WG_M, HEAD_DIM], gl.float32, layout=o_layout)
    s_zero = gl.zeros([WG_M, BLOCK_N], gl.float32, layout=s_layout)

    qx = None
    if ALIBI_MMA:
        qx = _ws_alibi_q(slope, WG_M, BLOCK_N, dtype)

    # Block 0 of the first tile: its scores and softmax.
    if PROBE == 2:  # (the warpgroup's start / end: the global timer's probe only)
        _probe(Probe, gl.program_id(0) * 0 - 1, W, 0, PROBE)
    q_w = q_smem.index(W)
    mbarrier.wait(q_bars.index(W), 0)
    mbarrier.wait(k_ready.index(0), 0)
    if ALIBI_MMA:
        s_tok = _ws_qk(q_w, k_smem.index(0), s_zero, x_smem, qx, W, r0 * BLOCK_N, m0w + causal_offset, CAUSAL)
    else:
        s_tok = warpgroup_mma(q_w, k_smem.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
    s, _, _ = warpgroup_mma_wait(0, deps=(s_tok, q_w, k_smem.index(0)))
    mbarrier.arrive(k_empty.index(0))
    p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, qk_scale, cap_scale, slope, colbias, offs_m, m0w,
                                       offs_m + causal_offset, m0w + causal_offset, offs_m, offs_m, 0, 0,
                                       r0 * BLOCK_N, BLOCK_N, CAUSAL, SOFTCAP, ALIBI, False, s_layout, ALIBI_MMA)
    p_op = gl.convert_layout(p.to(dtype), p_layout)

    it = 0  # the ring's block of the tile's block 0
    tc = 0  # the tile's number in this CTA
    if SPLIT_TAIL:  # (the whole rounds' tiles chained; the last round's segments after them)
        n_t, _u0, _u1, _u = _ws_tail(n_m, n_bh, SK // BLOCK_N)
    else:
        n_t = _ws_n_tiles(n_m, n_bh, CAUSAL)
    for c in range(n_t):
        colbias = _ws_colbias(slope, BLOCK_N, ALIBI, s_layout)  # (not carried from tile to tile: registers)
        for j in range(0, n_blocks - 1):  # (_ws_attend's loop)
            p, alpha, m_i, l_i, acc = _ws_pair(q_w, k_smem, v_smem, k_ready, k_empty, v_ready, v_empty, it + j, p_op,
                                               acc, s_zero, m_i, l_i, qk_scale, cap_scale, slope, colbias, offs_m,
                                               m0w, offs_m + causal_offset, m0w + causal_offset, offs_m, offs_m, 0, 0,
                                               _ws_blk(j + 1, r0, n_blocks, ROT_N) * BLOCK_N, BLOCK_N, STAGES,
                                               CAUSAL, SOFTCAP, ALIBI, False, s_layout, x_smem, qx, W, ALIBI_MMA)
            acc = _rescale_lazy(acc, gl.convert_layout(alpha, row_o)[:, None], HEAD_DIM // 2)
            p_op = gl.convert_layout(p.to(dtype), p_layout)
            if DEFER:  # the previous tile's output store, issued at the boundary, has read its Q buffer by now
                if j == 0:
                    if tc > 0:
                        tma.store_wait(pendings=0)
                        mbarrier.arrive(q_empty.index((tc + 1) & 1))
        last = it + n_blocks - 1
        if PROBE:
            _probe(Probe, c, W, 0, PROBE)
        if c + 1 < n_t:  # the next tile's block 0 with this tile's last P V
            pid_m_n, pid_bh_n = _ws_tile_c(c + 1, n_m, n_bh, CAUSAL)
            pid_bh_n, b_n, h_n, m0_n, lo_n, n_blocks_n = _ws_tile(pid_m_n, pid_bh_n, SQ, SK, H, 0, 0, 0, BLOCK_M,
                                                                  BLOCK_N, CAUSAL, False, False)
            qb = ((tc + 1) & 1) * NUM_WG + W
            q_n = q_smem.index(qb)
            if PROBE:
                _probe(Probe, c, W, 3, PROBE)
            mbarrier.wait(q_bars.index(qb), ((tc + 1) >> 1) & 1)
            m0w_n = m0_n + W * WG_M
            offs_n = m0w_n + gl.arange(0, WG_M, layout=row_s)
            r0_n = _ws_rot0(m0_n, causal_offset, n_blocks_n, BLOCK_N, ROT_N)
            slope_n, colbias_n = _ws_alibi(Alibi, b_n, h_n, alibi_sb, alibi_sh, qk_scale, BLOCK_N, ALIBI, s_layout)
            m_n, l_n, sink_n = _ws_stats_init(Sink, h_n, WG_M, SINK, row_s)
            qx_n = None
            if ALIBI_MMA:
                qx_n = _ws_alibi_q(slope_n, WG_M, BLOCK_N, dtype)
            p, alpha, m_n, l_n, acc = _ws_pair(q_n, k_smem, v_smem, k_ready, k_empty, v_ready, v_empty, last, p_op,
                                               acc, s_zero, m_n, l_n, qk_scale, cap_scale, slope_n, colbias_n,
                                               offs_n, m0w_n, offs_n + causal_offset, m0w_n + causal_offset, offs_n,
                                               offs_n, 0, 0, r0_n * BLOCK_N, BLOCK_N, STAGES, CAUSAL, SOFTCAP, ALIBI,
                                               False, s_layout, x_smem, qx_n, W, ALIBI_MMA)
            if PROBE:
                _probe(Probe, c, W, 1, PROBE)
            _ws_chain_out(acc, m_i, l_i, sink, Lse, desc_o, q_w, q_empty.index(tc & 1), SQ, pid_bh, b, h, m0w, o_rb,
                          o_rh, o_ch, WG_M, SINK, row_s, row_o, not DEFER)
            if DEFER:  # (a one-block tile has no loop step to wait in: wait here)
                if n_blocks_n == 1:
                    tma.store_wait(pendings=0)
                    mbarrier.arrive(q_empty.index(tc & 1))
            if PROBE:
                _probe(Probe, c, W, 2, PROBE)
            if ALIBI:
                slope = slope_n
            if SINK:
                sink = sink_n
            if ALIBI_MMA:
                qx = qx_n
            acc = gl.zeros([WG_M, HEAD_DIM], gl.float32, layout=o_layout)
            p_op = gl.convert_layout(p.to(dtype), p_layout)
            m_i = m_n
            l_i = l_n
            q_w = q_n
            pid_bh = pid_bh_n
            b = b_n
            h = h_n
            m0w = m0w_n
            offs_m = offs_n
            r0 = r0_n
            it = last + 1
            n_blocks = n_blocks_n
            tc += 1
        else:
            mbarrier.wait(v_ready.index(last % STAGES), (last // STAGES) & 1)
            o_tok = warpgroup_mma(p_op, v_smem.index(last % STAGES), acc, is_async=True)
            acc, _, _ = warpgroup_mma_wait(0, deps=(o_tok, p_op, v_smem.index(last % STAGES)))
            mbarrier.arrive(v_empty.index(last % STAGES))
            _ws_chain_out(acc, m_i, l_i, sink, Lse, desc_o, q_w, q_empty.index(tc & 1), SQ, pid_bh, b, h, m0w, o_rb,
                          o_rh, o_ch, WG_M, SINK, row_s, row_o)
            if PROBE == 2:
                _probe(Probe, gl.program_id(0) * 0 - 1, W, 1, PROBE)
    if SPLIT_TAIL:  # the last round's 0-2 segments (_ws_seg), one after another, not chained
        _ws_tail_segs(W, desc_o, Lse, q_smem, k_smem, v_smem, q_bars, k_ready, k_empty, v_ready, v_empty, q_empty,
                      sm_scale, SQ, SK, H, n_m, n_bh, o_rb, o_rh, o_ch, it + n_blocks, tc + 1, Part, Flags, HEAD_DIM,
                      WG_M, NUM_WG, BLOCK_N, STAGES)



@gluon.jit
def _ws_seg_out(acc, m_i, l_i, Lse, desc_o, q_w, q_free, SQ, pid_bh, b, h, m0w, o_rb, o_rh, o_ch,
                WG_M: gl.constexpr, HEAD_DIM: gl.constexpr, row_s: gl.constexpr, row_o: gl.constexpr,
                W: gl.constexpr, Part, Flags, k0, k1, NB, n_m, n_bh):
    """SPLIT_TAIL's end of a segment of key blocks k0 .. k1 - 1 (of NB) for warpgroup W's rows. A
    whole tile: _ws_chain_out. A later part (k0 > 0: the first segment of this CTA's units, run
    first): the unnormalised (O, m, l) into this CTA's slot of Part, then its flag in Flags
    released, and the Q buffer freed (no store stages in it). A tile's first part (k0 = 0, k1 <
    NB: only ever the CTA's last segment): the later parts' partials merged, each once its CTA's
    flag is set (those CTAs wrote them in their first segment), then stored as a whole tile's."""
    slot = gl.program_id(0) * 2 + W
    rows_s = gl.arange(0, WG_M, layout=row_s)
    rows_o = gl.arange(0, WG_M, layout=row_o)
    cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, acc.type.layout))
    span: gl.constexpr = WG_M * (HEAD_DIM + 2)  # a slot: O (WG_M x HEAD_DIM), m, l (fp32)
    if k0 > 0:
        base = Part + slot.to(gl.int64) * span
        gl.store(base + rows_o[:, None] * HEAD_DIM + cols[None, :], acc)
        gl.store(base + WG_M * HEAD_DIM + rows_s, m_i)
        gl.store(base + WG_M * (HEAD_DIM + 1) + rows_s, l_i)
        gl.thread_barrier()  # (the warpgroup's named barrier) every thread's stores before the releases
        gl.inline_asm_elementwise(_RELEASE_ASM, "=r,l", [Flags + slot + rows_s * 0], dtype=gl.int32,
                                  is_pure=False, pack=1)
        mbarrier.arrive(q_free)
    else:
        if k1 < NB:  # the later parts: the CTAs whose units start inside this tile (at most 2: the launcher's
            # condition, 2 · (tiles mod programs) >= programs, keeps each CTA's units >= NB / 2)
            _, u0, u1, u = _ws_tail(n_m, n_bh, NB)
            end = ((u1 - 1) // NB + 1) * NB  # (this tile's last unit + 1)
            g = gl.num_programs(0)
            for d in gl.static_range(1, 3):
                j = gl.program_id(0) + d
                if (j < g) & ((j * u) // g < end):
                    zero = gl.inline_asm_elementwise(_SPIN_ASM, "=r,l", [Flags + j * 2 + W + rows_s * 0],
                                                     dtype=gl.int32, is_pure=False, pack=1)  # (0, after the flag)
                    base = Part + (j * 2 + W).to(gl.int64) * span
                    zero_o = gl.convert_layout(zero, row_o)
                    acc_j = gl.load(base + (rows_o + zero_o)[:, None] * HEAD_DIM + cols[None, :])
                    m_j = gl.load(base + WG_M * HEAD_DIM + rows_s + zero)
                    l_j = gl.load(base + WG_M * (HEAD_DIM + 1) + rows_s + zero)
                    m_new = gl.maximum(m_i, m_j)
                    a_i = gl.exp2(m_i - m_new)
                    a_j = gl.exp2(m_j - m_new)
                    acc = (acc * gl.convert_layout(a_i, row_o)[:, None]
                           + acc_j * gl.convert_layout(a_j, row_o)[:, None])
                    l_i = l_i * a_i + l_j * a_j
                    m_i = m_new
        _ws_chain_out(acc, m_i, l_i, m_i, Lse, desc_o, q_w, q_free, SQ, pid_bh, b, h, m0w, o_rb, o_rh, o_ch, WG_M,
                      False, row_s, row_o)


@gluon.jit
def _ws_tail_segs(W: gl.constexpr, desc_o, Lse, q_smem, k_smem, v_smem, q_bars, k_ready, k_empty, v_ready, v_empty,
                  q_empty, sm_scale, SQ, SK, H, n_m, n_bh, o_rb, o_rh, o_ch, it, tc, Part, Flags,
                  HEAD_DIM: gl.constexpr, WG_M: gl.constexpr, NUM_WG: gl.constexpr, BLOCK_N: gl.constexpr,
                  STAGES: gl.constexpr):
    """SPLIT_TAIL: warpgroup W's share of the last round, after its chained tiles: the 0-2 segments
    of its units (_ws_seg's c = rounds ..), each a tile of its own (_ws_attend_acc) from the ring's
    it-th block on, numbered from tc (Q set tc % 2, as the chain's), ended by _ws_seg_out."""
    NB = SK // BLOCK_N
    rounds, u0, u1, u = _ws_tail(n_m, n_bh, NB)
    row_s: gl.constexpr = gl.SliceLayout(1, _acc_layout(BLOCK_N))
    row_o: gl.constexpr = gl.SliceLayout(1, _acc_layout(HEAD_DIM))
    n_seg = _ws_n_segs(n_m, n_bh, NB) - rounds
    for k in gl.static_range(2):  # (two copies, not a loop: a loop here made ptxas copy the chain loop's P operand)
        if k < n_seg:
            pid_m, pid_bh, k0, k1 = _ws_seg(rounds + k, n_m, n_bh, NB)
            pid_bh, b, h, m0, lo, n_blocks = _ws_tile(pid_m, pid_bh, SQ, SK, H, 0, 0, 0, NUM_WG * WG_M, BLOCK_N,
                                                      False, False, False)
            m0w = m0 + W * WG_M
            qb = (tc & 1) * NUM_WG
            acc, m_i, l_i, sink, offs_m = _ws_attend_acc(W, desc_o, Lse, Lse, sm_scale, sm_scale, q_smem, k_smem,
                                                         v_smem, q_bars, k_ready, k_empty, v_ready, v_empty, b, h,
                                                         m0w, k0, k1 - k0, 0, 0, 0, 0, 0, SK, HEAD_DIM, WG_M,
                                                         BLOCK_N, STAGES, False, False, False, False, False, False,
                                                         it, (tc >> 1) & 1, None, False, False, qb)
            _ws_seg_out(acc, m_i, l_i, Lse, desc_o, q_smem.index(qb + W), q_empty.index(tc & 1), SQ, pid_bh, b, h,
                        m0w, o_rb, o_rh, o_ch, WG_M, HEAD_DIM, row_s, row_o, W, Part, Flags, k0, k1, NB, n_m, n_bh)
            it += k1 - k0
            tc += 1


@gluon.jit
def _probe(Probe, c, W: gl.constexpr, k: gl.constexpr, PROBE: gl.constexpr = 1):
    """PROBE: warpgroup W's %clock64 (PROBE = 2: %globaltimer, ns, one clock for every SM) into
    Probe[((CTA * 64 + c) * 2 + W) * 4 + k] (int64) at point k of the CTA's tile c, for its first 64 tiles: 0 after
    the tile's loop, 3 before the wait for the next tile's Q (its place computed), 1 after the boundary step, 2
    after the tile's end; c = -1 (PROBE = 2 only): the warpgroup's start (k = 0, before its first wait) and end (k =
    1, after its last tile's output) into Probe[programs * 512 + (CTA * 2 + W) * 2 + k] (scripts/exp_chain_probe.py
    reads them)."""
    if PROBE == 2:
        t = gl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,r", [c], dtype=gl.int64, is_pure=False,
                                      pack=1)
    else:
        t = gl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [c], dtype=gl.int64, is_pure=False, pack=1)
    if c < 0:
        gl.store(Probe + gl.num_programs(0) * 512 + (gl.program_id(0) * 2 + W) * 2 + k, t)
    elif c < 64:
        gl.store(Probe + ((gl.program_id(0) * 64 + c) * 2 + W) * 4 + k, t)


@gluon.jit
def _ws_chain_out(acc, m_i, l_i, sink, Lse, desc_o, q_w, q_free, SQ, pid_bh, b, h, m0w, o_rb, o_rh, o_ch,
                  WG_M: gl.constexpr, SINK: gl.constexpr, row_s: gl.constexpr, row_o: gl.constexpr,
                  WAIT: gl.constexpr = True):
    """_ws_attend_chain's end of a tile: out and lse (_ws_finish) stored (rows m0w .. of (b, h)),
    then the tile's Q buffer q_w (the output's staging buffer) released on q_free. WAIT False: the
    output's TMA store is issued only; the caller waits for it and releases q_w later (q_free
    unread)."""
    out, lse = _ws_finish(acc, m_i, l_i, sink, False, SINK, row_o)
    gl.store(Lse + pid_bh * SQ + m0w + gl.arange(0, WG_M, layout=row_s), lse)
    _ws_store_out(out, q_w, desc_o, b * o_rb + h * o_rh + m0w, h * o_ch, WAIT)
    if WAIT:
        mbarrier.arrive(q_free)


@gluon.jit
def _ws_store_out(out, q_w, desc_o, row, col, WAIT: gl.constexpr = True):
    """The output rows by a TMA store at (row, col) of desc_o's view, staged in this warpgroup's
    Q buffer, which is free (its q·kᵀ wgmmas all retired; only it reads Q_w). WAIT: until the store
    has read the buffer (else the caller waits before reusing it)."""
    q_w.store(out.to(desc_o.dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(desc_o, [row, col], q_w)
    if WAIT:
        tma.store_wait(pendings=0)


@gluon.jit
def attn_fwd_hopper_kernel(desc_q, desc_k, desc_v, desc_o, Lse, Alibi, Sink, sm_scale, softcap,
                           SQ, SK, H, GROUP, causal_offset, window_left, window_right, alibi_sb, alibi_sh,
                           q_rb, q_rh, q_ch, k_rb, k_rh, k_ch, v_rb, v_rh, v_ch, o_rb, o_rh, o_ch, Out, o_rs,
                           CuQ, CuK, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                           STAGES: gl.constexpr, CAUSAL: gl.constexpr, num_warps: gl.constexpr,
                           SOFTCAP: gl.constexpr = False, ALIBI: gl.constexpr = False, SINK: gl.constexpr = False,
                           WINDOW: gl.constexpr = False, VARLEN: gl.constexpr = False,
                           PERSISTENT: gl.constexpr = False, n_bh=0, REVERSE_M: gl.constexpr = False,
                           VARLEN_NB: gl.constexpr = 0, CHAIN: gl.constexpr = False,
                           ALIBI_MMA: gl.constexpr = False, ROT_N: gl.constexpr = False, Probe=None,
                           PROBE: gl.constexpr = False, Sched=None, VARLEN_SORT: gl.constexpr = 0,
                           VARLEN_QSETS: gl.constexpr = 1, VARLEN_PUB: gl.constexpr = False,
                           VARLEN_DEFER: gl.constexpr = False, SPLIT_TAIL: gl.constexpr = False, Part=None,
                           Flags=None):
    """Grid (ceil(SQ / BLOCK_M), B * H); PERSISTENT (no window, not packed, two warpgroups):
    grid (programs,), each CTA taking its tiles of the SQ / BLOCK_M · n_bh (n_bh = B * H) in
    _ws_tile_c's order (CAUSAL: pairs of tiles, SQ / BLOCK_M even, programs <= the pairs; else
    programs <= the tiles), with CHAIN (HEAD_DIM <= 128) as one stream of key blocks a consumer
    (_ws_attend_chain); REVERSE_M (grid launch, not VARLEN): CTA x takes query
    tile ceil(SQ / BLOCK_M) - 1 - x; launch with num_warps=4 (the default partition = consumer
    warpgroup 0) and maxnreg=maxnreg(BLOCK_M). BLOCK_M: 128 (two consumer warpgroups) or 192
    (three). desc_q / desc_o: 2-D views in blocks of WG_M = 64 rows; desc_k / desc_v in blocks of
    BLOCK_N rows; (x_rb, x_rh, x_ch) place row m of head h of batch b of tensor x in its view (see
    the module docstring). SQ, SK: the query and key rows of a head (multiples of 128, SK of
    BLOCK_N too; with BLOCK_M 128, BLOCK_N divides it). GROUP = H // Hkv; Lse (B, H, SQ) contiguous float32.

    Row i sees key j iff (CAUSAL, only with causal_offset 0 and SQ <= SK) j <= i, or (WINDOW)
    i + causal_offset - window_left <= j <= i + causal_offset + window_right (both >= 0; an
    unbounded side is a bound no row reaches; any other causal call comes as WINDOW with
    window_right 0); else every key. SOFTCAP: scores = softcap * tanh(scores * sm_scale /
    softcap), softcap > 0 (SOFTCAP = 2: the row max fixed at softcap·log2 e, for bf16, softcap <= 40,
    no ALIBI, SINK or WINDOW: launch._hopper_fwd_softcap_mode). ALIBI: adds
    -Alibi[b * alibi_sb + h * alibi_sh] * |i + causal_offset - j|.
    SINK: Sink[h] is one more logit in each row's softmax, with no value.
    VARLEN (with WINDOW): q, k, v, out are (1, H, total, D) packed sequences (x_rb unread), CuQ /
    CuK their int32 (n + 1,) offsets; grid (ceil(max_seqlen_q / BLOCK_M), n * H), or with VARLEN_NB
    (a power of two > n, >= 128; n_bh = n * H) (total_q // BLOCK_M + n, H); SQ = total_q
    (Lse (1, H, total_q)), SK unread; each sequence's diagonal bottom-right (offset seqlen_k -
    seqlen_q; causal_offset unread), the window's bounds as above (causal: left unbounded, right 0;
    neither: both unbounded); ALiBi's slopes of sequence b at Alibi[b * alibi_sb + h * alibi_sh].
    Out / o_rs (out's pointer, the row stride of its 2-D view) serve the masked stores of a
    sequence's last rows. ALIBI_MMA (ALIBI without SOFTCAP or WINDOW): the column part of the ALiBi
    bias comes from one more k = 16 wgmma a block (_ws_qk), not from an add a score. ROT_N (ALIBI,
    no WINDOW, two warpgroups): each tile walks its key blocks from the one its diagonal lies in,
    wrapping around (_ws_blk). CHAIN = 2: the chain's DEFER (_ws_attend_chain). PROBE (CHAIN): each
    consumer's clocks at its tiles' ends into Probe (_probe). PERSISTENT with VARLEN (VARLEN_NB > 0,
    two warpgroups, no CHAIN): grid (programs,), the packed tiles by the dynamic scheduler
    (_ws_producer_dyn: Sched an int32 zero at the launch, one counter a launch), VARLEN_SORT 1 / 2
    its order longest first (_ws_sort_starts), VARLEN_QSETS = 2 with two sets of Q buffers (the next
    tile's Q loads while this one runs). SPLIT_TAIL (PERSISTENT with CHAIN, not CAUSAL, no feature,
    CHAIN True): the tiles left after the whole rounds split by key blocks over every CTA (_ws_tail),
    the parts merged through Part (fp32, programs · 2 slots of 64 · (HEAD_DIM + 2)) and Flags
    (int32, programs · 2, zero at the launch). The pointers of the features off are not read."""
    WG_M: gl.constexpr = 64
    NUM_WG: gl.constexpr = BLOCK_M // WG_M
    gl.static_assert((NUM_WG == 2 or NUM_WG == 3) and BLOCK_M == NUM_WG * WG_M)
    # Three warpgroups: the tile (192 rows) is no multiple of the 128 rows SQ is a multiple of, nor
    # of BLOCK_N 128: its last warpgroup may start past SQ, and the causal ranges of its warpgroups
    # differ by up to a block (see _ws_consumer). Two: as before (the D = 128/256 builds' SASS).
    TRIM: gl.constexpr = NUM_WG == 3
    gl.static_assert(num_warps == 4)
    gl.static_assert(not (CAUSAL and WINDOW))
    gl.static_assert(WINDOW or not VARLEN)  # (the launcher passes packed sequences as WINDOW)
    # (PERSISTENT: no window, except VARLEN's, packed tiles by the dynamic scheduler; the score features: see
    # the launcher)
    gl.static_assert(not (PERSISTENT and (TRIM or (WINDOW and not VARLEN))))
    gl.static_assert(not (PERSISTENT and VARLEN and (CHAIN or VARLEN_NB == 0 or ROT_N)))
    gl.static_assert(not VARLEN_SORT or (PERSISTENT and VARLEN))
    gl.static_assert(VARLEN_QSETS == 1 or (PERSISTENT and VARLEN and VARLEN_QSETS == 2))
    gl.static_assert(not (VARLEN_PUB or VARLEN_DEFER) or VARLEN_QSETS == 2)
    gl.static_assert(not (REVERSE_M and (PERSISTENT or VARLEN)))
    gl.static_assert(not ROT_N or (ALIBI and not (WINDOW or TRIM)))  # (lo = 0, the warpgroups' blocks alike)
    gl.static_assert(not SPLIT_TAIL or (PERSISTENT and CHAIN == 1 and not (CAUSAL or WINDOW or VARLEN)))
    dtype: gl.constexpr = desc_q.dtype
    gl.static_assert(PERSISTENT or not CHAIN)
    QSETS: gl.constexpr = 2 if CHAIN else VARLEN_QSETS  # (2: the next tile's Q loads while this one's runs)
    q_smem = gl.allocate_shared_memory(dtype, [QSETS * NUM_WG, WG_M, HEAD_DIM], desc_q.layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], desc_k.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], desc_v.layout)
    q_bars = gl.allocate_shared_memory(gl.int64, [QSETS * NUM_WG, 1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    if QSETS == 2:  # (PERSISTENT: one a set of Q buffers)
        q_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        mbarrier.init(q_empty.index(0), count=NUM_WG)
        mbarrier.init(q_empty.index(1), count=NUM_WG)
    else:
        q_empty = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())  # (PERSISTENT)
        mbarrier.init(q_empty, count=NUM_WG)
    # ALIBI_MMA (ALiBi without softcap or window): a consumer's two keys' tiles of the ALiBi bias (_ws_alibi_keys)
    gl.static_assert(not ALIBI_MMA or (ALIBI and not (SOFTCAP or WINDOW) and BLOCK_N >= WG_M))
    if ALIBI_MMA:
        x_smem = gl.allocate_shared_memory(dtype, [2 * NUM_WG, BLOCK_N, 16],
                                           gl.NVMMASharedLayout(swizzle_byte_width=32, element_bitwidth=16, rank=2))
    else:
        x_smem = q_smem  # (unread)
    for w in gl.static_range(QSETS * NUM_WG):
        mbarrier.init(q_bars.index(w), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=NUM_WG)
        mbarrier.init(v_empty.index(i), count=NUM_WG)
    fence_async_shared()

    if PERSISTENT and VARLEN and QSETS == 2:  # (a tile index a set of Q buffers; VARLEN_PUB: and its sequence)
        t_smem = gl.allocate_shared_memory(gl.int32, [4 if VARLEN_PUB else 2, 1],
                                           gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
    elif PERSISTENT and VARLEN:  # (two warpgroups) the packed tiles by a dynamic scheduler, one tile index
        # at a time from the producer to the consumers through t_smem
        t_smem = gl.allocate_shared_memory(gl.int32, [1], gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
    else:
        t_smem = q_empty  # (unread)

    # (the argument tuples are written out in the call: a tuple assigned to a name first would turn
    # its constexprs into tensors; so the two partition lists repeat them. Each call's branch line
    # directly above it: tests/test_hopper_fwd._warp_specialize_lines)
    if PERSISTENT and VARLEN:
        gl.warp_specialize([
            (_ws_consumer_dyn, (0, desc_o, Lse, Alibi, Sink, sm_scale, softcap, q_smem, k_smem, v_smem, q_bars,
                                k_ready, k_empty, v_ready, v_empty, q_empty, t_smem, SQ, H, window_left, window_right,
                                alibi_sb, alibi_sh, o_rh, o_ch, Out, o_rs, CuQ, CuK, n_bh, HEAD_DIM, WG_M, NUM_WG,
                                BLOCK_N, STAGES, SOFTCAP, ALIBI, SINK, VARLEN_NB, x_smem, ALIBI_MMA, VARLEN_QSETS,
                                VARLEN_PUB, VARLEN_DEFER)),
            (_ws_consumer_dyn, (1, desc_o, Lse, Alibi, Sink, sm_scale, softcap, q_smem, k_smem, v_smem, q_bars,
                                k_ready, k_empty, v_ready, v_empty, q_empty, t_smem, SQ, H, window_left, window_right,
                                alibi_sb, alibi_sh, o_rh, o_ch, Out, o_rs, CuQ, CuK, n_bh, HEAD_DIM, WG_M, NUM_WG,
                                BLOCK_N, STAGES, SOFTCAP, ALIBI, SINK, VARLEN_NB, x_smem, ALIBI_MMA, VARLEN_QSETS,
                                VARLEN_PUB, VARLEN_DEFER)),
            (_ws_producer_dyn, (desc_q, desc_k, desc_v, q_smem, k_smem, v_smem, q_bars, k_ready, k_empty, v_ready,
                                v_empty, q_empty, t_smem, Sched, SQ, H, GROUP, window_left, window_right, q_rh, q_ch,
                                k_rh, k_ch, v_rh, v_ch, CuQ, CuK, n_bh, WG_M, NUM_WG, BLOCK_N, STAGES, VARLEN_NB,
                                VARLEN_SORT, VARLEN_QSETS, VARLEN_PUB)),
        ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])
    elif NUM_WG == 2:
        gl.warp_specialize([
            (_ws_consumer, (0, desc_o, Lse, Alibi, Sink, sm_scale, softcap, q_smem, k_smem, v_smem, q_bars, k_ready,
                            k_empty, v_ready, v_empty, SQ, SK, H, causal_offset, window_left, window_right, alibi_sb,
                            alibi_sh, o_rb, o_rh, o_ch, Out, o_rs, CuQ, CuK, HEAD_DIM, WG_M, NUM_WG, BLOCK_N,
                            STAGES, CAUSAL, SOFTCAP, ALIBI, SINK, WINDOW, TRIM, VARLEN, PERSISTENT, q_empty,
                            n_bh, REVERSE_M, VARLEN_NB, CHAIN, x_smem, ALIBI_MMA, ROT_N, Probe, PROBE, SPLIT_TAIL,
                            Part, Flags)),
            (_ws_consumer, (1, desc_o, Lse, Alibi, Sink, sm_scale, softcap, q_smem, k_smem, v_smem, q_bars, k_ready,
                            k_empty, v_ready, v_empty, SQ, SK, H, causal_offset, window_left, window_right, alibi_sb,
                            alibi_sh, o_rb, o_rh, o_ch, Out, o_rs, CuQ, CuK, HEAD_DIM, WG_M, NUM_WG, BLOCK_N,
                            STAGES, CAUSAL, SOFTCAP, ALIBI, SINK, WINDOW, TRIM, VARLEN, PERSISTENT, q_empty,
                            n_bh, REVERSE_M, VARLEN_NB, CHAIN, x_smem, ALIBI_MMA, ROT_N, Probe, PROBE, SPLIT_TAIL,
                            Part, Flags)),
            (_ws_producer, (desc_q, desc_k, desc_v, q_smem, k_smem, v_smem, q_bars, k_ready, k_empty, v_ready, v_empty,
                            SQ, SK, H, GROUP, causal_offset, window_left, window_right, q_rb, q_rh, q_ch, k_rb, k_rh,
                            k_ch, v_rb, v_rh, v_ch, CuQ, CuK, WG_M, NUM_WG, BLOCK_N, STAGES, CAUSAL, WINDOW, TRIM,
                            VARLEN, PERSISTENT, q_empty, n_bh, REVERSE_M, VARLEN_NB, CHAIN, ROT_N, SPLIT_TAIL)),
        ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])
    else:
        gl.warp_specialize([
            (_ws_consumer, (0, desc_o, Lse, Alibi, Sink, sm_scale, softcap, q_smem, k_smem, v_smem, q_bars, k_ready,
                            k_empty, v_ready, v_empty, SQ, SK, H, causal_offset, window_left, window_right, alibi_sb,
                            alibi_sh, o_rb, o_rh, o_ch, Out, o_rs, CuQ, CuK, HEAD_DIM, WG_M, NUM_WG, BLOCK_N,
                            STAGES, CAUSAL, SOFTCAP, ALIBI, SINK, WINDOW, TRIM, VARLEN, PERSISTENT, q_empty,
                            n_bh, REVERSE_M, VARLEN_NB, CHAIN, x_smem, ALIBI_MMA, ROT_N, Probe, PROBE)),
            (_ws_consumer, (1, desc_o, Lse, Alibi, Sink, sm_scale, softcap, q_smem, k_smem, v_smem, q_bars, k_ready,
                            k_empty, v_ready, v_empty, SQ, SK, H, causal_offset, window_left, window_right, alibi_sb,
                            alibi_sh, o_rb, o_rh, o_ch, Out, o_rs, CuQ, CuK, HEAD_DIM, WG_M, NUM_WG, BLOCK_N,
                            STAGES, CAUSAL, SOFTCAP, ALIBI, SINK, WINDOW, TRIM, VARLEN, PERSISTENT, q_empty,
                            n_bh, REVERSE_M, VARLEN_NB, CHAIN, x_smem, ALIBI_MMA, ROT_N, Probe, PROBE)),
            (_ws_consumer, (2, desc_o, Lse, Alibi, Sink, sm_scale, softcap, q_smem, k_smem, v_smem, q_bars, k_ready,
                            k_empty, v_ready, v_empty, SQ, SK, H, causal_offset, window_left, window_right, alibi_sb,
                            alibi_sh, o_rb, o_rh, o_ch, Out, o_rs, CuQ, CuK, HEAD_DIM, WG_M, NUM_WG, BLOCK_N,
                            STAGES, CAUSAL, SOFTCAP, ALIBI, SINK, WINDOW, TRIM, VARLEN, PERSISTENT, q_empty,
                            n_bh, REVERSE_M, VARLEN_NB, CHAIN, x_smem, ALIBI_MMA, ROT_N, Probe, PROBE)),
            (_ws_producer, (desc_q, desc_k, desc_v, q_smem, k_smem, v_smem, q_bars, k_ready, k_empty, v_ready, v_empty,
                            SQ, SK, H, GROUP, causal_offset, window_left, window_right, q_rb, q_rh, q_ch, k_rb, k_rh,
                            k_ch, v_rb, v_rh, v_ch, CuQ, CuK, WG_M, NUM_WG, BLOCK_N, STAGES, CAUSAL, WINDOW, TRIM,
                            VARLEN, PERSISTENT, q_empty, n_bh, REVERSE_M, VARLEN_NB, CHAIN, ROT_N)),
        ], [4, 4, 1], [CONSUMER_REGS3, CONSUMER_REGS3, PRODUCER_REGS])
