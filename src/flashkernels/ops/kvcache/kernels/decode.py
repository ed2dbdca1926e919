"""Attention over a KV cache (decode, chunked prefill, split-KV): @triton.jit code only.

Three kernels:

* ``kvcache_append_kernel``: writes the new keys/values k, v (B, Sn, Hkv, D) into the cache at
  positions ``cache_seqlens[b] + j`` of batch b's row (contiguous: row ``cache_batch_idx[b]`` or
  b; paged: page ``block_table[b, p // PAGE_SIZE]``, slot ``p % PAGE_SIZE``). A position outside
  the cache, a row or page index out of range: that token is not written (never clamped onto
  another token's slot).
* ``kvcache_attn_kernel``: one program per (query block, batch, kv head) x split. The query heads
  of one kv head's group are packed into the rows: packed row r is query position r // group,
  head ``hk * group + r % group``, so one K/V tile load serves every head that shares it (with
  GQA decode that is Hq / Hkv rows a tile instead of one: the kernel stays bandwidth-bound).
  Keys are addressed one by one (a paged cache maps key j to its page and slot), with int64
  offsets. Key j of batch b is visible to packed row r (query i) iff

      leftpad_b <= j < Sk_b = cache_seqlens[b] + Sn             (the row's valid keys)
      j <= i + Sk_b - Sq                                         (IS_CAUSAL, bottom-right)
      i + Sk_b - Sq - left <= j <= i + Sk_b - Sq + right         (HAS_WINDOW)

  scores: s = q k^T * sm_scale, softcap * tanh(s / softcap) (HAS_SOFTCAP), then
  ``- slope[b, h] * |i + Sk_b - Sq - j|`` (HAS_ALIBI). Online softmax in fp32 in the log2
  domain, as kernels/fwd.py of the attention op. The keys every row of the block may see,
  [lo, hi), are cut in ``num_splits`` runs of whole BLOCK_N tiles; with SPLIT each program
  writes its normalised partial output (fp32) and its lse (log2) to scratch, else the final
  output and lse (natural log) directly.
* ``kvcache_combine_kernel``: merges the splits exactly, ``out = sum_s w_s o_s / sum_s w_s`` with
  ``w_s = 2^(lse_s - max lse)``, ``lse = max + log2(sum w)``; an empty split has lse -inf
  (weight 0); a row with no key anywhere ends as output 0, lse -inf.

Lengths, leftpads, batch indices and page indices are clamped inside the kernels (Sk_b to
[0, capacity], leftpad to [0, Sk_b], row and page indices to the cache) so that no load leaves
the cache even when the launcher skipped the value checks (``check_inputs=False``).
"""
import triton
import triton.language as tl

from ...attention.kernels.fwd import LN2, LOG2E, _tanh


