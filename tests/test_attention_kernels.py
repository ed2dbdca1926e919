"""The Triton attention kernels (forward: out and lse; backward: dq, dk, dv), through both public
functions with backend="triton", against float64 math under the tolerance policy.

On a CPU they run in Triton's interpreter (conftest sets TRITON_INTERPRET=1), which is slow:
the grid below spreads the features of TESTING.md's grid over a few dozen small cases (odd sizes,
every listed head dim once or more, MHA/GQA/MQA, both causal alignments, bool and float masks
broadcast every way, non-contiguous inputs and output gradients) rather than taking their
product. bf16 cannot run in the interpreter: test_gpu.py adds it, with larger shapes.
"""
import pytest
import torch

from cases import Case, call, check_case, make_case_mask, make_inputs, to_bhsd
from helpers import assert_close_policy, naive_attention
from flashkernels.ops.attention.reference import attention_reference

f16, f32 = torch.float16, torch.float32

GRID = [
    # flash_attn_func: (B, S, H, D), causal bottom-right, lse returned
    Case("fa", f32, 2, 2, 2, 1, 239, 64),
    Case("fa", f16, 2, 4, 2, 113, 203, 59, causal=True),
    Case("fa", f32, 2, 4, 1, 203, 113, 40, causal=True, inputs="transposed"),  # rows 0..89 see nothing
    Case("fa", f16, 2, 2, 2, 239, 1, 8, causal=True),                          # only the last row sees
    Case("fa", f32, 1, 3, 3, 127, 513, 128, inputs="strided", grad_out="transposed"),
    Case("fa", f16, 2, 4, 2, 97, 97, 80, causal=True, inputs="packed"),
    Case("fa", f32, 2, 2, 1, 64, 64, 16, causal=True, inputs="packed", scale=0.5),
    Case("fa", f16, 2, 2, 2, 33, 77, 111, grad_out="lastdim"),
    Case("fa", f32, 2, 2, 2, 50, 50, 256, causal=True),
    Case("fa", f16, 2, 2, 1, 65, 130, 192),
    Case("fa", f32, 2, 2, 2, 17, 300, 160, causal=True, inputs="lastdim"),
    Case("fa", f16, 1, 1, 1, 1023, 1024, 32, causal=True, grad_out="transposed"),
    Case("fa", f32, 1, 1, 1, 1024, 1023, 16, causal=True),
    Case("fa", f32, 2, 2, 2, 90, 57, 48, causal=True, lse_grad=True),          # with dead rows
    Case("fa", f16, 2, 4, 1, 57, 90, 64, lse_grad=True, inputs="transposed"),
    # scaled_dot_product_attention: (B, H, S, D), causal top-left, masks
    Case("sdpa", f32, 2, 4, 4, 113, 203, 64, causal=True),
    Case("sdpa", f16, 2, 2, 1, 203, 113, 32, causal=True, inputs="transposed"),
    Case("sdpa", f32, 2, 2, 2, 113, 203, 96, mask="bool:b1qk"),                # over heads
    Case("sdpa", f16, 2, 2, 2, 113, 203, 40, mask="float:1hqk"),               # over batch
    Case("sdpa", f32, 2, 4, 1, 77, 150, 59, mask="bool:qk"),                   # 2-D, MQA
    Case("sdpa", f16, 2, 4, 2, 1, 239, 128, mask="float:b11k:fp16"),           # key padding bias
    Case("sdpa", f32, 2, 2, 2, 239, 1, 16, mask="bool:11qk"),
    Case("sdpa", f16, 2, 2, 2, 64, 64, 111, mask="float:bhqk:ninf", grad_out="transposed"),
    Case("sdpa", f32, 2, 4, 2, 127, 127, 32, causal=True, inputs="packed"),
    Case("sdpa", f16, 2, 4, 4, 90, 90, 80, mask="bool:bhqk", inputs="strided"),
    Case("sdpa", f32, 2, 2, 2, 1, 1, 8),
    Case("sdpa", f16, 2, 2, 2, 45, 70, 160, mask="bool:1hqk:t", grad_out="lastdim"),
    Case("sdpa", f32, 2, 2, 1, 31, 47, 192, mask="float:11qk:t", scale=0.3),
    Case("sdpa", f16, 2, 2, 2, 70, 45, 256, inputs="lastdim"),
]


