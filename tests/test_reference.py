"""The PyTorch reference (ops/attention/reference.py) against float64 math written here and
against torch's SDPA; and the public functions on the reference path (the CPU default)."""
import math
import resource
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

import flashkernels
from flashkernels.ops.attention.reference import attention_reference
from helpers import allowed_keys, bhsd, make_mask, make_qkv, naive_attention, naive_grads, randn

F64 = dict(rtol=0, atol=1e-12)

SEQ = [(1, 239), (113, 203), (203, 113), (239, 1), (64, 64)]
HEADS = [(4, 4), (4, 2), (4, 1)]  # MHA, GQA, MQA
CAUSAL = [None, "top_left", "bottom_right"]
# mask kind and the shape it is given in, as a function of (B, H, Sq, Sk)
MASKS = {
    "none": None,
    "bool-b1sk": ("bool", lambda B, H, Sq, Sk: (B, 1, Sq, Sk)),       # broadcast over heads
    "float-1hsk": ("float", lambda B, H, Sq, Sk: (1, H, Sq, Sk)),     # broadcast over batch
    "bool-sqsk": ("bool", lambda B, H, Sq, Sk: (Sq, Sk)),             # 2-D: over both
    "float-b11k": ("float", lambda B, H, Sq, Sk: (B, 1, 1, Sk)),      # key padding bias
}


def build_mask(name, B, H, Sq, Sk, keep=0.7):
    """Float masks in float64, as the inputs here: torch's CPU SDPA misreads a float32 mask
    given with float64 inputs (seen with torch 2.13), so the comparisons with it match dtypes."""
    spec = MASKS[name]
    if spec is None:
        return None
    kind, shape = spec
    return make_mask(kind, shape(B, H, Sq, Sk), keep=keep, dtype=torch.float64)


def live_rows(mask, causal, B, H, Sq, Sk):
    """(B, H, Sq) bool: rows with at least one allowed key."""
    allowed = allowed_keys(Sq, Sk, causal).expand(B, H, Sq, Sk)
    if mask is not None and mask.dtype == torch.bool:
        allowed = allowed & mask.expand(B, H, Sq, Sk)
    return allowed.any(-1)


# --------------------------------------------------------------------------------------------
# reference.py against the float64 math of this file
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("causal", CAUSAL, ids=lambda c: f"causal-{c}")
@pytest.mark.parametrize("hq,hkv", HEADS, ids=lambda h: str(h))
@pytest.mark.parametrize("sq,sk", SEQ, ids=[f"sq{a}-sk{b}" for a, b in SEQ])
def test_reference_matches_float64_math(sq, sk, hq, hkv, causal, mask_name):
    B, D = 2, 24
    q, k, v = make_qkv(B, hq, hkv, sq, sk, D, dtype=torch.float64)
    mask = build_mask(mask_name, B, hq, sq, sk)
    out, lse = attention_reference(q, k, v, causal=causal is not None,
                                   causal_align=causal or "top_left", mask=mask)
    ref_out, ref_lse = naive_attention(q, k, v, causal=causal, mask=mask)
    assert out.dtype == torch.float64 and lse.dtype == torch.float64
    torch.testing.assert_close(out, ref_out, **F64)
    torch.testing.assert_close(lse, ref_lse, **F64)  # -inf rows compare equal


