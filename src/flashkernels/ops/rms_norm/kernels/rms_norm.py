"""RMSNorm forward and backward: @triton.jit code only.

Row-wise: the forward runs one program per row; the backward runs a fixed number of programs,
each over a contiguous range of rows, so that each keeps one fp32 partial sum of dW (written to
a (num_programs, N) buffer and summed by the caller: deterministic, no atomics).

``SINGLE`` (N <= BLOCK): the row is loaded once and stays in registers. Otherwise the row is
walked in BLOCK-wide chunks twice (sum of squares, then normalize); the fused residual sum is
written to H in the first walk and read back in the second, and the backward accumulates its dW
partial in the (program-owned) buffer row instead of in registers.

Modes (``MODE``): 0 "llama", 1 "gemma", 2 "none"; see ops/rms_norm/reference.py. The sum of
squares is accumulated in fp32 in every mode (an fp16 x² overflows above 256).
Row offsets are int64 (M * N may pass 2^31).
"""
import triton
import triton.language as tl


@triton.jit
def _normalize(x, w, rstd, offset, HAS_WEIGHT: tl.constexpr, MODE: tl.constexpr):
    """y in x's dtype from x (input dtype), w (weight, same dtype) and rstd (fp32 scalar)."""
    dt = x.dtype
    if MODE == 0:  # llama: (x * rstd) rounded, times (offset + w) in the input dtype
        y = (x.to(tl.float32) * rstd).to(dt)
        if HAS_WEIGHT:
            wt = (w.to(tl.float32) + offset).to(dt)
            y = (y.to(tl.float32) * wt.to(tl.float32)).to(dt)
    elif MODE == 1:  # gemma: all fp32, one rounding
        y = x.to(tl.float32) * rstd
        if HAS_WEIGHT:
            y = y * (w.to(tl.float32) + offset)
        y = y.to(dt)
    else:  # none: input-dtype arithmetic (rstd rounded to it)
        y = x * rstd.to(dt)
        if HAS_WEIGHT:
            y = y * (w.to(tl.float32) + offset).to(dt)
    return y


