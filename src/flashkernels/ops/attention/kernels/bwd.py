"""Flash attention backward: @triton.jit code only.

Three kernels, no atomics (so the backward is deterministic):
  * ``attn_bwd_preprocess_kernel``: Delta[b, h, m] = sum_d dO * O (fp32).
  * ``attn_bwd_dkdv_kernel``: one program owns BLOCK_N keys of one (batch, kv head); it loops
    over the query heads of its GQA group and over query blocks, recomputing
    P = exp2(S * log2e - lse * log2e), and accumulates dV += P^T dO and dK += dS^T Q in fp32.
  * ``attn_bwd_dq_kernel``: one program owns BLOCK_M queries of one (batch, query head) and
    loops over key blocks: dQ += dS K.
with dS = P * (dP - Delta), dP = dO V^T. dK and dQ are multiplied by the softmax scale at the end.

As in the forward, blocks are split into an unmasked phase and a masked phase (causal diagonal,
end of the sequence). Rows whose lse is -inf (fully masked) use +inf instead so P = 0 exactly.
Sliding window (HAS_WINDOW) and softcap (HAS_SOFTCAP) follow the forward: only blocks that meet
the window are visited, in three phases (masked, unmasked, masked); with softcap the scores are
recomputed as t = tanh(q k^T * sm_scale / softcap), s = softcap * t, and the gradient through the
cap is dS_raw = dS * (1 - t^2), in fp32.
Query rows past seqlen_q load zeros for Q and dO and +inf for lse, so they add nothing.
"""
import triton
import triton.language as tl

