"""TESTING.md's bad input, for both public functions: each raises ValueError, TypeError or
NotImplementedError (RuntimeError for a backend that cannot run) whose message names the
argument, what was expected and what was given, and raises it before anything is computed."""
import re

import pytest
import torch

import flashkernels
import flashkernels.ops.attention.api as api_mod
import flashkernels.ops.attention.autograd as autograd_mod
from helpers import make_qkv, naive_attention

SDPA = flashkernels.scaled_dot_product_attention
FA = flashkernels.flash_attn_func


@pytest.fixture
def nothing_runs(monkeypatch):
    """Fail the test if a call gets as far as either backend."""
    def refuse(*args, **kwargs):
        raise AssertionError("the call reached a backend: the input should have been refused first")

    monkeypatch.setattr(api_mod, "attention_reference", refuse)
    monkeypatch.setattr(autograd_mod, "flash_attention", refuse)


def qkv(api, B=2, Hq=4, Hkv=4, Sq=8, Sk=8, D=16, dtype=torch.float32, **kw):
    return make_qkv(B, Hq, Hkv, Sq, Sk, D, dtype=dtype, layout="bhsd" if api == "sdpa" else "bshd", **kw)


def run(api, q, k, v, backend="triton", **kw):
    fn = SDPA if api == "sdpa" else FA
    return fn(q, k, v, backend=backend, **kw)


NAMES = {"sdpa": ("query", "key", "value"), "fa": ("q", "k", "v")}
APIS = ["sdpa", "fa"]


def names(api, i):
    """Regex for the i-th tensor argument's name as a word."""
    return rf"\b{NAMES[api][i]}\b"


# --------------------------------------------------------------------------------------------
# tensors
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("rank", [3, 5])
def test_wrong_rank(api, which, rank, nothing_runs):
    t = list(qkv(api))
    t[which] = t[which].reshape(t[which].shape[0], -1, t[which].shape[-1]) if rank == 3 else t[which][None]
    with pytest.raises(ValueError, match=rf"{names(api, which)}.*4-d.*got {rank}-d"):
        run(api, *t)


@pytest.mark.parametrize("api", APIS)
def test_not_a_tensor(api, nothing_runs):
    q, k, v = qkv(api)
    with pytest.raises(TypeError, match=rf"{names(api, 1)}.*Tensor.*list"):
        run(api, q, k.tolist(), v)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("which", [1, 2])
def test_mismatched_dtypes(api, which, nothing_runs):
    t = list(qkv(api))
    t[which] = t[which].half()
    with pytest.raises(TypeError, match=rf"{names(api, which)}.*dtype.*float16"):
        run(api, *t)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("which", [1, 2])
def test_mismatched_devices(api, which, nothing_runs):
    """A CPU machine has no second real device; the meta device stands in for one."""
    t = list(qkv(api))
    t[which] = t[which].to("meta")
    with pytest.raises(ValueError, match=rf"{names(api, which)}.*device.*meta"):
        run(api, *t)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.complex64,
                                   torch.float8_e4m3fn], ids=str)
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_unsupported_dtype(api, dtype, backend, nothing_runs):
    q, k, v = (x.to(dtype) for x in qkv(api))
    with pytest.raises(TypeError, match=rf"{names(api, 0)}.*dtype.*{re.escape(str(dtype))}"):
        run(api, q, k, v, backend=backend)


@pytest.mark.parametrize("api", APIS)
def test_float64_on_triton_is_refused(api, nothing_runs):
    """float64 runs on the reference path only; an explicit triton request says so."""
    q, k, v = qkv(api, dtype=torch.float64)
    with pytest.raises((RuntimeError, TypeError), match=r"(?i)triton.*float64"):
        run(api, q, k, v, backend="triton")


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("Hq,Hkv", [(6, 4), (4, 3), (1, 2)])
def test_query_heads_not_a_multiple(api, Hq, Hkv, nothing_runs):
    q, k, v = qkv(api, Hq=Hq, Hkv=Hkv)
    kw = dict(enable_gqa=True) if api == "sdpa" else {}
    with pytest.raises(ValueError, match=rf"{names(api, 0)}.*\b{Hq}\b.*\b{Hkv}\b"):
        run(api, q, k, v, **kw)


def test_sdpa_gqa_needs_enable_gqa(nothing_runs):
    q, k, v = qkv("sdpa", Hq=4, Hkv=2)
    with pytest.raises(ValueError, match=r"enable_gqa"):
        SDPA(q, k, v, backend="triton")


@pytest.mark.parametrize("api", APIS)
def test_key_value_disagree(api, nothing_runs):
    q, k, v = qkv(api)
    with pytest.raises(ValueError, match=rf"{names(api, 1)}.*{names(api, 2)}.*sequence length"):
        run(api, q, k, v[:, :, :5] if api == "sdpa" else v[:, :5])
    with pytest.raises(ValueError, match=rf"batch"):
        run(api, q, k[:1], v[:1])


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("D", [0, 257, 512])
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_head_dim_out_of_range(api, D, backend, nothing_runs):
    q, k, v = qkv(api, D=D)
    with pytest.raises(ValueError, match=rf"{names(api, 0)}.*head dim.*256.*got {D}\b"):
        run(api, q, k, v, backend=backend)


