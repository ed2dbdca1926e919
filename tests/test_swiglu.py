"""SwiGLU and GeGLU (``flashkernels.swiglu``, ``flashkernels.geglu``, ``flashkernels.nn.SwiGLUMLP``):
the reference against float64 math written here, the Triton kernels through the interpreter
(fp32, fp16; bf16 on the GPU), forward and backward, any shape and strides, bad input, and the
custom ops.

The float64 activations below are written from their definitions and share no code with
``flashkernels.ops.swiglu.reference``.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import flashkernels
import flashkernels.nn as fnn
from helpers import FP32_SEED_TARGET, assert_close_policy, data_magnitude, randn, ulp_at

f16, bf16, f32, f64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"


# (conftest.py poisons every launcher's outputs with NaN)


# --------------------------------------------------------------------------------------------
# the independent float64 activations
# --------------------------------------------------------------------------------------------

def silu_f64(g):
    return g / (1.0 + torch.exp(-g))


def gelu_tanh_f64(g):
    return 0.5 * g * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (g + 0.044715 * g ** 3)))


def gelu_erf_f64(g):
    return 0.5 * g * (1.0 + torch.erf(g / math.sqrt(2.0)))


ACT64 = {"swiglu": silu_f64, "geglu_tanh": gelu_tanh_f64, "geglu_none": gelu_erf_f64}


def call(fn, gate, up, backend):
    if fn == "swiglu":
        return flashkernels.swiglu(gate, up, backend=backend)
    return flashkernels.geglu(gate, up, fn.split("_")[1], backend=backend)


# --------------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
    fn: str
    dtype: torch.dtype
    shape: tuple
    layout: str = "contiguous"  # "fused" (chunks of one gate_up tensor), "transposed"
    grad_out: str = "contiguous"  # or "transposed"

    @property
    def id(self):
        s = f"{self.fn}-{str(self.dtype)[6:]}-{'x'.join(map(str, self.shape))}"
        s += f"-{self.layout}" if self.layout != "contiguous" else ""
        s += "-dout_t" if self.grad_out != "contiguous" else ""
        return s


def make_inputs(case, device, magnitude=1.0):
    kw = dict(dtype=case.dtype, device=device, magnitude=magnitude)
    shape = case.shape
    if case.layout == "contiguous":
        g, u = randn(*shape, **kw), randn(*shape, **kw)
    elif case.layout == "fused":  # gate, up = gate_up_proj(x).chunk(2, -1): row stride 2 * I
        g, u = randn(*shape[:-1], 2 * shape[-1], **kw).chunk(2, dim=-1)
    elif case.layout == "transposed":
        g = randn(*shape[:-2], shape[-1], shape[-2], **kw).transpose(-1, -2)
        u = randn(*shape[:-2], shape[-1], shape[-2], **kw).transpose(-1, -2)
    else:
        raise ValueError(case.layout)
    assert tuple(g.shape) == tuple(u.shape) == tuple(shape)
    return g.detach().requires_grad_(), u.detach().requires_grad_()


def make_dout(case, device):
    if case.grad_out == "transposed":
        return randn(*case.shape[:-2], case.shape[-1], case.shape[-2], dtype=case.dtype,
                     device=device).transpose(-1, -2)
    return randn(*case.shape, dtype=case.dtype, device=device)


def check_case(case, device=DEVICE, backend="triton", magnitude=1.0):
    g, u = make_inputs(case, device, magnitude)
    dout = make_dout(case, device)
    before = (g.detach().clone(), u.detach().clone())

    out = call(case.fn, g, u, backend)
    grads = torch.autograd.grad(out, (g, u), dout)
    pt = call(case.fn, g, u, "reference")
    pt_grads = torch.autograd.grad(pt, (g, u), dout)
    assert torch.equal(g.detach(), before[0]) and torch.equal(u.detach(), before[1]), "an input changed"

    g64, u64 = (t.detach().double().requires_grad_() for t in (g, u))
    ref = ACT64[case.fn](g64) * u64
    ref_grads = torch.autograd.grad(ref, (g64, u64), dout.double())

    assert out.dtype == case.dtype and out.shape == g.shape
    target = FP32_SEED_TARGET if (case.dtype == f32 and magnitude == 1.0) else None
    assert_close_policy(out, ref, pt, name="out", data_magnitude=data_magnitude(g, u), seed_target=target)
    for name, a, r, p in zip(("dgate", "dup"), grads, ref_grads, pt_grads):
        assert a.dtype == case.dtype and a.shape == g.shape
        assert_close_policy(a, r, p, factor=3.0, name=name, data_magnitude=data_magnitude(g, u, dout))
    return out, grads


FNS = ["swiglu", "geglu_tanh", "geglu_none"]
GRID = [
    *(Case(fn, dt, (3, 5, 129)) for fn in FNS for dt in (f32, f16)),
    *(Case(fn, dt, (7,)) for fn in FNS for dt in (f32, f16)),
    Case("swiglu", f32, (1,)),
    Case("swiglu", f16, (2, 3, 4, 1031)),  # several programs, a ragged last one
    Case("geglu_tanh", f32, (5, 4097)),
    Case("swiglu", f16, (4, 6, 37), layout="fused"),
    Case("geglu_tanh", f16, (3, 50, 17), layout="fused", grad_out="transposed"),
    Case("swiglu", f32, (2, 33, 65), layout="transposed", grad_out="transposed"),
    Case("geglu_none", f32, (2, 9, 40), layout="transposed"),
]


@pytest.mark.parametrize("case", GRID, ids=lambda c: c.id)
def test_kernel_matches_float64(case):
    check_case(case)


@pytest.mark.parametrize("fn", FNS)
def test_large_magnitude_finite(fn):
    """gate * 10 in fp16 (sigmoid and tanh saturate; |gelu(g)·u| stays inside fp16's range):
    finite outputs and gradients."""
    case = Case(fn, f16, (4, 257))
    out, grads = check_case(case, magnitude=10.0)
    for t in (out, *grads):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("fn", FNS)
def test_reference_float64_matches_definition(fn):
    g = randn(4, 5, 33, dtype=f64, magnitude=3.0, requires_grad=True)
    u = randn(4, 5, 33, dtype=f64, requires_grad=True)
    out = call(fn, g, u, "reference")
    ref = ACT64[fn](g) * u
    torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-13)
    dout = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, (g, u), dout), torch.autograd.grad(ref, (g, u), dout)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [f32, f16], ids=["f32", "f16"])
@pytest.mark.parametrize("fn", FNS)
def test_matches_hugging_face_mlp_activation(fn, dtype):
    """``act_fn(gate) * up`` as transformers' LlamaMLP / GemmaMLP compute it (ACT2FN "silu",
    "gelu_pytorch_tanh", "gelu"): the reference bit for bit; the kernel as close to float64 as
    that formula is (the policy, with it as ``pt``), and in half precision, where the activation's
    rounding before the product shows, within one rounding step of it and equal on almost every
    element."""
    act = {"swiglu": torch.nn.functional.silu,
           "geglu_tanh": lambda t: torch.nn.functional.gelu(t, approximate="tanh"),
           "geglu_none": torch.nn.functional.gelu}[fn]
    g, u = randn(64, 200, dtype=dtype, magnitude=2.0), randn(64, 200, dtype=dtype)
    expected = act(g) * u
    assert torch.equal(call(fn, g, u, "reference"), expected)
    out = call(fn, g, u, "triton")
    ref = ACT64[fn](g.double()) * u.double()
    assert_close_policy(out, ref, expected, name=f"{fn} vs HF", data_magnitude=data_magnitude(g, u))
    if dtype != f32:
        err = (out.double() - expected.double()).abs().max().item()
        assert err <= ulp_at(expected.abs().max().item(), dtype), f"max|kernel - HF| = {err:.3e}"
        same = (out == expected).double().mean().item()
        assert same >= 0.97, f"only {same:.1%} of the elements equal act_fn(gate) * up"


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_empty(backend):
    g = torch.empty(0, 16, requires_grad=True)
    u = torch.empty(0, 16, requires_grad=True)
    out = flashkernels.swiglu(g, u, backend=backend)
    assert out.shape == (0, 16)
    dg, du = torch.autograd.grad(out.sum(), (g, u))
    assert dg.shape == du.shape == (0, 16)


def test_swiglu_mlp_module(monkeypatch):
    monkeypatch.setenv("FLASHKERNELS_BACKEND", "triton")
    m = fnn.SwiGLUMLP(24, 40)
    assert m.gate_proj.weight.shape == (40, 24) and m.down_proj.weight.shape == (24, 40)
    assert m.gate_proj.bias is None and fnn.SwiGLUMLP(24, 40, bias=True).up_proj.bias is not None
    x = randn(2, 7, 24)
    expected = m.down_proj(torch.nn.functional.silu(m.gate_proj(x)) * m.up_proj(x))
    out = m(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    out.sum().backward()
    for p in m.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


a8 = torch.randn(2, 8)
BAD = [
    ("gate-list", "swiglu", ([1.0], a8), {}, TypeError, "gate:"),
    ("gate-int", "swiglu", (torch.ones(2, 8, dtype=torch.int64), a8), {}, TypeError, "gate:"),
    ("up-none", "swiglu", (a8, None), {}, TypeError, "up:"),
    ("up-shape", "swiglu", (a8, torch.randn(2, 9)), {}, ValueError, "up:"),
    ("up-broadcast", "swiglu", (a8, torch.randn(8)), {}, ValueError, "up:"),
    ("up-dtype", "geglu", (a8, torch.randn(2, 8, dtype=f16)), {}, TypeError, "up:"),
    ("approximate-bad", "geglu", (a8, a8), {"approximate": "erf"}, ValueError, "approximate:"),
    ("approximate-bool", "geglu", (a8, a8), {"approximate": True}, TypeError, "approximate:"),
    ("backend-bad", "swiglu", (a8, a8), {"backend": "gpu"}, ValueError, "backend"),
]


@pytest.mark.parametrize("name,fn,args,kwargs,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input(name, fn, args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        getattr(flashkernels, fn)(*args, **kwargs)


def test_triton_backend_refuses_float64():
    with pytest.raises(RuntimeError, match="float64"):
        flashkernels.swiglu(torch.randn(4, dtype=f64), torch.randn(4, dtype=f64), backend="triton")


# --------------------------------------------------------------------------------------------
# GPU: bf16, larger shapes, opcheck, torch.compile
# --------------------------------------------------------------------------------------------

GPU_GRID = [
    *(dataclasses.replace(c, dtype=bf16) for c in GRID if c.dtype == f16),
    *(Case(fn, bf16, (4, 2048, 14336)) for fn in FNS),
    Case("swiglu", bf16, (2, 4096, 11008), layout="fused"),
    Case("swiglu", f32, (8, 1000, 1001), layout="transposed", grad_out="transposed"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_GRID, ids=lambda c: c.id)
def test_kernel_matches_float64_cuda(case):
    check_case(case, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("fn", FNS)
def test_matches_hugging_face_bf16_cuda(fn):
    act = {"swiglu": torch.nn.functional.silu,
           "geglu_tanh": lambda t: torch.nn.functional.gelu(t, approximate="tanh"),
           "geglu_none": torch.nn.functional.gelu}[fn]
    g = randn(1024, 4096, dtype=bf16, device="cuda", magnitude=2.0)
    u = randn(1024, 4096, dtype=bf16, device="cuda")
    expected = act(g) * u
    out = call(fn, g, u, "triton")
    assert (out.double() - expected.double()).abs().max().item() <= ulp_at(expected.abs().max().item(), bf16)
    assert (out == expected).double().mean().item() >= 0.97


@pytest.mark.gpu
@pytest.mark.big_memory
def test_more_than_2_31_elements_cuda():
    """Elements past 2^31: the int64 offsets, forward and backward, checked on the tail."""
    n = 2**31 + 3000
    g = torch.randn(n, device="cuda", dtype=bf16, requires_grad=True)
    u = torch.randn(n, device="cuda", dtype=bf16, requires_grad=True)
    out = flashkernels.swiglu(g, u, backend="triton")
    dout = torch.randn_like(out)
    dg, du = torch.autograd.grad(out, (g, u), dout)
    tail = slice(n - 5000, n)
    gt, ut = g.detach()[tail].clone().requires_grad_(), u.detach()[tail].clone().requires_grad_()
    pt = flashkernels.swiglu(gt, ut, backend="reference")
    pt_grads = torch.autograd.grad(pt, (gt, ut), dout[tail])
    g64, u64 = gt.detach().double().requires_grad_(), ut.detach().double().requires_grad_()
    ref = silu_f64(g64) * u64
    ref_grads = torch.autograd.grad(ref, (g64, u64), dout[tail].double())
    assert_close_policy(out[tail], ref, pt, name="out", data_magnitude=data_magnitude(gt, ut))
    for name, a, r, p in zip(("dgate", "dup"), (dg[tail], du[tail]), ref_grads, pt_grads):
        assert_close_policy(a, r, p, factor=3.0, name=name, data_magnitude=data_magnitude(gt, ut, dout[tail]))


@pytest.mark.gpu
@pytest.mark.no_poison
@pytest.mark.parametrize("act", [0, 1, 2], ids=["silu", "gelu_tanh", "gelu_none"])
def test_opcheck_glu_fwd_and_bwd(act):
    """glu_fwd(gate, up, act) -> out; glu_bwd(dout, gate, up, act) -> (dgate, dup)."""
    import flashkernels.ops.swiglu.autograd  # noqa: F401  (registers the ops and autograd)

    g = randn(3, 100, 257, dtype=bf16, device="cuda", requires_grad=True)
    u = randn(3, 100, 257, dtype=bf16, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.flashkernels.glu_fwd.default, (g, u, act))
    dout = torch.randn_like(g)
    torch.library.opcheck(torch.ops.flashkernels.glu_bwd.default, (dout, g.detach(), u.detach(), act))


@pytest.mark.gpu
@pytest.mark.no_poison
@pytest.mark.parametrize("fn", FNS)
def test_torch_compile_fullgraph_matches_eager(fn):
    g = randn(4, 333, 1027, dtype=bf16, device="cuda", requires_grad=True)
    u = randn(4, 333, 1027, dtype=bf16, device="cuda", requires_grad=True)

    def f(g, u):
        return call(fn, g, u, "triton")

    compiled = torch.compile(f, fullgraph=True)
    out_e = f(g, u)
    dout = torch.randn_like(out_e)
    g_e = torch.autograd.grad(out_e, (g, u), dout)
    out_c = compiled(g, u)
    g_c = torch.autograd.grad(out_c, (g, u), dout)
    for a, b in zip((out_c, *g_c), (out_e, *g_e)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
