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
def _fwd_inner(
    acc, l_i, m_i, q,
    K_blk, V_blk, M_blk,
    n_start, n_stop,
    offs_m, offs_n, offs_d,
    seqlen_q, seqlen_k, causal_offset, qk_scale,
    window_left, window_right, softcap_log2,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr,
    DOT_PRECISION: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
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
        s = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale
        if HAS_SOFTCAP:  # qk_scale is sm_scale / softcap here
            s = _tanh(s) * softcap_log2
        if MASK_KIND != 0:
            mv = tl.load(M_blk, boundary_check=(0, 1), padding_option="zero")
            if MASK_KIND == 1:  # bool mask: True (non-zero) = attend
                s = tl.where(mv != 0, s, float("-inf"))
            else:  # float mask: added to the scores
                s = s + mv.to(tl.float32) * LOG2E
            M_blk = tl.advance(M_blk, (0, BLOCK_N))
        if MASKED:
            valid = cols[None, :] < seqlen_k
            if IS_CAUSAL:
                valid = valid & (cols[None, :] <= offs_m[:, None] + causal_offset)
            if HAS_WINDOW:
                diag = offs_m[:, None] + causal_offset
                valid = valid & (cols[None, :] >= diag - window_left) & (cols[None, :] <= diag + window_right)
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
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
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
    window_left, window_right, softcap_log2,
    stride_kn, stride_vn, stride_mm, stride_mn,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr,
    DOT_PRECISION: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
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
        window_left, window_right, softcap_log2,
        HEAD_DIM, BLOCK_N, BLOCK_D, MASKED, IS_CAUSAL, MASK_KIND, DOT_PRECISION, HAS_WINDOW, HAS_SOFTCAP,
    )


@triton.jit(do_not_specialize=["num_heads", "group", "seqlen_q", "seqlen_k", "causal_offset",
                               "window_left", "window_right"])