@pytest.mark.parametrize("mask_name", ["none", "bool-b1sk", "float-1hsk"])
@pytest.mark.parametrize("causal", CAUSAL, ids=lambda c: f"causal-{c}")
@pytest.mark.parametrize("sq,sk", [(113, 203), (203, 113)], ids=["sq113-sk203", "sq203-sk113"])
def test_reference_gradients_match_float64_math(sq, sk, causal, mask_name):
    B, Hq, Hkv, D = 2, 4, 2, 40
    q, k, v = make_qkv(B, Hq, Hkv, sq, sk, D, dtype=torch.float64, requires_grad=True)
    mask = build_mask(mask_name, B, Hq, sq, sk, keep=0.3)
    dout = randn(B, Hq, sq, D, dtype=torch.float64)
    out, _ = attention_reference(q, k, v, causal=causal is not None,
                                 causal_align=causal or "top_left", mask=mask)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    _, _, *ref_grads = naive_grads(q, k, v, dout, causal=causal, mask=mask)
    for name, g, r in zip("qkv", grads, ref_grads):
        assert not g.isnan().any(), f"d{name} has NaN"
        torch.testing.assert_close(g, r, **F64, msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("scale", [None, 0.3, 2.0])
def test_reference_scale(scale):
    q, k, v = make_qkv(2, 3, 3, 17, 33, 16, dtype=torch.float64)
    out, lse = attention_reference(q, k, v, scale=scale)
    ref_out, ref_lse = naive_attention(q, k, v, scale=scale)
    torch.testing.assert_close(out, ref_out, **F64)
    torch.testing.assert_close(lse, ref_lse, **F64)


def test_reference_value_head_dim_may_differ():
    q, k, v = make_qkv(1, 2, 2, 9, 31, 16, Dv=24, dtype=torch.float64)
    out, _ = attention_reference(q, k, v)
    torch.testing.assert_close(out, naive_attention(q, k, v)[0], **F64)


# --------------------------------------------------------------------------------------------
# against torch's SDPA (float64), which also checks the float64 math of this file
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("causal", CAUSAL, ids=lambda c: f"causal-{c}")
@pytest.mark.parametrize("hq,hkv", HEADS, ids=lambda h: str(h))
@pytest.mark.parametrize("sq,sk", [(113, 203), (203, 113), (1, 239)], ids=lambda s: str(s))
def test_reference_matches_torch_sdpa(sq, sk, hq, hkv, causal, mask_name):
    """Where torch's SDPA is defined: it returns NaN (or garbage) on fully masked rows, which we
    define as 0, so those rows are left out here and checked against our own math above."""
    B, D = 2, 32
    q, k, v = make_qkv(B, hq, hkv, sq, sk, D, dtype=torch.float64)
    mask = build_mask(mask_name, B, hq, sq, sk)
    # SDPA takes one attn_mask: fold the causal pattern in as a bool mask.
    sdpa_mask = mask
    if causal is not None:
        c = allowed_keys(sq, sk, causal)
        if mask is None:
            sdpa_mask = c
        elif mask.dtype == torch.bool:
            sdpa_mask = mask & c
        else:
            sdpa_mask = mask.masked_fill(~c, -math.inf)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask, enable_gqa=hq != hkv)
    out, _ = attention_reference(q, k, v, causal=causal is not None,
                                 causal_align=causal or "top_left", mask=mask)
    mine, _ = naive_attention(q, k, v, causal=causal, mask=mask)
    live = live_rows(mask, causal, B, hq, sq, sk)
    torch.testing.assert_close(out[live], expected[live], rtol=0, atol=1e-10)
    torch.testing.assert_close(mine[live], expected[live], rtol=0, atol=1e-10)
    assert (out[~live] == 0).all()


def test_bottom_right_matches_torch_causal_lower_right():
    q, k, v = make_qkv(2, 3, 3, 37, 100, 16, dtype=torch.float64)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(37, 100))
    out, _ = attention_reference(q, k, v, causal=True, causal_align="bottom_right")
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


def test_causal_alignments_differ_when_lengths_differ():
    """Guards the test above against a reference that ignores causal_align."""
    q, k, v = make_qkv(1, 1, 1, 5, 9, 8, dtype=torch.float64)
    tl, _ = attention_reference(q, k, v, causal=True, causal_align="top_left")
    br, _ = attention_reference(q, k, v, causal=True, causal_align="bottom_right")
    assert (tl - br).abs().max() > 1e-3
    # the last query row sees every key under bottom-right alignment
    full, _ = attention_reference(q, k, v)
    torch.testing.assert_close(br[:, :, -1], full[:, :, -1], **F64)


# --------------------------------------------------------------------------------------------
# precision, chunking, size
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_reference_dtypes(dtype):
    q, k, v = make_qkv(2, 4, 2, 33, 65, 32, dtype=dtype)
    out, lse = attention_reference(q, k, v, causal=True)
    assert out.dtype == dtype and out.shape == (2, 4, 33, 32)
    assert lse.dtype == torch.float32 and lse.shape == (2, 4, 33)
    ref_out, ref_lse = naive_attention(q, k, v, causal="top_left")
    err = (out.double() - ref_out).abs().max().item()
    if dtype == torch.float32:
        assert err <= 1e-5
    else:  # computed in float32 (the default for half inputs): only the output rounding is left
        assert err <= 1.01 * torch.finfo(dtype).eps / 2 * ref_out.abs().max().item()
    assert (lse.double() - ref_lse).abs().max() <= 1e-5
    # same-precision compute: a real, larger but bounded, error
    pt, _ = attention_reference(q, k, v, causal=True, compute_dtype=dtype)
    assert pt.dtype == dtype
    err_pt = (pt.double() - ref_out).abs().max().item()
    assert err_pt <= 50 * torch.finfo(dtype).eps


