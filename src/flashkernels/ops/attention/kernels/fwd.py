"""Flash attention forward: @triton.jit code only.

One program computes BLOCK_M query rows of one (batch, query head) against all the keys it may
see, with an online softmax in fp32 in the log2 domain (``log2(e)`` folded into the scale so the
exponent is a bare ``exp2``). Tensors are addressed through explicit strides in the (B, H, S, D)
index order, so (B, S, H, D) inputs, sliced and transposed views need no copy.

Key blocks are visited in two phases so that the common case carries no masking:
  1. blocks every row of this query block fully sees (no causal cut, inside Sk): no mask work;
  2. the blocks cut by the causal diagonal or by the end of the keys: masked.
A user mask (bool or float, any broadcast strides) applies in both phases.

Sliding window (HAS_WINDOW, flash-attn's ``window_size``, bounds ``window_left``/``window_right``
around the diagonal ``i + causal_offset``; the launcher turns an unbounded side into Sq + Sk) has
three phases instead: masked blocks cut by the lower bound, unmasked blocks inside the window,
masked blocks cut by the upper bound or the end of the keys; blocks outside are never visited.
Softcap (HAS_SOFTCAP): s = softcap * tanh(q k^T * sm_scale / softcap), before any mask.

Fully masked rows keep ``m = -inf`` and ``l = 0``; the exponent is taken against 0 instead of
-inf so no NaN appears, and they finish as output 0, lse -inf.
"""
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _tanh(z):
    # tl has no tanh that the interpreter runs. (1 - e) / (1 + e) with e = exp(-2|z|) <= 1 never
    # overflows but loses relative accuracy to cancellation near 0 (softcap multiplies the error
    # by the cap), so |z| < 0.625 uses Cephes tanhf's odd polynomial (relative error ~1 ulp).
    a = tl.abs(z)
    e = tl.math.exp2(a * (-2.0 * LOG2E))
    big = (1.0 - e) / (1.0 + e)
    z2 = a * a
    small = ((((-5.70498872745e-3 * z2 + 2.06390887954e-2) * z2 - 5.37397155531e-2) * z2
              + 1.33314422036e-1) * z2 - 3.33332819422e-1) * z2 * a + a
    t = tl.where(a < 0.625, small, big)
    return tl.where(z >= 0, t, -t)


@triton.jit
def _softcap_tanh(z, HAS_SOFTCAP: tl.constexpr):
    """tanh for the softcap: HAS_SOFTCAP 2 is the GPU's tanh.approx.f32 (one special-function
    op, relative error ~2^-11: for fp16/bf16 inputs, whose probabilities are rounded coarser
    before the P V product anyway); 1 is the accurate _tanh above (fp32, and the interpreter)."""
    if HAS_SOFTCAP == 2:
        return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [z], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return _tanh(z)


@triton.jit
def score_scales(sm_scale, softcap, HAS_SOFTCAP: tl.constexpr):
    """(qk_scale, softcap_log2) in fp32 (torch.compile passes float scalars as fp64): q k^T is
    multiplied by qk_scale, which carries log2(e) unless there is a cap; with a cap, tanh takes
    the natural-scale scores over the cap and its output is multiplied by softcap_log2."""
    sm = tl.cast(sm_scale, tl.float32)
    if HAS_SOFTCAP:
        cap = tl.cast(softcap, tl.float32)
        return sm / cap, cap * LOG2E
    else:
        return sm * LOG2E, 0.0


