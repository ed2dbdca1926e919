"""TESTING.md's edge semantics that run on a CPU, for both backends (the Triton kernels through
the interpreter, and the reference path) and both public functions. The >2^31-element case and
bf16 at x*100 are GPU tests (test_gpu.py)."""
import math

import pytest
import torch

import flashkernels
from cases import Case, call, check_case, kernel_lse, make_inputs, to_bhsd
from helpers import make_mask, naive_attention

f16, f32 = torch.float16, torch.float32
BACKENDS = ["triton", "reference"]


# --------------------------------------------------------------------------------------------
# fully masked rows: out 0, lse -inf, gradients 0, no NaN anywhere
# --------------------------------------------------------------------------------------------

def _dead_row_mask(kind, B, H, Sq, Sk, dead, dtype=f32):
    """A (B, H, Sq, Sk) mask whose rows ``dead`` (of every batch and head, plus all rows of
    batch 1 head 0) attend to nothing."""
    m = make_mask(kind, (B, H, Sq, Sk), dtype=dtype)
    blocked = False if kind == "bool" else -math.inf
    m[:, :, dead, :] = blocked
    m[1, 0] = blocked
    return m


DEAD = [0, 5, 31, 32, 40]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,dtype", [("bool", f32), ("float", f16)], ids=["bool-fp32", "float-fp16"])
def test_fully_masked_rows_sdpa(kind, dtype, backend):
    B, H, Sq, Sk, D = 2, 2, 41, 37, 32
    case = Case("sdpa", dtype, B, H, H, Sq, Sk, D)
    mask = _dead_row_mask(kind, B, H, Sq, Sk, DEAD)
    r = check_case(case, backend=backend, mask=mask)  # everything within the policy, no NaN
    dead = torch.zeros(B, H, Sq, dtype=torch.bool)
    dead[:, :, DEAD] = True
    dead[1, 0] = True
    assert (r.out[dead] == 0).all(), "fully masked rows must give exactly 0"
    assert (r.out[~dead] != 0).any()
    if r.lse is not None:
        assert (r.lse[dead] == -math.inf).all() and torch.isfinite(r.lse[~dead]).all()
    dq, dk, dv = r.grads
    assert (dq[dead] == 0).all(), "a fully masked query row gets no gradient"
    assert (dk[1, 0] == 0).all() and (dv[1, 0] == 0).all(), "keys no query sees get no gradient"
    for g in r.grads:
        assert not g.isnan().any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [f32, f16], ids=["fp32", "fp16"])
def test_fully_masked_rows_bottom_right_causal(dtype, backend):
    """flash_attn_func, causal, Sq > Sk: query i sees keys j <= i + Sk - Sq, so the first
    Sq - Sk rows see nothing."""
    B, H, Sq, Sk, D = 2, 2, 50, 20, 40
    r = check_case(Case("fa", dtype, B, H, H, Sq, Sk, D, causal=True), backend=backend)
    dead = slice(0, Sq - Sk)
    assert (r.out[:, dead] == 0).all() and (r.out[:, Sq - Sk:] != 0).any()
    assert (r.lse[:, :, dead] == -math.inf).all() and torch.isfinite(r.lse[:, :, Sq - Sk:]).all()
    dq = r.grads[0]
    assert (dq[:, dead] == 0).all()
    for g in r.grads:
        assert not g.isnan().any()


def test_fully_masked_everything_triton():
    """Every key masked for every query: zeros and -inf throughout, also in the backward."""
    case = Case("sdpa", f32, 1, 2, 2, 19, 23, 16)
    q, k, v = make_inputs(case, "cpu")
    mask = torch.zeros(19, 23, dtype=torch.bool)
    out = flashkernels.scaled_dot_product_attention(q, k, v, attn_mask=mask, backend="triton")
    assert (out == 0).all()
    assert (kernel_lse(case, q, k, v, mask) == -math.inf).all()
    grads = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    for g in grads:
        assert (g == 0).all()


# --------------------------------------------------------------------------------------------
# large magnitude: finite in, finite out (x*10 in fp16 here; x*100 in bf16 on the GPU)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case,magnitude", [
    (Case("fa", f16, 2, 2, 1, 67, 45, 64, causal=True), 10.0),
    (Case("sdpa", f16, 2, 2, 2, 45, 67, 32, mask="float:b1qk"), 10.0),
], ids=lambda x: x.id if isinstance(x, Case) else f"x{x:g}")
def test_large_magnitude_is_finite_and_right(case, magnitude, backend):
    r = check_case(case, backend=backend, magnitude=magnitude)  # policy; lse -inf only where due
    for t in (r.out, *r.grads):
        assert torch.isfinite(t).all()