from .fwd import _softcap_tanh, alibi_log2, key_ranges, score_scales, seq_bounds

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit(do_not_specialize=["num_heads", "seqlen_q"])
def attn_bwd_preprocess_kernel(
    Out, DOut, Delta,
    stride_ob, stride_oh, stride_om,
    stride_dob, stride_doh, stride_dom,
    num_heads, seqlen_q,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    num_m = tl.cdiv(seqlen_q, BLOCK_M)
    pid_m = tl.program_id(0) % num_m
    pid_bh = tl.program_id(0) // num_m
    off_b = (pid_bh // num_heads).to(tl.int64)
    off_h = (pid_bh % num_heads).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (offs_m[:, None] < seqlen_q) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(Out + off_b * stride_ob + off_h * stride_oh + offs_m[:, None].to(tl.int64) * stride_om
                + offs_d[None, :], mask=ok, other=0.0)
    do = tl.load(DOut + off_b * stride_dob + off_h * stride_doh + offs_m[:, None].to(tl.int64) * stride_dom
                 + offs_d[None, :], mask=ok, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(Delta + pid_bh.to(tl.int64) * seqlen_q + offs_m, delta, mask=offs_m < seqlen_q)


@triton.jit
def _load_rows(ptrs, rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
               CHECK_ROWS: tl.constexpr):
    """Load a (rows, BLOCK_D) tile, masking rows past n_rows and padded head-dim columns."""
    if CHECK_ROWS:
        return tl.load(ptrs, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    elif HEAD_DIM != BLOCK_D:
        return tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    else:
        return tl.load(ptrs)


@triton.jit
def _dkdv_inner(
    dk, dv, k, v,
    Q, DO, Mask, Lse, Delta,
    m_start, m_stop,
    offs_n, offs_r, offs_d,
    seqlen_q, seqlen_k, causal_offset, qk_scale,
    window_left, window_right, softcap_log2, slope_log2,
    stride_qm, stride_dom, stride_mm, stride_mn,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr,
    DOT_PRECISION: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
):
    # Q, DO, Mask point at row 0 of this (b, h); Lse/Delta at this (b, h)'s row 0.
    # Transposed scores: sT[n, m], so P^T needs no transpose for dV += P^T dO.
    for start_m in range(m_start, m_stop, BLOCK_M):
        rows = start_m + offs_r
        start_64 = tl.cast(start_m, tl.int64)
        # The unmasked phase only sees whole query blocks (the launcher-side ranges send a
        # partial last block through the masked phase), so its loads need no row checks.
        q = _load_rows(Q + start_64 * stride_qm + offs_r[:, None] * stride_qm + offs_d[None, :],
                       rows, seqlen_q, offs_d, HEAD_DIM, BLOCK_D, MASKED)
        do = _load_rows(DO + start_64 * stride_dom + offs_r[:, None] * stride_dom + offs_d[None, :],
                        rows, seqlen_q, offs_d, HEAD_DIM, BLOCK_D, MASKED)
        if MASKED:
            lse = tl.load(Lse + rows, mask=rows < seqlen_q, other=float("inf"))
            delta = tl.load(Delta + rows, mask=rows < seqlen_q, other=0.0)
        else:
            lse = tl.load(Lse + rows)
            delta = tl.load(Delta + rows)
        lse = tl.where(lse == float("-inf"), float("inf"), lse) * LOG2E
        sT = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale
        if HAS_SOFTCAP:  # qk_scale is sm_scale / softcap here
            tT = _softcap_tanh(sT, HAS_SOFTCAP)
            sT = tT * softcap_log2
        if HAS_ALIBI:
            sT = sT - slope_log2 * tl.abs(rows[None, :] + causal_offset - offs_n[:, None]).to(tl.float32)
        if MASK_KIND != 0:
            mptrs = Mask + start_64 * stride_mm + offs_r[None, :] * stride_mm \
                + offs_n[:, None].to(tl.int64) * stride_mn
            mok = (rows[None, :] < seqlen_q) & (offs_n[:, None] < seqlen_k)
            if MASK_KIND == 1:
                mv = tl.load(mptrs, mask=mok, other=0)
                sT = tl.where(mv != 0, sT, float("-inf"))
            else:
                mv = tl.load(mptrs, mask=mok, other=0.0)
                sT = sT + mv.to(tl.float32) * LOG2E
        pT = tl.math.exp2(sT - lse[None, :])
        if MASKED:
            valid = offs_n[:, None] < seqlen_k
            if IS_CAUSAL:
                valid = valid & (offs_n[:, None] <= rows[None, :] + causal_offset)
            if HAS_WINDOW:
                diag = rows[None, :] + causal_offset
                valid = valid & (offs_n[:, None] >= diag - window_left) & (offs_n[:, None] <= diag + window_right)
            pT = tl.where(valid, pT, 0.0)
        dv += tl.dot(pT.to(do.dtype), do, input_precision=DOT_PRECISION)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        dsT = pT * (dpT - delta[None, :])
        if HAS_SOFTCAP:  # d(softcap * tanh(x / softcap)) / dx = 1 - tanh^2
            dsT = dsT * ((1.0 - tT) * (1.0 + tT))
        dk += tl.dot(dsT.to(q.dtype), q, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit(do_not_specialize=["num_heads", "num_kv_heads", "group", "seqlen_q", "seqlen_k",
                               "causal_offset", "window_left", "window_right", "stride_lb", "stride_lh"])
def attn_bwd_dkdv_kernel(
    Q, K, V, Mask, DO, Lse, Delta, DK, DV, Alibi, CuQ, CuK,
    sm_scale,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_mb, stride_mh, stride_mm, stride_mn,
    stride_dob, stride_doh, stride_dom,
    stride_dkb, stride_dkh, stride_dkn,
    stride_dvb, stride_dvh, stride_dvn,
    stride_lb, stride_lh, stride_ab, stride_ah,
    num_heads, num_kv_heads, group, group_split, seqlen_q, seqlen_k, causal_offset,
    window_left, window_right, softcap,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr,
    DOT_PRECISION: tl.constexpr, HAS_WINDOW: tl.constexpr = False, HAS_SOFTCAP: tl.constexpr = False,
    HAS_ALIBI: tl.constexpr = False, VARLEN: tl.constexpr = False,
):
    """Grid: (cdiv(seqlen_k, BLOCK_N) * B * num_kv_heads * group_split,). Writes dK, dV of its
    key block, summed over group / group_split of the kv head's query heads: with group_split
    > 1 (GQA with few programs otherwise), DK/DV hold num_kv_heads * group_split partial heads
    (head hk * group_split + s), summed by the caller. Lse/Delta are laid out and VARLEN /
    HAS_ALIBI mean what they mean in attn_fwd_kernel."""
    num_n = tl.cdiv(seqlen_k, BLOCK_N)
    pid_n = tl.program_id(0) % num_n
    pid_bhs = tl.program_id(0) // num_n
    off_s = pid_bhs % group_split
    pid_bh = pid_bhs // group_split
    off_b = (pid_bh // num_kv_heads).to(tl.int64)
    off_hk = (pid_bh % num_kv_heads).to(tl.int64)
    n0 = pid_n * BLOCK_N
    Lse += off_b * stride_lb
    Delta += off_b * stride_lb
    if VARLEN:
        q_start, k_start, seqlen_q, seqlen_k = seq_bounds(CuQ, CuK, off_b)
        if n0 >= seqlen_k:
            return
        causal_offset = seqlen_k - seqlen_q
        Q += q_start * stride_qm
        DO += q_start * stride_dom
        Lse += q_start
        Delta += q_start
        K += k_start * stride_kn
        V += k_start * stride_vn
        DK += k_start * stride_dkn
        DV += k_start * stride_dvn
    n0_64 = n0.to(tl.int64)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)

    k = _load_rows(K + off_b * stride_kb + off_hk * stride_kh + n0_64 * stride_kn
                   + offs_c[:, None] * stride_kn + offs_d[None, :],
                   offs_n, seqlen_k, offs_d, HEAD_DIM, BLOCK_D, True)
    v = _load_rows(V + off_b * stride_vb + off_hk * stride_vh + n0_64 * stride_vn
                   + offs_c[:, None] * stride_vn + offs_d[None, :],
                   offs_n, seqlen_k, offs_d, HEAD_DIM, BLOCK_D, True)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    sm_scale = tl.cast(sm_scale, tl.float32)  # torch.compile passes the scale as fp64
    qk_scale, softcap_log2 = score_scales(sm_scale, softcap, HAS_SOFTCAP)

    # Query ranges: [m_lo, m_full) cut by the causal diagonal (masked), [m_full, seqlen_q) not.
    # With a window, [m_lo, m_in_lo) masked, [m_in_lo, m_in_hi) unmasked, [m_in_hi, m_end) masked:
    # row i sees key j iff j - off - right <= i <= j - off + left.
    m_in_lo = n0 * 0
    m_in_hi = n0 * 0
    m_end = n0 * 0
    if HAS_WINDOW:
        m_lo = tl.maximum(n0 - causal_offset - window_right, 0) // BLOCK_M * BLOCK_M
        m_end = tl.minimum(tl.maximum(n0 + BLOCK_N - causal_offset + window_left, 0), seqlen_q)
        m_in_lo = tl.maximum(n0 + BLOCK_N - 1 - causal_offset - window_right, m_lo)
        m_in_lo = tl.minimum((m_in_lo + BLOCK_M - 1) // BLOCK_M * BLOCK_M, m_end)
        m_in_hi = tl.maximum(n0 - causal_offset + window_left + 1, 0) // BLOCK_M * BLOCK_M
        m_in_hi = tl.maximum(tl.minimum(m_in_hi, seqlen_q // BLOCK_M * BLOCK_M), m_in_lo)
        # A key block that runs past seqlen_k needs the key mask on every query block.
        m_in_lo = tl.where(n0 + BLOCK_N > seqlen_k, m_end, m_in_lo)
        m_in_hi = tl.where(n0 + BLOCK_N > seqlen_k, m_end, m_in_hi)
        m_full = m_in_lo
    elif IS_CAUSAL:
        m_lo = tl.maximum(n0 - causal_offset, 0) // BLOCK_M * BLOCK_M
        m_full = tl.maximum(n0 + BLOCK_N - 1 - causal_offset, 0)
        m_full = (m_full + BLOCK_M - 1) // BLOCK_M * BLOCK_M
        m_full = tl.maximum(tl.minimum(m_full, seqlen_q), m_lo)
    else:
        m_lo = n0 * 0
        m_full = n0 * 0
    if not HAS_WINDOW:
        # A key block that runs past seqlen_k needs the key mask on every query block.
        m_full = tl.where(n0 + BLOCK_N > seqlen_k, seqlen_q, m_full)
    # Unmasked query blocks end at the last whole block; a partial one goes masked.
    m_even = tl.maximum(m_full, seqlen_q // BLOCK_M * BLOCK_M)

    heads_here = group // group_split
    for g in range(off_s * heads_here, off_s * heads_here + heads_here):
        off_h = off_hk * group + g
        q_base = Q + off_b * stride_qb + off_h * stride_qh
        do_base = DO + off_b * stride_dob + off_h * stride_doh
        m_base = Mask
        if MASK_KIND != 0:
            m_base = Mask + off_b * stride_mb + off_h * stride_mh
        row_base = off_h * stride_lh
        slope_log2 = alibi_log2(Alibi, off_b, off_h, stride_ab, stride_ah, HAS_ALIBI)
        dk, dv = _dkdv_inner(
            dk, dv, k, v, q_base, do_base, m_base, Lse + row_base, Delta + row_base,
            m_lo, m_full, offs_n, offs_r, offs_d,
            seqlen_q, seqlen_k, causal_offset, qk_scale,
            window_left, window_right, softcap_log2, slope_log2,
            stride_qm, stride_dom, stride_mm, stride_mn,
            HEAD_DIM, BLOCK_M, BLOCK_D, True, IS_CAUSAL, MASK_KIND, DOT_PRECISION, HAS_WINDOW, HAS_SOFTCAP,
            HAS_ALIBI,
        )
        if HAS_WINDOW:
            dk, dv = _dkdv_inner(
                dk, dv, k, v, q_base, do_base, m_base, Lse + row_base, Delta + row_base,
                m_in_lo, m_in_hi, offs_n, offs_r, offs_d,
                seqlen_q, seqlen_k, causal_offset, qk_scale,
                window_left, window_right, softcap_log2, slope_log2,
                stride_qm, stride_dom, stride_mm, stride_mn,
                HEAD_DIM, BLOCK_M, BLOCK_D, False, IS_CAUSAL, MASK_KIND, DOT_PRECISION, HAS_WINDOW, HAS_SOFTCAP,
                HAS_ALIBI,
            )
            dk, dv = _dkdv_inner(
                dk, dv, k, v, q_base, do_base, m_base, Lse + row_base, Delta + row_base,
                m_in_hi, m_end, offs_n, offs_r, offs_d,
                seqlen_q, seqlen_k, causal_offset, qk_scale,
                window_left, window_right, softcap_log2, slope_log2,
                stride_qm, stride_dom, stride_mm, stride_mn,
                HEAD_DIM, BLOCK_M, BLOCK_D, True, IS_CAUSAL, MASK_KIND, DOT_PRECISION, HAS_WINDOW, HAS_SOFTCAP,
                HAS_ALIBI,
            )
        else:
            dk, dv = _dkdv_inner(
                dk, dv, k, v, q_base, do_base, m_base, Lse + row_base, Delta + row_base,
                m_full, m_even, offs_n, offs_r, offs_d,
                seqlen_q, seqlen_k, causal_offset, qk_scale,
                window_left, window_right, softcap_log2, slope_log2,
                stride_qm, stride_dom, stride_mm, stride_mn,
                HEAD_DIM, BLOCK_M, BLOCK_D, False, IS_CAUSAL, MASK_KIND, DOT_PRECISION, HAS_WINDOW, HAS_SOFTCAP,
                HAS_ALIBI,
            )
            dk, dv = _dkdv_inner(  # the partial last query block, if any
                dk, dv, k, v, q_base, do_base, m_base, Lse + row_base, Delta + row_base,
                m_even, seqlen_q, offs_n, offs_r, offs_d,
                seqlen_q, seqlen_k, causal_offset, qk_scale,
                window_left, window_right, softcap_log2, slope_log2,
                stride_qm, stride_dom, stride_mm, stride_mn,
                HEAD_DIM, BLOCK_M, BLOCK_D, True, IS_CAUSAL, MASK_KIND, DOT_PRECISION, HAS_WINDOW, HAS_SOFTCAP,
                HAS_ALIBI,
            )

    dk = dk * sm_scale
    ok = (offs_n[:, None] < seqlen_k) & (offs_d[None, :] < HEAD_DIM)
    off_out = off_hk * group_split + off_s
    tl.store(DK + off_b * stride_dkb + off_out * stride_dkh + n0_64 * stride_dkn
             + offs_c[:, None] * stride_dkn + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=ok)
    tl.store(DV + off_b * stride_dvb + off_out * stride_dvh + n0_64 * stride_dvn
             + offs_c[:, None] * stride_dvn + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=ok)


@triton.jit
def _dq_inner(
    dq, q, do, lse, delta,
    K, V, Mask,
    n_start, n_stop,
    rows, offs_c, offs_d,
    seqlen_q, seqlen_k, causal_offset, qk_scale,
    window_left, window_right, softcap_log2, slope_log2,
    stride_kn, stride_vn, stride_mm, stride_mn,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr,
    DOT_PRECISION: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
):
    # K, V point at key 0 of this (b, kv head); Mask at (row block start, key 0).
    for start_n in range(n_start, n_stop, BLOCK_N):
        cols = start_n + offs_c
        start_64 = tl.cast(start_n, tl.int64)
        k = _load_rows(K + start_64 * stride_kn + offs_c[:, None] * stride_kn + offs_d[None, :],
                       cols, seqlen_k, offs_d, HEAD_DIM, BLOCK_D, MASKED)
        v = _load_rows(V + start_64 * stride_vn + offs_c[:, None] * stride_vn + offs_d[None, :],
                       cols, seqlen_k, offs_d, HEAD_DIM, BLOCK_D, MASKED)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        if HAS_SOFTCAP:
            t = _softcap_tanh(s, HAS_SOFTCAP)
            s = t * softcap_log2
        if HAS_ALIBI:
            s = s - slope_log2 * tl.abs(rows[:, None] + causal_offset - cols[None, :]).to(tl.float32)
        if MASK_KIND != 0:
            mptrs = Mask + start_64 * stride_mn + offs_c[None, :] * stride_mn
            mok = (rows[:, None] < seqlen_q) & (cols[None, :] < seqlen_k)
            if MASK_KIND == 1:
                mv = tl.load(mptrs, mask=mok, other=0)
                s = tl.where(mv != 0, s, float("-inf"))
            else:
                mv = tl.load(mptrs, mask=mok, other=0.0)
                s = s + mv.to(tl.float32) * LOG2E
        p = tl.math.exp2(s - lse[:, None])
        if MASKED:
            valid = cols[None, :] < seqlen_k
            if IS_CAUSAL:
                valid = valid & (cols[None, :] <= rows[:, None] + causal_offset)
            if HAS_WINDOW:
                diag = rows[:, None] + causal_offset
                valid = valid & (cols[None, :] >= diag - window_left) & (cols[None, :] <= diag + window_right)
            p = tl.where(valid, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        if HAS_SOFTCAP:
            ds = ds * ((1.0 - t) * (1.0 + t))
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    return dq


@triton.jit(do_not_specialize=["num_heads", "group", "seqlen_q", "seqlen_k", "causal_offset",
                               "window_left", "window_right", "stride_lb", "stride_lh"])
def attn_bwd_dq_kernel(
    Q, K, V, Mask, DO, Lse, Delta, DQ, Alibi, CuQ, CuK,
    sm_scale,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_mb, stride_mh, stride_mm, stride_mn,
    stride_dob, stride_doh, stride_dom,
    stride_dqb, stride_dqh, stride_dqm,
    stride_lb, stride_lh, stride_ab, stride_ah,
    num_heads, group, seqlen_q, seqlen_k, causal_offset,
    window_left, window_right, softcap,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr,
    DOT_PRECISION: tl.constexpr, HAS_WINDOW: tl.constexpr = False, HAS_SOFTCAP: tl.constexpr = False,
    HAS_ALIBI: tl.constexpr = False, VARLEN: tl.constexpr = False,
):
    """Grid: (cdiv(seqlen_q, BLOCK_M) * B * num_heads,). Writes dQ of its query block.
    Lse/Delta are laid out and VARLEN / HAS_ALIBI mean what they mean in attn_fwd_kernel."""
    num_m = tl.cdiv(seqlen_q, BLOCK_M)
    pid_m = tl.program_id(0) % num_m
    pid_bh = tl.program_id(0) // num_m
    off_b = (pid_bh // num_heads).to(tl.int64)
    off_h = (pid_bh % num_heads).to(tl.int64)
    off_hk = off_h // group
    m0 = pid_m * BLOCK_M
    m0_64 = m0.to(tl.int64)
    row_base = off_b * stride_lb + off_h * stride_lh
    if VARLEN:
        q_start, k_start, seqlen_q, seqlen_k = seq_bounds(CuQ, CuK, off_b)
        if m0 >= seqlen_q:
            return
        causal_offset = seqlen_k - seqlen_q
        Q += q_start * stride_qm
        DO += q_start * stride_dom
        DQ += q_start * stride_dqm
        row_base += q_start
        K += k_start * stride_kn
        V += k_start * stride_vn
    slope_log2 = alibi_log2(Alibi, off_b, off_h, stride_ab, stride_ah, HAS_ALIBI)
    rows = m0 + tl.arange(0, BLOCK_M)
    offs_r = tl.arange(0, BLOCK_M)
    offs_c = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)

    q = _load_rows(Q + off_b * stride_qb + off_h * stride_qh + m0_64 * stride_qm
                   + offs_r[:, None] * stride_qm + offs_d[None, :],
                   rows, seqlen_q, offs_d, HEAD_DIM, BLOCK_D, True)
    do = _load_rows(DO + off_b * stride_dob + off_h * stride_doh + m0_64 * stride_dom
                    + offs_r[:, None] * stride_dom + offs_d[None, :],
                    rows, seqlen_q, offs_d, HEAD_DIM, BLOCK_D, True)
    lse = tl.load(Lse + row_base + rows, mask=rows < seqlen_q, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse) * LOG2E
    delta = tl.load(Delta + row_base + rows, mask=rows < seqlen_q, other=0.0)
    sm_scale = tl.cast(sm_scale, tl.float32)  # torch.compile passes the scale as fp64
    qk_scale, softcap_log2 = score_scales(sm_scale, softcap, HAS_SOFTCAP)

    # Key ranges as the forward's: [n_lo, n_in_lo) masked, [n_in_lo, n_in_hi) unmasked,
    # [n_in_hi, n_end) masked (n_lo = n_in_lo = 0 without a window).
    n_lo, n_in_lo, n_in_hi, n_end = key_ranges(m0, seqlen_k, causal_offset, window_left, window_right,
                                               BLOCK_M, BLOCK_N, IS_CAUSAL, HAS_WINDOW)

    k_base = K + off_b * stride_kb + off_hk * stride_kh
    v_base = V + off_b * stride_vb + off_hk * stride_vh
    m_base = Mask
    if MASK_KIND != 0:
        m_base = Mask + off_b * stride_mb + off_h * stride_mh + m0_64 * stride_mm + offs_r[:, None] * stride_mm
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if HAS_WINDOW:  # the blocks the window's lower bound cuts
        dq = _dq_inner(
            dq, q, do, lse, delta, k_base, v_base, m_base, n_lo, n_in_lo,
            rows, offs_c, offs_d, seqlen_q, seqlen_k, causal_offset, qk_scale,
            window_left, window_right, softcap_log2, slope_log2,
            stride_kn, stride_vn, stride_mm, stride_mn,
            HEAD_DIM, BLOCK_N, BLOCK_D, True, IS_CAUSAL, MASK_KIND, DOT_PRECISION, HAS_WINDOW, HAS_SOFTCAP,
            HAS_ALIBI,
        )
    dq = _dq_inner(
        dq, q, do, lse, delta, k_base, v_base, m_base, n_in_lo, n_in_hi,
        rows, offs_c, offs_d, seqlen_q, seqlen_k, causal_offset, qk_scale,
        window_left, window_right, softcap_log2, slope_log2,
        stride_kn, stride_vn, stride_mm, stride_mn,
        HEAD_DIM, BLOCK_N, BLOCK_D, False, IS_CAUSAL, MASK_KIND, DOT_PRECISION, HAS_WINDOW, HAS_SOFTCAP,
        HAS_ALIBI,
    )
    dq = _dq_inner(
        dq, q, do, lse, delta, k_base, v_base, m_base, n_in_hi, n_end,
        rows, offs_c, offs_d, seqlen_q, seqlen_k, causal_offset, qk_scale,
        window_left, window_right, softcap_log2, slope_log2,
        stride_kn, stride_vn, stride_mm, stride_mn,
        HEAD_DIM, BLOCK_N, BLOCK_D, True, IS_CAUSAL, MASK_KIND, DOT_PRECISION, HAS_WINDOW, HAS_SOFTCAP,
        HAS_ALIBI,
    )
    dq = dq * sm_scale
    tl.store(DQ + off_b * stride_dqb + off_h * stride_dqh + m0_64 * stride_dqm
             + offs_r[:, None] * stride_dqm + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=(rows[:, None] < seqlen_q) & (offs_d[None, :] < HEAD_DIM))