@pytest.mark.parametrize("chunk_bytes", [1, 5000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_chunking(dtype, chunk_bytes):
    """Chunks of 1 and of a few query rows give the whole-matrix result up to the BLAS's
    rounding (a row-vector product may sum in another order: bitwise equality does not hold);
    a wrong mask slice or causal offset per chunk would be off by O(1)."""
    B, Hq, Hkv, Sq, Sk, D = 2, 4, 2, 77, 130, 24
    q, k, v = make_qkv(B, Hq, Hkv, Sq, Sk, D, dtype=dtype)
    mask = make_mask("float", (B, 1, Sq, Sk), dtype=dtype)
    kw = dict(causal=True, causal_align="bottom_right", mask=mask)
    whole = attention_reference(q, k, v, **kw)
    chunked = attention_reference(q, k, v, chunk_bytes=chunk_bytes, **kw)
    for a, b in zip(whole, chunked):
        finite = torch.isfinite(a)
        assert torch.equal(finite, torch.isfinite(b))
        atol = 8 * torch.finfo(dtype).eps * a[finite].abs().max().item()
        torch.testing.assert_close(a[finite], b[finite], rtol=0, atol=atol)


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_reference_16k_one_head_forward():
    """Sq = Sk = 16384, D = 64, one head, causal: finishes, right on sampled rows (across chunk
    boundaries), and never holds the 16384 x 16384 score matrix (1 GiB in fp32)."""
    script = textwrap.dedent("""
        import resource, sys, time, torch
        from flashkernels.ops.attention.reference import attention_reference
        torch.manual_seed(0)
        S, D = 16384, 64
        q, k, v = (torch.randn(1, 1, S, D) for _ in range(3))
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        out, lse = attention_reference(q, k, v, causal=True)
        dt = time.perf_counter() - t
        grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
        torch.save(dict(q=q, k=k, v=v, out=out, lse=lse), sys.argv[1])
        print(f"{dt:.2f} {grew:.0f}")
    """)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/r.pt"
        res = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, res.stderr
        seconds, grew_mb = map(float, res.stdout.split())
        d = torch.load(path)
    q, k, v, out, lse = d["q"], d["k"], d["v"], d["out"], d["lse"]
    assert out.shape == (1, 1, 16384, 64) and lse.shape == (1, 1, 16384)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    for r in [0, 1, 4095, 4096, 8191, 8192, 12345, 16383]:
        # row r sees keys 0..r (top-left causal)
        ref_out, ref_lse = naive_attention(q[:, :, r:r + 1], k[:, :, :r + 1], v[:, :, :r + 1])
        assert (out[:, :, r:r + 1].double() - ref_out).abs().max() <= 1e-5, f"row {r}"
        assert (lse[:, :, r:r + 1].double() - ref_lse).abs().max() <= 1e-5, f"row {r}"
    # chunked, about 0.9 GiB was seen; whole, the scores alone are 1 GiB and their masked copy
    # and exp another 2
    assert grew_mb < 2048, f"peak RSS grew by {grew_mb:.0f} MiB: a whole score matrix was built?"
    print(f"16k reference forward: {seconds:.1f} s, peak RSS +{grew_mb:.0f} MiB")


# --------------------------------------------------------------------------------------------
# empty inputs
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("B,Sq,Sk", [(0, 8, 8), (2, 0, 8), (2, 8, 0), (2, 0, 0)],
                         ids=["batch0", "sq0", "sk0", "sq0-sk0"])
def test_reference_empty(B, Sq, Sk):
    q, k, v = make_qkv(B, 2, 2, Sq, Sk, 16)
    out, lse = attention_reference(q, k, v, causal=True)
    assert out.shape == (B, 2, Sq, 16) and lse.shape == (B, 2, Sq)
    assert (out == 0).all() and (lse == -math.inf).all()


# --------------------------------------------------------------------------------------------
# the public functions on the reference path: layouts, alignments, masks, GQA, lse
# --------------------------------------------------------------------------------------------

# is_causal with attn_mask is an error (test_bad_input.py)
@pytest.mark.parametrize("causal,mask_name", [(True, "none")] + [(False, m) for m in MASKS],
                         ids=["causal"] + list(MASKS))
@pytest.mark.parametrize("hq,hkv", HEADS, ids=lambda h: str(h))
def test_sdpa_reference_backend(hq, hkv, causal, mask_name):
    B, Sq, Sk, D = 2, 47, 90, 24
    q, k, v = make_qkv(B, hq, hkv, Sq, Sk, D, dtype=torch.float64)
    mask = build_mask(mask_name, B, hq, Sq, Sk)
    out = flashkernels.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal, scale=0.2, enable_gqa=hq != hkv, backend="reference")
    ref, _ = naive_attention(q, k, v, scale=0.2, causal="top_left" if causal else None, mask=mask)
    assert out.dtype == torch.float64 and out.shape == (B, hq, Sq, D)
    torch.testing.assert_close(out, ref, **F64)
    live = live_rows(mask, "top_left" if causal else None, B, hq, Sq, Sk)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=0.2,
                                              enable_gqa=hq != hkv)
    torch.testing.assert_close(out[live], expected[live], rtol=0, atol=1e-10)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("sq,sk", [(47, 90), (90, 47), (1, 64), (64, 1)], ids=lambda s: str(s))
