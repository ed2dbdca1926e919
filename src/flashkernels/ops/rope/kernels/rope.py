"""Rotary position embedding, forward and backward: @triton.jit code only.

One program rotates BLOCK_H heads of one token (b, s) of one tensor; with HAS_K the grid's
second axis runs over the head blocks of x (q) and then those of k, so q and k go in one launch.
Tensors are seen as (B, S, H, D) through explicit strides (the last dim has stride 1), so
transposed and packed-qkv views need no copy. Offsets in int64. Arithmetic in fp32.

For rotary pair j < R_HALF, with elements x1, x2 (x[j], x[j + R_HALF] in the GPT-NeoX layout,
x[2j], x[2j + 1] when INTERLEAVED) and table entries c1, s1 (column j) and c2, s2:

    o1 = x1 * c1 - x2 * s1
    o2 = x2 * c2 + x1 * s2

c2, s2 = column j + R_HALF of a full-width (Hugging Face, duplicated) table when FULL_TABLE,
else c1, s1 (flash-attn's half-width table). CONJ computes the transpose (the backward, the
rotation by -theta): s1 <- -s2, s2 <- -s1. Dims [2 * R_HALF, D) are copied unchanged.

Positions (POS_MODE): 0 s + offset; 1 s + offset + POS[b] (per-batch seqlen_offsets);
2 POS[b, s] (position_ids).
"""
import triton
import triton.language as tl


@triton.jit
def _rotate_heads(X, OUT, row_x, row_o, sxh, soh, h0, H, c1, s1, c2, s2, R_HALF, D,
                  INTERLEAVED: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr,
                  BLOCK_P: tl.constexpr):
    h = h0 + tl.arange(0, BLOCK_H)
    mh = h < H
    j = tl.arange(0, BLOCK_R)
    m = mh[:, None] & (j < R_HALF)[None, :]
    if INTERLEAVED:
        d1 = 2 * j
        d2 = 2 * j + 1
    else:
        d1 = j
        d2 = j + R_HALF
    hx = X + row_x + h.to(tl.int64)[:, None] * sxh
    ho = OUT + row_o + h.to(tl.int64)[:, None] * soh
    x1 = tl.load(hx + d1[None, :], mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(hx + d2[None, :], mask=m, other=0.0).to(tl.float32)
    o1 = x1 * c1[None, :] - x2 * s1[None, :]
    o2 = x2 * c2[None, :] + x1 * s2[None, :]
    tl.store(ho + d1[None, :], o1.to(OUT.dtype.element_ty), mask=m)
    tl.store(ho + d2[None, :], o2.to(OUT.dtype.element_ty), mask=m)
    if BLOCK_P > 0:  # the pass-through dims (partial rotary): copied, bit for bit
        p = 2 * R_HALF + tl.arange(0, BLOCK_P)
        mp = mh[:, None] & (p < D)[None, :]
        tl.store(ho + p[None, :], tl.load(hx + p[None, :], mask=mp), mask=mp)


@triton.jit
def rope_kernel(X, OUT, K, KOUT, COS, SIN, POS,
                S, H, HK, D, R_HALF, offset, s_max,
                sxb, sxs, sxh, sob, sos, soh,
                skb, sks, skh, skob, skos, skoh,
                scb, scs, spb, sps,
                POS_MODE: tl.constexpr, INTERLEAVED: tl.constexpr, FULL_TABLE: tl.constexpr,
                CONJ: tl.constexpr, HAS_K: tl.constexpr,
                BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr):
    tok = tl.program_id(0).to(tl.int64)
    hb = tl.program_id(1)
    b = tok // S
    s = tok % S
    if POS_MODE == 0:
        pos = s + offset
    elif POS_MODE == 1:
        pos = s + offset + tl.load(POS + b * spb).to(tl.int64)
    else:
        pos = tl.load(POS + b * spb + s * sps).to(tl.int64)
    # Checked by the API (unless check_inputs=False): clamped so no read leaves the tables.
    pos = tl.minimum(tl.maximum(pos, 0), s_max - 1)

    j = tl.arange(0, BLOCK_R)
    mj = j < R_HALF
    tab = b * scb + pos * scs
    c1 = tl.load(COS + tab + j, mask=mj, other=0.0).to(tl.float32)
    s1 = tl.load(SIN + tab + j, mask=mj, other=0.0).to(tl.float32)
    if FULL_TABLE:
        c2 = tl.load(COS + tab + R_HALF + j, mask=mj, other=0.0).to(tl.float32)
        s2 = tl.load(SIN + tab + R_HALF + j, mask=mj, other=0.0).to(tl.float32)
    else:
        c2 = c1
        s2 = s1
    if CONJ:
        t = s1
        s1 = -s2
        s2 = -t

    if HAS_K:
        nxb = tl.cdiv(H, BLOCK_H)
        if hb < nxb:
            _rotate_heads(X, OUT, b * sxb + s * sxs, b * sob + s * sos, sxh, soh, hb * BLOCK_H, H,
                          c1, s1, c2, s2, R_HALF, D, INTERLEAVED, BLOCK_H, BLOCK_R, BLOCK_P)
        else:
            _rotate_heads(K, KOUT, b * skb + s * sks, b * skob + s * skos, skh, skoh,
                          (hb - nxb) * BLOCK_H, HK, c1, s1, c2, s2, R_HALF, D, INTERLEAVED,
                          BLOCK_H, BLOCK_R, BLOCK_P)
    else:
        _rotate_heads(X, OUT, b * sxb + s * sxs, b * sob + s * sos, sxh, soh, hb * BLOCK_H, H,
                      c1, s1, c2, s2, R_HALF, D, INTERLEAVED, BLOCK_H, BLOCK_R, BLOCK_P)
