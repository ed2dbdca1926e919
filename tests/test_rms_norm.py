"""RMSNorm (``flashkernels.rms_norm``, ``flashkernels.nn.RMSNorm``): the reference against float64
math written here, the Triton kernels through the interpreter (fp32, fp16; bf16 on the GPU),
Hugging Face's formulas for each casting mode, dW in fp32, bad input, and the custom ops.

The float64 RMSNorm below is written from the definition and shares no code with
``flashkernels.ops.rms_norm.reference``.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

import flashkernels
import flashkernels.nn as fnn
from helpers import FP32_SEED_TARGET, assert_close_policy, data_magnitude, randn, ulp_at

f16, bf16, f32, f64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"


# (conftest.py poisons every launcher's outputs with NaN, so an unwritten element fails)


# --------------------------------------------------------------------------------------------
# the independent float64 RMSNorm and Hugging Face's formulas
# --------------------------------------------------------------------------------------------

def rms_norm_f64(x, w, eps, offset=0.0, residual=None):
    """(y, h) in float64: h = x (+ residual), y = h / sqrt(sum(h²)/N + eps) * (offset + w)."""
    h = x.double()
    if residual is not None:
        h = h + residual.double()
    n = h.shape[-1]
    y = h / torch.sqrt((h * h).sum(-1, keepdim=True) / n + eps)
    if w is not None:
        y = y * (offset + w.double())
    return y, h


def hf_llama_rms_norm(x, weight, eps):
    """transformers' LlamaRMSNorm.forward."""
    input_dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(input_dtype)


def hf_gemma_rms_norm(x, weight, eps):
    """transformers' GemmaRMSNorm.forward (weight stored as w - 1)."""
    out = x.float()
    out = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + eps)
    out = out * (1.0 + weight.float())
    return out.type_as(x)


def none_mode_rms_norm(x, weight, eps):
    """Liger's "none": the products in the input dtype (the mean square in fp32, so that x² cannot
    overflow fp16, and rstd rounded to the input dtype)."""
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps).to(x.dtype) * weight


# --------------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
    dtype: torch.dtype
    shape: tuple
    mode: str = "llama"
    weight: bool = True
    residual: bool = False
    offset: float = 0.0
    layout: str = "contiguous"  # "colslice" (row stride > N), "transposed", "stepped" (x[::2])
    eps: float = 1e-6
    grad_out: str = "contiguous"  # layouts as for x

    @property
    def id(self):
        s = f"{str(self.dtype)[6:]}-{'x'.join(map(str, self.shape))}-{self.mode}"
        s += "" if self.weight else "-noweight"
        s += "-res" if self.residual else ""
        s += f"-off{self.offset:g}" if self.offset else ""
        s += f"-{self.layout}" if self.layout != "contiguous" else ""
        s += f"-dout_{self.grad_out}" if self.grad_out != "contiguous" else ""
        return s


def make_x(shape, dtype, layout, device, magnitude=1.0):
    """A leaf tensor of ``shape`` laid out as ``layout`` (a view with its own strides)."""
    n = shape[-1]
    if layout == "contiguous":
        t = randn(*shape, dtype=dtype, device=device, magnitude=magnitude)
    elif layout == "colslice":  # rows of a wider buffer: row stride n + 5, no copy needed
        t = randn(*shape[:-1], n + 5, dtype=dtype, device=device, magnitude=magnitude)[..., 3:3 + n]
    elif layout == "transposed":  # last stride != 1: the API copies
        t = randn(*shape[:-2], n, shape[-2], dtype=dtype, device=device, magnitude=magnitude).transpose(-1, -2)
    elif layout == "stepped":  # every other leading row
        t = randn(shape[0] * 2, *shape[1:], dtype=dtype, device=device, magnitude=magnitude)[::2]
    else:
        raise ValueError(layout)
    assert tuple(t.shape) == tuple(shape)
    return t.detach().requires_grad_()