@triton.jit
def _load_h(X, R, H, cols, mask, HAS_RESIDUAL: tl.constexpr):
    """h = x (+ residual, summed in fp32, rounded to x's dtype and stored to H) at ``cols``."""
    x = tl.load(X + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(R + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
        tl.store(H + cols, x, mask=mask)
    return x


@triton.jit
def rms_norm_fwd_kernel(
    X, R, W, Y, H, RSTD,
    stride_x, stride_r, stride_y, stride_h,
    N, eps, offset,
    HAS_WEIGHT: tl.constexpr, HAS_RESIDUAL: tl.constexpr, MODE: tl.constexpr,
    BLOCK: tl.constexpr, SINGLE: tl.constexpr,
):
    # torch.compile passes float scalars as fp64: fp64 eps/offset would turn the row math fp64
    # and round differently from the eager call
    eps = tl.cast(eps, tl.float32)
    offset = tl.cast(offset, tl.float32)
    row = tl.program_id(0).to(tl.int64)
    X += row * stride_x
    Y += row * stride_y
    if HAS_RESIDUAL:
        R += row * stride_r
        H += row * stride_h
    cols = tl.arange(0, BLOCK)
    if SINGLE:
        mask = cols < N
        x = _load_h(X, R, H, cols, mask, HAS_RESIDUAL)
        xf = x.to(tl.float32)
        rstd = tl.math.rsqrt(tl.sum(xf * xf, axis=0) / N + eps)
        tl.store(RSTD + row, rstd)
        w = x
        if HAS_WEIGHT:
            w = tl.load(W + cols, mask=mask, other=0.0)
        y = _normalize(x, w, rstd, offset, HAS_WEIGHT, MODE)
        tl.store(Y + cols, y, mask=mask)
    else:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, N, BLOCK):
            c = start + cols
            mask = c < N
            x = _load_h(X, R, H, c, mask, HAS_RESIDUAL)
            xf = x.to(tl.float32)
            acc += xf * xf
        rstd = tl.math.rsqrt(tl.sum(acc, axis=0) / N + eps)
        tl.store(RSTD + row, rstd)
        for start in range(0, N, BLOCK):
            c = start + cols
            mask = c < N
            # the same program (and the same thread layout) wrote H above
            if HAS_RESIDUAL:
                x = tl.load(H + c, mask=mask, other=0.0)
            else:
                x = tl.load(X + c, mask=mask, other=0.0)
            w = x
            if HAS_WEIGHT:
                w = tl.load(W + c, mask=mask, other=0.0)
            y = _normalize(x, w, rstd, offset, HAS_WEIGHT, MODE)
            tl.store(Y + c, y, mask=mask)


@triton.jit
def _bwd_row(X, DY, DH, RSTD, r, stride_x, stride_dy, stride_dh, cols, mask, valid, HAS_DH: tl.constexpr):
    """Row r's x, dy, dh (dy's values without HAS_DH) as stored, and its rstd; zeros unless valid."""
    x = tl.load(X + r * stride_x + cols, mask=mask & valid, other=0.0)
    dy = tl.load(DY + r * stride_dy + cols, mask=mask & valid, other=0.0)
    dh = dy
    if HAS_DH:
        dh = tl.load(DH + r * stride_dh + cols, mask=mask & valid, other=0.0)
    rstd = tl.load(RSTD + r, mask=valid, other=0.0)
    return x, dy, dh, rstd


@triton.jit
def rms_norm_bwd_kernel(
    X, W, RSTD, DY, DH, DX, DW,
    stride_x, stride_dy, stride_dh, stride_dx, stride_dw,
    M, N, rows_per_program, offset,
    HAS_WEIGHT: tl.constexpr, HAS_DH: tl.constexpr,
    BLOCK: tl.constexpr, SINGLE: tl.constexpr, PREFETCH: tl.constexpr = 1,
    STRIDED: tl.constexpr = False,
):
    """X is the normalized input (h when there was a residual). With xhat = x * rstd and
    g = dy * (offset + w):  dx = rstd * (g - xhat * mean(g * xhat)) (+ dh),  dw += dy * xhat.
    All in fp32; casts are treated as identities (as autograd does). With a residual, dx is
    also the residual's gradient (autograd gets the one tensor for both, as from an add)."""
    offset = tl.cast(offset, tl.float32)  # fp64 under torch.compile (see the forward)
    pid = tl.program_id(0).to(tl.int64)
    # int64 loop bounds make the row index (and so every row offset) int64 on the GPU
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    cols = tl.arange(0, BLOCK)
    DW += pid * stride_dw
    if SINGLE:
        mask = cols < N
        wt = tl.full([BLOCK], 1.0, dtype=tl.float32)
        if HAS_WEIGHT:
            wt = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32) + offset
        dw = tl.zeros([BLOCK], dtype=tl.float32)
        # Row r + step (x, dy, rstd, dh) is loaded before row r is reduced and stored: two rows'
        # loads in flight per program, so a few programs per SM keep enough bytes moving.
        # PREFETCH 0 loads each row in its own iteration (the A/B of scripts/tune_ops.py).
        # STRIDED: program p takes rows p, p + P, ... (all programs walk the tensor together, as an
        # elementwise kernel's blocks do), else its own block of rows_per_program.
        if STRIDED:
            first = pid
            step = tl.num_programs(0).to(tl.int64)
            last = M + pid * 0  # int64
        else:
            first = row_start
            step = 1
            last = row_end
        x_nxt, dy_nxt, dh_nxt, rstd_nxt = _bwd_row(X, DY, DH, RSTD, first, stride_x, stride_dy, stride_dh,
                                                   cols, mask, first < last, HAS_DH)
        for r in range(first, last, step):
            if PREFETCH == 0:
                x_nxt, dy_nxt, dh_nxt, rstd_nxt = _bwd_row(X, DY, DH, RSTD, r, stride_x, stride_dy, stride_dh,
                                                           cols, mask, True, HAS_DH)
            dh = dh_nxt
            x = x_nxt.to(tl.float32)
            dy = dy_nxt.to(tl.float32)
            rstd = rstd_nxt
            if PREFETCH == 1:
                x_nxt, dy_nxt, dh_nxt, rstd_nxt = _bwd_row(X, DY, DH, RSTD, r + step, stride_x, stride_dy,
                                                           stride_dh, cols, mask, r + step < last, HAS_DH)
            xhat = x * rstd
            g = dy * wt
            if HAS_WEIGHT:
                dw += dy * xhat
            c = tl.sum(g * xhat, axis=0) / N
            dx = (g - xhat * c) * rstd
            if HAS_DH:
                dx += dh.to(tl.float32)
            tl.store(DX + r * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
        if HAS_WEIGHT:
            tl.store(DW + cols, dw, mask=mask)
    else:
        for r in range(row_start, row_end):
            rstd = tl.load(RSTD + r)
            acc = tl.zeros([BLOCK], dtype=tl.float32)
            for start in range(0, N, BLOCK):
                cc = start + cols
                mask = cc < N
                x = tl.load(X + r * stride_x + cc, mask=mask, other=0.0).to(tl.float32)
                dy = tl.load(DY + r * stride_dy + cc, mask=mask, other=0.0).to(tl.float32)
                g = dy
                if HAS_WEIGHT:
                    g = dy * (tl.load(W + cc, mask=mask, other=0.0).to(tl.float32) + offset)
                acc += g * x * rstd
            c = tl.sum(acc, axis=0) / N
            for start in range(0, N, BLOCK):
                cc = start + cols
                mask = cc < N
                x = tl.load(X + r * stride_x + cc, mask=mask, other=0.0).to(tl.float32)
                dy = tl.load(DY + r * stride_dy + cc, mask=mask, other=0.0).to(tl.float32)
                xhat = x * rstd
                g = dy
                if HAS_WEIGHT:
                    g = dy * (tl.load(W + cc, mask=mask, other=0.0).to(tl.float32) + offset)
                    # this program owns its partial row: read-modify-write without a race
                    part = tl.load(DW + cc, mask=mask, other=0.0)
                    tl.store(DW + cc, part + dy * xhat, mask=mask)
                dx = (g - xhat * c) * rstd
                if HAS_DH:
                    dx += tl.load(DH + r * stride_dh + cc, mask=mask, other=0.0).to(tl.float32)
                tl.store(DX + r * stride_dx + cc, dx.to(DX.dtype.element_ty), mask=mask)


@triton.jit
def rms_norm_dw_reduce_kernel(P, DW, num_partials, N, stride_p, BLOCK_N: tl.constexpr,
                              BLOCK_P: tl.constexpr):
    """DW[j] = sum_i P[i, j] in fp32, in a fixed order (deterministic; the same kernel eager and
    under torch.compile, whose own reduction of ``P.sum(0)`` could add in another order).
    BLOCK_P partial rows at a time are summed as a tree (tl.sum), then the tiles in sequence: the
    rounding error grows with num_partials / BLOCK_P + log2(BLOCK_P), not with num_partials."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.arange(0, BLOCK_P)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    # row * stride_p stays in int32: programs (<= 4 per SM) x N columns is far below 2^31
    for start in range(0, num_partials, BLOCK_P):
        r = start + rows
        tile = tl.load(P + r[:, None] * stride_p + cols[None, :],
                       mask=(r[:, None] < num_partials) & (cols[None, :] < N), other=0.0)
        acc += tl.sum(tile, axis=0)
    tl.store(DW + cols, acc.to(DW.dtype.element_ty), mask=cols < N)