@pytest.mark.parametrize("case", GRID, ids=lambda c: c.id)
def test_kernel_matches_float64(case):
    check_case(case, backend="triton")


# --------------------------------------------------------------------------------------------
# both public functions give what backend="reference" gives
# --------------------------------------------------------------------------------------------

AGREE = [
    Case("fa", f32, 2, 4, 2, 37, 91, 24, causal=True),
    Case("fa", f16, 2, 2, 2, 91, 37, 48, causal=True, inputs="transposed"),
    Case("sdpa", f32, 2, 2, 1, 37, 91, 24, mask="float:b1qk"),
    Case("sdpa", f16, 2, 4, 2, 91, 37, 48, mask="bool:qk"),
]


@pytest.mark.parametrize("case", AGREE, ids=lambda c: c.id)
def test_triton_and_reference_backends_agree(case):
    """Same inputs through both backends: same shapes and dtypes, both within the policy of the
    float64 result (so within twice the rule of each other), gradients too."""
    q, k, v = make_inputs(case, "cpu", requires_grad=True)
    mask = make_case_mask(case, "cpu")
    out_t, lse_t = call(case, q, k, v, mask, "triton")
    out_r, lse_r = call(case, q, k, v, mask, "reference")
    assert out_t.shape == out_r.shape and out_t.dtype == out_r.dtype == case.dtype
    qb, kb, vb = (to_bhsd(case, x).detach().requires_grad_() for x in (q, k, v))
    kw = dict(scale=case.scale, causal=case.causal, causal_align=case.align or "top_left", mask=mask)
    pt, pt_lse = attention_reference(qb, kb, vb, compute_dtype=case.dtype, **kw)
    ref, ref_lse = naive_attention(qb, kb, vb, causal=case.align, mask=mask)
    for backend, out in (("triton", out_t), ("reference", out_r)):
        assert_close_policy(to_bhsd(case, out), ref, pt, name=f"out ({backend})")
    if lse_t is not None:
        assert lse_r.dtype == lse_t.dtype == torch.float32 and lse_r.shape == lse_t.shape
        for backend, lse in (("triton", lse_t), ("reference", lse_r)):
            assert_close_policy(lse, ref_lse, pt_lse, name=f"lse ({backend})")
    dout = torch.randn_like(out_t)
    doutb = to_bhsd(case, dout)
    g_pt = torch.autograd.grad(pt, (qb, kb, vb), doutb, retain_graph=True)
    g_ref = torch.autograd.grad(ref, (qb, kb, vb), doutb.double())
    for backend, out in (("triton", out_t), ("reference", out_r)):
        grads = torch.autograd.grad(out, (q, k, v), dout)
        for name, g, x, a, b in zip(("dq", "dk", "dv"), grads, (q, k, v), g_pt, g_ref):
            assert g.shape == x.shape and g.dtype == x.dtype, f"{name} ({backend})"
            assert_close_policy(to_bhsd(case, g), b, a, factor=3.0, name=f"{name} ({backend})")


@pytest.mark.parametrize("api", ["sdpa", "fa"])
def test_env_var_selects_backend(monkeypatch, api):
    """FLASHKERNELS_BACKEND picks the backend of a call that names none; an explicit backend=
    wins over it."""
    import flashkernels.ops.attention.autograd as autograd_mod

    launched = []
    real = autograd_mod.flash_attention

    def spy(*args, **kwargs):
        launched.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(autograd_mod, "flash_attention", spy)
    case = Case(api, f32, 1, 2, 2, 40, 70, 32)
    q, k, v = make_inputs(case, "cpu", requires_grad=False)
    monkeypatch.setenv("FLASHKERNELS_BACKEND", "triton")
    via_env = call(case, q, k, v, None, None)[0]
    assert len(launched) == 1
    via_arg = call(case, q, k, v, None, "reference")[0]
    assert len(launched) == 1
    monkeypatch.setenv("FLASHKERNELS_BACKEND", "reference")
    call(case, q, k, v, None, None)
    assert len(launched) == 1
    assert torch.equal(via_env, call(case, q, k, v, None, "triton")[0])
    assert len(launched) == 2
    torch.testing.assert_close(via_env, via_arg, rtol=0, atol=1e-5)