def make_inputs(case, device, magnitude=1.0):
    x = make_x(case.shape, case.dtype, case.layout, device, magnitude)
    n = case.shape[-1]
    w = randn(n, dtype=case.dtype, device=device, requires_grad=True) if case.weight else None
    r = make_x(case.shape, case.dtype, case.layout, device, magnitude) if case.residual else None
    return x, w, r


def run(case, x, w, r, dy, dh, backend):
    """(outputs, grads) of flashkernels.rms_norm for ``case``: outputs (y[, h]), grads
    (dx[, dw][, dresidual])."""
    out = flashkernels.rms_norm(x, w, case.eps, residual=r, offset=case.offset, casting_mode=case.mode,
                                backend=backend)
    outs = out if r is not None else (out,)
    inputs = [t for t in (x, w, r) if t is not None]
    grads = torch.autograd.grad(outs, inputs, (dy, dh) if r is not None else (dy,))
    return outs, grads


def check_case(case, device=DEVICE, backend="triton", magnitude=1.0):
    """The kernel against float64 under the tolerance policy, forward and backward; the inputs
    are left unchanged."""
    x, w, r = make_inputs(case, device, magnitude)
    dy = make_x(case.shape, case.dtype, case.grad_out, device).detach()
    dh = make_x(case.shape, case.dtype, case.grad_out, device).detach() if case.residual else None
    before = [t.detach().clone() for t in (x, w, r) if t is not None]

    outs, grads = run(case, x, w, r, dy, dh, backend)
    pt_outs, pt_grads = run(case, x, w, r, dy, dh, "reference")

    for t, b in zip([t for t in (x, w, r) if t is not None], before):
        assert torch.equal(t.detach(), b), "an input changed during the call"
        assert t.stride() == b.stride() or not t.is_contiguous()

    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (x, w, r)]
    y64, h64 = rms_norm_f64(leaves[0], leaves[1], case.eps, case.offset, leaves[2])
    ref_outs = (y64, h64) if case.residual else (y64,)
    ref_grads = torch.autograd.grad(ref_outs, [t for t in leaves if t is not None],
                                    [t.double() for t in (dy, dh) if t is not None])

    mag_fwd = data_magnitude(x, w, r)
    mag_bwd = data_magnitude(x, w, r, dy, dh)
    for name, o, ref, pt in zip(("y", "h"), outs, ref_outs, pt_outs):
        assert o.dtype == case.dtype and o.shape == x.shape
        target = FP32_SEED_TARGET if (case.dtype == f32 and name == "y" and magnitude == 1.0) else None
        assert_close_policy(o, ref, pt, name=name, data_magnitude=mag_fwd, seed_target=target)
    gnames = [n for n, t in zip(("dx", "dweight", "dresidual"), (x, w, r)) if t is not None]
    for name, g, ref, pt in zip(gnames, grads, ref_grads, pt_grads):
        assert g.dtype == case.dtype
        assert_close_policy(g, ref, pt, factor=3.0, name=name, data_magnitude=mag_bwd)
    return outs, grads


