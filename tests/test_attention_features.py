"""flash_attn_func's sliding window (``window_size``) and score soft-capping (``softcap``), forward
(out, lse) and backward (dq, dk, dv), on the Triton kernels (the interpreter on a CPU, fp32 and
fp16) and on the reference backend, against a float64 formula written from the definition
(helpers.f64_flash_attention):

    s = q k^T * scale;  s = softcap * tanh(s / softcap) if softcap;  s = -inf outside
    i + Sk - Sq - left <= j <= i + Sk - Sq + right (a side of -1 unbounded; causal: right = 0)

held to the tolerance policy of helpers.py. Shapes are small (the interpreter is slow) and odd;
the interpreter's blocks are 16 and 32 wide, so windows of 3..12 keys cut blocks every way.
"""

import math

import pytest
import torch

import flashkernels
from flashkernels.ops.attention.reference import attention_reference
from helpers import FP32_SEED_TARGET, assert_close_policy, data_magnitude, f64_flash_attention, randn

f16, f32 = torch.float16, torch.float32
BACKENDS = ["triton", "reference"]


# (dtype, B, Hq, Hkv, Sq, Sk, D, causal, window_size, softcap)
CASES = [
    (f32, 1, 4, 2, 40, 70, 16, False, (10, -1), 0.0),    # left only, GQA
    (f16, 2, 2, 2, 50, 50, 32, False, (-1, 5), 0.0),     # right only
    (f32, 1, 2, 1, 70, 45, 16, False, (12, 7), 0.0),     # both; Sq > Sk: rows 0..17 see nothing
    (f16, 1, 2, 2, 45, 61, 16, True, (9, -1), 0.0),      # with causal (right = 0)
    (f32, 1, 2, 2, 53, 53, 16, True, (3, 4), 0.0),       # window < one block; causal caps right
    (f32, 1, 2, 1, 70, 20, 16, False, (0, 0), 0.0),      # one key a row, rows 0..49 see nothing
    (f32, 1, 4, 2, 37, 53, 16, False, (-1, -1), 5.0),    # softcap, GQA
    (f16, 1, 4, 1, 60, 45, 32, True, (-1, -1), 2.0),     # softcap + causal (dead rows), MQA
    (f32, 2, 2, 2, 41, 41, 16, False, (6, 2), 1.0),      # softcap + window
]


def _id(c):
    dt, B, Hq, Hkv, Sq, Sk, D, causal, ws, cap = c
    parts = [{f16: "fp16", f32: "fp32"}[dt], f"b{B}h{Hq}x{Hkv}", f"q{Sq}-k{Sk}", f"d{D}",
             f"win{ws[0]}_{ws[1]}"]
    if causal:
        parts.append("causal")
    if cap:
        parts.append(f"cap{cap:g}")
    return "-".join(parts)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_window_softcap(case, backend):
    dtype, B, Hq, Hkv, Sq, Sk, D, causal, ws, cap = case
    q = randn(B, Sq, Hq, D, dtype=dtype, requires_grad=True)
    k = randn(B, Sk, Hkv, D, dtype=dtype, requires_grad=True)
    v = randn(B, Sk, Hkv, D, dtype=dtype, requires_grad=True)
    out, lse, probs = flashkernels.flash_attn_func(q, k, v, causal=causal, window_size=ws, softcap=cap,
                                                   return_attn_probs=True, backend=backend)
    assert probs is None and out.shape == q.shape and out.dtype == dtype
    assert lse.shape == (B, Hq, Sq) and lse.dtype == torch.float32

    ref_in = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref_out, ref_lse = f64_flash_attention(*ref_in, causal=causal, window_size=ws, softcap=cap)
    pt_in = [x.detach().transpose(1, 2).requires_grad_() for x in (q, k, v)]
    pt_out, pt_lse = attention_reference(*pt_in, causal=causal, causal_align="bottom_right",
                                         window_size=ws, softcap=cap, compute_dtype=dtype)
    pt_out = pt_out.transpose(1, 2)

    seed = FP32_SEED_TARGET if dtype == f32 else None
    mag = data_magnitude(q, k, v)
    assert_close_policy(out, ref_out, pt_out, name="out", seed_target=seed, data_magnitude=mag)
    finite = ref_lse[torch.isfinite(ref_lse)]
    lse_scale = max(1.0, finite.abs().max().item() if finite.numel() else 0.0)
    assert_close_policy(lse, ref_lse, pt_lse, name="lse", seed_target=seed and seed * lse_scale,
                        data_magnitude=mag)
    if not torch.isfinite(ref_lse).all():  # the case leaves rows empty: out 0 there
        empty = ~torch.isfinite(ref_lse).transpose(1, 2)  # (B, Sq, Hq)
        assert (out[empty] == 0).all()

    dout = randn(*out.shape, dtype=dtype)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    pt_grads = torch.autograd.grad(pt_out, pt_in, dout)
    ref_grads = torch.autograd.grad(ref_out, ref_in, dout.double())
    gmag = max(mag, data_magnitude(dout))
    for name, g, g_pt, g_ref in zip(("dq", "dk", "dv"), grads, pt_grads, ref_grads):
        g_pt = g_pt.transpose(1, 2)
        rel = max(1.0, g_ref.abs().max().item())
        assert_close_policy(g, g_ref, g_pt, factor=3.0, name=name, seed_target=seed and seed * rel,
                            data_magnitude=gmag)


