"""GPU-only tests (marked ``gpu``; skipped on CPU machines): the kernel grid on CUDA with bf16
and larger shapes, torch.library.opcheck of the custom ops, torch.compile, determinism, a
>2^31-element case, compute-sanitizer, and a comparison with torch's own SDPA."""
import dataclasses
import math
import shutil
import textwrap

import pytest
import torch
import torch.nn.functional as F

import flashkernels
from flashkernels.ops.attention.reference import attention_reference
from cases import Case, call, check_case, make_case_mask, make_inputs, to_bhsd
from helpers import assert_close_policy, assert_compute_sanitizer_clean, naive_attention
from test_attention_kernels import GRID as CPU_GRID

pytestmark = pytest.mark.gpu

f16, bf16, f32 = torch.float16, torch.bfloat16, torch.float32
HEAD_DIMS = [8, 16, 32, 40, 59, 64, 80, 96, 111, 128, 160, 192, 256]


def _bf16(c):
    return dataclasses.replace(c, dtype=bf16)


GPU_GRID = (
    list(CPU_GRID)
    + [_bf16(c) for c in CPU_GRID if c.dtype == f16]
    + [
        # every head dim at a real length, bf16, both functions and alignments
        *(Case("fa", bf16, 2, 8, 2, 1023, 1024, d, causal=True) for d in HEAD_DIMS),
        *(Case("sdpa", f16, 2, 4, 4, 1024, 1023, d, causal=True) for d in HEAD_DIMS[::3]),
        Case("fa", bf16, 1, 16, 4, 4096, 4096, 128, causal=True),
        Case("fa", f16, 2, 8, 8, 2048, 2048, 64),
        Case("fa", f32, 2, 4, 4, 1024, 1024, 64, causal=True),
        Case("fa", bf16, 2, 8, 1, 1, 4096, 128),                      # decode, MQA
        Case("fa", bf16, 2, 8, 2, 4096, 1, 128, causal=True),
        Case("sdpa", bf16, 2, 8, 8, 2048, 2048, 128, mask="bool:b1qk"),
        Case("sdpa", bf16, 2, 8, 2, 1024, 3000, 64, mask="float:1hqk"),
        Case("sdpa", f16, 2, 8, 8, 2000, 2000, 96, mask="float:11qk:t", inputs="packed"),
        Case("sdpa", f32, 2, 4, 2, 1024, 2048, 128, causal=True, inputs="transposed"),
        Case("sdpa", bf16, 1, 8, 8, 4096, 4096, 64, causal=True, inputs="strided",
             grad_out="transposed"),
    ]
)


@pytest.mark.parametrize("case", GPU_GRID, ids=lambda c: c.id)
def test_kernel_matches_float64_cuda(case):
    check_case(case, device="cuda", backend="triton")


@pytest.mark.parametrize("case,magnitude", [
    (Case("fa", bf16, 2, 8, 2, 1024, 1024, 128, causal=True), 100.0),
    (Case("sdpa", bf16, 2, 8, 8, 1000, 1200, 64, mask="float:b1qk"), 100.0),
    (Case("fa", f16, 2, 8, 8, 1024, 1024, 64, causal=True), 10.0),
], ids=lambda x: x.id if isinstance(x, Case) else f"x{x:g}")
def test_large_magnitude_cuda(case, magnitude):
    r = check_case(case, device="cuda", magnitude=magnitude)
    for t in (r.out, *r.grads):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("api", ["sdpa", "fa"])
def test_fully_masked_rows_cuda(api):
    B, H, Sq, Sk, D = 2, 4, 1500, 700, 64
    if api == "fa":  # bottom-right causal with Sq > Sk: the first 800 rows see nothing
        case = Case("fa", bf16, B, H, H, Sq, Sk, D, causal=True)
        r = check_case(case, device="cuda")
        assert (r.out[:, : Sq - Sk] == 0).all() and (r.lse[:, :, : Sq - Sk] == -math.inf).all()
        assert (r.grads[0][:, : Sq - Sk] == 0).all()
    else:
        case = Case("sdpa", bf16, B, H, H, Sq, Sk, D)
        mask = torch.rand(B, 1, Sq, Sk, device="cuda") < 0.5
        mask[:, :, 100:300] = False
        r = check_case(case, device="cuda", mask=mask)
        assert (r.out[:, :, 100:300] == 0).all() and (r.lse[:, :, 100:300] == -math.inf).all()
        assert (r.grads[0][:, :, 100:300] == 0).all()