# leading shapes of several dims, odd widths, every mode, weight or not, residual or not, strides
GRID = [
    *(Case(dt, (2, 3, 127), mode) for dt in (f32, f16) for mode in ("llama", "gemma", "none")),
    *(Case(dt, (2, 3, 127), mode, offset=1.0, residual=True) for dt in (f32, f16) for mode in ("gemma", "llama")),
    *(Case(dt, (3, 1), "llama", residual=True) for dt in (f32, f16)),
    *(Case(dt, (2, 2, 2, 7), "gemma") for dt in (f32, f16)),
    Case(f16, (5, 7), "none", residual=True),
    Case(f32, (37, 100), "llama"),  # several rows per backward program, with a remainder
    Case(f32, (3, 4097), "llama", residual=True),  # the chunked path (4096-wide chunks here)
    Case(f16, (2, 4097), "gemma", offset=1.0),
    Case(f32, (2, 65537), "llama"),
    Case(f16, (1, 65537), "none", residual=True),
    Case(f32, (4, 33), "llama", weight=False),
    Case(f16, (4, 33), "gemma", weight=False, residual=True),
    Case(f16, (2, 4097), "llama", weight=False),
    Case(f32, (9,), "llama"),
    Case(f32, (3, 4, 61), "llama", residual=True, layout="colslice"),
    Case(f16, (3, 4, 61), "gemma", layout="transposed"),
    Case(f16, (4, 3, 61), "llama", residual=True, layout="stepped"),
    Case(f32, (3, 4200), "none", layout="colslice"),
    Case(f16, (3, 4, 61), "llama", residual=True, grad_out="colslice"),
    Case(f32, (2, 5, 33), "gemma", residual=True, layout="colslice", grad_out="transposed"),
]


@pytest.mark.parametrize("case", GRID, ids=lambda c: c.id)
def test_kernel_matches_float64(case):
    check_case(case, device="cpu" if not ON_GPU else DEVICE)


@pytest.mark.parametrize("strided", [False, True], ids=["blocks", "strided"])
@pytest.mark.parametrize("prefetch", [0, 1])
@pytest.mark.parametrize("case", [Case(f32, (37, 100), "llama", residual=True),  # 10 rows a program, 7 in the last
                                  Case(f16, (6, 33), "gemma"),  # 2 rows a program
                                  Case(f32, (3, 61), "llama", residual=True)],  # 1 row a program
                         ids=lambda c: c.id)
def test_backward_rows_loaded_ahead(case, prefetch, strided, monkeypatch):
    """The single-block backward with the next row loaded ahead or not (launch.BWD_PREFETCH),
    a block of rows a program or every P-th row (launch.BWD_STRIDED), with programs of several
    rows, two and one."""
    from flashkernels.ops.rms_norm import launch

    monkeypatch.setattr(launch, "BWD_PREFETCH", prefetch)
    monkeypatch.setattr(launch, "BWD_STRIDED", strided)
    check_case(case, device="cpu" if not ON_GPU else DEVICE)


def test_kernel_large_magnitude_finite():
    """x * 100 in fp16: finite outputs and gradients (the kernels square in fp32)."""
    case = Case(f16, (4, 300), "llama", residual=True)
    outs, grads = check_case(case, magnitude=100.0)
    for t in (*outs, *grads):
        assert torch.isfinite(t).all()


# --------------------------------------------------------------------------------------------
# the reference itself, and each casting mode against Hugging Face
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["llama", "gemma", "none"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "res"])
@pytest.mark.parametrize("weight", [True, False], ids=["w", "now"])
def test_reference_float64_matches_definition(mode, residual, weight):
    """On float64 inputs every mode is the plain formula: within 1e-12 of the math here, forward
    and backward."""
    x = randn(3, 5, 67, dtype=f64, requires_grad=True)
    w = randn(67, dtype=f64, requires_grad=True) if weight else None
    r = randn(3, 5, 67, dtype=f64, requires_grad=True) if residual else None
    out = flashkernels.rms_norm(x, w, 1e-5, residual=r, offset=0.5, casting_mode=mode, backend="reference")
    y, h = out if residual else (out, None)
    y64, h64 = rms_norm_f64(x, w, 1e-5, 0.5, r)
    torch.testing.assert_close(y, y64, rtol=1e-12, atol=1e-12)
    if residual:
        torch.testing.assert_close(h, h64, rtol=0, atol=0)
    inputs = [t for t in (x, w, r) if t is not None]
    dy = torch.randn_like(y64)
    g = torch.autograd.grad(y, inputs, dy)
    g64 = torch.autograd.grad(y64, inputs, dy)
    for a, b in zip(g, g64):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


HF = {"llama": (hf_llama_rms_norm, 0.0), "gemma": (hf_gemma_rms_norm, 1.0), "none": (none_mode_rms_norm, 0.0)}