def attn_fwd_kernel(
    Q, K, V, Mask, Out, Lse,
    sm_scale,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    stride_mb, stride_mh, stride_mm, stride_mn,
    num_heads, group, seqlen_q, seqlen_k, causal_offset,
    window_left, window_right, softcap,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr,
    DOT_PRECISION: tl.constexpr, HAS_WINDOW: tl.constexpr = False, HAS_SOFTCAP: tl.constexpr = False,
):
    """Out[b, h, m, :] = softmax(Q K^T * sm_scale + mask) V;  Lse[b, h, m] in natural log.

    Grid: (cdiv(seqlen_q, BLOCK_M) * B * num_heads,), query blocks of one head adjacent (they
    share K and V in L2); one axis because CUDA caps grid axes 1 and 2 at 65535.
    Lse is contiguous (B, num_heads, seqlen_q).
    MASK_KIND: 0 none, 1 bool/uint8 (non-zero = attend), 2 float (added).
    HAS_WINDOW: key j is seen by row i iff i + causal_offset - window_left <= j <=
    i + causal_offset + window_right (both >= 0; not together with IS_CAUSAL).
    HAS_SOFTCAP: scores = softcap * tanh(scores / softcap), softcap > 0.
    """
    num_m = tl.cdiv(seqlen_q, BLOCK_M)
    pid_m = tl.program_id(0) % num_m
    pid_bh = tl.program_id(0) // num_m
    off_b = (pid_bh // num_heads).to(tl.int64)
    off_h = (pid_bh % num_heads).to(tl.int64)
    off_hk = off_h // group
    m0 = pid_m * BLOCK_M
    m0_64 = m0.to(tl.int64)

    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_r = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < seqlen_q

    # int64 bases: B*H*S*D may pass 2^31; offsets inside a tile stay small.
    q_ptrs = Q + off_b * stride_qb + off_h * stride_qh + m0_64 * stride_qm \
        + offs_r[:, None] * stride_qm + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)

    softcap_log2 = 0.0
    if HAS_SOFTCAP:  # tanh takes the natural-scale scores over the cap; log2(e) goes after it
        qk_scale = tl.cast(sm_scale, tl.float32) / tl.cast(softcap, tl.float32)
        softcap_log2 = tl.cast(softcap, tl.float32) * LOG2E
    else:
        qk_scale = tl.cast(sm_scale, tl.float32) * LOG2E  # torch.compile passes the scale as fp64

    if HAS_WINDOW:
        # Rows m0 .. m0 + BLOCK_M - 1 see keys [row + off - left, row + off + right]. Visit
        # [n_lo, n_in_lo) masked (lower bound cuts), [n_in_lo, n_in_hi) unmasked (every row sees
        # every key), [n_in_hi, n_end) masked (upper bound or seqlen_k cuts); nothing else.
        k_base = K + off_b * stride_kb + off_hk * stride_kh
        v_base = V + off_b * stride_vb + off_hk * stride_vh
        m_base = Mask
        if MASK_KIND != 0:
            m_base = Mask + off_b * stride_mb + off_h * stride_mh
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        n_lo = tl.maximum(m0 + causal_offset - window_left, 0) // BLOCK_N * BLOCK_N
        n_end = tl.minimum(tl.maximum(m0 + BLOCK_M + causal_offset + window_right, 0), seqlen_k)
        n_in_lo = tl.maximum(m0 + BLOCK_M - 1 + causal_offset - window_left, n_lo)
        n_in_lo = tl.minimum((n_in_lo + BLOCK_N - 1) // BLOCK_N * BLOCK_N, n_end)
        n_in_hi = tl.maximum(m0 + causal_offset + window_right + 1, 0) // BLOCK_N * BLOCK_N
        n_in_hi = tl.maximum(tl.minimum(n_in_hi, seqlen_k // BLOCK_N * BLOCK_N), n_in_lo)
        acc, l_i, m_i = _fwd_range(
            acc, l_i, m_i, q, k_base, v_base, m_base, n_lo, n_in_lo, m0,
            offs_m, offs_n, offs_d, seqlen_q, seqlen_k, causal_offset, qk_scale,
            window_left, window_right, softcap_log2, stride_kn, stride_vn, stride_mm, stride_mn,
            HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D, True, IS_CAUSAL, MASK_KIND, DOT_PRECISION,
            HAS_WINDOW, HAS_SOFTCAP,
        )
        acc, l_i, m_i = _fwd_range(
            acc, l_i, m_i, q, k_base, v_base, m_base, n_in_lo, n_in_hi, m0,
            offs_m, offs_n, offs_d, seqlen_q, seqlen_k, causal_offset, qk_scale,
            window_left, window_right, softcap_log2, stride_kn, stride_vn, stride_mm, stride_mn,
            HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D, False, IS_CAUSAL, MASK_KIND, DOT_PRECISION,
            HAS_WINDOW, HAS_SOFTCAP,
        )
        acc, l_i, m_i = _fwd_range(
            acc, l_i, m_i, q, k_base, v_base, m_base, n_in_hi, n_end, m0,
            offs_m, offs_n, offs_d, seqlen_q, seqlen_k, causal_offset, qk_scale,
            window_left, window_right, softcap_log2, stride_kn, stride_vn, stride_mm, stride_mn,
            HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D, True, IS_CAUSAL, MASK_KIND, DOT_PRECISION,
            HAS_WINDOW, HAS_SOFTCAP,
        )
    else:
        # Key ranges: [0, n_full) needs no mask; [n_full, n_end) is masked.
        if IS_CAUSAL:
            n_end = tl.minimum(tl.maximum(m0 + BLOCK_M + causal_offset, 0), seqlen_k)
            n_full = tl.maximum(m0 + causal_offset + 1, 0) // BLOCK_N * BLOCK_N
            n_full = tl.minimum(n_full, seqlen_k // BLOCK_N * BLOCK_N)
            n_full = tl.minimum(n_full, n_end)
        else:
            n_end = seqlen_k
            n_full = seqlen_k // BLOCK_N * BLOCK_N

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

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

        acc, l_i, m_i = _fwd_inner(
            acc, l_i, m_i, q, K_blk, V_blk, M_blk, 0, n_full,
            offs_m, offs_n, offs_d, seqlen_q, seqlen_k, causal_offset, qk_scale,
            window_left, window_right, softcap_log2,
            HEAD_DIM, BLOCK_N, BLOCK_D, False, IS_CAUSAL, MASK_KIND, DOT_PRECISION, HAS_WINDOW, HAS_SOFTCAP,
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
                window_left, window_right, softcap_log2,
                HEAD_DIM, BLOCK_N, BLOCK_D, True, IS_CAUSAL, MASK_KIND, DOT_PRECISION, HAS_WINDOW, HAS_SOFTCAP,
            )

    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) * LN2)

    o_ptrs = Out + off_b * stride_ob + off_h * stride_oh + m0_64 * stride_om \
        + offs_r[:, None] * stride_om + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM))
    lse_ptrs = Lse + pid_bh.to(tl.int64) * seqlen_q + offs_m
    tl.store(lse_ptrs, lse, mask=row_ok)