# --------------------------------------------------------------------------------------------
# the custom ops: opcheck, torch.compile
# --------------------------------------------------------------------------------------------

def _op_args(bshd, mask_kind, dtype=bf16, B=2, Hq=4, Hkv=2, Sq=100, Sk=130, D=64, causal=False):
    import flashkernels.ops.attention.launch  # noqa: F401

    layout = "bshd" if bshd else "bhsd"
    from helpers import make_qkv
    q, k, v = make_qkv(B, Hq, Hkv, Sq, Sk, D, dtype=dtype, device="cuda", layout=layout)
    if bshd:
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    mask = None
    if mask_kind == "bool":
        mask = torch.rand(B, 1, Sq, Sk, device="cuda") < 0.7
    elif mask_kind == "float":
        mask = torch.randn(1, Hq, Sq, Sk, device="cuda")
    offset = Sk - Sq if (causal and bshd) else 0
    return q, k, v, mask, 1.0 / math.sqrt(D), causal, offset, bshd, False, -1, -1, 0.0


OPCHECK = [(False, None, False, False), (True, None, True, True), (False, "bool", False, False),
           (False, "float", False, True), (True, None, False, False)]


@pytest.mark.no_poison
@pytest.mark.parametrize("bshd,mask_kind,causal,with_dlse", OPCHECK,
                         ids=lambda x: str(x))
def test_opcheck_attn_fwd_and_bwd(bshd, mask_kind, causal, with_dlse):
    """attn_fwd(q, k, v, mask, scale, causal, causal_offset, bshd, allow_tf32, window_left,
    window_right, softcap) -> (out, lse);
    attn_bwd(do, q, k, v, out, lse, dlse, mask, scale, causal, causal_offset, bshd, allow_tf32,
    window_left, window_right, softcap) -> (dq, dk, dv)."""
    args = _op_args(bshd, mask_kind, causal=causal)
    torch.library.opcheck(torch.ops.flashkernels.attn_fwd.default, args)
    q, k, v, mask, *rest = args
    out, lse = torch.ops.flashkernels.attn_fwd(*args)
    do = torch.randn_like(out)
    dlse = torch.randn_like(lse) if with_dlse else None
    torch.library.opcheck(torch.ops.flashkernels.attn_bwd.default,
                          (do, q, k, v, out, lse, dlse, mask, *rest))


@pytest.mark.no_poison
@pytest.mark.parametrize("case", [
    Case("fa", bf16, 2, 8, 2, 1000, 1100, 128, causal=True),
    Case("sdpa", f16, 2, 4, 4, 700, 900, 64, mask="bool:b1qk"),
    Case("sdpa", f32, 2, 4, 1, 513, 513, 80, causal=True),
], ids=lambda c: c.id)
def test_torch_compile_fullgraph_matches_eager(case):
    q, k, v = make_inputs(case, "cuda")
    mask = make_case_mask(case, "cuda")

    def f(q, k, v, mask):
        return call(case, q, k, v, mask, "triton")[0]

    compiled = torch.compile(f, fullgraph=True)
    out_e = f(q, k, v, mask)
    dout = torch.randn_like(out_e)
    g_e = torch.autograd.grad(out_e, (q, k, v), dout)
    out_c = compiled(q, k, v, mask)
    g_c = torch.autograd.grad(out_c, (q, k, v), dout)
    torch.testing.assert_close(out_c, out_e, rtol=0, atol=0)
    for name, a, b in zip(("dq", "dk", "dv"), g_c, g_e):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m: f"{name}: {m}")


# --------------------------------------------------------------------------------------------
# determinism
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", [
    Case("fa", bf16, 2, 16, 4, 2048, 2048, 128, causal=True),
    Case("sdpa", f16, 2, 8, 8, 1500, 2500, 64, mask="float:b1qk"),
    Case("fa", f32, 1, 8, 8, 1024, 1024, 64),
], ids=lambda c: c.id)
def test_determinism_cuda(case):
    q, k, v = make_inputs(case, "cuda")
    mask = make_case_mask(case, "cuda")
    dout = None
    runs = []
    for _ in range(3):
        if case.api == "fa":
            out, lse, _ = flashkernels.flash_attn_func(q, k, v, causal=case.causal, deterministic=True,
                                                       return_attn_probs=True, backend="triton")
        else:
            from cases import kernel_lse
            out = call(case, q, k, v, mask, "triton")[0]
            lse = kernel_lse(case, q, k, v, mask)
        dout = torch.randn_like(out) if dout is None else dout
        runs.append((out, lse, *torch.autograd.grad(out, (q, k, v), dout)))
    for i, run in enumerate(runs[1:], 1):
        for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), runs[0], run):
            assert torch.equal(a, b), f"{name} of run {i} differs from run 0"