@pytest.mark.parametrize("dtype", [f32, f16], ids=["f32", "f16"])
@pytest.mark.parametrize("mode", ["llama", "gemma", "none"])
def test_casting_mode_matches_hugging_face(mode, dtype):
    """The reference equals the Hugging Face formula (Liger's for "none") bit for bit. The kernel is as close to
    float64 as that formula is (the policy, with the formula as ``pt``); in half precision, where
    the modes round at different places, it is also within one rounding step of the formula and
    equal to it on almost every element (the modes differ from one another on 20-40% of fp16
    elements, so a kernel rounding at the wrong place fails this)."""
    hf, offset = HF[mode]
    x = randn(64, 127, dtype=dtype)
    w = randn(127, dtype=dtype, magnitude=0.5)
    expected = hf(x, w if mode == "gemma" else offset + w, 1e-6)
    ref = flashkernels.rms_norm(x, w, 1e-6, offset=offset, casting_mode=mode, backend="reference")
    assert torch.equal(ref, expected)
    out = flashkernels.rms_norm(x, w, 1e-6, offset=offset, casting_mode=mode, backend="triton")
    y64, _ = rms_norm_f64(x, w, 1e-6, offset)
    assert_close_policy(out, y64, expected, name=f"{mode} vs HF", data_magnitude=data_magnitude(x, w))
    if dtype != f32:
        err = (out.double() - expected.double()).abs().max().item()
        assert err <= ulp_at(expected.abs().max().item(), dtype), f"max|kernel - HF| = {err:.3e}"
        same = (out == expected).double().mean().item()
        assert same >= 0.97, f"only {same:.1%} of the elements equal Hugging Face's {mode} formula"


def test_llama_mode_with_offset_rounds_the_weight_in_input_dtype():
    """llama with offset: (offset + weight) is formed in the input dtype, as weight * h would be."""
    x, w = randn(8, 33, dtype=f16), randn(33, dtype=f16)
    expected = hf_llama_rms_norm(x, 1.0 + w, 1e-6)
    assert torch.equal(flashkernels.rms_norm(x, w, offset=1.0, backend="reference"), expected)
    out = flashkernels.rms_norm(x, w, offset=1.0, backend="triton")
    assert (out.double() - expected.double()).abs().max().item() <= ulp_at(expected.abs().max().item(), f16)


# --------------------------------------------------------------------------------------------
# dW in fp32
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("partials,n,block_n,block_p", [(37, 50, 16, 8), (264, 100, 16, 512), (5, 3, 2048, 8)],
                         ids=["several-tiles", "one-tile", "one-program"])
def test_dw_reduce_kernel_sums_the_partials(partials, n, block_n, block_p):
    """The dW reduce over (partials, n) fp32 rows, with more partial rows than one tile holds
    (its loop), all in one tile (the launcher's choice on a GPU) and one program for all columns:
    the column sums within fp32 rounding of float64's (launch.dw_reduce_config picks the tile)."""
    import triton

    from flashkernels.ops.rms_norm.kernels.rms_norm import rms_norm_dw_reduce_kernel

    p = randn(partials, n + 3, device=DEVICE)[:, :n]  # a row stride wider than n
    dw = torch.empty(n, device=DEVICE, dtype=f16)
    rms_norm_dw_reduce_kernel[(triton.cdiv(n, block_n),)](p, dw, partials, n, p.stride(0),
                                                           BLOCK_N=block_n, BLOCK_P=block_p)
    expected = p.double().sum(0)
    assert (dw.double() - expected).abs().max().item() <= ulp_at(expected.abs().max().item(), f16)