@triton.jit(do_not_specialize=["seqlen_new", "num_heads_kv", "capacity", "num_rows"])
def kvcache_append_kernel(
    KNew, VNew, KCache, VCache, CacheSeqlens, BatchIdx, BlockTable,
    stride_knb, stride_kns, stride_knh,
    stride_vnb, stride_vns, stride_vnh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_btb,
    seqlen_new, num_heads_kv, capacity, num_rows,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
    PAGE_SIZE: tl.constexpr, PAGED: tl.constexpr, HAS_BATCH_IDX: tl.constexpr,
):
    """Grid (B * Sn,): program (b, j) copies token j of k/v (all heads) into the cache.
    ``capacity``: positions a row holds; ``num_rows``: cache rows (contiguous) or pages."""
    pid = tl.program_id(0)
    b = pid // seqlen_new
    j = pid % seqlen_new
    pos = tl.load(CacheSeqlens + b) + j
    ok = (pos >= 0) & (pos < capacity)
    pos = tl.minimum(tl.maximum(pos, 0), capacity - 1)
    if PAGED:
        row = tl.load(BlockTable + b.to(tl.int64) * stride_btb + pos // PAGE_SIZE)
        slot = pos % PAGE_SIZE
    else:
        if HAS_BATCH_IDX:
            row = tl.load(BatchIdx + b)
        else:
            row = b
        slot = pos
    ok = ok & (row >= 0) & (row < num_rows)
    row = tl.minimum(tl.maximum(row, 0), num_rows - 1).to(tl.int64)
    slot = slot.to(tl.int64)

    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask = ok & (offs_h[:, None] < num_heads_kv) & (offs_d[None, :] < HEAD_DIM)
    b64 = b.to(tl.int64)
    j64 = j.to(tl.int64)
    k = tl.load(KNew + b64 * stride_knb + j64 * stride_kns + offs_h[:, None] * stride_knh + offs_d[None, :],
                mask=mask)
    tl.store(KCache + row * stride_kb + slot * stride_ks + offs_h[:, None] * stride_kh + offs_d[None, :],
             k, mask=mask)
    v = tl.load(VNew + b64 * stride_vnb + j64 * stride_vns + offs_h[:, None] * stride_vnh + offs_d[None, :],
                mask=mask)
    tl.store(VCache + row * stride_vb + slot * stride_vs + offs_h[:, None] * stride_vh + offs_d[None, :],
             v, mask=mask)


@triton.jit(do_not_specialize=["num_heads_kv", "group", "seqlen_q", "seqlen_new", "capacity", "num_rows",
                               "window_left", "window_right", "num_splits"])
def kvcache_attn_kernel(
    Q, K, V, Out, Lse, OPart, LPart,
    CacheSeqlens, BatchIdx, Leftpad, BlockTable, Alibi,
    sm_scale, softcap,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_ob, stride_os, stride_oh,
    stride_btb, stride_ab,
    num_heads_kv, group, seqlen_q, seqlen_new, capacity, num_rows,
    window_left, window_right, num_splits,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PAGE_SIZE: tl.constexpr, PAGED: tl.constexpr, HAS_BATCH_IDX: tl.constexpr,
    HAS_LEFTPAD: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, SPLIT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Grid (cdiv(Sq * group, BLOCK_M) * B * Hkv, num_splits); see the module docstring.

    Q, Out: (B, Sq, Hq, D) by strides (unit last). K, V: (rows, S, Hkv, D) by strides, rows =
    cache rows or pages. Lse: contiguous (B, Hq, Sq), natural log. OPart / LPart (SPLIT):
    contiguous (num_splits, B * Hkv, Sq * group, HEAD_DIM) fp32 / (num_splits, B * Hkv,
    Sq * group) fp32, lse in log2. Alibi: (B, Hq) fp32 with batch stride ``stride_ab`` (0 for
    per-head slopes). HAS_WINDOW bounds are >= 0 (the launcher makes an unbounded side large).
    """
    rows_total = seqlen_q * group
    num_m = tl.cdiv(rows_total, BLOCK_M)
    pid_m = tl.program_id(0) % num_m
    pid_bh = tl.program_id(0) // num_m
    split = tl.program_id(1)
    b = pid_bh // num_heads_kv
    hk = pid_bh % num_heads_kv
    b64 = b.to(tl.int64)
    hk64 = hk.to(tl.int64)

    # This batch element's keys: [key_lo, seqlen_k), clamped to the cache.
    seqlen_k = tl.load(CacheSeqlens + b) + seqlen_new
    seqlen_k = tl.minimum(tl.maximum(seqlen_k, 0), capacity)
    key_lo = seqlen_k * 0
    if HAS_LEFTPAD:
        key_lo = tl.minimum(tl.maximum(tl.load(Leftpad + b), 0), seqlen_k)
    if PAGED:
        k_row = b64 * 0
        v_row = b64 * 0
    else:
        if HAS_BATCH_IDX:
            cb = tl.load(BatchIdx + b)
            cb = tl.minimum(tl.maximum(cb, 0), num_rows - 1).to(tl.int64)
        else:
            cb = b64
        k_row = cb * stride_kb
        v_row = cb * stride_vb

    m0 = pid_m * BLOCK_M
    offs_r = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_r < rows_total
    d_ok = offs_d < HEAD_DIM
    qi = offs_r // group
    qh = hk * group + offs_r % group
    diag = qi + seqlen_k - seqlen_q  # query i's causal diagonal, in key positions

    # Keys some row of this block may see: [lo, hi).
    lo = key_lo
    hi = seqlen_k
    i_first = m0 // group
    i_last = tl.minimum((m0 + BLOCK_M - 1) // group, seqlen_q - 1)
    if IS_CAUSAL:
        hi = tl.minimum(hi, i_last + seqlen_k - seqlen_q + 1)
    if HAS_WINDOW:
        hi = tl.minimum(hi, i_last + seqlen_k - seqlen_q + window_right + 1)
        lo = tl.maximum(lo, i_first + seqlen_k - seqlen_q - window_left)
    # This split's run of whole tiles (tiles aligned to BLOCK_N in key positions).
    lo_tile = lo // BLOCK_N * BLOCK_N
    n_tiles = tl.cdiv(tl.maximum(hi - lo_tile, 0), BLOCK_N)
    tiles_per_split = tl.cdiv(n_tiles, num_splits)
    n_start = lo_tile + split * tiles_per_split * BLOCK_N
    n_stop = tl.minimum(n_start + tiles_per_split * BLOCK_N, hi)

    q_ptrs = Q + b64 * stride_qb + qi.to(tl.int64)[:, None] * stride_qs + qh.to(tl.int64)[:, None] * stride_qh \
        + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)

    softcap_log2 = 0.0
    if HAS_SOFTCAP:  # tanh takes the natural-scale scores over the cap; log2(e) goes after it
        qk_scale = tl.cast(sm_scale, tl.float32) / tl.cast(softcap, tl.float32)
        softcap_log2 = tl.cast(softcap, tl.float32) * LOG2E
    else:
        qk_scale = tl.cast(sm_scale, tl.float32) * LOG2E
    slope = tl.zeros([BLOCK_M], dtype=tl.float32)
    if HAS_ALIBI:
        slope = tl.load(Alibi + b64 * stride_ab + qh, mask=row_ok, other=0.0).to(tl.float32) * LOG2E

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    k_head = K + hk64 * stride_kh
    v_head = V + hk64 * stride_vh
    for start_n in range(n_start, n_stop, BLOCK_N):
        cols = start_n + offs_n
        in_range = (cols >= lo) & (cols < hi)
        if PAGED:
            page = tl.load(BlockTable + b64 * stride_btb + cols // PAGE_SIZE, mask=in_range, other=0)
            page = tl.minimum(tl.maximum(page, 0), num_rows - 1).to(tl.int64)
            slot = (cols % PAGE_SIZE).to(tl.int64)
            k_off = page * stride_kb + slot * stride_ks
            v_off = page * stride_vb + slot * stride_vs
        else:
            k_off = k_row + cols.to(tl.int64) * stride_ks
            v_off = v_row + cols.to(tl.int64) * stride_vs
        kv_mask = in_range[:, None] & d_ok[None, :]
        k = tl.load(k_head + k_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        if HAS_SOFTCAP:  # qk_scale is sm_scale / softcap here
            s = _tanh(s) * softcap_log2
        if HAS_ALIBI:
            s = s - slope[:, None] * tl.abs(diag[:, None] - cols[None, :]).to(tl.float32)
        valid = in_range[None, :]  # [lo, hi) lies inside [key_lo, seqlen_k)
        if IS_CAUSAL:
            valid = valid & (cols[None, :] <= diag[:, None])
        if HAS_WINDOW:
            valid = valid & (cols[None, :] >= diag[:, None] - window_left) \
                & (cols[None, :] <= diag[:, None] + window_right)
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # no -inf - -inf = NaN
        p = tl.math.exp2(s - m_ref[:, None])
        alpha = tl.math.exp2(m_i - m_ref)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_head + v_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse2 = tl.where(empty, float("-inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    io_mask = row_ok[:, None] & d_ok[None, :]
    if SPLIT:
        num_bh = tl.num_programs(0) // num_m
        part = (split.to(tl.int64) * num_bh + pid_bh) * rows_total + offs_r
        tl.store(OPart + part[:, None] * HEAD_DIM + offs_d[None, :], out, mask=io_mask)
        tl.store(LPart + part, lse2, mask=row_ok)
    else:
        o_ptrs = Out + b64 * stride_ob + qi.to(tl.int64)[:, None] * stride_os \
            + qh.to(tl.int64)[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=io_mask)
        num_heads = num_heads_kv * group
        tl.store(Lse + (b64 * num_heads + qh) * seqlen_q + qi, lse2 * LN2, mask=row_ok)


@triton.jit(do_not_specialize=["num_heads_kv", "group", "seqlen_q", "num_splits"])
def kvcache_combine_kernel(
    OPart, LPart, Out, Lse,
    stride_ob, stride_os, stride_oh,
    num_heads_kv, group, seqlen_q, num_splits,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """Grid (B * Hkv, cdiv(Sq * group, BLOCK_R)): merge the splits' partial results."""
    pid_bh = tl.program_id(0).to(tl.int64)
    rows_total = seqlen_q * group
    num_bh = tl.num_programs(0)
    offs_r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_r < rows_total
    io_mask = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)

    m = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    for s in range(0, num_splits):
        part = (s * num_bh + pid_bh) * rows_total + offs_r
        m = tl.maximum(m, tl.load(LPart + part, mask=row_ok, other=float("-inf")))
    m_ref = tl.where(m == float("-inf"), 0.0, m)
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    den = tl.zeros([BLOCK_R], dtype=tl.float32)
    for s in range(0, num_splits):
        part = (s * num_bh + pid_bh) * rows_total + offs_r
        w = tl.math.exp2(tl.load(LPart + part, mask=row_ok, other=float("-inf")) - m_ref)
        o = tl.load(OPart + part[:, None] * HEAD_DIM + offs_d[None, :], mask=io_mask & (w[:, None] > 0), other=0.0)
        acc += w[:, None] * o
        den += w
    empty = den == 0.0
    out = acc / tl.where(empty, 1.0, den)[:, None]
    lse = tl.where(empty, float("-inf"), (m_ref + tl.math.log2(tl.where(empty, 1.0, den))) * LN2)

    b = pid_bh // num_heads_kv
    hk = pid_bh % num_heads_kv
    qi = (offs_r // group).to(tl.int64)
    qh = (hk * group + offs_r % group).to(tl.int64)
    o_ptrs = Out + b * stride_ob + qi[:, None] * stride_os + qh[:, None] * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=io_mask)
    tl.store(Lse + (b * (num_heads_kv * group) + qh) * seqlen_q + qi, lse, mask=row_ok)
