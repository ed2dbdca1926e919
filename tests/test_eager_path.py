"""Eager calls skip the dispatcher (flashkernels._eager): they must give exactly what the
registered custom ops give, forward and backward, since torch.compile and opcheck use the ops.
Runs the Triton kernels (the interpreter on a CPU)."""
import pytest
import torch

import flashkernels
from helpers import randn

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _needs_triton():
    from flashkernels import _backend

    reason = _backend.triton_unavailable_reason(torch.device("cpu" if not torch.cuda.is_available() else "cuda"))
    if reason is not None:
        pytest.skip(reason)


def _dev():
    return "cuda" if torch.cuda.is_available() else "cpu"


def _grads(outputs, inputs, seed=0):
    g = torch.Generator().manual_seed(seed)
    douts = [torch.randn(o.shape, generator=g).to(o) for o in outputs]
    return torch.autograd.grad(outputs, inputs, douts, allow_unused=True)


def _same(a, b):
    for x, y in zip(a, b):
        if x is None or y is None:
            assert x is None and y is None
        else:
            torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_attention_eager_equals_custom_op():
    _needs_triton()
    from flashkernels.ops.attention import autograd  # noqa: F401  (registers the ops)

    dev = _dev()
    q = randn(2, 37, 4, 16, device=dev).transpose(1, 2).requires_grad_()  # (B, H, S, D) views of BSHD
    k = randn(2, 45, 2, 16, device=dev).transpose(1, 2).requires_grad_()
    v = randn(2, 45, 2, 16, device=dev).transpose(1, 2).requires_grad_()
    sink = randn(4, device=dev).requires_grad_()
    alibi = torch.rand(4, device=dev)
    args = (q, k, v, None, 0.25, True, 8, False, False, 5, -1, 0.0, alibi, sink, None, None, 0, 0)
    eager = autograd.flash_attention(*args)
    op = torch.ops.flashkernels.attn_fwd(*args)
    _same(eager, op)
    _same(_grads(eager, (q, k, v, sink)), _grads(op, (q, k, v, sink)))
    with torch.no_grad():  # the plain call, no autograd at all
        _same(autograd.flash_attention(*args), op)


def test_norm_glu_rope_eager_equal_custom_ops():
    _needs_triton()
    dev = _dev()
    from flashkernels.ops.rms_norm import autograd as rn
    from flashkernels.ops.rope import autograd as rp
    from flashkernels.ops.swiglu import autograd as gl

    x, r = randn(33, 70, device=dev, requires_grad=True), randn(33, 70, device=dev, requires_grad=True)
    w = randn(70, device=dev, requires_grad=True)
    eager, op = rn.rms_norm_rows(x, w, r, 1e-6, 0.5, 0), torch.ops.flashkernels.rms_norm_fwd(x, w, r, 1e-6, 0.5, 0)
    _same(eager, op)
    _same(_grads(eager[:2], (x, w, r)), _grads(op[:2], (x, w, r)))

    gate, up = randn(9, 130, device=dev, requires_grad=True), randn(9, 130, device=dev, requires_grad=True)
    eager, op = gl.gated_activation(gate, up, 1), torch.ops.flashkernels.glu_fwd(gate, up, 1)
    _same([eager], [op])
    _same(_grads([eager], (gate, up)), _grads([op], (gate, up)))

    xr = randn(2, 11, 3, 32, device=dev, requires_grad=True)
    cos, sin = randn(16, 8, device=dev), randn(16, 8, device=dev)
    rope_args = (cos, sin, None, 0, 2, 1, False, False)
    eager = rp.rope(xr, *rope_args)
    op = torch.ops.flashkernels.rope(xr, *rope_args, False)
    _same([eager], [op])
    _same(_grads([eager], (xr,)), _grads([op], (xr,)))


def test_public_calls_still_differentiable_and_compile_free():
    """flash_attn_func with grad goes through the eager autograd.Function; without grad no
    graph is recorded."""
    _needs_triton()
    dev = _dev()
    q, k, v = (randn(1, 20, 2, 16, device=dev, requires_grad=True) for _ in range(3))
    out = flashkernels.flash_attn_func(q, k, v, causal=True, backend="triton")
    fn = out.grad_fn.next_functions[0][0]  # out is a (B, S, H, D) view of the op's output
    assert "FlashAttention" in type(fn).__name__
    with torch.no_grad():
        assert flashkernels.flash_attn_func(q, k, v, causal=True, backend="triton").grad_fn is None