@pytest.mark.parametrize("hq,hkv", HEADS, ids=lambda h: str(h))
def test_flash_attn_func_reference_backend(hq, hkv, sq, sk, causal):
    B, D = 2, 24
    q, k, v = make_qkv(B, hq, hkv, sq, sk, D, dtype=torch.float64, layout="bshd")
    out, lse, probs = flashkernels.flash_attn_func(q, k, v, causal=causal, softmax_scale=0.3,
                                                   return_attn_probs=True, backend="reference")
    assert probs is None
    ref, ref_lse = naive_attention(bhsd(q), bhsd(k), bhsd(v), scale=0.3,
                                   causal="bottom_right" if causal else None)
    assert out.shape == (B, sq, hq, D) and out.dtype == torch.float64
    assert lse.shape == (B, hq, sq)
    torch.testing.assert_close(out, ref.transpose(1, 2), **F64)
    # lse is documented float32; its value must be right to float32 rounding
    torch.testing.assert_close(lse.double(), ref_lse, rtol=2e-7, atol=1e-6)
    plain = flashkernels.flash_attn_func(q, k, v, causal=causal, softmax_scale=0.3, backend="reference")
    assert torch.equal(plain, out)


def test_flash_attn_func_lse_is_float32():
    q, k, v = make_qkv(2, 2, 2, 16, 16, 16, dtype=torch.float16, layout="bshd")
    out, lse, _ = flashkernels.flash_attn_func(q, k, v, return_attn_probs=True, backend="reference")
    assert out.dtype == torch.float16 and lse.dtype == torch.float32


@pytest.mark.parametrize("fn", ["sdpa", "fa"])
def test_reference_backend_gradients(fn):
    B, Hq, Hkv, Sq, Sk, D = 2, 4, 2, 33, 70, 16
    layout = "bhsd" if fn == "sdpa" else "bshd"
    q, k, v = make_qkv(B, Hq, Hkv, Sq, Sk, D, dtype=torch.float64, layout=layout, requires_grad=True)
    if fn == "sdpa":
        out = flashkernels.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True,
                                                        backend="reference")
        causal, conv = "top_left", (lambda x: x)
    else:
        out = flashkernels.flash_attn_func(q, k, v, causal=True, backend="reference")
        causal, conv = "bottom_right", bhsd
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    _, _, *ref = naive_grads(conv(q), conv(k), conv(v), conv(dout), causal=causal)
    for name, g, r in zip("qkv", grads, ref):
        torch.testing.assert_close(conv(g), r, **F64, msg=lambda m: f"d{name}: {m}")


def test_auto_backend_on_cpu_is_reference(monkeypatch):
    monkeypatch.delenv("FLASHKERNELS_BACKEND", raising=False)
    q, k, v = make_qkv(1, 2, 2, 20, 20, 16, dtype=torch.float64)
    a = flashkernels.scaled_dot_product_attention(q, k, v)
    b = flashkernels.scaled_dot_product_attention(q, k, v, backend="reference")
    assert torch.equal(a, b)


def test_reference_settles_onemkl_kernel_choice_first(monkeypatch):
    """attention_reference first calls flashkernels._cpu_math.settle: each of its functions once on
    one element, float32 then float64, before the reference's own math, and only in the first call
    of the process; its functions are every oneMKL (VML) unary function the reference calls."""
    import re
    from pathlib import Path

    from flashkernels import _cpu_math
    from flashkernels.ops.attention import reference

    vml = {"abs", "acos", "asin", "atan", "cos", "erf", "erfc", "exp", "expm1", "log", "log10", "log1p",
           "log2", "sin", "sqrt", "tan", "tanh", "trunc"}  # ATen's unary ops through oneMKL's VML
    used = set(re.findall(r"torch\.(\w+)\(", Path(reference.__file__).read_text())) & vml
    assert used and used <= {fn.__name__ for fn in _cpu_math._FUNCTIONS}, used

    calls = []
    monkeypatch.setattr(_cpu_math, "_FUNCTIONS",
                        tuple((lambda t, n=fn.__name__: calls.append((n, t.dtype, t.numel())))
                              for fn in _cpu_math._FUNCTIONS))
    monkeypatch.setattr(_cpu_math, "_settled", False)
    q = torch.randn(1, 2, 3, 4)
    attention_reference(q, q, q, softcap=2.0)
    names = [fn.__name__ for fn in (torch.exp, torch.log, torch.tanh)]
    assert calls == [(n, dt, 1) for dt in (torch.float32, torch.float64) for n in names]
    attention_reference(q, q, q)
    assert len(calls) == 6