# --------------------------------------------------------------------------------------------
# more than 2^31 elements: int64 offsets
# --------------------------------------------------------------------------------------------

@pytest.mark.big_memory
def test_more_than_2_31_elements():
    """q, k, v, out, dq, dk, dv each hold > 2^31 elements (bf16, 4.3 GB each): batch elements
    past the 2^31 mark must be right. Checked on slices against float64. (B*H stays under the
    65535 limit of a CUDA grid's y dimension; test_batch_times_heads_past_grid_y_limit goes
    past it.)"""
    H, S, D = 8, 512, 128
    B = 2**31 // (H * S * D) + 3
    assert B * H * S * D > 2**31 and B * H < 65535
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=bf16, requires_grad=True) for _ in range(3))
    out = flashkernels.flash_attn_func(q, k, v, causal=True, backend="triton")
    dout = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    for t in (out, dq, dk, dv):
        assert not t.isnan().any()
    from flashkernels.ops.attention.reference import attention_reference
    for b in [0, B // 2, B - 3, B - 1]:
        sl = slice(b, b + 1)
        qs, ks, vs = (x[sl].detach().transpose(1, 2) for x in (q, k, v))
        dos = dout[sl].transpose(1, 2)
        ref_q, ref_k, ref_v = (x.double().requires_grad_() for x in (qs, ks, vs))
        ref, _ = naive_attention(ref_q, ref_k, ref_v, causal="bottom_right")
        ref_g = torch.autograd.grad(ref, (ref_q, ref_k, ref_v), dos.double())
        pt_q, pt_k, pt_v = (x.clone().requires_grad_() for x in (qs, ks, vs))
        pt, _ = attention_reference(pt_q, pt_k, pt_v, causal=True, causal_align="bottom_right",
                                    compute_dtype=bf16)
        pt_g = torch.autograd.grad(pt, (pt_q, pt_k, pt_v), dos)
        assert_close_policy(out[sl].transpose(1, 2), ref, pt, name=f"out[{b}]")
        for name, g, r, p in zip(("dq", "dk", "dv"), (dq, dk, dv), ref_g, pt_g):
            assert_close_policy(g[sl].transpose(1, 2), r, p, factor=3.0, name=f"{name}[{b}]")


@pytest.mark.big_memory
def test_key_offsets_past_2_31_within_one_head():
    """Offsets inside one (batch, head) past 2^31 elements: one query against 2^18 + 37 keys laid
    out (B, S, H, D) with H * D = 8192, so the last key row starts past element 2^31 of K and V.
    The batch and head bases are small here; only the per-key offset can overflow."""
    Sk, H, D = 2**18 + 37, 64, 128
    assert (Sk - 1) * H * D > 2**31
    torch.manual_seed(0)
    q = torch.randn(1, 1, H, D, device="cuda", dtype=bf16, requires_grad=True)
    k = torch.randn(1, Sk, H, D, device="cuda", dtype=bf16)
    v = torch.randn(1, Sk, H, D, device="cuda", dtype=bf16)
    # Make the last keys matter: a key equal to q * 4 near the end dominates the softmax.
    with torch.no_grad():
        k[0, -3] = q[0, 0] * 4
    k.requires_grad_()
    v.requires_grad_()
    out, lse, _ = flashkernels.flash_attn_func(q, k, v, return_attn_probs=True, backend="triton")
    dout = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    heads = [0, H - 1]  # float64 copies of all 64 heads would take 34 GB; two heads suffice
    qb, kb, vb = (x.detach()[:, :, heads].transpose(1, 2) for x in (q, k, v))
    ref, ref_lse = naive_attention(qb, kb, vb)
    pt, pt_lse = attention_reference(qb, kb, vb, compute_dtype=bf16)
    assert_close_policy(out[:, :, heads].transpose(1, 2), ref, pt, name="out")
    assert_close_policy(lse[:, heads], ref_lse, pt_lse, name="lse")
    # dV of the last keys (their rows start past element 2^31) against float64.
    p = torch.softmax((qb.double() @ kb.double().transpose(-1, -2)) / math.sqrt(D), dim=-1)
    dv_ref = p[..., -64:].transpose(-1, -2) @ dout[:, :, heads].transpose(1, 2).double()
    dv_tail = dv[:, -64:, heads].transpose(1, 2).double()
    err = (dv_tail - dv_ref).abs().max().item()
    assert err <= 2e-2 * max(1.0, dv_ref.abs().max().item()), f"dv tail error {err}"
    assert torch.isfinite(dq).all() and torch.isfinite(dk[0, -64:]).all()


@pytest.mark.big_memory
@pytest.mark.parametrize("api", ["sdpa", "fa"])
def test_batch_times_heads_past_grid_y_limit(api):
    """B * H = 65600 programs along one grid axis: past CUDA's 65535 limit for grid y/z."""
    check_case(Case(api, f16, 8200, 8, 8 if api == "sdpa" else 2, 16, 24, 16, causal=True),
               device="cuda")


# --------------------------------------------------------------------------------------------
# against torch's SDPA on the GPU
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", [
    Case("sdpa", bf16, 2, 16, 16, 2048, 2048, 128, causal=True),
    Case("sdpa", f16, 2, 8, 2, 1024, 3000, 64),
    Case("sdpa", bf16, 2, 8, 8, 1500, 1500, 96, mask="float:1hqk"),
], ids=lambda c: c.id)
def test_against_torch_sdpa(case):
    """No worse than torch's own SDPA (same dtype) against float64: 2x forward, 3x gradients."""
    q, k, v = make_inputs(case, "cuda")
    mask = make_case_mask(case, "cuda")
    kw = dict(attn_mask=mask, is_causal=case.causal, enable_gqa=case.Hq != case.Hkv)
    ours = flashkernels.scaled_dot_product_attention(q, k, v, backend="triton", **kw)
    theirs = F.scaled_dot_product_attention(q, k, v, **{**kw, "attn_mask": None if mask is None else mask.to(q.dtype)})
    dout = torch.randn_like(ours)
    g_ours = torch.autograd.grad(ours, (q, k, v), dout)
    g_theirs = torch.autograd.grad(theirs, (q, k, v), dout)
    rq, rk, rv = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref, _ = naive_attention(rq, rk, rv, causal="top_left" if case.causal else None, mask=mask)
    g_ref = torch.autograd.grad(ref, (rq, rk, rv), dout.double())
    assert_close_policy(ours, ref, theirs, name="out vs torch SDPA")
    for name, a, b, r in zip(("dq", "dk", "dv"), g_ours, g_theirs, g_ref):
        assert_close_policy(a, r, b, factor=3.0, name=f"{name} vs torch SDPA")