@triton.jit
def key_ranges(m0, seqlen_k, causal_offset, window_left, window_right,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr,
               HAS_WINDOW: tl.constexpr):
    """The key blocks that query rows m0 .. m0 + BLOCK_M - 1 visit, as (n_lo, n_in_lo, n_in_hi,
    n_end): [n_lo, n_in_lo) masked (the window's lower bound cuts), [n_in_lo, n_in_hi) unmasked
    (every row sees every key), [n_in_hi, n_end) masked (the causal diagonal, the window's upper
    bound or seqlen_k cuts). Without a window n_lo = n_in_lo = 0."""
    if HAS_WINDOW:  # row i sees keys [i + off - left, i + off + right]
        n_lo = tl.maximum(m0 + causal_offset - window_left, 0) // BLOCK_N * BLOCK_N
        n_end = tl.minimum(tl.maximum(m0 + BLOCK_M + causal_offset + window_right, 0), seqlen_k)
        n_in_lo = tl.maximum(m0 + BLOCK_M - 1 + causal_offset - window_left, n_lo)
        n_in_lo = tl.minimum((n_in_lo + BLOCK_N - 1) // BLOCK_N * BLOCK_N, n_end)
        n_in_hi = tl.maximum(m0 + causal_offset + window_right + 1, 0) // BLOCK_N * BLOCK_N
        n_in_hi = tl.maximum(tl.minimum(n_in_hi, seqlen_k // BLOCK_N * BLOCK_N), n_in_lo)
    else:
        n_lo = m0 * 0
        n_in_lo = n_lo
        if IS_CAUSAL:
            n_end = tl.minimum(tl.maximum(m0 + BLOCK_M + causal_offset, 0), seqlen_k)
            n_in_hi = tl.maximum(m0 + causal_offset + 1, 0) // BLOCK_N * BLOCK_N
            n_in_hi = tl.minimum(n_in_hi, seqlen_k // BLOCK_N * BLOCK_N)
            n_in_hi = tl.minimum(n_in_hi, n_end)
        else:
            n_end = seqlen_k
            n_in_hi = seqlen_k // BLOCK_N * BLOCK_N
    return n_lo, n_in_lo, n_in_hi, n_end


@triton.jit
def seq_bounds(CuQ, CuK, off_b):
    """Packed sequence off_b (VARLEN): (first query row, first key row) as int64, and its Sq, Sk."""
    q_start = tl.load(CuQ + off_b)
    k_start = tl.load(CuK + off_b)
    seqlen_q = tl.load(CuQ + off_b + 1) - q_start
    seqlen_k = tl.load(CuK + off_b + 1) - k_start
    return q_start.to(tl.int64), k_start.to(tl.int64), seqlen_q, seqlen_k


@triton.jit
def alibi_log2(Alibi, off_b, off_h, stride_ab, stride_ah, HAS_ALIBI: tl.constexpr):
    """The ALiBi slope of (off_b, off_h) times log2(e) (the scores' domain); 0.0 without ALiBi."""
    slope = 0.0
    if HAS_ALIBI:
        slope = tl.load(Alibi + off_b * stride_ab + off_h * stride_ah).to(tl.float32) * LOG2E
    return slope


@triton.jit
def _init_row_stats(Sink, off_h, BLOCK_M: tl.constexpr, HAS_SINK: tl.constexpr):
    # Running max m (log2 domain) and sum l of every row. A sink is a key already seen: its
    # logit is the first max, with exp2(0) = 1 in the sum and nothing in the accumulator.
    if HAS_SINK:
        m_i = tl.zeros([BLOCK_M], dtype=tl.float32) + tl.load(Sink + off_h).to(tl.float32) * LOG2E
        l_i = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    return m_i, l_i


@triton.jit
def _fwd_inner(
    acc, l_i, m_i, q,
    K_blk, V_blk, M_blk,
    n_start, n_stop,
    offs_m, offs_n, offs_d,
    seqlen_q, seqlen_k, causal_offset, qk_scale,
    window_left, window_right, softcap_log2, slope_log2,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr,
    DOT_PRECISION: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    HAS_ALIBI: tl.constexpr, SCALE_POSITIVE: tl.constexpr,
):
    # K_blk: block pointer over K^T (d, n), V_blk over V (n, d), both at key block n_start.
    # Block pointers keep one scalar base + offsets instead of a pointer per element: a
    # tensor of pointers costs 2 registers an element and spilled (ptxas, sm_90a, D=64).
    for start_n in range(n_start, n_stop, BLOCK_N):
        cols = start_n + offs_n
        if MASKED:
            k = tl.load(K_blk, boundary_check=(0, 1), padding_option="zero")
        elif HEAD_DIM != BLOCK_D:
            k = tl.load(K_blk, boundary_check=(0,), padding_option="zero")
        else:
            k = tl.load(K_blk)
        qk = tl.dot(q, k, input_precision=DOT_PRECISION)
        if MASKED:
            valid = cols[None, :] < seqlen_k
            if IS_CAUSAL:
                valid = valid & (cols[None, :] <= offs_m[:, None] + causal_offset)
            if HAS_WINDOW:
                diag = offs_m[:, None] + causal_offset
                valid = valid & (cols[None, :] >= diag - window_left) & (cols[None, :] <= diag + window_right)
        if SCALE_POSITIVE and MASK_KIND == 0 and not HAS_SOFTCAP and not HAS_ALIBI:
            # Plain scores (v3): masked entries become -inf on the raw products, the row max is
            # taken over them (a scale > 0 keeps order and -inf), and the scale goes into one FMA
            # a score in the exponent instead of a multiply and a subtraction.
            if MASKED:
                qk = tl.where(valid, qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(qk * qk_scale - m_ref[:, None])
        else:
            s = qk * qk_scale
            if HAS_SOFTCAP:  # qk_scale is sm_scale / softcap here
                s = _softcap_tanh(s, HAS_SOFTCAP) * softcap_log2
            if HAS_ALIBI:  # slope_log2 = slope * log2(e)
                s = s - slope_log2 * tl.abs(offs_m[:, None] + causal_offset - cols[None, :]).to(tl.float32)
            if MASK_KIND != 0:
                mv = tl.load(M_blk, boundary_check=(0, 1), padding_option="zero")
                if MASK_KIND == 1:  # bool mask: True (non-zero) = attend
                    s = tl.where(mv != 0, s, float("-inf"))
                else:  # float mask: added to the scores
                    s = s + mv.to(tl.float32) * LOG2E
                M_blk = tl.advance(M_blk, (0, BLOCK_N))
            if MASKED:
                s = tl.where(valid, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s - m_ref[:, None])
        alpha = tl.math.exp2(m_i - m_ref)
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED:
            v = tl.load(V_blk, boundary_check=(0, 1), padding_option="zero")
        elif HEAD_DIM != BLOCK_D:
            v = tl.load(V_blk, boundary_check=(1,), padding_option="zero")
        else:
            v = tl.load(V_blk)
        # The rescaled accumulator goes into the dot as its accumulator (wgmma adds into it):
        # `acc * alpha + tl.dot(p, v)` kept a second [BLOCK_M, BLOCK_D] fp32 tile live and added
        # it afterwards (docs/perf-notes.md, v4).
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
        K_blk = tl.advance(K_blk, (0, BLOCK_N))
        V_blk = tl.advance(V_blk, (BLOCK_N, 0))
    return acc, l_i, m_i


@triton.jit
def _fwd_range(
    acc, l_i, m_i, q, k_base, v_base, m_base,
    n_start, n_stop, m0,
    offs_m, offs_n, offs_d,
    seqlen_q, seqlen_k, causal_offset, qk_scale,
    window_left, window_right, softcap_log2, slope_log2,
    stride_kn, stride_vn, stride_mm, stride_mn,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr,
    DOT_PRECISION: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    HAS_ALIBI: tl.constexpr, SCALE_POSITIVE: tl.constexpr,
):
    # Key blocks [n_start, n_stop) with block pointers placed at n_start (window phases).
    K_blk = tl.make_block_ptr(k_base, shape=(HEAD_DIM, seqlen_k), strides=(1, stride_kn),
                              offsets=(0, n_start), block_shape=(BLOCK_D, BLOCK_N), order=(0, 1))
    V_blk = tl.make_block_ptr(v_base, shape=(seqlen_k, HEAD_DIM), strides=(stride_vn, 1),
                              offsets=(n_start, 0), block_shape=(BLOCK_N, BLOCK_D), order=(1, 0))
    M_blk = K_blk
    if MASK_KIND != 0:
        M_blk = tl.make_block_ptr(m_base, shape=(seqlen_q, seqlen_k), strides=(stride_mm, stride_mn),
                                  offsets=(m0, n_start), block_shape=(BLOCK_M, BLOCK_N), order=(1, 0))
    return _fwd_inner(
        acc, l_i, m_i, q, K_blk, V_blk, M_blk, n_start, n_stop,
        offs_m, offs_n, offs_d, seqlen_q, seqlen_k, causal_offset, qk_scale,
        window_left, window_right, softcap_log2, slope_log2,
        HEAD_DIM, BLOCK_N, BLOCK_D, MASKED, IS_CAUSAL, MASK_KIND, DOT_PRECISION, HAS_WINDOW, HAS_SOFTCAP,
        HAS_ALIBI, SCALE_POSITIVE,
    )


@triton.jit(do_not_specialize=["num_heads", "group", "seqlen_q", "seqlen_k", "causal_offset",
                               "window_left", "window_right", "stride_lb", "stride_lh"])
def attn_fwd_kernel(
    Q, K, V, Mask, Out, Lse, Alibi, Sink, CuQ, CuK,
    sm_scale,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    stride_mb, stride_mh, stride_mm, stride_mn,
    stride_lb, stride_lh, stride_ab, stride_ah,
    num_heads, group, seqlen_q, seqlen_k, causal_offset,
    window_left, window_right, softcap,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr,
    DOT_PRECISION: tl.constexpr, HAS_WINDOW: tl.constexpr = False, HAS_SOFTCAP: tl.constexpr = False,
    HAS_ALIBI: tl.constexpr = False, HAS_SINK: tl.constexpr = False, VARLEN: tl.constexpr = False,
    SCALE_POSITIVE: tl.constexpr = False, REVERSE_M: tl.constexpr = False,
):
    """Out[b, h, m, :] = softmax(Q K^T * sm_scale + mask) V;  Lse[b, h, m] in natural log.

    Grid: (cdiv(seqlen_q, BLOCK_M) * B * num_heads,), query blocks of one head adjacent (they
    share K and V in L2); one axis because CUDA caps grid axes 1 and 2 at 65535. REVERSE_M: a
    head's query blocks last first (causal: its longest blocks start first).
    Lse[b, h, m] is at Lse + b * stride_lb + h * stride_lh + m.
    VARLEN: B counts packed sequences; sequence b's queries are rows CuQ[b] .. CuQ[b + 1] - 1 and
    its keys CuK[b] .. CuK[b + 1] - 1 (the batch strides are 0), seqlen_q/seqlen_k are the
    maxima, and the causal diagonal is aligned bottom-right per sequence.
    HAS_ALIBI: adds -Alibi[b * stride_ab + h * stride_ah] * |i + causal_offset - j|.
    HAS_SINK: Sink[h] is one more logit in each row's softmax, with a zero value.
    SCALE_POSITIVE: sm_scale > 0, so without a user mask, softcap or ALiBi the row max is taken
    over the raw products and the scale goes into the exponent's FMA (v3, docs/perf-notes.md);
    else every score is scaled first (v2's order, correct for any scale).
    MASK_KIND: 0 none, 1 bool/uint8 (non-zero = attend), 2 float (added).
    HAS_WINDOW: key j is seen by row i iff i + causal_offset - window_left <= j <=
    i + causal_offset + window_right (both >= 0; not together with IS_CAUSAL).
    HAS_SOFTCAP: scores = softcap * tanh(scores / softcap), softcap > 0 (1: accurate tanh, 2: the
    GPU's approximate one, see _softcap_tanh).
    """
    num_m = tl.cdiv(seqlen_q, BLOCK_M)
    pid_m = tl.program_id(0) % num_m
    pid_bh = tl.program_id(0) // num_m
    if REVERSE_M:
        pid_m = num_m - 1 - pid_m
    off_b = (pid_bh // num_heads).to(tl.int64)
    off_h = (pid_bh % num_heads).to(tl.int64)
    off_hk = off_h // group
    m0 = pid_m * BLOCK_M
    m0_64 = m0.to(tl.int64)
    Lse += off_b * stride_lb + off_h * stride_lh
    if VARLEN:
        q_start, k_start, seqlen_q, seqlen_k = seq_bounds(CuQ, CuK, off_b)
        if m0 >= seqlen_q:
            return
        causal_offset = seqlen_k - seqlen_q
        Q += q_start * stride_qm
        Out += q_start * stride_om
        Lse += q_start
        K += k_start * stride_kn
        V += k_start * stride_vn
    slope_log2 = alibi_log2(Alibi, off_b, off_h, stride_ab, stride_ah, HAS_ALIBI)

    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_r = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < seqlen_q

    # int64 bases: B*H*S*D may pass 2^31; offsets inside a tile stay small.
    q_ptrs = Q + off_b * stride_qb + off_h * stride_qh + m0_64 * stride_qm \
        + offs_r[:, None] * stride_qm + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)

    qk_scale, softcap_log2 = score_scales(sm_scale, softcap, HAS_SOFTCAP)
    n_lo, n_in_lo, n_in_hi, n_end = key_ranges(m0, seqlen_k, causal_offset, window_left, window_right,
                                               BLOCK_M, BLOCK_N, IS_CAUSAL, HAS_WINDOW)

    if HAS_WINDOW:
        # Rows m0 .. m0 + BLOCK_M - 1 see keys [row + off - left, row + off + right]. Visit
        # [n_lo, n_in_lo) masked (lower bound cuts), [n_in_lo, n_in_hi) unmasked (every row sees
        # every key), [n_in_hi, n_end) masked (upper bound or seqlen_k cuts); nothing else.
        k_base = K + off_b * stride_kb + off_hk * stride_kh
        v_base = V + off_b * stride_vb + off_hk * stride_vh
        m_base = Mask
        if MASK_KIND != 0:
            m_base = Mask + off_b * stride_mb + off_h * stride_mh
        m_i, l_i = _init_row_stats(Sink, off_h, BLOCK_M, HAS_SINK)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        acc, l_i, m_i = _fwd_range(
            acc, l_i, m_i, q, k_base, v_base, m_base, n_lo, n_in_lo, m0,
            offs_m, offs_n, offs_d, seqlen_q, seqlen_k, causal_offset, qk_scale,
            window_left, window_right, softcap_log2, slope_log2, stride_kn, stride_vn, stride_mm, stride_mn,
            HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D, True, IS_CAUSAL, MASK_KIND, DOT_PRECISION,
            HAS_WINDOW, HAS_SOFTCAP, HAS_ALIBI, SCALE_POSITIVE,
        )
        acc, l_i, m_i = _fwd_range(
            acc, l_i, m_i, q, k_base, v_base, m_base, n_in_lo, n_in_hi, m0,
            offs_m, offs_n, offs_d, seqlen_q, seqlen_k, causal_offset, qk_scale,
            window_left, window_right, softcap_log2, slope_log2, stride_kn, stride_vn, stride_mm, stride_mn,
            HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D, False, IS_CAUSAL, MASK_KIND, DOT_PRECISION,
            HAS_WINDOW, HAS_SOFTCAP, HAS_ALIBI, SCALE_POSITIVE,
        )
        acc, l_i, m_i = _fwd_range(
            acc, l_i, m_i, q, k_base, v_base, m_base, n_in_hi, n_end, m0,
            offs_m, offs_n, offs_d, seqlen_q, seqlen_k, causal_offset, qk_scale,
            window_left, window_right, softcap_log2, slope_log2, stride_kn, stride_vn, stride_mm, stride_mn,
            HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D, True, IS_CAUSAL, MASK_KIND, DOT_PRECISION,
            HAS_WINDOW, HAS_SOFTCAP, HAS_ALIBI, SCALE_POSITIVE,
        )
    else:
        # Key ranges: [0, n_full) needs no mask; [n_full, n_end) is masked.
        n_full = n_in_hi

        k_base = K + off_b * stride_kb + off_hk * stride_kh
        v_base = V + off_b * stride_vb + off_hk * stride_vh
        K_blk = tl.make_block_ptr(k_base, shape=(HEAD_DIM, seqlen_k), strides=(1, stride_kn),
                                  offsets=(0, 0), block_shape=(BLOCK_D, BLOCK_N), order=(0, 1))
        V_blk = tl.make_block_ptr(v_base, shape=(seqlen_k, HEAD_DIM), strides=(stride_vn, 1),
                                  offsets=(0, 0), block_shape=(BLOCK_N, BLOCK_D), order=(1, 0))
        M_blk = K_blk
        if MASK_KIND != 0:
            M_blk = tl.make_block_ptr(Mask + off_b * stride_mb + off_h * stride_mh, shape=(seqlen_q, seqlen_k),
                                      strides=(stride_mm, stride_mn), offsets=(m0, 0),
                                      block_shape=(BLOCK_M, BLOCK_N), order=(1, 0))

        m_i, l_i = _init_row_stats(Sink, off_h, BLOCK_M, HAS_SINK)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

        acc, l_i, m_i = _fwd_inner(
            acc, l_i, m_i, q, K_blk, V_blk, M_blk, 0, n_full,
            offs_m, offs_n, offs_d, seqlen_q, seqlen_k, causal_offset, qk_scale,
            window_left, window_right, softcap_log2, slope_log2,
            HEAD_DIM, BLOCK_N, BLOCK_D, False, IS_CAUSAL, MASK_KIND, DOT_PRECISION, HAS_WINDOW, HAS_SOFTCAP,
            HAS_ALIBI, SCALE_POSITIVE,
        )
        if n_full < n_end:
            K_blk = tl.make_block_ptr(k_base, shape=(HEAD_DIM, seqlen_k), strides=(1, stride_kn),
                                      offsets=(0, n_full), block_shape=(BLOCK_D, BLOCK_N), order=(0, 1))
            V_blk = tl.make_block_ptr(v_base, shape=(seqlen_k, HEAD_DIM), strides=(stride_vn, 1),
                                      offsets=(n_full, 0), block_shape=(BLOCK_N, BLOCK_D), order=(1, 0))
            if MASK_KIND != 0:
                M_blk = tl.make_block_ptr(Mask + off_b * stride_mb + off_h * stride_mh, shape=(seqlen_q, seqlen_k),
                                          strides=(stride_mm, stride_mn), offsets=(m0, n_full),
                                          block_shape=(BLOCK_M, BLOCK_N), order=(1, 0))
            acc, l_i, m_i = _fwd_inner(
                acc, l_i, m_i, q, K_blk, V_blk, M_blk, n_full, n_end,
                offs_m, offs_n, offs_d, seqlen_q, seqlen_k, causal_offset, qk_scale,
                window_left, window_right, softcap_log2, slope_log2,
                HEAD_DIM, BLOCK_N, BLOCK_D, True, IS_CAUSAL, MASK_KIND, DOT_PRECISION, HAS_WINDOW, HAS_SOFTCAP,
                HAS_ALIBI, SCALE_POSITIVE,
            )

    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) * LN2)
    if HAS_SINK:
        # While the sink is the row's max, take its logit as is: m * ln 2 would add two roundings
        # (sink * log2 e, then * ln 2) to the lse, and d sink = -sum(exp(sink - lse) * delta)
        # multiplies that error by a sum over every row.
        sink = tl.load(Sink + off_h).to(tl.float32)
        lse = tl.where(m_i == sink * LOG2E, sink + tl.math.log2(l_i) * LN2, lse)

    o_ptrs = Out + off_b * stride_ob + off_h * stride_oh + m0_64 * stride_om \
        + offs_r[:, None] * stride_om + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM))
    tl.store(Lse + offs_m, lse, mask=row_ok)
