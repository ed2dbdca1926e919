"""Gated activations out = act(gate) * up, forward and backward: @triton.jit code only.

Elementwise over flat contiguous tensors: one program per BLOCK elements, int64 offsets (the
16384 x 14336 MLP activations pass 2^31 elements). Arithmetic in fp32.

``ACT``: 0 silu, 1 gelu (tanh approximation), 2 gelu (exact, erf).
"""
import triton
import triton.language as tl

SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)
INV_SQRT_2 = tl.constexpr(0.7071067811865476)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)
GELU_C = tl.constexpr(0.044715)


@triton.jit
def _tanh(z):
    # tl.math has no tanh (libdevice's does not run in the interpreter). exp(-2|z|) <= 1 never
    # overflows, the limits are exact, and the absolute error is a few fp32 ulps of 1.
    e = tl.exp(-2.0 * tl.abs(z))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(z >= 0, t, -t)


@triton.jit
def _act(g, ACT: tl.constexpr):
    """act(g) for fp32 g."""
    if ACT == 0:
        a = g * tl.sigmoid(g)
    elif ACT == 1:
        a = 0.5 * g * (1.0 + _tanh(SQRT_2_OVER_PI * (g + GELU_C * g * g * g)))
    else:
        a = 0.5 * g * (1.0 + tl.math.erf(g * INV_SQRT_2))
    return a


@triton.jit
def _act_and_grad(g, ACT: tl.constexpr):
    """(act(g), act'(g)) for fp32 g."""
    if ACT == 0:
        s = tl.sigmoid(g)
        a = g * s
        da = s * (1.0 + g * (1.0 - s))
    elif ACT == 1:
        t = _tanh(SQRT_2_OVER_PI * (g + GELU_C * g * g * g))
        a = 0.5 * g * (1.0 + t)
        da = 0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * g * g)
    else:
        a = 0.5 * g * (1.0 + tl.math.erf(g * INV_SQRT_2))
        da = 0.5 * (1.0 + tl.math.erf(g * INV_SQRT_2)) + g * tl.exp(-0.5 * g * g) * INV_SQRT_2PI
    return a, da


@triton.jit
def glu_fwd_kernel(G, U, OUT, n, ACT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(G + offs, mask=mask, other=0.0)
    u = tl.load(U + offs, mask=mask, other=0.0)
    # rounded like act_fn(gate) * up in the input dtype (the Hugging Face MLPs)
    a = _act(g.to(tl.float32), ACT).to(g.dtype)
    out = a.to(tl.float32) * u.to(tl.float32)
    tl.store(OUT + offs, out.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def glu_bwd_kernel(DO, G, U, DG, DU, n, ACT: tl.constexpr, BLOCK: tl.constexpr):
    """dgate = dout * up * act'(gate), dup = dout * act(gate)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    do = tl.load(DO + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
    a, da = _act_and_grad(g, ACT)
    tl.store(DG + offs, (do * u * da).to(DG.dtype.element_ty), mask=mask)
    tl.store(DU + offs, (do * a).to(DU.dtype.element_ty), mask=mask)