# --------------------------------------------------------------------------------------------
# compute-sanitizer on a small case
# --------------------------------------------------------------------------------------------

SANITIZE = textwrap.dedent("""
    import torch, flashkernels
    torch.manual_seed(0)
    for dt, causal, Sq, Sk, D in [(torch.bfloat16, True, 77, 130, 59), (torch.float16, False, 130, 77, 128)]:
        q = torch.randn(2, Sq, 4, D, device="cuda", dtype=dt, requires_grad=True)
        k = torch.randn(2, Sk, 2, D, device="cuda", dtype=dt, requires_grad=True)
        v = torch.randn(2, Sk, 2, D, device="cuda", dtype=dt, requires_grad=True)
        out = flashkernels.flash_attn_func(q, k, v, causal=causal, backend="triton")
        out.backward(torch.randn_like(out))
        m = torch.rand(2, 1, Sq, Sk, device="cuda") < 0.5
        qs, ks, vs = (x.detach().transpose(1, 2).requires_grad_() for x in (q, k, v))
        o = flashkernels.scaled_dot_product_attention(qs, ks, vs, attn_mask=m, enable_gqa=True, backend="triton")
        o.backward(torch.randn_like(o))
    torch.cuda.synchronize()
    print("done")
""")


@pytest.mark.big_memory
@pytest.mark.skipif(shutil.which("compute-sanitizer") is None, reason="compute-sanitizer not found")
@pytest.mark.parametrize("tool", ["memcheck", "racecheck"])
def test_compute_sanitizer(tool, tmp_path):
    assert_compute_sanitizer_clean(tool, SANITIZE, tmp_path)
