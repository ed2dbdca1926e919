"""Which keys and query blocks a CTA of the Gluon backward takes (kernels/bwd_hopper.py, and
bwd_hopper256.py's _bwd_tile), its place read again after the loop, and the tests and masks for
the blocks a causal diagonal, a window or a sequence's end cuts."""
from .gluon_base import _varlen_seq, gl, gluon


@gluon.jit
def _bwd_query_blocks(n0, S, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr, causal_offset,
                      window_left, window_right, WINDOW: gl.constexpr, VARLEN: gl.constexpr):
    """(first query block, query blocks) the CTA with keys n0 .. n0 + BLOCK_N - 1 visits: S is Sq
    (VARLEN: the sequence's, rounded up to BLOCK_M, its last block partial). WINDOW: the blocks
    whose rows see one of the CTA's keys (row i sees key j iff j - off - right <= i <= j - off +
    left), none when no row does. CAUSAL: rows i >= n0 (VARLEN: i + off >= n0)."""
    if WINDOW:
        lo = gl.maximum(n0 - causal_offset - window_right, 0)
        hi = gl.minimum(gl.maximum(n0 + BLOCK_N - causal_offset + window_left, 0), S)  # one past the last row
        i0 = lo // BLOCK_M
        return i0, gl.maximum((hi + BLOCK_M - 1) // BLOCK_M - i0, 0)
    if CAUSAL:
        if VARLEN:
            i0 = gl.maximum(n0 - causal_offset, 0) // BLOCK_M
        else:
            i0 = n0 // BLOCK_M  # query rows before n0 see none of the CTA's keys
    else:
        i0 = 0
    if VARLEN:
        return i0, gl.maximum(S // BLOCK_M - i0, 0)
    else:
        return i0, S // BLOCK_M - i0


@gluon.jit
def _bwd_tile(S, HKV, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr,
              LONG_FIRST: gl.constexpr, causal_offset=0, window_left=0, window_right=0, WINDOW: gl.constexpr = False,
              CuQ=0, CuK=0, VARLEN: gl.constexpr = False):
    """(b, kv head, n0, first query block, query blocks per query head) of this CTA: S is Sq; the
    query blocks: _bwd_query_blocks. VARLEN: b is the packed sequence, and five more values follow:
    its first query row and key row, its query and key counts, and its causal offset (bottom-right,
    seqlen_k - seqlen_q, as flash-attn's; the causal_offset argument is not read).
    The GPU starts CTAs in grid order, x fastest. LONG_FIRST: grid (B·Hkv, S / BLOCK_N), every
    (b, kv head)'s first key block starts before any second one; causal, those see the most query
    blocks, so the last wave is the short CTAs (B=1, S=4k, 32/8 heads: 1.16 -> 0.75 ms on an H200).
    Else grid (S / BLOCK_N, B·Hkv): the CTAs of one head run together and share its Q / dO
    streams in L2 (with many CTAs, long-first ran 2-17% slower: H200, session 5)."""
    if LONG_FIRST:
        pid_bh = gl.program_id(0)
        pid_n = gl.program_id(1)
    else:
        pid_n = gl.program_id(0)
        pid_bh = gl.program_id(1)
    n0 = pid_n * BLOCK_N
    if VARLEN:
        b = pid_bh // HKV
        q0, k0, seqlen_q, seqlen_k = _varlen_seq(CuQ, CuK, b)
        off = seqlen_k - seqlen_q
        i0, n_blocks = _bwd_query_blocks(n0, (seqlen_q + BLOCK_M - 1) // BLOCK_M * BLOCK_M, BLOCK_M, BLOCK_N,
                                         CAUSAL, off, window_left, window_right, WINDOW, VARLEN)
        # A key block past the sequence's keys (the grid covers the longest) visits no query block:
        # its K / V loads read a neighbour's rows or TMA's zeros, and it stores nothing. (Not an
        # early return before gl.warp_specialize: that build died with an illegal instruction on
        # the H100, as did every build whose lse / Delta TMA copies started unaligned: see
        # _bwd_producer; the early return itself may have been fine.)
        n_blocks = gl.where(n0 < seqlen_k, n_blocks, 0)
        return b, pid_bh % HKV, n0, i0, n_blocks, q0, k0, seqlen_q, seqlen_k, off
    else:
        i0, n_blocks = _bwd_query_blocks(n0, S, BLOCK_M, BLOCK_N, CAUSAL, causal_offset, window_left,
                                         window_right, WINDOW, VARLEN)
        return pid_bh // HKV, pid_bh % HKV, n0, i0, n_blocks


@gluon.jit
def _bwd_part_tile(pid, S, HKV, tile_base, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, TAIL_PARTS: gl.constexpr):
    """TAIL_PARTS' (b, kv head, n0, first query block, query blocks per query head) of CTA pid of the tail
    launch (a 1-D grid, TAIL_PARTS CTAs a tile): part pid % TAIL_PARTS of tile tile_base + pid // TAIL_PARTS
    (numbered as _bwd_tile's grid (S / BLOCK_N, B·Hkv) launches them; the plain non-causal geometry, Sq = Sk =
    S), its query blocks p · n / TAIL_PARTS .. (p + 1) · n / TAIL_PARTS - 1 of every query head of the group
    (n = S / BLOCK_M). A tile's parts are consecutive CTAs: its last part, which merges, starts last."""
    tile = tile_base + pid // TAIL_PARTS
    p = pid % TAIL_PARTS
    nkb = S // BLOCK_N
    bh = tile // nkb
    nb = S // BLOCK_M
    i0 = p * nb // TAIL_PARTS
    return bh // HKV, bh % HKV, (tile - bh * nkb) * BLOCK_N, i0, (p + 1) * nb // TAIL_PARTS - i0


@gluon.jit
def _ctaid(AXIS: gl.constexpr):
    """gl.program_id(AXIS) read again (not common-subexpression-eliminated with an earlier read)."""
    return gl.inline_asm_elementwise("mov.u32 $0, %ctaid." + "xy"[AXIS] + ";", "=r", [], dtype=gl.int32,
                                     is_pure=False, pack=1)


@gluon.jit
def _opaque(x):
    """x, through an instruction the compiler cannot merge with an earlier copy of it."""
    return gl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _bwd_tile_again(H, GROUP, BLOCK_N: gl.constexpr, LONG_FIRST: gl.constexpr):
    """(b, kv head, n0, kv heads) of _bwd_tile, from fresh reads of the CTA's id and the head
    counts (values the loop then need not keep)."""
    if LONG_FIRST:
        pid_bh = _ctaid(0)
        pid_n = _ctaid(1)
    else:
        pid_n = _ctaid(0)
        pid_bh = _ctaid(1)
    hkv = _opaque(H) // _opaque(GROUP)
    return pid_bh // hkv, pid_bh % hkv, pid_n * BLOCK_N, hkv


@gluon.jit
def _window_cuts(d0, window_left, window_right):
    """Whether the window cuts a 64-key x 64-query block whose i + off - j spans d0 - 63 .. d0 + 63
    (some pair outside -right <= i + off - j <= left)."""
    return (d0 - 63 < -window_right) | (d0 + 63 > window_left)


@gluon.jit
def _window_keep(dx, d_reg, window_left, window_right):
    """-right <= i + off - j <= left, with i + off - j = dx + d_reg (d_reg: constants)."""
    return ((dx + window_right) >= -d_reg) & ((window_left - dx) >= d_reg)


@gluon.jit
def _diag_cuts(m0, n0w, causal_offset, VARLEN: gl.constexpr):
    """Whether the causal diagonal cuts the 64-key block from n0w x the query block from m0 (some
    key > row + off; off = 0 unless VARLEN)."""
    if VARLEN:
        return m0 + causal_offset < n0w + 64
    return m0 < n0w + 64


@gluon.jit
def _varlen_cuts(m0, n0w, seqlen_q, seqlen_k):
    """Whether the 64-key block from n0w x the 64-row query block from m0 passes the sequence's end."""
    return (m0 + 64 > seqlen_q) | (n0w + 64 > seqlen_k)


@gluon.jit
def _varlen_keep(m0, n0w, seqlen_q, seqlen_k, offs_mq, offs_r):
    """Query row m0 + c < seqlen_q and key n0w + r < seqlen_k (offs_mq: c, offs_r: r), split as
    _bwd_consumer's d_lane / d_reg: a thread's lane part (one value) against constants."""
    keep_q = (offs_mq & ~6)[None, :] < (seqlen_q - m0) - (offs_mq & 6)[None, :]
    keep_k = (offs_r & 8)[:, None] < (seqlen_k - n0w) - (offs_r & ~8)[:, None]
    return keep_q & keep_k
