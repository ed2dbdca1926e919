"""The Gluon forward's online-softmax step (kernels/fwd_hopper.py) with its score features
(softcap, ALiBi, causal and window masks): the semantics the Gluon backward (kernels/bwd_hopper.py)
recomputes P from, in the same order and rounding."""
from .gluon_base import LAZY_THRESHOLD, _tanh_approx, gl, gluon


@gluon.constexpr_function
def _softcap_static(softcap):
    """SOFTCAP's encoding: False off; True on; 2 on with the row max fixed at its bound (see
    _softmax_step)."""
    return not isinstance(softcap, bool) and softcap == 2


@gluon.jit
def _softmax_step(s, m_i, l_i, qk_scale, cap_scale, slope, colbias, offs_m, m0, diag, diag0, win_lo, win_hi,
                  mask_lo, mask_hi, start_n, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr, SOFTCAP: gl.constexpr,
                  ALIBI: gl.constexpr, WINDOW: gl.constexpr, s_layout: gl.constexpr, ALIBI_MMA: gl.constexpr = False):
    """Online-softmax update with scores s (raw q·kᵀ) of key block start_n: (p, alpha, m, l),
    m in log2 units. offs_m: the rows, m0 the first; diag = offs_m + causal_offset (for ALiBi), diag0
    the first row's.

    The running max m is lazy (gluon_base.LAZY_THRESHOLD): it moves only when a block's max passes it
    by more than 8 (log2 units), so p <= 2^8 and on most blocks alpha = 1 exactly, which lets the
    caller skip O's rescale (gluon_base._rescale_lazy); out = O / l and lse = m + log2 l hold for any
    m (the backward recomputes P from lse alone).

    Plain: the row max is taken over the raw products and qk_scale = scale·log2 e goes into the
    exponent's FMA. SOFTCAP: s = tanh(s · cap_scale) (cap_scale = scale / softcap) first, with
    qk_scale = softcap·log2 e (the cap is > 0: the max still commutes with the scaling). ALIBI:
    s - slope·|diag - j| (slope: the ALiBi slope over the scores' scale, so that qk_scale times it
    is the slope in log2 units), before the max. On a block whose keys all lie on one side of every
    row's diagonal the bias splits into a column part ±slope·(j - start_n) (colbias, the columns'
    slope·c, one add a score) and a row part ±slope·(start_n - diag) that goes into the row max and
    the exponent's per-row offset (one op a row, not a score); only the blocks a diagonal crosses
    take |diag - j| per score. Not with SOFTCAP or WINDOW (VARLEN builds are WINDOW's): their
    registers spilled with it (12-36 B), and there every score takes |diag - j|.
    ALIBI = 2 with CAUSAL (launch.HOPPER_FWD_ALIBI_CAUSAL_SPLIT): every key a row sees lies at or before
    its diagonal and the rest are masked below, so the blocks the diagonal crosses take the "before"
    form too, and no block takes |diag - j| per score.
    ALIBI_MMA (the split's builds): s came with the column part from the tensor cores already
    (fwd_hopper._ws_qk: + slope·c on the blocks not after the diagonal, - after), so the split's
    blocks add nothing a score, and a block the diagonal crosses takes s - slope·max(dn, 2c - dn)
    (= s - slope·c - slope·|dn - c|).
    Every build rounds the bias alike (kernels whose results the tests compare bitwise: the
    persistent and grid launches): s - slope·|diag - j| is an explicit fma, and colbias comes
    rounded (gluon_base._mul_rn); left to LLVM, a product was fused into its add in one build and
    not in another.
    SOFTCAP = 2 (the static max): t = tanh(...) <= 1, so softcap·log2 e bounds every row's max; m
    stays there, p = exp2((t - 1)·softcap·log2 e), alpha = 1, and no block takes a row max (the
    max reduction and its shuffles leave the softmax's chain: D = 128 bf16 fast path 538 -> 446
    instructions, plain 410, scripts/compile_check.py --sass; at softcap 30 +4% at D = 128, +12-18%
    at D = 256 causal on the H100, launch.HOPPER_FWD_SOFTCAP_STATIC_MAX's note). The same as the running max up to rounding while p of a row's
    largest score stays a normal float in P's dtype (launch: bf16, softcap <= 40, p >= 2^-116; in
    fp16 it would flush) and every row sees a key (no WINDOW; no SINK or ALIBI either).
    CAUSAL (causal_offset 0): keys j > i masked on the blocks the diagonal may cut.
    WINDOW: keys outside [win_lo, win_hi] (per row) masked on the blocks outside
    [mask_lo, mask_hi] (those some row does not fully see); a row may see nothing yet (m = -inf):
    the exponent is then taken against 0, as kernels/fwd.py does."""
    if SOFTCAP:
        s = _tanh_approx(s * cap_scale)
    if WINDOW:
        offs_n = start_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
    ALIBI_SPLIT: gl.constexpr = ALIBI and not (SOFTCAP or WINDOW)  # (with them the split spilled: 12-36 B)
    if ALIBI and not ALIBI_SPLIT:
        # diag - j exactly (integers below 2^24 in fp32); the bias in the raw scores' units
        d = (diag - start_n).to(gl.float32)[:, None] - \
            gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout)).to(gl.float32)[None, :]
        s = gl.fma(-slope, gl.abs(d), s)  # (written as the fma LLVM makes of s - slope · |d|: see below)
    if ALIBI_SPLIT and CAUSAL and ALIBI == 2:  # (causal, ALIBI = 2: the "before" form on every block)
        dn = (diag - start_n).to(gl.float32)
        if not ALIBI_MMA:
            s = s + colbias[None, :]
        row_bias = -slope * dn
    elif ALIBI_SPLIT:
        dn = (diag - start_n).to(gl.float32)  # row i's diagonal from the block's first key
        if start_n + BLOCK_N - 1 <= diag0:  # every key at or before every row's diagonal
            if not ALIBI_MMA:
                s = s + colbias[None, :]
            row_bias = -slope * dn
        elif start_n >= diag0 + s.shape[0] - 1:  # every key at or after every row's diagonal
            if not ALIBI_MMA:
                s = s - colbias[None, :]
            row_bias = slope * dn
        else:
            c = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout)).to(gl.float32)[None, :]
            if ALIBI_MMA:  # (s holds + slope·c)
                s = gl.fma(-slope, gl.maximum(dn[:, None], 2.0 * c - dn[:, None]), s)
            else:
                s = gl.fma(-slope, gl.abs(dn[:, None] - c), s)
            row_bias = dn * 0.0
    if CAUSAL:  # (top-left = bottom-right: causal_offset 0)
        if start_n + BLOCK_N > m0:  # only the blocks the diagonal cuts pay for the mask
            offs_n = start_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
            s = gl.where(offs_n[None, :] <= offs_m[:, None], s, float("-inf"))
    if WINDOW:
        if (start_n < mask_lo) | (start_n > mask_hi):
            s = gl.where((offs_n[None, :] >= win_lo[:, None]) & (offs_n[None, :] <= win_hi[:, None]), s,
                         float("-inf"))
    if _softcap_static(SOFTCAP):  # (no row max: the bound, p = 2^((t - 1)·softcap·log2 e))
        p = gl.exp2(s * qk_scale - qk_scale)
        return p, gl.zeros_like(l_i) + 1.0, gl.zeros_like(l_i) + qk_scale, l_i + gl.sum(p, axis=1)
    if ALIBI_SPLIT:
        m_new = gl.maximum(m_i, (gl.max(s, axis=1) + row_bias) * qk_scale)
    else:
        m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
    # lazy: a row keeps its max until the block's passes it by more than LAZY_THRESHOLD (then alpha = 1)
    m_new = gl.where(m_new > m_i + LAZY_THRESHOLD, m_new, m_i)
    m_ref = m_new
    if WINDOW:  # a row that has seen no key yet: exp2(-inf - 0) = 0, not NaN
        m_ref = gl.where(m_new == float("-inf"), 0.0, m_new)
    if ALIBI_SPLIT:  # the row part of the bias, in the exponent's per-row offset
        p = gl.exp2(s * qk_scale - (m_ref - row_bias * qk_scale)[:, None])
    else:
        p = gl.exp2(s * qk_scale - m_ref[:, None])
    alpha = gl.exp2(m_i - m_ref)
    l_i = l_i * alpha + gl.sum(p, axis=1)
    return p, alpha, m_new, l_i
