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
    eager, op = rn.rms_norm_triton(x, w, r, 1e-6, 0.5, 0), torch.ops.flashkernels.rms_norm_fwd(x, w, r, 1e-6, 0.5, 0)
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


def test_eager_launches_skip_wrap_tritons_higher_order_op(monkeypatch):
    """Outside a custom op, wrap_triton sends each launch through torch's
    triton_kernel_wrapper_mutation higher-order op (~0.9 ms of host time a launch on the H100
    machine). Every public eager call, forward and backward, must launch with wrap_triton off, as
    the custom ops' own eager path does. (Under the interpreter wrap_triton returns the kernel
    either way, so the launchers' flashkernels._launch.cached_launch, which calls wrap_triton
    only where it is on, is wrapped by one that checks the flag.)"""
    _needs_triton()
    import importlib

    from torch._library.triton import is_wrap_triton_enabled

    from flashkernels._launch import cached_launch

    launches = []

    def checked_launch(kernel, grid, *args, **kwargs):
        assert not is_wrap_triton_enabled(), "an eager kernel launch would go through the higher-order op"
        launches.append(kernel)
        return cached_launch(kernel, grid, *args, **kwargs)

    for op in ("attention", "kvcache", "rms_norm", "swiglu", "rope"):
        monkeypatch.setattr(importlib.import_module(f"flashkernels.ops.{op}.launch"), "cached_launch",
                            checked_launch)
    dev = _dev()
    q, k, v = (randn(1, 20, 2, 16, device=dev, requires_grad=True) for _ in range(3))
    out = flashkernels.flash_attn_func(q, k, v, causal=True, backend="triton")
    out.sum().backward()
    with torch.no_grad():
        flashkernels.flash_attn_func(q, k, v, backend="triton")
    x, w = randn(5, 32, device=dev, requires_grad=True), randn(32, device=dev, requires_grad=True)
    flashkernels.rms_norm(x, w, backend="triton").sum().backward()
    flashkernels.swiglu(x, x.detach(), backend="triton").sum().backward()
    cos, sin = randn(32, 8, device=dev), randn(32, 8, device=dev)
    flashkernels.apply_rotary_emb(q, cos, sin, backend="triton").sum().backward()
    kc, vc = randn(1, 32, 2, 16, device=dev), randn(1, 32, 2, 16, device=dev)
    lens = torch.full((1,), 20, dtype=torch.int32, device=dev)
    flashkernels.flash_attn_with_kvcache(q.detach()[:, :1], kc, vc, k=k.detach()[:, :1], v=v.detach()[:, :1],
                                         rotary_cos=cos, rotary_sin=sin, cache_seqlens=lens, backend="triton")
    flashkernels.flash_attn_with_kvcache(q.detach()[:, :1], kc, vc, cache_seqlens=lens, num_splits=2,
                                         backend="triton")
    assert len(launches) >= 12  # the checking wrapper really was in the launch path


def test_launchers_trace_with_symbolic_shapes(monkeypatch):
    """torch.compile with dynamic shapes and opcheck's aot_dispatch_dynamic trace the launchers
    with SymInt sizes; the cached block-config lookups must not receive one (lru_cache cannot
    hash it: the GPU opcheck tests failed so on 2026-11-25). The kernel launches are stubbed
    out (the interpreter cannot run on fake tensors), so this checks the host code only."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from flashkernels.ops.attention import launch

    monkeypatch.setattr(launch, "cached_launch", lambda *args, **kwargs: None)
    rest = (0.25, True, 0, False, False, -1, -1, 0.0, None, None, None, None, 0, 0)
    q, k, v = torch.randn(1, 2, 33, 16), torch.randn(1, 2, 40, 16), torch.randn(1, 2, 40, 16)
    make_fx(lambda q, k, v: launch.attn_fwd_impl(q, k, v, None, *rest), tracing_mode="symbolic")(q, k, v)
    out, lse = torch.randn(1, 2, 33, 16), torch.randn(1, 2, 33)
    make_fx(lambda do, q, k, v, out, lse: launch.attn_bwd_impl(do, q, k, v, out, lse, None, None, *rest),
            tracing_mode="symbolic")(out, q, k, v, out, lse)


def test_eager_forward_and_backward_skip_the_dispatcher():
    """Eager calls, the backward included, run the launchers directly: through the custom op the
    RoPE and RMSNorm backwards paid ~0.1 ms of host time a call on the H100 machine, as much as
    their kernels (2026-11-25). A dispatch mode sees every op that goes through the dispatcher;
    no flashkernels op may be among them."""
    _needs_triton()
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    dev = _dev()
    q, k, v = (randn(1, 20, 2, 16, device=dev, requires_grad=True) for _ in range(3))
    x, w = randn(5, 32, device=dev, requires_grad=True), randn(32, device=dev, requires_grad=True)
    r = randn(5, 32, device=dev, requires_grad=True)
    cos, sin = randn(32, 8, device=dev), randn(32, 8, device=dev)
    hcos, hsin = randn(1, 20, 16, device=dev), randn(1, 20, 16, device=dev)
    with Record():
        flashkernels.flash_attn_func(q, k, v, causal=True, backend="triton").sum().backward()
        y, h = flashkernels.rms_norm(x, w, residual=r, backend="triton")
        (y.sum() + h.sum()).backward()
        flashkernels.swiglu(x, r, backend="triton").sum().backward()
        flashkernels.apply_rotary_emb(q, cos, sin, backend="triton").sum().backward()
        qr, kr = flashkernels.apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), hcos, hsin,
                                                   backend="triton")
        (qr.sum() + kr.sum()).backward()
        with torch.no_grad():
            flashkernels.apply_rotary_emb(q.detach().clone(), cos, sin, in_place=True, backend="triton")
    assert any(name.startswith("aten.") for name in seen)  # the mode did see the calls
    assert not [name for name in seen if name.startswith("flashkernels.")]


def test_eager_in_place_rotation_bumps_the_version():
    """The in-place RoPE launched directly must still tell autograd that x changed, as the
    op's declared mutation does: a graph that saved x then refuses to backward."""
    _needs_triton()
    dev = _dev()
    a = randn(1, 20, 2, 16, device=dev, requires_grad=True)
    x = a * 2
    y = x * x  # saves x for its backward
    cos, sin = randn(32, 8, device=dev), randn(32, 8, device=dev)
    with torch.no_grad():
        version = x._version
        flashkernels.apply_rotary_emb(x, cos, sin, in_place=True, backend="triton")
        assert x._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_traced_entry_imports_from_no_switch_module():
    """api._triton_entry, which torch.compile traces, imports from ops/attention/autograd.py, not from launch.py:
    launch's module type is a subclass (launch._Switches, which drops the forward's plans when a switch changes),
    and torch 2.11's dynamo stops at an import of it ("Bad import result: Import result is not a Python module";
    every compiled attention call with fullgraph=True failed on the GPU until session 29)."""
    import dis
    import types

    from flashkernels.ops.attention import api, launch

    assert type(launch) is not types.ModuleType  # (why it matters)
    imported = [(i.opname, i.argval) for i in dis.get_instructions(api._triton_entry)
                if i.opname in ("IMPORT_NAME", "IMPORT_FROM")]
    assert ("IMPORT_NAME", "autograd") in imported and ("IMPORT_FROM", "KERNELS_INTERPRETED") in imported
    assert not any("launch" in str(name) for _, name in imported), imported