@pytest.mark.parametrize("api", APIS)
def test_query_key_head_dims_differ(api, nothing_runs):
    q, _, _ = qkv(api, D=32)
    _, k, v = qkv(api, D=16)
    with pytest.raises(ValueError, match=rf"{names(api, 1)}.*head dim.*32.*got 16"):
        run(api, q, k, v)


@pytest.mark.parametrize("api", APIS)
def test_value_head_dim_differs(api, nothing_runs):
    q, k, v = qkv(api, D=32)
    v = torch.randn(*v.shape[:-1], 48)
    with pytest.raises(NotImplementedError, match=rf"{names(api, 2)}.*32.*got 48"):
        run(api, q, k, v)


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("api", APIS)
def test_last_dim_stride_not_one_is_handled(api, backend):
    """A last-dim stride != 1 is accepted (the Triton path copies) and gives the right result."""
    B, H, S, D = 2, 2, 24, 16
    shape = (B, H, D, S) if api == "sdpa" else (B, S, D, H)
    q, k, v = (torch.randn(*shape).transpose(-1, -2) for _ in range(3))  # last stride S or H
    assert q.stride(-1) != 1
    out = run(api, q, k, v, backend=backend)
    conv = (lambda x: x) if api == "sdpa" else (lambda x: x.transpose(1, 2))
    ref, _ = naive_attention(conv(q), conv(k), conv(v))
    assert (conv(out).double() - ref).abs().max() <= 1e-5


# --------------------------------------------------------------------------------------------
# masks (scaled_dot_product_attention)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 4, 8, 9), (3, 4, 8, 8), (2, 4, 7, 8), (1, 2, 4, 8, 8), (2, 3, 8, 8)],
                         ids=str)
def test_mask_wrong_shape(shape, nothing_runs):
    q, k, v = qkv("sdpa")
    mask = torch.ones(shape, dtype=torch.bool)
    with pytest.raises(ValueError, match=rf"attn_mask.*broadcastable.*{re.escape(str(shape))}"):
        SDPA(q, k, v, attn_mask=mask, backend="triton")


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.int64], ids=str)
def test_mask_wrong_dtype(dtype, nothing_runs):
    q, k, v = qkv("sdpa")
    mask = torch.ones(8, 8, dtype=dtype)
    with pytest.raises(TypeError, match=rf"attn_mask.*bool.*{re.escape(str(dtype))}"):
        SDPA(q, k, v, attn_mask=mask, backend="triton")


def test_mask_wrong_device(nothing_runs):
    q, k, v = qkv("sdpa")
    with pytest.raises(ValueError, match=r"attn_mask.*device.*meta"):
        SDPA(q, k, v, attn_mask=torch.ones(8, 8, dtype=torch.bool, device="meta"), backend="triton")


def test_mask_not_a_tensor(nothing_runs):
    q, k, v = qkv("sdpa")
    with pytest.raises(TypeError, match=r"attn_mask.*Tensor"):
        SDPA(q, k, v, attn_mask=[[True] * 8] * 8, backend="triton")


@pytest.mark.parametrize("kind", [torch.bool, torch.float32])
def test_is_causal_with_mask(kind, nothing_runs):
    q, k, v = qkv("sdpa")
    with pytest.raises(ValueError, match=r"is_causal.*attn_mask"):
        SDPA(q, k, v, attn_mask=torch.ones(8, 8, dtype=kind), is_causal=True, backend="triton")


def test_float_mask_requiring_grad_on_triton(nothing_runs):
    q, k, v = qkv("sdpa", requires_grad=True)
    mask = torch.randn(8, 8, requires_grad=True)
    with pytest.raises(NotImplementedError, match=r"attn_mask.*grad"):
        SDPA(q, k, v, attn_mask=mask, backend="triton")


# --------------------------------------------------------------------------------------------
# features not supported
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_dropout(api, backend, nothing_runs):
    q, k, v = qkv(api)
    with pytest.raises(NotImplementedError, match=r"dropout_p.*0\.1"):
        run(api, q, k, v, backend=backend, dropout_p=0.1)


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_flash_attn_func_alibi_slopes_checked(backend, nothing_runs):
    q, k, v = qkv("fa")
    with pytest.raises(ValueError, match=r"alibi_slopes: expected shape"):
        FA(q, k, v, backend=backend, alibi_slopes=torch.ones(q.shape[2] + 1))