@pytest.mark.parametrize("n", [37, 4099], ids=["single", "chunked"])
def test_dweight_accumulated_in_fp32(n):
    """fp16 dW over many rows (300; 256 on the chunked path, 64 a program under the interpreter)
    equals the fp32 reference's dW rounded once to fp16, within one rounding step: a partial sum
    kept in fp16 drifts by several (checked by making the kernel do so)."""
    rows = 300 if n < 1000 else 256
    x = randn(rows, n, dtype=f16, requires_grad=True)
    w = randn(n, dtype=f16, requires_grad=True)
    dy = randn(rows, n, dtype=f16)
    (dw,) = torch.autograd.grad(flashkernels.rms_norm(x, w, backend="triton"), (w,), dy)
    x32, w32 = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    (dw32,) = torch.autograd.grad(flashkernels.rms_norm(x32, w32, backend="reference"), (w32,), dy.float())
    assert dw.dtype == f16
    err = (dw.double() - dw32.double()).abs().max().item()
    assert err <= ulp_at(dw32.abs().max().item(), f16), f"max|dW - dW_fp32| = {err:.3e}"


# --------------------------------------------------------------------------------------------
# edges, modules, bad input
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_zero_rows(backend):
    x = torch.empty(0, 3, 16, requires_grad=True)
    w = torch.randn(16, requires_grad=True)
    r = torch.empty(0, 3, 16, requires_grad=True)
    y, h = flashkernels.rms_norm(x, w, residual=r, backend=backend)
    assert y.shape == h.shape == (0, 3, 16)
    dx, dw, dr = torch.autograd.grad((y.sum() + h.sum()), (x, w, r))
    assert dx.shape == dr.shape == (0, 3, 16) and torch.equal(dw, torch.zeros(16))