@pytest.mark.parametrize("backend", BACKENDS)
def test_window_that_is_plain_causal(backend):
    """window (-1, 0) is causal, and causal with any window right bound is right = 0."""
    q, k, v = (randn(1, s, 2, 16) for s in (33, 47, 47))
    a = flashkernels.flash_attn_func(q, k, v, window_size=(-1, 0), backend=backend)
    b = flashkernels.flash_attn_func(q, k, v, causal=True, backend=backend)
    c = flashkernels.flash_attn_func(q, k, v, causal=True, window_size=(-1, 9), backend=backend)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(c, b, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_softcap_zero_and_none_are_off(backend):
    q, k, v = (randn(1, 21, 2, 16) for _ in range(3))
    a = flashkernels.flash_attn_func(q, k, v, backend=backend)
    for off in (0, 0.0, None):
        torch.testing.assert_close(flashkernels.flash_attn_func(q, k, v, softcap=off, backend=backend), a,
                                   rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("case", [
    (torch.bfloat16, 2, 8, 2, 1000, 1100, 128, False, (256, 0), 0.0),
    (torch.bfloat16, 2, 8, 2, 1100, 1000, 64, True, (300, -1), 30.0),
    (torch.bfloat16, 1, 4, 4, 777, 777, 96, False, (-1, -1), 50.0),
], ids=[_id(c).replace("fp16", "bf16") for c in [
    (f16, 2, 8, 2, 1000, 1100, 128, False, (256, 0), 0.0),
    (f16, 2, 8, 2, 1100, 1000, 64, True, (300, -1), 30.0),
    (f16, 1, 4, 4, 777, 777, 96, False, (-1, -1), 50.0)]])
def test_window_softcap_gpu_bf16(case):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    dtype, B, Hq, Hkv, Sq, Sk, D, causal, ws, cap = case
    q = randn(B, Sq, Hq, D, dtype=dtype, device="cuda", requires_grad=True)
    k = randn(B, Sk, Hkv, D, dtype=dtype, device="cuda", requires_grad=True)
    v = randn(B, Sk, Hkv, D, dtype=dtype, device="cuda", requires_grad=True)
    out, lse, _ = flashkernels.flash_attn_func(q, k, v, causal=causal, window_size=ws, softcap=cap,
                                               return_attn_probs=True, backend="triton")
    ref_in = [x.detach().float().requires_grad_() for x in (q, k, v)]
    ref_out, ref_lse = attention_reference(*(x.transpose(1, 2) for x in ref_in), causal=causal,
                                           causal_align="bottom_right", window_size=ws, softcap=cap)
    pt_in = [x.detach().transpose(1, 2).requires_grad_() for x in (q, k, v)]
    pt_out, pt_lse = attention_reference(*pt_in, causal=causal, causal_align="bottom_right",
                                         window_size=ws, softcap=cap, compute_dtype=dtype)
    mag = data_magnitude(q, k, v)
    assert_close_policy(out, ref_out.transpose(1, 2), pt_out.transpose(1, 2), name="out", data_magnitude=mag)
    assert_close_policy(lse, ref_lse, pt_lse, name="lse", data_magnitude=mag)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref_grads = torch.autograd.grad(ref_out.transpose(1, 2), ref_in, dout.float())
    pt_grads = torch.autograd.grad(pt_out.transpose(1, 2), pt_in, dout)
    for name, g, g_pt, g_ref in zip(("dq", "dk", "dv"), grads, pt_grads, ref_grads):
        assert_close_policy(g, g_ref, g_pt.transpose(1, 2), factor=3.0, name=name,
                            data_magnitude=max(mag, data_magnitude(dout)))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["scale>0", "scale<0"])
def test_forward_score_orders_both_exact(sign, causal):
    """The forward takes the row max over the raw products and puts the scale into the
    exponent's FMA only when the scale is positive (SCALE_POSITIVE); a negative scale takes the
    scale-first order. Both meet the fp32 target against float64, in the unmasked and the masked
    (causal, key-tail) phases. softmax(s * (-c)) with q is softmax(s * c) with -q."""
    q, k, v = (randn(2, s, 4, 32, dtype=f32) for s in (45, 70, 70))
    out, lse, _ = flashkernels.flash_attn_func(q, k, v, softmax_scale=sign / math.sqrt(32), causal=causal,
                                               return_attn_probs=True, backend="triton")
    ref_out, ref_lse = f64_flash_attention(q * sign, k, v, causal=causal, window_size=(-1, -1), softcap=0.0)
    assert (out.double() - ref_out).abs().max().item() <= FP32_SEED_TARGET
    assert (lse.double() - ref_lse).abs().max().item() <= FP32_SEED_TARGET * max(1.0, ref_lse.abs().max().item())