@pytest.mark.parametrize("kw,arg", [
    (dict(window_size=(16,)), r"window_size.*pair.*\(16,\)"),
    (dict(window_size=(1, 2, 3)), r"window_size.*pair.*\(1, 2, 3\)"),
    (dict(window_size=(-2, 0)), r"window_size.*>= -1.*\(-2, 0\)"),
    (dict(window_size=(1.5, 2)), r"window_size.*ints.*\(1\.5, 2\)"),
    (dict(window_size=(True, 2)), r"window_size.*ints.*\(True, 2\)"),
    (dict(window_size=4), r"window_size.*pair.*got 4"),
    (dict(softcap=-1.0), r"softcap.*>= 0.*-1\.0"),
    (dict(softcap=float("nan")), r"softcap.*finite.*nan"),
    (dict(softcap="30"), r"softcap.*'30'"),
], ids=["window-short", "window-long", "window-below-minus-1", "window-float", "window-bool",
        "window-scalar", "softcap-negative", "softcap-nan", "softcap-str"])
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_flash_attn_func_bad_window_softcap(kw, arg, backend, nothing_runs):
    q, k, v = qkv("fa")
    with pytest.raises(ValueError, match=arg):
        FA(q, k, v, backend=backend, **kw)


@pytest.mark.parametrize("api", APIS)
def test_scale_not_a_number(api, nothing_runs):
    q, k, v = qkv(api)
    name = "scale" if api == "sdpa" else "softmax_scale"
    kw = {name: "0.1"}
    with pytest.raises(TypeError, match=rf"\b{name}\b.*str"):
        run(api, q, k, v, **kw)


# --------------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("api", APIS)
def test_triton_without_interpreter_on_cpu(api, monkeypatch, nothing_runs):
    """backend="triton" where Triton cannot run (CPU tensors, no interpreter) raises and says
    why, never falling back to the reference."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = qkv(api)
    with pytest.raises(RuntimeError, match=r"backend='triton'.*(CPU|CUDA).*TRITON_INTERPRET"):
        run(api, q, k, v, backend="triton")


@pytest.mark.parametrize("api", APIS)
def test_triton_from_env_without_interpreter_on_cpu(api, monkeypatch, nothing_runs):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("FLASHKERNELS_BACKEND", "triton")
    q, k, v = qkv(api)
    with pytest.raises(RuntimeError, match=r"triton"):
        run(api, q, k, v, backend=None)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("backend", ["cuda", "Triton2", ""])
def test_unknown_backend(api, backend, nothing_runs):
    q, k, v = qkv(api)
    with pytest.raises(ValueError, match=rf"backend.*expected.*'auto'.*got {re.escape(repr(backend))}"):
        run(api, q, k, v, backend=backend)


@pytest.mark.parametrize("api", APIS)
def test_unknown_backend_from_env(api, monkeypatch, nothing_runs):
    monkeypatch.setenv("FLASHKERNELS_BACKEND", "fast")
    q, k, v = qkv(api)
    with pytest.raises(ValueError, match=r"FLASHKERNELS_BACKEND.*'fast'"):
        run(api, q, k, v, backend=None)


def test_fast_qkv_check_accepts_only_what_the_full_checks_accept():
    """_validate._qkv_ok (check_qkv's fast path) is True exactly where check_qkv's own checks
    pass, over shapes at and past each check's edge, in both layouts."""
    from flashkernels import _validate

    def full(q, k, v, layout):
        ok = _validate._qkv_ok
        _validate._qkv_ok = lambda *a: False  # the checks alone
        try:
            _validate.check_qkv(q, k, v, ("q", "k", "v"), layout)
            return True
        except (ValueError, TypeError, NotImplementedError):
            return False
        finally:
            _validate._qkv_ok = ok

    base = dict(B=2, Hq=4, Hkv=2, Sq=3, Sk=5, D=8)
    edits = [{}, dict(B=0), dict(Sq=0), dict(Sk=0), dict(Hkv=0), dict(Hkv=3), dict(Hkv=4), dict(Hq=1, Hkv=1),
             dict(D=0), dict(D=256), dict(D=257), dict(kB=1), dict(vS=4), dict(vH=1), dict(kD=4), dict(vD=4),
             dict(vdtype=torch.float16), dict(dtype=torch.int32), dict(dtype=torch.float64), dict(qrank=3),
             dict(vrank=5), dict(knot=True)]
    seen = set()
    for layout in ("BHSD", "BSHD"):
        for e in edits:
            p = {**base, **e}
            dt = p.get("dtype", torch.float32)

            def make(B, H, S, D, dtype=dt):
                shape = (B, H, S, D) if layout == "BHSD" else (B, S, H, D)
                return torch.zeros(shape, dtype=dtype)
            q = make(p["B"], p["Hq"], p["Sq"], p["D"])
            k = make(p.get("kB", p["B"]), p["Hkv"], p["Sk"], p.get("kD", p["D"]))
            v = make(p["B"], p.get("vH", p["Hkv"]), p.get("vS", p["Sk"]), p.get("vD", p["D"]),
                     p.get("vdtype", dt))
            if "qrank" in p:
                q = q.flatten(0, 1)
            if "vrank" in p:
                v = v[None]
            if "knot" in p:
                k = k.tolist()
            fast = _validate._qkv_ok(q, k, v, layout.index("H"), layout.index("S"))
            assert fast == full(q, k, v, layout), (layout, e)
            seen.add(fast)
    assert seen == {True, False}