@pytest.mark.parametrize("shape", [(3, 40), (2, 3, 40)], ids=["2d", "3d"])
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_residual_grads_do_not_alias(backend, shape):
    """x and residual get gradients in separate memory, so a second backward accumulates into
    each once (the kernels return one dx for both, as torch's add does; autograd copies it for
    the second leaf)."""
    x, r, w = (randn(*shape, requires_grad=True), randn(*shape, requires_grad=True),
               randn(40, requires_grad=True))
    for _ in range(2):
        y, h = flashkernels.rms_norm(x, w, residual=r, backend=backend)
        (y.sum() + h.sum()).backward()
    assert x.grad.data_ptr() != r.grad.data_ptr()
    x1, r1 = x.detach().clone().requires_grad_(), r.detach().clone().requires_grad_()
    y, h = flashkernels.rms_norm(x1, w.detach(), residual=r1, backend="reference")
    gx, gr = torch.autograd.grad(y.sum() + h.sum(), (x1, r1))
    torch.testing.assert_close(x.grad, 2 * gx, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(r.grad, 2 * gr, rtol=1e-6, atol=1e-6)


def test_rms_norm_module(monkeypatch):
    monkeypatch.setenv("FLASHKERNELS_BACKEND", "triton")
    m = fnn.RMSNorm(47, eps=1e-5)
    assert torch.equal(m.weight, torch.ones(47)) and m.weight.requires_grad
    g = fnn.RMSNorm(47, offset=1.0, casting_mode="gemma")
    assert torch.equal(g.weight, torch.zeros(47))
    with torch.no_grad():
        m.weight.copy_(torch.randn(47))
        g.weight.copy_(torch.randn(47))
    x, r = randn(2, 5, 47), randn(2, 5, 47)
    torch.testing.assert_close(m(x), hf_llama_rms_norm(x, m.weight, 1e-5), rtol=0, atol=1e-5)
    y, h = g(x, r)
    torch.testing.assert_close(h, x + r, rtol=0, atol=0)
    torch.testing.assert_close(y, hf_gemma_rms_norm(x + r, g.weight, 1e-6), rtol=0, atol=1e-5)
    m(x).sum().backward()
    assert m.weight.grad is not None and m.weight.grad.shape == (47,)


x8 = torch.randn(2, 8)
BAD = [
    ("x-not-tensor", dict(x=[1.0, 2.0], weight=None), TypeError, "x:"),
    ("x-int", dict(x=torch.ones(2, 8, dtype=torch.int32), weight=None), TypeError, "x:"),
    ("x-0d", dict(x=torch.tensor(1.0), weight=None), ValueError, "x:"),
    ("x-width0", dict(x=torch.randn(3, 0), weight=None), ValueError, "x:"),
    ("weight-shape", dict(x=x8, weight=torch.randn(7)), ValueError, "weight:"),
    ("weight-dtype", dict(x=x8, weight=torch.randn(8, dtype=f16)), TypeError, "weight:"),
    ("weight-list", dict(x=x8, weight=[1.0] * 8), TypeError, "weight:"),
    ("residual-shape", dict(x=x8, weight=None, residual=torch.randn(2, 7)), ValueError, "residual:"),
    ("residual-dtype", dict(x=x8, weight=None, residual=torch.randn(2, 8, dtype=f64)), TypeError, "residual:"),
    ("eps-str", dict(x=x8, weight=None, eps="1e-6"), TypeError, "eps:"),
    ("eps-negative", dict(x=x8, weight=None, eps=-1.0), ValueError, "eps:"),
    ("offset-none", dict(x=x8, weight=None, offset=None), TypeError, "offset:"),
    ("mode-unknown", dict(x=x8, weight=None, casting_mode="llama2"), ValueError, "casting_mode:"),
    ("mode-int", dict(x=x8, weight=None, casting_mode=0), TypeError, "casting_mode:"),
    ("backend-unknown", dict(x=x8, weight=None, backend="cuda"), ValueError, "backend"),
]


@pytest.mark.parametrize("name,kwargs,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input(name, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        flashkernels.rms_norm(**kwargs)


def test_triton_backend_refuses_float64():
    with pytest.raises(RuntimeError, match="float64"):
        flashkernels.rms_norm(torch.randn(2, 8, dtype=f64), None, backend="triton")


# --------------------------------------------------------------------------------------------
# GPU: bf16, larger shapes, the custom ops under opcheck and torch.compile, determinism
# --------------------------------------------------------------------------------------------

GPU_GRID = [
    *(dataclasses.replace(c, dtype=bf16) for c in GRID if c.dtype == f16),
    *(Case(bf16, (4, 1024, 4096), mode, residual=True) for mode in ("llama", "gemma")),
    Case(bf16, (2, 2048, 4096), "gemma", offset=1.0, residual=True),
    Case(f16, (8, 65536), "llama", residual=True),  # the widest single-block row
    Case(bf16, (3, 65537), "llama", residual=True),  # chunked on the GPU too
    Case(f32, (4096, 5120), "none"),
    Case(bf16, (8, 1000, 4096), "llama", layout="colslice"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_GRID, ids=lambda c: c.id)
def test_kernel_matches_float64_cuda(case):
    check_case(case, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["llama", "gemma"])
def test_casting_mode_matches_hugging_face_bf16_cuda(mode):
    hf, offset = HF[mode]
    x = randn(512, 4096, dtype=bf16, device="cuda")
    w = randn(4096, dtype=bf16, device="cuda", magnitude=0.5)
    expected = hf(x, w, 1e-6)
    out = flashkernels.rms_norm(x, w, 1e-6, offset=offset, casting_mode=mode, backend="triton")
    assert (out.double() - expected.double()).abs().max().item() <= ulp_at(expected.abs().max().item(), bf16)
    assert (out == expected).double().mean().item() >= 0.97


@pytest.mark.gpu
def test_deterministic_cuda():
    x = randn(4096, 4096, dtype=bf16, device="cuda", requires_grad=True)
    w = randn(4096, dtype=bf16, device="cuda", requires_grad=True)
    r = randn(4096, 4096, dtype=bf16, device="cuda", requires_grad=True)
    dy = torch.randn_like(x)
    runs = []
    for _ in range(3):
        y, h = flashkernels.rms_norm(x, w, residual=r, backend="triton")
        runs.append((y, h, *torch.autograd.grad(y, (x, w, r), dy)))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.big_memory
def test_more_than_2_31_elements_cuda():
    """Rows past element 2^31: the int64 row offsets (forward and backward), checked on the last
    rows against float64."""
    n = 4096
    m = 2**31 // n + 8
    x = torch.randn(m, n, device="cuda", dtype=bf16, requires_grad=True)
    w = randn(n, dtype=bf16, device="cuda", requires_grad=True)
    y = flashkernels.rms_norm(x, w, backend="triton")
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, (x,), dy)
    tail = slice(m - 16, m)
    xt = x.detach()[tail].clone().requires_grad_()
    pt = flashkernels.rms_norm(xt, w.detach(), backend="reference")
    (pt_dx,) = torch.autograd.grad(pt, (xt,), dy[tail])
    x64 = xt.detach().double().requires_grad_()
    y64, _ = rms_norm_f64(x64, w.detach(), 1e-6)
    (dx64,) = torch.autograd.grad(y64, (x64,), dy[tail].double())
    assert_close_policy(y[tail], y64, pt, name="y", data_magnitude=data_magnitude(xt, w))
    assert_close_policy(dx[tail], dx64, pt_dx, factor=3.0, name="dx",
                        data_magnitude=data_magnitude(xt, w, dy[tail]))


def _op_args(weight, residual, dtype=bf16, shape=(300, 1031), mode=0):
    import flashkernels.ops.rms_norm.autograd  # noqa: F401  (registers the ops and autograd)

    x = randn(*shape, dtype=dtype, device="cuda", requires_grad=True)
    w = randn(shape[-1], dtype=dtype, device="cuda", requires_grad=True) if weight else None
    r = randn(*shape, dtype=dtype, device="cuda", requires_grad=True) if residual else None
    return x, w, r, 1e-6, 0.5, mode


OPCHECK = [(True, False, 0), (True, True, 1), (False, True, 2), (False, False, 0)]


@pytest.mark.gpu
@pytest.mark.no_poison
@pytest.mark.parametrize("weight,residual,mode", OPCHECK, ids=str)
def test_opcheck_rms_norm_fwd_and_bwd(weight, residual, mode):
    """rms_norm_fwd(x, weight, residual, eps, offset, mode) -> (y, h, rstd);
    rms_norm_bwd(dy, x, weight, rstd, dh, offset) -> (dx, dweight)."""
    args = _op_args(weight, residual, mode=mode)
    torch.library.opcheck(torch.ops.flashkernels.rms_norm_fwd.default, args)
    x, w, r, eps, offset, _ = args
    y, h, rstd = torch.ops.flashkernels.rms_norm_fwd(*args)
    dy = torch.randn_like(y)
    dh = torch.randn_like(h) if residual else None
    xn = h if residual else x
    torch.library.opcheck(torch.ops.flashkernels.rms_norm_bwd.default,
                          (dy, xn.detach(), None if w is None else w.detach(), rstd.detach(), dh, offset))


@pytest.mark.gpu
@pytest.mark.no_poison
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "res"])
def test_torch_compile_fullgraph_matches_eager(residual):
    x, w, r, *_ = _op_args(True, residual, shape=(4, 257, 2049))

    def f(x, w, r):
        out = flashkernels.rms_norm(x, w, residual=r, backend="triton")
        return out if r is not None else (out,)

    compiled = torch.compile(f, fullgraph=True)
    inputs = [t for t in (x, w, r) if t is not None]
    eager = f(x, w, r)
    douts = [torch.randn_like(o) for o in eager]
    g_e = torch.autograd.grad(eager, inputs, douts)
    comp = compiled(x, w, r)
    g_c = torch.autograd.grad(comp, inputs, douts)
    for a, b in zip((*comp, *g_c), (*eager, *g_e)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