@pytest.mark.parametrize("api", ["sdpa", "fa"])
def test_output_and_gradient_layouts(api):
    """Contiguous inputs give contiguous outputs and gradients in the caller's layout: (B, S, H, D)
    memory for flash_attn_func, (B, H, S, D) for scaled_dot_product_attention."""
    case = Case(api, f16, 2, 4, 2, 33, 47, 24)
    q, k, v = make_inputs(case, "cpu")
    out, _ = call(case, q, k, v, None, "triton")
    assert out.is_contiguous()
    for name, g in zip("qkv", torch.autograd.grad(out, (q, k, v), torch.randn_like(out))):
        assert g.is_contiguous(), f"d{name} strides {g.stride()}"


def test_sdpa_output_and_gradients_follow_query_memory_order():
    """scaled_dot_product_attention on (B, H, S, D) views of (B, S, H, D) memory (as
    q_proj(x).view(B, S, H, D).transpose(1, 2) gives) returns the output and the gradients in that
    memory order, as torch's flash / cuDNN SDPA does, with the values of contiguous inputs."""
    case = Case("sdpa", f16, 2, 4, 2, 33, 47, 24)
    q, k, v = make_inputs(case, "cpu")
    views = [t.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_() for t in (q, k, v)]
    assert not views[0].is_contiguous() and views[0].transpose(1, 2).is_contiguous()
    dout = torch.randn(case.B, case.Hq, case.Sq, case.D, dtype=f16)
    out, _ = call(case, *views, None, "triton")
    ref, _ = call(case, q, k, v, None, "triton")
    assert out.transpose(1, 2).is_contiguous() and torch.equal(out, ref)
    grads = torch.autograd.grad(out, views, dout)
    for name, g, r in zip("qkv", grads, torch.autograd.grad(ref, (q, k, v), dout)):
        assert g.transpose(1, 2).is_contiguous(), f"d{name} strides {g.stride()}"
        torch.testing.assert_close(g, r, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# GQA backward with the kv head's query heads split over several dK/dV programs
# --------------------------------------------------------------------------------------------

SPLIT = [
    Case("fa", f32, 2, 8, 2, 37, 91, 24, causal=True),        # group 4, bottom-right causal
    Case("sdpa", f16, 1, 4, 1, 70, 45, 64, mask="bool:qk"),    # MQA, group 4, masked
]


@pytest.mark.parametrize("split", [2, 4])
@pytest.mark.parametrize("case", SPLIT, ids=lambda c: c.id)
def test_gqa_dkdv_split_matches_float64(case, split, monkeypatch):
    """dK/dV as fp32 partial sums over shares of each kv head's query heads, added afterwards
    (what the GPU does when B * Hkv * key blocks leave SMs idle): the same policy as unsplit."""
    from flashkernels.ops.attention import launch

    monkeypatch.setattr(launch, "DKDV_GROUP_SPLIT", split)
    check_case(case, backend="triton")


def test_dkdv_group_split_heuristic(monkeypatch):
    """Split only while programs are below DKDV_MIN_PROGRAMS_PER_SM per SM, by powers of two
    that divide the group; never on a CPU; a forced split must divide the group."""
    from flashkernels.ops.attention import launch

    monkeypatch.setattr(launch, "_sm_count", lambda index: 132)
    cuda = torch.device("cuda", 0)
    assert launch.dkdv_group_split(4, 256, cuda) == 4     # Llama-3-8B layer, B=1, S=4096: 256 -> 1024
    assert launch.dkdv_group_split(4, 300, cuda) == 2     # 600 >= 528
    assert launch.dkdv_group_split(4, 1024, cuda) == 1
    assert launch.dkdv_group_split(1, 8, cuda) == 1       # MHA: nothing to split
    assert launch.dkdv_group_split(6, 8, cuda) == 2       # 4 does not divide 6
    assert launch.dkdv_group_split(4, 8, torch.device("cpu")) == 1
    monkeypatch.setattr(launch, "DKDV_GROUP_SPLIT", 3)
    with pytest.raises(ValueError, match="does not divide"):
        launch.dkdv_group_split(4, 8, cuda)
