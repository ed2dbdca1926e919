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
  K/V tiles are addressed with int64 offsets, per key in the first version, per tile or page with
  FAST (constexpr; also unmasked loads for the tiles every row sees whole) or by tensor
  descriptor (USE_TMA), see ``_kv_tile``. Key j of batch b is visible to packed row r (query i) iff

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


@triton.jit
def _kv_tile(acc, l_i, m_i, q, start_n, offs_n, offs_d, d_ok, lo, hi, diag, slope, qk_scale, softcap_log2,
             k_head, v_head, k_row, v_row, k_desc, v_desc, BlockTable, bt_row, num_rows,
             stride_kb, stride_ks, stride_vb, stride_vs, window_left, window_right,
             HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr,
             PAGED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
             HAS_ALIBI: tl.constexpr, DOT_PRECISION: tl.constexpr, MASKED: tl.constexpr, FAST: tl.constexpr,
             KV_EVICT: tl.constexpr, USE_TMA: tl.constexpr):
    """One BLOCK_N tile of keys [start_n, start_n + BLOCK_N): online-softmax update of
    (acc, l_i, m_i). MASKED: the tile may hold keys outside [lo, hi) or cut by the causal /
    window bounds (loads and scores masked); else every key of the tile is visible to every row.

    Addressing (constexpr): FAST=False is the first version's (one page-table load and one int64
    offset a key). FAST: contiguous tiles from one scalar int64 base plus int32 key offsets; paged
    with PAGE_SIZE % BLOCK_N == 0 one page index a tile (a tile never crosses a page: tiles are
    BLOCK_N-aligned), with BLOCK_N % PAGE_SIZE == 0 a vector of BLOCK_N / PAGE_SIZE indices
    broadcast to the keys; other page sizes per key. USE_TMA: K/V tiles by tensor descriptor
    (contiguous, or paged with PAGE_SIZE % BLOCK_N == 0; the launcher checks the alignment);
    TMA cannot mask, so a masked tile's V rows outside [lo, hi) are zeroed in registers (a
    stale NaN there would survive p = 0)."""
    cols = start_n + offs_n
    in_range = (cols >= lo) & (cols < hi)
    if USE_TMA:
        if PAGED:
            page = tl.load(BlockTable + bt_row + start_n // PAGE_SIZE)
            page = tl.minimum(tl.maximum(page, 0), num_rows - 1)
            key0 = page * PAGE_SIZE + start_n % PAGE_SIZE
        else:
            key0 = start_n
        k = k_desc.load([key0, 0])
    else:
        if PAGED:
            if FAST and PAGE_SIZE % BLOCK_N == 0:
                page = tl.load(BlockTable + bt_row + start_n // PAGE_SIZE)
                page = tl.minimum(tl.maximum(page, 0), num_rows - 1).to(tl.int64)
                slot0 = tl.cast(start_n % PAGE_SIZE, tl.int64)  # start_n: a Python int under the interpreter
                k_off = (page * stride_kb + slot0 * stride_ks) + offs_n * stride_ks
                v_off = (page * stride_vb + slot0 * stride_vs) + offs_n * stride_vs
            elif FAST and BLOCK_N % PAGE_SIZE == 0:
                NUM_PAGES: tl.constexpr = BLOCK_N // PAGE_SIZE
                pidx = start_n // PAGE_SIZE + tl.arange(0, NUM_PAGES)
                if MASKED:  # keys past hi may lie past the table's row
                    pages = tl.load(BlockTable + bt_row + pidx, mask=pidx * PAGE_SIZE < hi, other=0)
                else:
                    pages = tl.load(BlockTable + bt_row + pidx)
                pages = tl.minimum(tl.maximum(pages, 0), num_rows - 1).to(tl.int64)
                page = tl.reshape(tl.broadcast_to(pages[:, None], (NUM_PAGES, PAGE_SIZE)), (BLOCK_N,))
                slot = offs_n % PAGE_SIZE  # start_n is a multiple of PAGE_SIZE
                k_off = page * stride_kb + slot * stride_ks
                v_off = page * stride_vb + slot * stride_vs
            else:
                if MASKED:
                    page = tl.load(BlockTable + bt_row + cols // PAGE_SIZE, mask=in_range, other=0)
                else:
                    page = tl.load(BlockTable + bt_row + cols // PAGE_SIZE)
                page = tl.minimum(tl.maximum(page, 0), num_rows - 1).to(tl.int64)
                slot = (cols % PAGE_SIZE).to(tl.int64)
                k_off = page * stride_kb + slot * stride_ks
                v_off = page * stride_vb + slot * stride_vs
        else:
            if FAST:
                k_off = (k_row + tl.cast(start_n, tl.int64) * stride_ks) + offs_n * stride_ks
                v_off = (v_row + tl.cast(start_n, tl.int64) * stride_vs) + offs_n * stride_vs
            else:
                k_off = k_row + cols.to(tl.int64) * stride_ks
                v_off = v_row + cols.to(tl.int64) * stride_vs
        k_ptrs = k_head + k_off[:, None] + offs_d[None, :]
        v_ptrs = v_head + v_off[:, None] + offs_d[None, :]
        if MASKED:
            if FAST and BLOCK_D == HEAD_DIM:
                kv_mask = in_range[:, None]
            else:
                kv_mask = in_range[:, None] & d_ok[None, :]
            k = tl.load(k_ptrs, mask=kv_mask, other=0.0, eviction_policy=KV_EVICT)
        elif BLOCK_D == HEAD_DIM:
            k = tl.load(k_ptrs, eviction_policy=KV_EVICT)
        else:
            k = tl.load(k_ptrs, mask=d_ok[None, :], other=0.0, eviction_policy=KV_EVICT)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    if HAS_SOFTCAP:  # qk_scale is sm_scale / softcap here
        s = _tanh(s) * softcap_log2
    if HAS_ALIBI:
        s = s - slope[:, None] * tl.abs(diag[:, None] - cols[None, :]).to(tl.float32)
    if MASKED:
        valid = in_range[None, :]  # [lo, hi) lies inside [key_lo, seqlen_k)
        if IS_CAUSAL:
            valid = valid & (cols[None, :] <= diag[:, None])
        if HAS_WINDOW:
            valid = valid & (cols[None, :] >= diag[:, None] - window_left) \
                & (cols[None, :] <= diag[:, None] + window_right)
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # no -inf - -inf = NaN
    else:  # every score finite: so is the max
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_ref = m_new
    p = tl.math.exp2(s - m_ref[:, None])
    alpha = tl.math.exp2(m_i - m_ref)
    l_i = l_i * alpha + tl.sum(p, 1)
    if USE_TMA:
        v = v_desc.load([key0, 0])
        if MASKED:
            v = tl.where(in_range[:, None], v, 0.0)
    elif MASKED:
        v = tl.load(v_ptrs, mask=kv_mask, other=0.0, eviction_policy=KV_EVICT)
    elif BLOCK_D == HEAD_DIM:
        v = tl.load(v_ptrs, eviction_policy=KV_EVICT)
    else:
        v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0, eviction_policy=KV_EVICT)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


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
    DOT_PRECISION: tl.constexpr, FAST: tl.constexpr = False, KV_EVICT: tl.constexpr = "",
    USE_TMA: tl.constexpr = False,
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
    bt_row = b64 * stride_btb
    if USE_TMA:  # see _kv_tile; the launcher checks 16-byte strides and bases
        tl.static_assert(FAST and (not PAGED or PAGE_SIZE % BLOCK_N == 0))
        if PAGED:  # pages back to back (stride_kb == PAGE_SIZE * stride_ks): rows of one 2-d view
            k_desc = tl.make_tensor_descriptor(k_head, shape=[num_rows * PAGE_SIZE, HEAD_DIM], strides=[stride_ks, 1],
                                               block_shape=[BLOCK_N, BLOCK_D])
            v_desc = tl.make_tensor_descriptor(v_head, shape=[num_rows * PAGE_SIZE, HEAD_DIM], strides=[stride_vs, 1],
                                               block_shape=[BLOCK_N, BLOCK_D])
        else:  # keys past the capacity read as zeros
            k_desc = tl.make_tensor_descriptor(k_head + k_row, shape=[capacity, HEAD_DIM], strides=[stride_ks, 1],
                                               block_shape=[BLOCK_N, BLOCK_D])
            v_desc = tl.make_tensor_descriptor(v_head + v_row, shape=[capacity, HEAD_DIM], strides=[stride_vs, 1],
                                               block_shape=[BLOCK_N, BLOCK_D])
    else:
        k_desc = k_head
        v_desc = v_head
    if FAST:
        # Tiles every row sees whole: [full_lo, full_hi) in key positions. They run unmasked
        # between the masked tiles at the split's edges: [n_start, a) masked, [a, b) not,
        # [b, n_stop) masked (a, b on the tile grid; each run may be empty).
        full_lo = lo
        full_hi = hi
        if IS_CAUSAL:
            full_hi = tl.minimum(full_hi, i_first + seqlen_k - seqlen_q + 1)
        if HAS_WINDOW:
            full_hi = tl.minimum(full_hi, i_first + seqlen_k - seqlen_q + window_right + 1)
            full_lo = tl.maximum(full_lo, i_last + seqlen_k - seqlen_q - window_left)
        a = tl.minimum(tl.maximum(tl.cdiv(full_lo, BLOCK_N) * BLOCK_N, n_start), n_stop)
        b = tl.maximum(a, tl.minimum(tl.maximum(full_hi, 0) // BLOCK_N * BLOCK_N, n_stop))
    else:  # the first version: every tile masked
        a = n_stop
        b = n_stop
    for run in tl.static_range(3 if FAST else 1):  # masked head, unmasked body, masked tail
        run_lo = n_start if run == 0 else (a if run == 1 else b)
        run_hi = a if run == 0 else (b if run == 1 else n_stop)
        for start_n in range(run_lo, run_hi, BLOCK_N):
            acc, l_i, m_i = _kv_tile(
                acc, l_i, m_i, q, start_n, offs_n, offs_d, d_ok, lo, hi, diag, slope, qk_scale, softcap_log2,
                k_head, v_head, k_row, v_row, k_desc, v_desc, BlockTable, bt_row, num_rows,
                stride_kb, stride_ks, stride_vb, stride_vs, window_left, window_right,
                HEAD_DIM, BLOCK_D, BLOCK_N, PAGE_SIZE, PAGED, IS_CAUSAL, HAS_WINDOW, HAS_SOFTCAP, HAS_ALIBI,
                DOT_PRECISION, run != 1, FAST, KV_EVICT, USE_TMA)

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
    HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_DC: tl.constexpr,
):
    """Grid (B * Hkv * Sq * group, cdiv(HEAD_DIM, BLOCK_DC)): program (row, c) merges columns
    [c * BLOCK_DC, (c + 1) * BLOCK_DC) of one packed row's splits, all BLOCK_S >= num_splits of
    them in one load (no loop over the splits: the first version looped over them in B * Hkv
    programs, 17 us of a 197 us decode step at B = 1 with 33 splits). Column block 0 writes the lse."""
    row = tl.program_id(0).to(tl.int64)
    rows_total = seqlen_q * group
    pid_bh = row // rows_total
    r = row % rows_total
    num_bh = tl.num_programs(0) // rows_total
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.program_id(1) * BLOCK_DC + tl.arange(0, BLOCK_DC)
    s_ok = offs_s < num_splits
    part = (offs_s * num_bh + pid_bh) * rows_total + r
    ls = tl.load(LPart + part, mask=s_ok, other=float("-inf"))
    m = tl.max(ls, 0)
    m_ref = tl.where(m == float("-inf"), 0.0, m)
    w = tl.math.exp2(ls - m_ref)  # 0 for empty splits and the padding
    den = tl.sum(w, 0)
    o = tl.load(OPart + part[:, None] * HEAD_DIM + offs_d[None, :],
                mask=(w > 0)[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    acc = tl.sum(w[:, None] * o, 0)
    empty = den == 0.0
    out = acc / tl.where(empty, 1.0, den)

    b = pid_bh // num_heads_kv
    hk = pid_bh % num_heads_kv
    qi = r // group
    qh = hk * group + r % group
    tl.store(Out + b * stride_ob + qi * stride_os + qh * stride_oh + offs_d, out.to(Out.dtype.element_ty),
             mask=offs_d < HEAD_DIM)
    if tl.program_id(1) == 0:
        lse = tl.where(empty, float("-inf"), (m_ref + tl.math.log2(tl.where(empty, 1.0, den))) * LN2)
        tl.store(Lse + (b * (num_heads_kv * group) + qh) * seqlen_q + qi, lse)