# --------------------------------------------------------------------------------------------
# Sq != Sk under both alignments; decode (Sq = 1) and a single key (Sk = 1)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("api", ["sdpa", "fa"])
@pytest.mark.parametrize("sq,sk", [(5, 9), (9, 5)], ids=["sq5-sk9", "sq9-sk5"])
def test_causal_alignment(sq, sk, api, backend):
    """sdpa aligns the causal diagonal top-left, flash_attn_func bottom-right."""
    case = Case(api, f32, 1, 2, 2, sq, sk, 16, causal=True)
    r = check_case(case, backend=backend)
    out = to_bhsd(case, r.out)
    v = to_bhsd(case, r.v).detach()
    if api == "sdpa":  # query 0 sees key 0 alone
        torch.testing.assert_close(out[:, :, 0], v[:, :, 0], rtol=0, atol=1e-6)
    else:  # query Sq-1 sees every key; query i sees keys <= i + Sk - Sq
        q, k = to_bhsd(case, r.q).detach(), to_bhsd(case, r.k).detach()
        full, _ = naive_attention(q[:, :, -1:], k, v)
        torch.testing.assert_close(out[:, :, -1:].double(), full, rtol=0, atol=1e-5)
        if sq > sk:
            assert (out[:, :, : sq - sk] == 0).all()


DECODE = [
    Case("fa", f32, 2, 4, 1, 1, 239, 64, causal=True),    # decode: one query sees every key
    Case("fa", f16, 2, 4, 2, 1, 77, 96),
    Case("sdpa", f32, 2, 4, 2, 1, 239, 64),
    Case("sdpa", f16, 2, 2, 2, 1, 77, 40, causal=True),   # top-left: the query sees key 0 only
    Case("fa", f32, 2, 2, 2, 57, 1, 32),                  # a single key: out = v for every row
    Case("sdpa", f16, 2, 2, 2, 57, 1, 48, causal=True),
    Case("fa", f32, 2, 2, 2, 1, 1, 8, causal=True),
    Case("sdpa", f32, 2, 2, 2, 1, 1, 8),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", DECODE, ids=lambda c: c.id)
def test_decode_and_single_key(case, backend):
    check_case(case, backend=backend)


# --------------------------------------------------------------------------------------------
# empty inputs: an empty result (or a clear error), never a crash or a hang
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("api", ["sdpa", "fa"])
@pytest.mark.parametrize("B,Sq,Sk", [(0, 8, 8), (2, 0, 8), (2, 8, 0), (2, 0, 0)],
                         ids=["batch0", "sq0", "sk0", "sq0-sk0"])
def test_empty(B, Sq, Sk, api, backend):
    case = Case(api, f32, B, 2, 2, Sq, Sk, 16)
    q, k, v = make_inputs(case, "cpu")
    out, lse = call(case, q, k, v, None, backend)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert (out == 0).all()  # no key: nothing attended
    if lse is not None:
        assert lse.shape == (B, 2, Sq) and lse.dtype == torch.float32
        assert (lse == -math.inf).all()
    grads = torch.autograd.grad(out, (q, k, v), torch.randn_like(out), allow_unused=True)
    for g, x in zip(grads, (q, k, v)):
        assert g is None or (g.shape == x.shape and (g == 0).all())


# --------------------------------------------------------------------------------------------
# determinism: forward and lse bitwise identical across runs; the backward too (it has no
# atomics; flash_attn_func's deterministic=True asks for it explicitly)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", [
    Case("fa", f16, 2, 4, 2, 75, 93, 48, causal=True),
    Case("sdpa", f32, 2, 2, 1, 93, 75, 40, mask="float:b1qk"),
], ids=lambda c: c.id)
def test_repeated_runs_bitwise_identical(case, backend):
    q, k, v = make_inputs(case, "cpu")
    from cases import make_case_mask
    mask = make_case_mask(case, "cpu")
    dout = None
    runs = []
    for _ in range(3):
        if case.api == "fa":
            out, lse, _ = flashkernels.flash_attn_func(q, k, v, causal=case.causal, deterministic=True,
                                                       return_attn_probs=True, backend=backend)
        else:
            out, lse = call(case, q, k, v, mask, backend)
            if backend == "triton":
                lse = kernel_lse(case, q, k, v, mask)
        dout = torch.randn_like(out) if dout is None else dout
        grads = torch.autograd.grad(out, (q, k, v), dout)
        runs.append((out, lse, *grads))
    for i, run in enumerate(runs[1:], 1):
        for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), runs[0], run):
            if a is None:
                continue
            assert torch.equal(a, b), f"{name} of run {i} differs from run 0"


# --------------------------------------------------------------------------------------------
# inputs are left alone
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("api", ["sdpa", "fa"])
def test_inputs_not_modified(api):
    case = Case(api, f16, 2, 2, 1, 30, 40, 24, causal=True)
    q, k, v = make_inputs(case, "cpu")
    before = [x.detach().clone() for x in (q, k, v)]
    out, _ = call(case, q, k, v, None, "triton")
    dout = torch.randn_like(out)
    dout_before = dout.clone()
    torch.autograd.grad(out, (q, k, v), dout)
    for name, x, b in zip("qkv", (q, k, v), before):
        assert torch.equal(x.detach(), b), f"{name} was modified"
    assert torch.equal(dout, dout_before), "grad_out was modified"
