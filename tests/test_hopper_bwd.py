"""The Gluon Hopper backward (ops/attention/kernels/bwd_hopper.py) and its dispatch (launch.py).

CPU: which calls take it and why the others do not (launch.hopper_bwd_reason: every feature of
the forward taken: softcap, ALiBi, the sink, windows, Sq != Sk, causal offsets), that
``deterministic`` keeps the Triton backward, that traced launchers record the opaque op
flashkernels::attn_bwd_hopper (with the features), its fake's layouts, the kernel's formulation
of the features' gradients (P from the forward's lse, softcap's 1 - t², the window's masks and
keyless rows, dsink from Delta) in float64 against autograd, and the sm_90a builds of the
feature flags (the plain builds: test_hopper_fwd's compile test).
GPU (marked ``gpu``, skipped unless the device is an sm_90 one): gradients through it against
float64 and against the Triton backward, every input layout, GQA/MQA, each feature and all
together, windows and Sq != Sk, torch.compile, opcheck, determinism on request,
compute-sanitizer.
"""
import math
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import flashkernels
from flashkernels._eager import direct
from flashkernels.ops.attention import launch
from flashkernels.ops.attention.kernels import bwd_hopper
from cases import Case, check_case, make_inputs
from helpers import (assert_close_policy, assert_compute_sanitizer_clean, data_magnitude, f64_flash_attention,
                     naive_attention, randn)
from test_hopper_fwd import HEADS, _args, _bshd, _feature_kwargs, _needs_hopper, assert_racecheck_only_handshake

ROOT = Path(__file__).resolve().parents[1]
bf16, f16 = torch.bfloat16, torch.float16


@pytest.fixture(autouse=True)
def switches_unset(monkeypatch):
    """Both Gluon kernels on (their default), whatever the caller's environment says."""
    monkeypatch.delenv(launch.HOPPER_FWD_ENV, raising=False)
    monkeypatch.delenv(launch.HOPPER_BWD_ENV, raising=False)


@pytest.fixture
def machine_ok(monkeypatch):
    """As on an H100 with Gluon: only the call's own arguments decide."""
    monkeypatch.setattr(launch, "hopper_fwd_device_reason", lambda device: None)


def _bwd_args(**over):
    a = _args(**{k: v for k, v in over.items() if k != "do"})
    q = a["q"]
    # (built only when not given: a given one may stand for a huge tensor)
    a["do"] = over["do"] if "do" in over else _bshd(q.shape[0], q.shape[2], q.shape[1], q.shape[3], dtype=q.dtype)
    return a


# --------------------------------------------------------------------------------- eligibility
def test_bwd_reason(machine_ok, monkeypatch):
    assert launch.hopper_bwd_reason(**_bwd_args()) is None
    assert launch.hopper_bwd_reason(**_bwd_args(bshd=False, do=torch.randn(2, 4, 256, 128).to(bf16))) is None
    # the forward's reasons come first
    assert "mask" in launch.hopper_bwd_reason(**_bwd_args(mask=torch.ones(1, 1, 256, 256, dtype=torch.bool)))
    assert "head dim" in launch.hopper_bwd_reason(**_bwd_args(D=96))
    assert launch.hopper_bwd_reason(**_bwd_args(D=64)) is None  # the backward covers D = 64 too
    assert launch.hopper_bwd_reason(**_bwd_args(D=256)) is None  # kernels/bwd_hopper256.py
    # which has no softcap or ALiBi (the sink needs no kernel change)
    assert "softcap at head dim 256" in launch.hopper_bwd_reason(**_bwd_args(D=256, softcap=30.0))
    assert "ALiBi at head dim 256" in launch.hopper_bwd_reason(**_bwd_args(D=256, alibi_slopes=torch.rand(4)))
    assert launch.hopper_bwd_reason(**_bwd_args(D=256, sink=torch.randn(4))) is None
    # nor a window, Sq != Sk or a causal offset (kernels/bwd_hopper.py's WINDOW)
    assert "window" in launch.hopper_bwd_reason(**_bwd_args(D=256, window_left=64))
    for geometry in (dict(S=256, Sk=384), dict(causal_offset=128)):
        assert "Sq != Sk or a causal offset" in launch.hopper_bwd_reason(**_bwd_args(D=256, **geometry))
    # dO: a TMA view, aligned
    flat = torch.randn(2 * 256 * 4 * 128 + 1).to(bf16)
    misaligned = flat[1:].view(2, 256, 4, 128).transpose(1, 2)
    assert "dO's data pointer" in launch.hopper_bwd_reason(**_bwd_args(do=misaligned))
    transposed_d = torch.randn(2, 4, 128, 256).to(bf16).transpose(-1, -2)
    assert "dO's strides" in launch.hopper_bwd_reason(**_bwd_args(do=transposed_d))
    # int32 offsets into dQ / dK / dV: (1, 2^21 tokens, 1024 heads... ) meta tensors, no memory
    big = torch.empty(1, 1 << 14, 1 << 10, 128, dtype=bf16, device="meta").transpose(1, 2)
    why = launch.hopper_bwd_reason(**_bwd_args(q=big, k=big, v=big, do=big, H=1024, Hkv=1024, S=1 << 14))
    assert why is not None and "int32" in why
    monkeypatch.setenv(launch.HOPPER_BWD_ENV, "0")
    assert launch.HOPPER_BWD_ENV in launch.hopper_bwd_reason(**_bwd_args())


def test_bwd_block_m(monkeypatch):
    """128 query rows an iteration at D = 64 without the feature flags (causal is none), 64 with any
    of them, at D = 128 and with the switch off."""
    assert launch.hopper_bwd_block_m(64, features=False) == 128
    assert launch.hopper_bwd_block_m(64, features=True) == 64
    assert launch.hopper_bwd_block_m(128, features=False) == 64
    monkeypatch.setattr(launch, "HOPPER_BWD_M128", False)
    assert launch.hopper_bwd_block_m(64, features=False) == 64


@pytest.mark.parametrize("over", [
    dict(window_left=64), dict(causal=False, window_left=-1, window_right=0), dict(causal=False, window_left=0,
                                                                                  window_right=0),
    dict(window_left=64, softcap=30.0, alibi_slopes=torch.rand(4), sink=torch.randn(4)),
    dict(S=256, Sk=384, causal=False), dict(S=256, Sk=384, causal_offset=128), dict(S=384, Sk=256, causal_offset=-128),
    dict(S=256, Sk=384, causal_offset=0), dict(S=384, Sk=256, causal_offset=0),
    dict(S=256, Sk=384, causal=False, softcap=30.0, alibi_slopes=torch.rand(2, 4)), dict(causal_offset=3),
    dict(D=64, S=128, Sk=640, window_left=100, window_right=7, causal=False),
], ids=["window", "window-right-0", "window-0-0", "window-with-the-others", "sq-lt-sk-full", "sq-lt-sk-bottom-right",
        "sq-gt-sk-bottom-right", "sq-lt-sk-top-left", "sq-gt-sk-top-left", "sq-ne-sk-softcap-alibi", "causal-offset-3",
        "d64-window-sq-lt-sk"])
def test_bwd_takes_windows_and_unequal_seqlens(machine_ok, over):
    """The forward's sliding windows, Sq != Sk under either causal alignment and any causal_offset
    (test_hopper_fwd) are the Gluon backward's cases too (its kernel's WINDOW)."""
    if over.get("D", 128) in launch.HOPPER_FWD_CONFIGS:  # (the features; not the D = 64 seqlen floor)
        assert launch.hopper_fwd_layout_reason(**_args(**over)) is None
    assert launch.hopper_bwd_reason(**_bwd_args(**over)) is None


def test_bwd_int32_offsets_count_the_keys(machine_ok):
    """Sk > Sq: the dK / dV offsets (k's element count) can pass int32 where q's do not."""
    q = torch.empty(1, 128, 8, 128, dtype=bf16, device="meta").transpose(1, 2)
    k = torch.empty(1, (1 << 21) + 128, 8, 128, dtype=bf16, device="meta").transpose(1, 2)
    why = launch.hopper_bwd_reason(**_bwd_args(q=q, k=k, v=k, do=q, H=8, Hkv=8, S=128, Sk=(1 << 21) + 128,
                                               causal=False))
    assert why is not None and "int32" in why, why


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("over", [
    dict(softcap=30.0), dict(alibi_slopes=torch.rand(4)), dict(alibi_slopes=torch.rand(2, 4)),
    dict(alibi_slopes=torch.rand(1, 4).expand(2, 4)), dict(sink=torch.randn(4)),
    dict(softcap=5.0, alibi_slopes=torch.rand(2, 4), sink=torch.randn(4)), dict(D=64, softcap=5.0, sink=torch.randn(4)),
    dict(H=8, Hkv=1, alibi_slopes=torch.rand(8)), dict(dtype=f16, softcap=1.0, alibi_slopes=torch.rand(4)),
    dict(bshd=False, do=torch.randn(2, 4, 256, 128).to(bf16), softcap=30.0, sink=torch.randn(4)),
], ids=["softcap", "alibi-h", "alibi-bh", "alibi-bh-broadcast", "sink", "all", "d64-softcap-sink", "mqa-alibi",
        "fp16-softcap-alibi", "bhsd-softcap-sink"])
def test_bwd_takes_softcap_alibi_sink(machine_ok, over, causal):
    """softcap, ALiBi ((H,), (B, H), broadcast), the sink, all three: the Gluon backward's cases
    (the forward's too, where its head dims allow)."""
    over = dict(over, causal=causal)
    if over.get("D", 128) in launch.HOPPER_FWD_CONFIGS:  # (the features; not the D = 64 seqlen floor)
        assert launch.hopper_fwd_layout_reason(**_args(**{k: v for k, v in over.items() if k != "do"})) is None
    assert launch.hopper_bwd_reason(**_bwd_args(**over)) is None


def test_bwd_refuses_alibi_with_a_large_group(machine_ok):
    """The kernel holds a GQA group's ALiBi slopes in shared memory: at most
    bwd_hopper.ALIBI_GROUP_MAX query heads a kv head (softcap and the sink have no such limit)."""
    big = bwd_hopper.ALIBI_GROUP_MAX
    q = _bshd(1, 128, 2 * big, dtype=bf16)
    kv = _bshd(1, 128, 1, dtype=bf16)
    a = _bwd_args(q=q, k=kv, v=kv, H=2 * big, Hkv=1, B=1, S=128, do=_bshd(1, 128, 2 * big))
    why = launch.hopper_bwd_reason(**dict(a, alibi_slopes=torch.rand(2 * big)))
    assert why is not None and "ALiBi" in why and str(big) in why, why
    assert launch.hopper_bwd_reason(**dict(a, softcap=5.0, sink=torch.randn(2 * big))) is None
    a = _bwd_args(q=_bshd(1, 128, big), k=kv, v=kv, H=big, Hkv=1, B=1, S=128, do=_bshd(1, 128, big))
    assert launch.hopper_bwd_reason(**dict(a, alibi_slopes=torch.rand(big))) is None


# ------------------------------------------------------------------------------ dispatch
def _fake_hopper_fwd(q, k, v, out, lse, scale, causal):
    o, l = naive_attention(q, k, v, scale=scale, causal="top_left" if causal else None)
    out.copy_(o)
    lse.copy_(l)


def _fake_hopper_bwd(calls):
    """Stands in for launch.attn_bwd_hopper_impl on a CPU: the float64 reference's gradients
    (what the kernel computes; Delta is ignored, so dlse is not covered here)."""
    def run(do, q, k, v, lse, delta, scale, causal, bshd):
        calls.append(dict(bshd=bshd, causal=causal))
        with torch.enable_grad():  # (called from a backward, where grad mode is off)
            leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
            o, _ = naive_attention(*leaves, scale=scale, causal="top_left" if causal else None)
            grads = torch.autograd.grad(o, leaves, do.double())
        outs = []
        for g, like in zip(grads, (q, k, v)):
            B, H, S, D = like.shape
            t = launch._empty_like_layout(B, H, S, D, bshd, like)
            outs.append(t.copy_(g))
        return tuple(outs)
    return run


@pytest.mark.parametrize("deterministic", [False, True], ids=["default", "deterministic"])
def test_backward_takes_the_hopper_path(machine_ok, monkeypatch, deterministic):
    """flash_attn_func's backward goes to the Hopper launcher (stubbed), except with
    deterministic=True (then the Triton kernels, through the interpreter); both match float64."""
    from flashkernels import _backend

    if _backend.triton_unavailable_reason(torch.device("cpu")) is not None:
        pytest.skip("no Triton interpreter here")
    calls = []
    monkeypatch.setattr(launch, "hopper_fwd", _fake_hopper_fwd)
    monkeypatch.setattr(launch, "attn_bwd_hopper_impl", _fake_hopper_bwd(calls))
    B, S, H, Hkv, D = 1, 128, 2, 1, 128
    q, k, v = (randn(B, S, h, D, dtype=f16, requires_grad=True) for h in (H, Hkv, Hkv))
    out = flashkernels.flash_attn_func(q, k, v, causal=True, deterministic=deterministic, backend="triton")
    dout = randn(B, S, H, D, dtype=f16)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    assert calls == ([] if deterministic else [dict(bshd=True, causal=True)])
    leaves = [x.detach().transpose(1, 2).double().requires_grad_() for x in (q, k, v)]
    ref, _ = naive_attention(*leaves, causal="top_left")
    ref_g = torch.autograd.grad(ref, leaves, dout.transpose(1, 2).double())
    for g, r in zip(grads, ref_g):
        torch.testing.assert_close(g.transpose(1, 2).double(), r, atol=2e-2, rtol=2e-2)


def _fake_hopper_fwd_features(q, k, v, out, lse, scale, causal, causal_offset=0, window_left=-1, window_right=-1,
                              softcap=0.0, alibi_slopes=None, sink=None):
    """launch.hopper_fwd with its features, on a CPU: the float64 definition (flash_attn_func's:
    the diagonal bottom-right, causal_offset Sk - Sq, or 0 where nothing needs it)."""
    assert causal_offset in (0, k.shape[2] - q.shape[2]), causal_offset
    o, l = f64_flash_attention(*(x.transpose(1, 2) for x in (q, k, v)), causal=causal,
                               window_size=(window_left, window_right), softcap=softcap, alibi=alibi_slopes, sink=sink)
    out.copy_(o.transpose(1, 2))
    lse.copy_(l)


def _emulated_hopper_bwd(calls):
    """Stands in for launch.attn_bwd_hopper_impl on a CPU, computing what the kernel computes, in
    float64: P^T = exp(S^T - lse) from the forward's lse (which holds the sink's share: the kernel
    is never told of the sink) with the forward's softcap, ALiBi (|i + off - j|) and the keys row i
    sees (i + off - left .. i + off + right, right = 0 causal; P = 0 elsewhere, and on a row that sees
    no key, whose lse is -inf), dV = P^T dO, dS^T = P^T (dP^T - Delta) (1 - t²) scale, dK = dS^T Q,
    dQ = dS K, summed over a GQA group."""
    def run(do, q, k, v, lse, delta, scale, causal, bshd, softcap=0.0, alibi_slopes=None, causal_offset=0,
            window_left=-1, window_right=-1):
        calls.append(dict(bshd=bshd, causal=causal, softcap=softcap, alibi=alibi_slopes, causal_offset=causal_offset,
                          window=(window_left, window_right)))
        B, H, Sq, D = q.shape
        Sk = k.shape[2]
        g = H // k.shape[1]
        q64, do64 = q.double(), do.double()
        k64, v64 = (x.double().repeat_interleave(g, 1) for x in (k, v))
        s = q64 @ k64.transpose(-1, -2) * scale
        if softcap > 0:
            t = torch.tanh(s / softcap)
            s = softcap * t
        d = torch.arange(Sq)[:, None] + causal_offset - torch.arange(Sk)[None, :]  # i + off - j
        if alibi_slopes is not None:
            s = s - alibi_slopes.double().expand(B, H)[:, :, None, None] * d.abs()
        seen = torch.ones(Sq, Sk, dtype=torch.bool)
        if window_left >= 0:
            seen &= d <= window_left
        if causal:
            seen &= d >= 0
        elif window_right >= 0:
            seen &= d >= -window_right
        p = torch.exp(s - lse.double()[..., None]).masked_fill(~seen, 0.0)
        ds = p * (do64 @ v64.transpose(-1, -2) - delta.double()[..., None])
        if softcap > 0:
            ds = ds * (1 - t * t)
        ds = ds * scale
        grads = (ds @ k64, (ds.transpose(-1, -2) @ q64).unflatten(1, (-1, g)).sum(2),
                 (p.transpose(-1, -2) @ do64).unflatten(1, (-1, g)).sum(2))
        outs = []
        for gr, like in zip(grads, (q, k, v)):
            Bx, Hx, Sx, Dx = like.shape
            outs.append(launch._empty_like_layout(Bx, Hx, Sx, Dx, bshd, like).copy_(gr))
        return tuple(outs)
    return run


# (Sq, Sk, window_size, sink): rows that see no key (bottom-right, Sq > Sk) with and without a sink
GEOMETRIES = [(128, 128, (-1, -1), True), (128, 256, (-1, -1), True), (256, 128, (-1, -1), False),
              (256, 128, (-1, -1), True), (256, 256, (40, 9), True)]


# (the interpreter's Triton backward, deterministic=True, on the first geometry only)
DISPATCH_CASES = [(c, g, det) for c in (False, True) for g in GEOMETRIES for det in (False, True)
                  if not det or g is GEOMETRIES[0]]


@pytest.mark.parametrize("causal,geometry,deterministic", DISPATCH_CASES, ids=[
    "-".join(["causal" if c else "full", f"q{a}-k{b}-win{w[0]}_{w[1]}" + ("-sink" if sk else ""),
              "deterministic" if det else "default"]) for c, (a, b, w, sk), det in DISPATCH_CASES])
def test_backward_with_features_takes_the_hopper_path(machine_ok, monkeypatch, causal, geometry, deterministic):
    """flash_attn_func with softcap, ALiBi (B, H), a sink and a gradient at lse, Sq != Sk and a
    sliding window: the backward goes to the Hopper launcher with softcap, the slopes, the offset and
    the window (not the sink), except with deterministic=True (the Triton kernels, through the
    interpreter). With the launcher emulating the kernel's formulation in float64 (P from lse,
    dsink = -sum exp(sink - lse) Delta from attn_bwd_impl), dq, dk, dv and dsink match autograd of
    the float64 definition."""
    from flashkernels import _backend

    if _backend.triton_unavailable_reason(torch.device("cpu")) is not None:
        pytest.skip("no Triton interpreter here")
    Sq, Sk, window, with_sink = geometry
    calls = []
    monkeypatch.setattr(launch, "hopper_fwd", _fake_hopper_fwd_features)
    monkeypatch.setattr(launch, "attn_bwd_hopper_impl", _emulated_hopper_bwd(calls))
    B, H, Hkv, D = 2, 4, 2, 128
    q = randn(B, Sq, H, D, dtype=f16, requires_grad=True)
    k, v = (randn(B, Sk, Hkv, D, dtype=f16, requires_grad=True) for _ in range(2))
    alibi = torch.rand(B, H) * 0.1
    sink = (randn(H) * 2).requires_grad_() if with_sink else None
    leaves = (q, k, v) + ((sink,) if with_sink else ())
    out, lse, _ = flashkernels.flash_attn_func(q, k, v, causal=causal, window_size=window, softcap=2.0,
                                               alibi_slopes=alibi, learnable_sink=sink, return_attn_probs=True,
                                               deterministic=deterministic, backend="triton")
    dout, dlse = randn(B, Sq, H, D, dtype=f16), randn(B, H, Sq)
    grads = torch.autograd.grad((out, lse), leaves, (dout, dlse))
    if deterministic:
        assert calls == []
    else:
        assert len(calls) == 1 and calls[0]["softcap"] == 2.0 and calls[0]["alibi"] is not None, calls
        assert (calls[0]["bshd"], calls[0]["causal"], calls[0]["causal_offset"]) == (True, causal, Sk - Sq)
        assert calls[0]["window"] == window
    ref_in = [x.detach().double().requires_grad_() for x in leaves]
    ref, ref_lse = f64_flash_attention(*ref_in[:3], causal=causal, window_size=window, softcap=2.0, alibi=alibi,
                                       sink=ref_in[3] if with_sink else None)
    fin = torch.isfinite(ref_lse)  # (a row that sees no key: lse -inf, no gradient arrives there)
    ref_g = torch.autograd.grad((ref, ref_lse.where(fin, 0.0)), ref_in, (dout.double(), dlse.double()))
    for name, g, r in zip(("dq", "dk", "dv", "dsink"), grads, ref_g):
        assert not g.isnan().any(), name
        torch.testing.assert_close(g.double(), r, atol=2e-2, rtol=2e-2, msg=lambda m: f"{name}: {m}")


def test_use_deterministic_algorithms_keeps_the_triton_backward(machine_ok, monkeypatch):
    from flashkernels import _backend

    if _backend.triton_unavailable_reason(torch.device("cpu")) is not None:
        pytest.skip("no Triton interpreter here")
    calls = []
    monkeypatch.setattr(launch, "hopper_fwd", _fake_hopper_fwd)
    monkeypatch.setattr(launch, "attn_bwd_hopper_impl", _fake_hopper_bwd(calls))
    q, k, v = (randn(1, 2, 128, 128, dtype=f16, requires_grad=True) for _ in range(3))
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        out = flashkernels.scaled_dot_product_attention(q, k, v, is_causal=True, backend="triton")
    finally:
        torch.use_deterministic_algorithms(prev)
    out.sum().backward()
    assert calls == []
    out = flashkernels.scaled_dot_product_attention(q, k, v, is_causal=True, backend="triton")
    out.sum().backward()
    assert calls == [dict(bshd=False, causal=True)]


def _tracing_setup(monkeypatch, **shape):
    """(attn_bwd_impl's eligible arguments of ``shape`` (_bwd_args'), out, lse) for make_fx tests, with the Gluon launch made
    an error (nothing may launch while tracing) and Delta's Triton kernel a stand-in of its shape
    (traced through wrap_triton on a GPU; the interpreter cannot run it on fake tensors)."""
    def no_launch(*args, **kwargs):
        raise AssertionError("the Gluon backward was launched while tracing")

    monkeypatch.setattr(launch, "attn_bwd_hopper_impl", no_launch)
    monkeypatch.setattr(launch, "attn_bwd_delta", lambda out, do, lse, dlse: torch.empty_like(lse))
    a = _bwd_args(**shape)
    B, H, S, D = a["q"].shape
    return a, _bshd(B, S, H), torch.randn(B, H, S)


def test_traced_backward_records_the_opaque_op(machine_ok, monkeypatch):
    """make_fx of attn_bwd_impl (fake / symbolic): one attn_bwd_hopper call, no launch of the
    Gluon kernel while tracing."""
    from torch.fx.experimental.proxy_tensor import make_fx

    a, out, lse = _tracing_setup(monkeypatch)
    rest = (None, None, a["scale"], True, 0, True, False)
    for mode in ("fake", "symbolic"):
        gm = make_fx(lambda do, q, k, v, o, l: launch.attn_bwd_impl(do, q, k, v, o, l, *rest),
                     tracing_mode=mode)(a["do"], a["q"], a["k"], a["v"], out, lse)
        targets = [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
        assert targets.count("flashkernels.attn_bwd_hopper.default") == 1, targets


def test_traced_backward_with_features_records_them(machine_ok, monkeypatch):
    """make_fx of attn_bwd_impl with softcap, ALiBi, a sink, Sq < Sk with a causal_offset and a
    window: one attn_bwd_hopper call that carries softcap, the slopes, the offset and the window
    (the sink's gradient is traced torch code beside it), dK / dV of the keys' length from its
    fake, nothing launched while tracing; a plain call's op call carries none of them."""
    from torch.fx.experimental.proxy_tensor import make_fx

    a, out, lse = _tracing_setup(monkeypatch, S=256, Sk=384)
    B, H, S, D = a["q"].shape
    alibi, sink = torch.rand(B, H), torch.randn(H)
    for mode in ("fake", "symbolic"):
        def f(do, q, k, v, o, l, al, sk):
            return launch.attn_bwd_impl(do, q, k, v, o, l, None, None, a["scale"], True, 128, True, False, 100, -1,
                                        5.0, al, sk)
        gm = make_fx(f, tracing_mode=mode)(a["do"], a["q"], a["k"], a["v"], out, lse, alibi, sink)
        nodes = [n for n in gm.graph.nodes if n.op == "call_function"
                 and str(n.target) == "flashkernels.attn_bwd_hopper.default"]
        assert len(nodes) == 1
        bound = nodes[0].target._schema.arguments
        given = {x.name: x.default_value for x in bound if x.has_default_value()}  # (defaults may go unrecorded)
        given.update(zip((x.name for x in bound), nodes[0].args), **nodes[0].kwargs)
        assert given["softcap"] == 5.0 and given["alibi_slopes"].op == "placeholder", given
        assert (given["causal_offset"], given["window_left"], given["window_right"]) == (128, 100, -1), given
        dq, dk, dv = nodes[0].meta["val"]
        assert tuple(dq.shape) == (B, H, S, D) and tuple(dk.shape) == tuple(dv.shape) == (B, 2, 384, D)
        p = _bwd_args()
        rest = (None, None, p["scale"], True, 0, True, False)
        gm = make_fx(lambda do, q, k, v, o, l: launch.attn_bwd_impl(do, q, k, v, o, l, *rest),
                     tracing_mode=mode)(p["do"], p["q"], p["k"], p["v"], _bshd(B, 256, H), torch.randn(B, H, 256))
        node = next(n for n in gm.graph.nodes if str(n.target) == "flashkernels.attn_bwd_hopper.default")
        assert len(node.args) == 9 and not node.kwargs, (node.args, node.kwargs)


def test_opaque_bwd_op_fake_layouts():
    from torch._subclasses.fake_tensor import FakeTensorMode

    for bshd in (True, False):
        for Sk in (256, 384):
            with FakeTensorMode() as mode:
                q = mode.from_tensor(_bshd(2, 256, 4))
                k = mode.from_tensor(_bshd(2, Sk, 2))
                lse = mode.from_tensor(torch.randn(2, 4, 256))
                alibi = mode.from_tensor(torch.rand(4))
                for feats in ({}, dict(softcap=5.0, alibi_slopes=alibi, causal_offset=Sk - 256, window_left=64)):
                    dq, dk, dv = torch.ops.flashkernels.attn_bwd_hopper(q, q, k, k, lse, lse, 0.1, True, bshd,
                                                                        **feats)
                    for g, heads, s in ((dq, 4, 256), (dk, 2, Sk), (dv, 2, Sk)):
                        ref = launch._empty_like_layout(2, heads, s, 128, bshd, torch.empty(0, dtype=bf16))
                        assert g.shape == ref.shape and g.stride() == ref.stride() and g.dtype == bf16


# ------------------------------------------------------------------------------ sm_90a build
# The backward's feature flags (kernels/bwd_hopper.py: SOFTCAP, ALIBI, WINDOW; a sink needs none),
# as launch.attn_bwd_hopper_impl passes them, at each of its head dims: softcap and ALiBi alone and
# both, causal or not; WINDOW (which replaces CAUSAL) alone and with each and both; bf16, and fp16
# for softcap + ALiBi at D = 128, where the registers are tightest.
BWD_FEATURE_BUILDS = [("bf16", D, causal, flags) for D in (64, 128) for causal in (False, True)
                      for flags in (dict(softcap=True), dict(alibi=True), dict(softcap=True, alibi=True))] + \
    [("bf16", D, False, dict(window=True, **flags)) for D in (64, 128)
     for flags in ({}, dict(softcap=True), dict(alibi=True), dict(softcap=True, alibi=True))] + \
    [("fp16", 128, causal, dict(softcap=True, alibi=True)) for causal in (False, True)] + \
    [("bf16", D, causal, dict(varlen=True)) for D in (64, 128) for causal in (False, True)] + \
    [("bf16", 128, False, dict(varlen=True, window=True)), ("bf16", 128, True, dict(varlen=True, softcap=True)),
     ("bf16", 128, True, dict(varlen=True, alibi=True))] + \
    [(dt, D, False, dict(tail_parts=parts)) for D in (128, 256) for dt in ("bf16", "fp16") for parts in (2, 3)] + \
    [("bf16", D, False, dict(pdl_trigger=True)) for D in (64, 128, 256)] + \
    [(dt, D, causal, dict(keys=1024)) for D in (64, 128) for dt in ("bf16", "fp16") for causal in (False, True)] + \
    [(dt, D, False, dict(keys=1024, dq_convert=True)) for D in (64, 128) for dt in ("bf16", "fp16")]
_BWD_FEATURE_BUILD_SCRIPT = """
import sys, torch
sys.path.insert(0, sys.argv[1])
import compile_check as cc
for dt, D, causal, flags in %r:
    tag = f"gluon-bwd-feat {dt} D={D} causal={int(causal)} " + "+".join(flags)
    dtype = torch.bfloat16 if dt == "bf16" else torch.float16
    cc.report(tag, lambda: cc.compile_hopper_bwd(dtype, causal, False, D=D, **flags))
"""


@pytest.mark.skipif(not bwd_hopper.AVAILABLE, reason=f"Gluon: {bwd_hopper.UNAVAILABLE_REASON}")
def test_bwd_feature_builds_for_sm90a_without_spills():
    """The backward's softcap, ALiBi and window flags build for sm_90a through
    compile_check.compile_hopper_bwd (in its own process, as test_hopper_fwd's build tests) with no
    serialised wgmma, no spill without causal, a window or VARLEN (but softcap's: since the dQ TMA
    reduce (DQ_TMA), D = 128 softcap spills 8 B, softcap + ALiBi 4 B: two loads an iteration in one
    warpgroup, the accumulator tile's coordinates; VARLEN with a feature up to 68 B since then, causal
    softcap, from 36), and no more than the plain causal
    build's 52 B with any (at D = 128 the window's builds spill 8-12 B, VARLEN's 12-36 B: a few loads
    an iteration, see scripts/compile_check.py --sass; VARLEN with softcap and ALiBi together, not
    built here, 96-124 B). The backward's tail launch (TAIL_PARTS, two or three parts a tile) and the main grid
    before it (PDL_TRIGGER), plain non-causal builds, up to the plain build's 8 B (its three stages) at D = 128
    (at D = 256, kernels/bwd_hopper256.py, 0 B); with the TMA epilogue (launch.HOPPER_BWD_EPI_TMA at 1024 keys, and
    D = 64's main grid) non-causal D = 128 the same 8 B, D = 64 76 B (44 B with the register stores; warpgroup 1's
    loop loads 4 spilled values an iteration with those, 6 with the epilogue), causal D = 128 4 B (20 B with the
    register stores), D = 64 104 B (68 B, though its two loops load fewer spilled values an iteration: 4 / 5 against
    7 / 4). The backward writing dQ itself (DQ_CONVERT, launch.HOPPER_BWD_DQ_CONVERT: its conversion in a function
    of its own; inline, 96 B at D = 64 and 152 B at D = 128 with 13 loads of spilled values in a loop, compile_check
    --sass) within the same bounds: D = 128 12 B, D = 64 24 B."""
    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("triton ships no ptxas here")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("TRITON_INTERPRET", None)
    res = subprocess.run([sys.executable, "-c", _BWD_FEATURE_BUILD_SCRIPT % (BWD_FEATURE_BUILDS,),
                          str(ROOT / "scripts")], capture_output=True, text=True, env=env, timeout=600)
    log = res.stdout + res.stderr
    built = [ln for ln in res.stdout.splitlines() if ln.startswith("gluon-bwd-feat ")]
    assert res.returncode == 0 and len(built) == len(BWD_FEATURE_BUILDS), log[-4000:]
    assert "FAILED" not in log and "SMEM TOO LARGE" not in log, log[-4000:]
    assert "serialized" not in log, log
    for ln in built:
        spill = re.search(r"spill\s+(\d+)B", ln)
        bound = (104 if "D=64 causal=1 keys" in ln else 68 if "varlen+" in ln
                 else 52 if "causal=1" in ln or "window" in ln or "varlen" in ln
                 else 76 if "D=64" in ln else 12 if "dq_convert" in ln
                 else 8 if "softcap" in ln or "tail_parts" in ln or "pdl_trigger" in ln or "keys" in ln else 0)
        assert spill and int(spill.group(1)) <= bound, ln


@pytest.mark.skipif(not bwd_hopper.AVAILABLE, reason=f"Gluon: {bwd_hopper.UNAVAILABLE_REASON}")
@pytest.mark.parametrize("flag, switch", [("SPLIT_BAR", "HOPPER_BWD_SPLIT_BAR"),
                                          ("PROD_WRITER", "HOPPER_BWD_PROD_WRITER")])
def test_causal_switch_launch_arguments(monkeypatch, flag, switch):
    """launch.attn_bwd_hopper_impl (the kernels stubbed): the D = 64 / 128 builds whose CAUSAL flag is
    in the switch (the causal ones by default) get the flag: SPLIT_BAR splits the pair barrier,
    PROD_WRITER has the producer issue the dQ reduces; the non-causal ones, the windows (a causal
    call with Sq != Sk is a WINDOW build) and D = 256 (its own kernel) do not, nor any build with
    the switch emptied. PROD_WRITER only with the TMA dQ path (HOPPER_BWD_DQ_TMA)."""
    from test_hopper_fwd import _KernelStub

    from flashkernels.ops.attention.kernels import bwd_hopper256

    stub = _KernelStub()
    monkeypatch.setattr(bwd_hopper, "attn_bwd_hopper_kernel", stub)
    monkeypatch.setattr(bwd_hopper256, "attn_bwd_hopper256_kernel", stub)
    monkeypatch.setattr(launch, "_sm_count", lambda index: 132)

    def run(D, causal, S=256, Sk=None, H=4, Hkv=2):
        Sk = S if Sk is None else Sk
        q, do = _bshd(1, S, H, D), _bshd(1, S, H, D)
        k, v = _bshd(1, Sk, Hkv, D), _bshd(1, Sk, Hkv, D)
        lse, delta = torch.zeros(1, H, S), torch.zeros(1, H, S)
        launch.attn_bwd_hopper_impl(do, q, k, v, lse, delta, 1 / math.sqrt(D), causal, True)
        return dict(stub.seen)

    for D in (64, 128):
        for causal in (False, True):
            seen = run(D, causal)
            assert seen["CAUSAL"] is causal and seen.get(flag, False) is causal, (D, causal)
        seen = run(D, True, S=256, Sk=384)  # (bottom-right: the WINDOW build)
        assert seen["WINDOW"] and not seen["CAUSAL"] and flag not in seen
    assert flag not in run(256, True)
    monkeypatch.setattr(launch, switch, ())
    assert flag not in run(128, True)
    monkeypatch.setattr(launch, switch, (False, True))
    assert run(128, False)[flag]
    if flag == "PROD_WRITER":
        monkeypatch.setattr(launch, "HOPPER_BWD_DQ_TMA", False)
        seen = run(128, True)
        assert "DQ_TMA" not in seen and flag not in seen


def test_bwd_tail_plan():
    """launch.hopper_bwd_tail_plan: of the last rows of tiles as a tail of 2-3 parts a tile, the one whose modelled
    finish (launch._bwd_finish: whole tiles in rounds, then the parts on the first free SM) is earliest; none unless
    a tenth of a round under the whole grid's rounds (tiles that fill their rounds, one row, fewer tiles than SMs a
    row short)."""
    assert launch._bwd_finish(264, 0, 2, 132, 0.0) == 2.0 and launch._bwd_finish(0, 132, 2, 132, 0.0) == 1.0
    assert launch._bwd_finish(132 + 66, 0, 2, 132, 0.0) == 2.0 and launch._bwd_finish(132, 66, 2, 132, 0.0) == 1.5
    # the FA3-paper grid at D = 128 (2048 tiles, 15.5 rounds on 132 SMs) at 16k / 4k / 1k: three parts, 15.73 rounds
    for rows, kb, plan in ((16, 128, (1, 3)), (64, 32, (3, 3)), (256, 8, (9, 3))):
        assert launch.hopper_bwd_tail_plan(rows, kb, 132) == plan
        assert launch._bwd_finish(rows * kb - plan[0] * kb, plan[0] * kb, plan[1], 132, 0.03) < 15.75
    assert launch.hopper_bwd_tail_plan(6, 32, 132) == (2, 2)  # (192 tiles: 2 rows of halves, 1.53 rounds)
    for rows, kb in ((2, 132), (1, 200), (8, 64), (16, 33 * 8)):  # (rounds filled; one row; none gains 0.1 round)
        assert launch.hopper_bwd_tail_plan(rows, kb, 132) is None, (rows, kb)


def _part_tile(pid, S, HKV, tile_base, BLOCK_M, BLOCK_N, TAIL_PARTS):
    """kernels/bwd_hopper_tiles._bwd_part_tile's map, from its docstring: (b, kv head, n0, first query block, query
    blocks) of tail CTA pid."""
    tile, p = divmod(pid, TAIL_PARTS)
    bh, key_block = divmod(tile_base + tile, S // BLOCK_N)
    bounds = [q * (S // BLOCK_M) // TAIL_PARTS for q in range(TAIL_PARTS + 1)]
    return bh // HKV, bh % HKV, key_block * BLOCK_N, bounds[p], bounds[p + 1] - bounds[p]


def test_bwd_tail_covers_every_block_once():
    """The main grid (S / 128, B·Hkv - tail rows: _bwd_tile's whole tiles) and the tail launch
    (kernels/bwd_hopper_tiles._bwd_part_tile, written out here; TAIL_PARTS CTAs a tile of the last rows) cover
    every (b, kv head, key block, query block) exactly once; a tile's parts are consecutive CTAs in part order (its
    last, which merges the others, starts last) and differ in length by at most one block."""
    for B, HKV, S, BLOCK_M, BLOCK_N in ((1, 25, 1024, 64, 128), (1, 10, 2048, 64, 128), (1, 6, 4096, 64, 128),
                                        (4, 16, 4096, 64, 128), (1, 16, 16384, 64, 128), (16, 32, 1024, 128, 128),
                                        (4, 8, 4096, 64, 64), (1, 25, 1024, 64, 64)):  # (BLOCK_N 64: D = 256)
        kb = S // BLOCK_N
        plan = launch.hopper_bwd_tail_plan(B * HKV, kb, 132)
        assert plan is not None, (B, HKV, S)
        tail_rows, parts = plan
        main_rows = B * HKV - tail_rows
        nb = S // BLOCK_M
        seen = {}
        for pid_bh in range(main_rows):
            for pid_n in range(kb):
                for i in range(nb):
                    seen[pid_bh // HKV, pid_bh % HKV, pid_n * BLOCK_N, i] = "main"
        for pid in range(tail_rows * kb * parts):
            b, hk, n0, i0, n = _part_tile(pid, S, HKV, main_rows * kb, BLOCK_M, BLOCK_N, parts)
            assert (b * HKV + hk) >= main_rows and abs(n - nb / parts) < 1
            assert (b * HKV + hk) * kb + n0 // BLOCK_N == main_rows * kb + pid // parts
            for i in range(i0, i0 + n):
                assert (b, hk, n0, i) not in seen
                seen[b, hk, n0, i] = pid
        assert len(seen) == B * HKV * kb * nb


class _LaunchRecorder:
    """Stands for a kernel: ``kernel[grid](*args, **kw)`` records dict(grid=grid, **kw) in ``calls``."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *a, **kw: self.calls.append(dict(grid=grid, **kw))


def _record_bwd_launches(monkeypatch) -> _LaunchRecorder:
    """Both Gluon backward kernels stubbed by one recorder, on 132 SMs (an H100's count)."""
    from flashkernels.ops.attention.kernels import bwd_hopper256

    rec = _LaunchRecorder()
    monkeypatch.setattr(bwd_hopper, "attn_bwd_hopper_kernel", rec)
    monkeypatch.setattr(bwd_hopper256, "attn_bwd_hopper256_kernel", rec)
    monkeypatch.setattr(launch, "_sm_count", lambda index: 132)
    return rec


def test_bwd_tail_launch_arguments(monkeypatch):
    """launch.HOPPER_BWD_TAIL (the kernels stubbed, 132 SMs): a plain non-causal backward at a head dim it names,
    from HOPPER_BWD_TAIL_MIN_KEYS keys, with a tail plan (hopper_bwd_tail_plan), launches the main grid over the
    rows before the tail (PDL_TRIGGER), then the tail (a 1-D grid of TAIL_PARTS CTAs a tile from tile_base, by
    programmatic dependent launch) with a fresh workspace (Part: fp32, (parts - 1) · 2 slots of 64 x D a tile;
    Flags: int32 zeros, one a slot and the counter), D = 64 too, and D = 256 (its own kernel, 64-key tiles) once
    named; causal calls, features (softcap, ALiBi, a window, Sq != Sk), fewer keys, no plan and the switch off
    launch one grid without either; memory's
    hopper_bwd_tail_bytes counts what the workspace adds (Part lies in dQ's output storage where it fits)."""
    rec = _record_bwd_launches(monkeypatch)

    def run(D, causal, S, H, Hkv=None, Sk=None, B=1, **kw):
        Hkv = H if Hkv is None else Hkv
        Sk = S if Sk is None else Sk
        q, do = _bshd(B, S, H, D), _bshd(B, S, H, D)
        k, v = _bshd(B, Sk, Hkv, D), _bshd(B, Sk, Hkv, D)
        lse, delta = torch.zeros(B, H, S), torch.zeros(B, H, S)
        rec.calls.clear()
        launch.attn_bwd_hopper_impl(do, q, k, v, lse, delta, 1 / math.sqrt(D), causal, True, **kw)
        return list(rec.calls)

    assert launch.HOPPER_BWD_TAIL == (64, 128, 256) and launch.HOPPER_BWD_TAIL_MIN_KEYS == 4096  # (defaults)
    for H, Hkv, (tail_rows, parts) in ((6, 6, (2, 2)), (5, 5, (1, 3)), (20, 5, (1, 3))):
        main, tail = run(128, False, 4096, H, Hkv)
        assert main["grid"] == (32, Hkv - tail_rows) and main["PDL_TRIGGER"] is True and "TAIL_PARTS" not in main
        assert tail["grid"] == (tail_rows * 32 * parts,) and tail["TAIL_PARTS"] == parts
        assert tail["tile_base"] == (Hkv - tail_rows) * 32 and tail["launch_pdl"] is True
        assert not (main["CAUSAL"] or main["LONG_FIRST"] or tail["CAUSAL"] or tail["LONG_FIRST"])
        slots = tail_rows * 32 * (parts - 1) * 2
        assert tail["Part"].dtype == torch.float32 and tail["Part"].numel() == slots * 2 * 64 * 128
        assert tail["Flags"].dtype == torch.int32 and tail["Flags"].shape == (slots + 1,) and not tail["Flags"].any()
        again = run(128, False, 4096, H, Hkv)[1]
        assert again["Flags"] is not tail["Flags"]  # (fresh a call)
        # Part in dQ's output storage (B·S·H·D bf16) where it fits: here only the GQA case's (8.4 MB in 21)
        fits = slots * 2 * 64 * 128 * 4 <= 4096 * H * 128 * 2
        assert (tail["Part"].untyped_storage().nbytes() == 4096 * H * 128 * 2) is fits, (H, Hkv)
        assert launch.hopper_bwd_tail_bytes(1, H, Hkv, 4096, 128, False, 132) == \
            (slots + 1) * 4 + (0 if fits else slots * 2 * 64 * 128 * 4)
    (one,) = run(128, False, 4096, 7)  # (224 tiles: no plan)
    assert "PDL_TRIGGER" not in one and "TAIL_PARTS" not in one and one["grid"] == (32, 7)
    assert launch.hopper_bwd_tail_bytes(1, 7, 7, 4096, 128, False, 132) == 0
    assert len(run(128, False, 2048, 10)) == 1  # (fewer keys than the floor)
    for kw in (dict(causal=True), dict(causal=False, softcap=5.0), dict(causal=False, alibi_slopes=torch.rand(5)),
               dict(causal=False, window_left=256), dict(causal=False, Sk=4096 + 128)):
        causal = kw.pop("causal")
        (one,) = run(128, causal, 4096, 5, **kw)
        assert "PDL_TRIGGER" not in one and "TAIL_PARTS" not in one, kw
    assert launch.hopper_bwd_tail_bytes(1, 5, 5, 4096, 128, True, 132) == 0
    main, tail = run(64, False, 4096, 5)  # (D = 64: its 128-row build)
    assert main["PDL_TRIGGER"] is True and tail["TAIL_PARTS"] == 3 and tail["BLOCK_M"] == 128
    main, tail = run(256, False, 4096, 3)  # (D = 256's kernel: 64-key tiles, 3 rows of 64, the last in halves)
    assert main["grid"] == (64, 2) and main["PDL_TRIGGER"] is True and "EPI_TMA" in main
    assert tail["grid"] == (64 * 2,) and tail["TAIL_PARTS"] == 2 and tail["tile_base"] == 128
    assert tail["Part"].numel() == 64 * 2 * 2 * 64 * 128 and tail["Flags"].shape == (64 * 2 + 1,)
    # (8.4 MB of partials, more than dq's 6.3 MB: a buffer of their own)
    assert launch.hopper_bwd_tail_bytes(1, 3, 3, 4096, 256, False, 132) == (64 * 2 + 1) * 4 + 64 * 2 * 2 * 64 * 128 * 4
    assert tail["Part"].untyped_storage().nbytes() == 64 * 2 * 2 * 64 * 128 * 4
    monkeypatch.setattr(launch, "HOPPER_BWD_TAIL", (64, 128))  # (a head dim the switch does not name: one launch)
    assert len(run(256, False, 4096, 3)) == 1 and launch.hopper_bwd_tail_bytes(1, 3, 3, 4096, 256, False, 132) == 0
    monkeypatch.setattr(launch, "HOPPER_BWD_TAIL", ())
    assert len(run(128, False, 4096, 5)) == 1
    assert launch.hopper_bwd_tail_bytes(1, 5, 5, 4096, 128, False, 132) == 0


def test_bwd_epi_tma_launch_arguments(monkeypatch):
    """launch.HOPPER_BWD_EPI_TMA (the kernels stubbed, 132 SMs): the plain backward at a (head dim, causal) it names,
    with fewer keys than its bound (the defaults: non-causal D = 64 any, D = 128 below 2048; causal D = 64 below
    4096, D = 128 any), launches kernels/bwd_hopper.py with EPI_TMA and 64 x D descriptors of dK / dV (D = 128: its
    3-stage ring, or 2 stages; D = 64: 128-row query blocks; causal: with SPLIT_BAR and PROD_WRITER); with a tail
    plan only the main grid has it (the tail's parts merge from the registers); more keys, features, the dQ atomics
    and a pair the switch does not name launch without it."""
    rec = _record_bwd_launches(monkeypatch)

    def run(D, causal, S, H, bshd=True, **kw):
        q, do, k, v = (_bshd(1, S, H, D) for _ in range(4))
        if not bshd:
            q, do, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, do, k, v))
        lse, delta = torch.zeros(1, H, S), torch.zeros(1, H, S)
        rec.calls.clear()
        launch.attn_bwd_hopper_impl(do, q, k, v, lse, delta, 1 / math.sqrt(D), causal, bshd, **kw)
        return list(rec.calls)

    assert launch.HOPPER_BWD_EPI_TMA == {(64, False): None, (128, False): 2048, (64, True): 4096,
                                         (128, True): None}  # (the defaults)
    assert run(64, False, 4096, 4)[0]["EPI_TMA"] is True and run(128, False, 1024, 4)[0]["EPI_TMA"] is True
    assert all("EPI_TMA" not in run(128, False, S, 4)[0] for S in (2048, 4096))
    assert all("EPI_TMA" not in c for c in run(128, False, 4096, 6))  # (with a tail plan, the main grid too)
    assert run(64, True, 2048, 4)[0]["EPI_TMA"] is True and "EPI_TMA" not in run(64, True, 4096, 4)[0]
    (one,) = run(128, True, 16384, 2)
    assert one["EPI_TMA"] is True and one["CAUSAL"] and one["SPLIT_BAR"] and one["PROD_WRITER"] and one["STAGES"] == 2
    monkeypatch.setattr(launch, "HOPPER_BWD_EPI_TMA", {(64, False): None, (128, False): None})
    for D, bshd in ((128, True), (128, False), (64, True)):
        (one,) = run(D, False, 1024, 4, bshd)
        assert one["EPI_TMA"] is True and one["STAGES"] == (3 if D == 128 else 2)
        assert one["BLOCK_M"] == (64 if D == 128 else 128)
        for n in ("desc_dk", "desc_dv"):
            assert list(one[n].block_shape) == [64, D] and one[n].base.dtype == torch.bfloat16
            assert list(one[n].shape) == ([1024, 4 * D] if bshd else [4 * 1024, D])
    main, tail = run(128, False, 4096, 6)  # (a tail plan: rows 4-5 in halves)
    assert main["EPI_TMA"] is True and main["PDL_TRIGGER"] is True
    assert tail["TAIL_PARTS"] == 2 and not any(n in tail for n in ("EPI_TMA", "desc_dk", "desc_dv"))
    for D in (64, 128):
        for causal, kw in ((True, {}), (False, dict(softcap=5.0)), (False, dict(alibi_slopes=torch.rand(4))),
                           (False, dict(window_left=256))):
            (one,) = run(D, causal, 1024, 4, **kw)
            assert "EPI_TMA" not in one, (D, causal, kw)
    monkeypatch.setattr(launch, "HOPPER_BWD_EPI_TMA", {(128, True): None})
    assert run(128, True, 1024, 4)[0]["EPI_TMA"] is True and "EPI_TMA" not in run(64, True, 1024, 4)[0]
    assert "EPI_TMA" not in run(128, True, 1024, 4, softcap=5.0)[0] and "EPI_TMA" not in run(128, False, 1024, 4)[0]
    monkeypatch.setattr(launch, "HOPPER_BWD_EPI_TMA", {(64, False): None, (128, False): None})
    monkeypatch.setattr(launch, "HOPPER_BWD_STAGES", {})  # (D = 128 with 2 stages: dK_w staged in its dQ tile)
    assert run(128, False, 1024, 4)[0]["STAGES"] == 2 and run(128, False, 1024, 4)[0]["EPI_TMA"] is True
    monkeypatch.setattr(launch, "HOPPER_BWD_STAGES", {(128, True): 3})
    monkeypatch.setattr(launch, "HOPPER_BWD_DQ_TMA", False)
    assert all("EPI_TMA" not in run(D, False, 1024, 4)[0] for D in (64, 128))
    monkeypatch.setattr(launch, "HOPPER_BWD_DQ_TMA", True)
    monkeypatch.setattr(launch, "HOPPER_BWD_EPI_TMA", {(64, False): None})
    assert "EPI_TMA" not in run(128, False, 1024, 4)[0] and run(64, False, 1024, 4)[0]["EPI_TMA"] is True
    monkeypatch.setattr(launch, "HOPPER_BWD_EPI_TMA", {(64, False): 4096})
    assert run(64, False, 2048, 4)[0]["EPI_TMA"] is True and "EPI_TMA" not in run(64, False, 4096, 4)[0]


# ================================================================================== GPU
LAYOUTS = [("fa", "contig"), ("sdpa", "contig"), ("fa", "packed"), ("sdpa", "transposed")]


# (D, S): every seqlen at D = 64 and 128 (kernels/bwd_hopper.py); two at D = 256 (its own kernel,
# kernels/bwd_hopper256.py; the GPU run has a time budget)
BWD_DS = [(d, s) for d in (64, 128) for s in (128, 384, 1024)] + [(256, 128), (256, 384)]


@pytest.mark.gpu
@pytest.mark.parametrize("D,S", BWD_DS, ids=[f"d{d}-s{s}" for d, s in BWD_DS])
@pytest.mark.parametrize("heads", [(8, 8), (32, 8), (8, 1)], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [bf16, f16], ids=["bf16", "fp16"])
def test_hopper_bwd_cuda(D, dtype, causal, heads, S):
    """Gradients from the Gluon backward within the policy of float64 (check_case: out, lse and
    dq/dk/dv; conftest poisons the outputs, so an unwritten element fails). At D = 64 the forward
    is the Triton kernel, the backward Gluon."""
    _needs_hopper()
    Hq, Hkv = heads
    n = launch.hopper_bwd_launches
    check_case(Case("fa", dtype, 2, Hq, Hkv, S, S, D, causal=causal), device="cuda")
    assert launch.hopper_bwd_launches == n + 1, "the Gluon backward did not run"


@pytest.mark.gpu
@pytest.mark.parametrize("api,inputs", LAYOUTS, ids=[f"{a}-{i}" for a, i in LAYOUTS])
@pytest.mark.parametrize("grad_out", ["contig", "transposed"])
def test_hopper_bwd_layouts_cuda(api, inputs, grad_out):
    """Every input and dO layout the TMA views take, both output layouts (flash_attn_func's
    (B, S, H, D), SDPA's (B, H, S, D)): within the policy, through the Gluon backward."""
    _needs_hopper()
    n = launch.hopper_bwd_launches
    check_case(Case(api, bf16, 2, 8, 8 if inputs == "packed" else 2, 256, 256, 128, causal=True, inputs=inputs,
                    grad_out=grad_out), device="cuda")
    assert launch.hopper_bwd_launches == n + 1


@pytest.mark.gpu
@pytest.mark.parametrize("B,Hq,Hkv,S", [(1, 32, 8, 384), (2, 8, 8, 256)], ids=["gqa", "mha"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_hopper_bwd_matches_triton_cuda(monkeypatch, causal, B, Hq, Hkv, S):
    """With a gradient at lse too: the Gluon backward against float64, and against the Triton
    backward on the same forward within that policy's bound."""
    _needs_hopper()
    case = Case("fa", bf16, B, Hq, Hkv, S, S, 128, causal=causal)
    q, k, v = make_inputs(case, "cuda")
    dout = randn(B, S, Hq, 128, dtype=bf16, device="cuda")
    dlse = randn(B, Hq, S, device="cuda")

    def run():
        out, lse, _ = flashkernels.flash_attn_func(q, k, v, causal=causal, return_attn_probs=True, backend="triton")
        return torch.autograd.grad((out, lse), (q, k, v), (dout, dlse))

    n = launch.hopper_bwd_launches
    gluon = run()
    assert launch.hopper_bwd_launches == n + 1
    monkeypatch.setenv(launch.HOPPER_BWD_ENV, "0")
    triton_ = run()
    assert launch.hopper_bwd_launches == n + 1
    leaves = [x.detach().transpose(1, 2).double().requires_grad_() for x in (q, k, v)]
    ref, ref_lse = naive_attention(*leaves, causal="top_left" if causal else None)
    ref_g = torch.autograd.grad((ref, ref_lse), leaves, (dout.transpose(1, 2).double(), dlse.double()))
    from flashkernels.ops.attention.reference import attention_reference
    pt_leaves = [x.detach().transpose(1, 2).clone().requires_grad_() for x in (q, k, v)]
    pt, pt_lse = attention_reference(*pt_leaves, causal=causal, compute_dtype=bf16)
    pt_g = torch.autograd.grad((pt, pt_lse), pt_leaves, (dout.transpose(1, 2), dlse.to(pt_lse.dtype)))
    from helpers import data_magnitude
    mag = data_magnitude(q, k, v, dout, dlse)
    for name, g, t, r, p in zip(("dq", "dk", "dv"), gluon, triton_, ref_g, pt_g):
        g, t = g.transpose(1, 2), t.transpose(1, 2)
        _, bound = assert_close_policy(g, r, p, factor=3.0, name=name, data_magnitude=mag)
        diff = (g.double() - t.double()).abs().max().item()
        assert diff <= bound, f"{name}: Gluon vs Triton backward {diff:.3e} > {bound:.3e}"


@pytest.mark.gpu
def test_deterministic_keeps_the_triton_backward_cuda():
    _needs_hopper()
    case = Case("fa", bf16, 2, 8, 2, 512, 512, 128, causal=True)
    q, k, v = make_inputs(case, "cuda")
    dout = torch.randn(2, 512, 8, 128, device="cuda", dtype=bf16)
    n = launch.hopper_bwd_launches
    runs = [torch.autograd.grad(flashkernels.flash_attn_func(q, k, v, causal=True, deterministic=True), (q, k, v),
                                dout) for _ in range(2)]
    assert launch.hopper_bwd_launches == n
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.no_poison
def test_hopper_bwd_under_torch_compile_cuda():
    """Compiled, the backward graph holds the opaque op, which runs the Gluon kernel; its
    gradients equal eager's up to the order of the dQ atomics (dk, dv bit for bit)."""
    _needs_hopper()
    case = Case("fa", bf16, 2, 8, 2, 256, 256, 128, causal=True)
    q, k, v = make_inputs(case, "cuda")
    dout = torch.randn(2, 256, 8, 128, device="cuda", dtype=bf16)

    def f(q, k, v):
        return flashkernels.flash_attn_func(q, k, v, causal=True, backend="triton")

    compiled = torch.compile(f, fullgraph=True)
    torch.autograd.grad(compiled(q, k, v), (q, k, v), dout)
    n = launch.hopper_bwd_launches
    gc = torch.autograd.grad(compiled(q, k, v), (q, k, v), dout)
    assert launch.hopper_bwd_launches == n + 1, "the compiled backward did not run the Gluon kernel"
    ge = torch.autograd.grad(f(q, k, v), (q, k, v), dout)
    assert launch.hopper_bwd_launches == n + 2
    torch.testing.assert_close(gc[1], ge[1], rtol=0, atol=0)
    torch.testing.assert_close(gc[2], ge[2], rtol=0, atol=0)
    # dq: fp32 atomics in another order, then one bf16 rounding: at most one bf16 ulp apart
    torch.testing.assert_close(gc[0], ge[0], rtol=2 ** -7, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.no_poison
def test_opcheck_attn_bwd_on_the_hopper_path_cuda():
    _needs_hopper()
    q, k, v = (_bshd(2, 256, h, dtype=bf16, device="cuda") for h in (4, 2, 2))
    out, lse = launch.attn_fwd_impl(q, k, v, None, 1 / math.sqrt(128), True, 0, True, False)
    do = _bshd(2, 256, 4, dtype=bf16, device="cuda")
    args = (do, q, k, v, out, lse, None, None, 1 / math.sqrt(128), True, 0, True, False)
    n = launch.hopper_bwd_launches
    torch.library.opcheck(torch.ops.flashkernels.attn_bwd.default, args)
    assert launch.hopper_bwd_launches > n


SANITIZE_HOPPER = """
import torch, flashkernels
from flashkernels.ops.attention import launch
launch.HOPPER_FWD_VARLEN = True  # (the forward's VARLEN cases below: the library's default, set in case)
launch.HOPPER_FWD_PERSISTENT_FEATURES = True  # (the library's default, set in case: one case below)
torch.manual_seed(0)
for dt, causal, B, H, Hkv, S, Sk, D, feats, window in [
        (torch.bfloat16, True, 1, 4, 2, 384, 384, 128, False, (-1, -1)),
        (torch.float16, False, 2, 2, 1, 256, 256, 128, False, (-1, -1)),
        (torch.float16, False, 2, 2, 2, 256, 256, 128, False, (-1, -1)),
        (torch.bfloat16, True, 1, 4, 2, 384, 384, 64, False, (-1, -1)),
        (torch.bfloat16, True, 1, 4, 2, 384, 384, 256, False, (-1, -1)),
        (torch.bfloat16, True, 2, 4, 2, 384, 384, 128, True, (-1, -1)),
        (torch.float16, False, 1, 4, 1, 256, 256, 64, True, (-1, -1)),
        (torch.bfloat16, True, 1, 4, 2, 512, 256, 128, True, (-1, -1)),   # rows without keys (WINDOW)
        (torch.float16, False, 1, 4, 2, 256, 640, 64, False, (70, 3)),  # keys no row sees
        (torch.float16, False, 1, 2, 2, 256, 256, 64, False, (-1, -1)),  # the backward's 128 rows, not causal
        (torch.bfloat16, False, 2, 2, 1, 512, 512, 128, False, (-1, -1)),  # the persistent forward, below
        (torch.bfloat16, True, 2, 2, 1, 512, 512, 128, False, (-1, -1)),  # causal: pairs of query tiles
        (torch.float16, True, 1, 4, 2, 512, 512, 64, False, (-1, -1)),  # D = 64's short build, causal
        (torch.bfloat16, True, 2, 4, 2, 512, 512, 128, True, (-1, -1))]:  # the persistent forward's features
    sm_count = launch._sm_count
    if S == 512:  # (3 SMs' worth of CTAs: each runs several tiles or pairs, the ring and Q carried over,
        # chained: launch.HOPPER_FWD_CHAIN)
        launch._sm_count = lambda index: 3
    q = torch.randn(B, S, H, D, device="cuda", dtype=dt, requires_grad=True)
    k, v = (torch.randn(B, Sk, Hkv, D, device="cuda", dtype=dt, requires_grad=True) for _ in range(2))
    kw = {}
    if feats:  # softcap, ALiBi (B, H) and a sink: the backward's feature flags (the slopes' shared memory)
        kw = dict(softcap=5.0, alibi_slopes=torch.rand(B, H, device="cuda") * 0.1,
                  learnable_sink=torch.randn(H, device="cuda", requires_grad=True))
    flashkernels.flash_attn_func(q, k, v, causal=causal, window_size=window, backend="triton",
                                 **kw).sum().backward()
    launch._sm_count = sm_count
# packed sequences (both Gluon kernels' VARLEN; the forward also at D = 64 (three warpgroups: its
# seqlen floor lifted) with softcap, a sink and a window, and at D = 256 (its backward: Triton) with
# ALiBi (n, H)): lengths off the block grid, 0 and 1, Sq > Sk (rows without keys), the last
# sequence ending at the tensor's end (TMA zero fill)
launch.HOPPER_FWD_MIN_SEQLEN = {}
sm_count = launch._sm_count
launch._sm_count = lambda index: 3  # (D = 128's persistent forward, the packed tiles by its dynamic scheduler:
# several tiles a CTA, the ring and the Q buffers carried over; launch.HOPPER_FWD_VARLEN_PERSISTENT)
for causal, lens_q, lens_k, D, dt, window, feats in [
        (True, (1, 130, 0, 257, 77), (1, 100, 9, 257, 300), 128, torch.bfloat16, (-1, -1), {}),
        (False, (64, 3, 200), (5, 128, 199), 128, torch.bfloat16, (-1, -1), {}),
        (False, (1, 130, 0, 257, 77), (3, 200, 5, 0, 300), 64, torch.float16, (50, 7), dict(softcap=5.0)),
        (True, (100, 1, 0, 257), (64, 3, 9, 200), 256, torch.bfloat16, (-1, -1), dict(alibi_slopes=True))]:
    cu_q, cu_k = (torch.tensor([0] + torch.tensor(ls).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
                  for ls in (lens_q, lens_k))
    q = torch.randn(sum(lens_q), 4, D, device="cuda", dtype=dt, requires_grad=True)
    k, v = (torch.randn(sum(lens_k), 2, D, device="cuda", dtype=dt, requires_grad=True) for _ in range(2))
    if "alibi_slopes" in feats:
        feats = dict(alibi_slopes=torch.rand(len(lens_q), 4, device="cuda") * 0.1)
    if "softcap" in feats:
        feats = dict(feats, learnable_sink=torch.randn(4, device="cuda", requires_grad=True))
    flashkernels.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal,
                                        window_size=window, backend="triton", **feats).sum().backward()
launch._sm_count = sm_count
torch.cuda.synchronize()
# the forward is Gluon at D = 128 and 256, at D = 64 plain below 2048 rows (launch.HOPPER_FWD_SHORT:
# 256 non-causal, 512 causal) and packed (64, 128, 256), the backward at 64, 128 and 256, and
# packed (64, 128)
assert (launch.hopper_fwd_launches, launch.hopper_bwd_launches) == (15, 17), \
    (launch.hopper_fwd_launches, launch.hopper_bwd_launches)
print("done")
"""


@pytest.mark.gpu
@pytest.mark.big_memory
@pytest.mark.skipif(shutil.which("compute-sanitizer") is None, reason="compute-sanitizer not found")
def test_hopper_kernels_memcheck(tmp_path):
    """memcheck over the Gluon kernels: GQA causal, MQA, MHA at D = 128 (and the persistent forward,
    chained, several tiles or causal pairs a CTA; D = 64's short build, causal and not), GQA causal
    and MHA at D = 64 (the backward's 128 rows) and
    256 (the backward's own kernel there), softcap + ALiBi + sink (GQA causal at D = 128, MQA at
    D = 64), the backward's WINDOW (Sq > Sk causal with all three at D = 128, a window with
    Sq < Sk at D = 64) and VARLEN in both (packed sequences of lengths 0, 1 and off the block grid;
    the forward's at D = 64 with softcap, a sink and a window, and at D = 256 with ALiBi; at D = 128
    persistent, its tiles handed out by the dynamic scheduler over 3 CTAs)."""
    _needs_hopper()
    assert_compute_sanitizer_clean("memcheck", SANITIZE_HOPPER, tmp_path)


@pytest.mark.gpu
@pytest.mark.big_memory
@pytest.mark.skipif(shutil.which("compute-sanitizer") is None, reason="compute-sanitizer not found")
def test_hopper_kernels_racecheck(tmp_path):
    """No racecheck hazard in either Gluon kernel's code, the same cases as memcheck (see
    test_hopper_fwd.assert_racecheck_only_handshake)."""
    _needs_hopper()
    from flashkernels.ops.attention.kernels import bwd_hopper256, fwd_hopper

    script = tmp_path / "sanitize_hopper.py"
    script.write_text(SANITIZE_HOPPER)
    assert_racecheck_only_handshake(script, [bwd_hopper.__file__, bwd_hopper256.__file__, fwd_hopper.__file__])


@pytest.mark.gpu
@pytest.mark.parametrize("waves", [0, 10 ** 6], ids=["head-major", "long-first"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_hopper_bwd_cta_orders_cuda(monkeypatch, causal, waves):
    """Both CTA orders of the backward (launch.HOPPER_BWD_LONG_FIRST_WAVES decides: long-first
    only for causal calls with few CTAs) give gradients within the policy."""
    _needs_hopper()
    monkeypatch.setattr(launch, "HOPPER_BWD_LONG_FIRST_WAVES", waves)
    n = launch.hopper_bwd_launches
    check_case(Case("fa", bf16, 2, 8, 2, 640, 640, 128, causal=causal), device="cuda")
    assert launch.hopper_bwd_launches == n + 1


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("D", [64, 128, 256], ids=lambda d: f"d{d}")
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_hopper_bwd_dq_paths_cuda(monkeypatch, causal, D, layout):
    """Both of the backward's dQ paths (launch.HOPPER_BWD_DQ_TMA, at D = 256 HOPPER_BWD256_DQ_TMA:
    a TMA reduce-add from shared memory, the default, or fp32 atomics from registers) give gradients
    within the policy, with the dQ accumulator in either layout (B, S, H, D) / (B, H, S, D), and
    agree to the atomics' order."""
    _needs_hopper()
    grads = {}
    switch = "HOPPER_BWD256_DQ_TMA" if D == 256 else "HOPPER_BWD_DQ_TMA"
    for tma in (True, False):
        monkeypatch.setattr(launch, switch, tma)
        n = launch.hopper_bwd_launches
        api = "fa" if layout == "bshd" else "sdpa"  # (flash_attn_func's (B, S, H, D) or SDPA's (B, H, S, D))
        torch.manual_seed(0)  # (the same q, k, v and dout for both paths)
        grads[tma] = check_case(Case(api, bf16, 2, 8, 2, 384, 384, D, causal=causal), device="cuda").grads
        assert launch.hopper_bwd_launches == n + 1
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b, rtol=2 ** -7, atol=2 ** -7 * b.abs().max().item())


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("heads", [(8, 8), (8, 2)], ids=["mha", "gqa"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_hopper_bwd_block_m_cuda(monkeypatch, causal, heads, layout):
    """D = 64 with 128 query rows an iteration (launch.HOPPER_BWD_M128: the warpgroups split dQ_i
    by rows) and with 64 (by columns), with either dQ path (TMA reduce, atomics): gradients within
    the policy, at S = 640 (five 128-row blocks: the causal diagonal cuts both warpgroups' keys in
    one block), both output layouts, and the four builds agree to the accumulation order."""
    _needs_hopper()
    grads = {}
    for m128 in (True, False):
        for tma in (True, False):
            monkeypatch.setattr(launch, "HOPPER_BWD_M128", m128)
            monkeypatch.setattr(launch, "HOPPER_BWD_DQ_TMA", tma)
            n = launch.hopper_bwd_launches
            torch.manual_seed(0)  # (the same q, k, v and dout for every build)
            api = "fa" if layout == "bshd" else "sdpa"
            grads[m128, tma] = check_case(Case(api, bf16, 2, heads[0], heads[1], 640, 640, 64, causal=causal),
                                          device="cuda").grads
            assert launch.hopper_bwd_launches == n + 1
    for key in ((True, False), (False, True), (False, False)):
        for a, b in zip(grads[True, True], grads[key]):
            torch.testing.assert_close(a, b, rtol=2 ** -7, atol=2 ** -7 * b.abs().max().item())


# ------------------------------------------------------------------ GPU: the backward's features
# (test_hopper_fwd._feature_kwargs: softcap 2 bends every score; ALiBi (H,) / (B, H) geometric
# slopes; "large" puts most of every row's mass on the sink, "mixed" is randn * 2)
BWD_FEATURES = {
    "softcap": dict(softcap=2.0), "alibi-h": dict(alibi="h"), "sink-large": dict(sink="large"),
    "all": dict(softcap=2.0, alibi="bh", sink="mixed"),
}


def _check_gluon_bwd_features(D, dtype, causal, Hq, Hkv, feats, B=2, Sq=384, Sk=None, window=(-1, -1)):
    """flash_attn_func's gradients (q, k, v and the sink, with a gradient at lse too, none on the
    rows that see no key) through the Gluon backward (one launch more) within the policy of float64
    (helpers.f64_flash_attention; pt: the reference in the input dtype), and as close to the Triton
    backward's (deterministic=True, on the same forward) as the policy's bound allows."""
    from flashkernels.ops.attention.reference import attention_reference

    Sk = Sq if Sk is None else Sk
    q, k, v = make_inputs(Case("fa", dtype, B, Hq, Hkv, Sq, Sk, D, causal=causal), "cuda")
    kw = _feature_kwargs(B, Hq, **feats)
    sink = kw.pop("learnable_sink", None)
    leaves = (q, k, v)
    if sink is not None:
        sink = sink.clone().requires_grad_()
        leaves += (sink,)
    dout = randn(B, Sq, Hq, D, dtype=dtype, device="cuda")
    rows = torch.arange(Sq, device="cuda")
    left, right = window
    right = 0 if causal else right
    lo = (rows + Sk - Sq - left).clamp(min=0) if left >= 0 else torch.zeros_like(rows)
    hi = (rows + Sk - Sq + right).clamp(max=Sk - 1) if right >= 0 else torch.full_like(rows, Sk - 1)
    dlse = randn(B, Hq, Sq, device="cuda") * (lo <= hi)  # (rows that see no key: lse -inf, no gradient)

    def run(deterministic):
        out, lse, _ = flashkernels.flash_attn_func(q, k, v, causal=causal, window_size=window, learnable_sink=sink,
                                                   return_attn_probs=True, deterministic=deterministic,
                                                   backend="triton", **kw)
        return torch.autograd.grad((out, lse), leaves, (dout, dlse))

    n = launch.hopper_bwd_launches
    gluon = run(False)
    assert launch.hopper_bwd_launches == n + 1, "the Gluon backward did not run"
    triton_ = run(True)
    assert launch.hopper_bwd_launches == n + 1, "deterministic=True ran the Gluon backward"
    alibi = kw.get("alibi_slopes")
    ref_in = [x.detach().cpu().double().requires_grad_() for x in leaves]
    ref_out, ref_lse = f64_flash_attention(*ref_in[:3], causal=causal, window_size=window, softcap=kw["softcap"],
                                           alibi=None if alibi is None else alibi.cpu(),
                                           sink=ref_in[3] if sink is not None else None)
    ref_lse = ref_lse.where(torch.isfinite(ref_lse), 0.0)
    ref_g = torch.autograd.grad((ref_out, ref_lse), ref_in, (dout.cpu().double(), dlse.cpu().double()))
    pt_in = [x.detach().transpose(1, 2).requires_grad_() for x in (q, k, v)]
    if sink is not None:
        pt_in.append(sink.detach().clone().requires_grad_())
    pt_out, pt_lse = attention_reference(*pt_in[:3], causal=causal, causal_align="bottom_right", window_size=window,
                                         softcap=kw["softcap"], alibi_slopes=alibi,
                                         sink=pt_in[3] if sink is not None else None, compute_dtype=dtype)
    pt_g = torch.autograd.grad((pt_out, pt_lse), pt_in, (dout.transpose(1, 2), dlse.to(pt_lse.dtype)))
    mag = data_magnitude(q, k, v, dout, dlse)
    for name, g, t, r, p in zip(("dq", "dk", "dv", "dsink"), gluon, triton_, ref_g, pt_g):
        if name != "dsink":
            p = p.transpose(1, 2)
        _, bound = assert_close_policy(g, r, p, factor=3.0, name=name, data_magnitude=mag, dtype=dtype)
        diff = (g.double() - t.double()).abs().max().item()
        assert diff <= bound, f"{name}: Gluon vs Triton backward {diff:.3e} > policy bound {bound:.3e}"


@pytest.mark.gpu
@pytest.mark.parametrize("feature", list(BWD_FEATURES))
@pytest.mark.parametrize("heads", ["mha", "gqa"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [bf16, f16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("D", [64, 128], ids=lambda d: f"d{d}")
def test_hopper_bwd_features_cuda(D, dtype, causal, heads, feature):
    """softcap, ALiBi (H,), a sink (most of the mass on it), and all three at once (ALiBi (B, H)),
    causal or not, MHA and GQA (32 / 8: the group's slopes), D = 64 and 128, through the Gluon
    backward: against float64 and the Triton backward."""
    _needs_hopper()
    Hq, Hkv = HEADS[heads]
    _check_gluon_bwd_features(D, dtype, causal, Hq, Hkv, BWD_FEATURES[feature])


def _window_cases():
    from test_hopper_fwd import WINDOW_CASES

    return WINDOW_CASES


@pytest.mark.gpu
@pytest.mark.parametrize("case", _window_cases(), ids=[
    "-".join([f"q{a}-k{b}", "causal" if c else "full", f"win{w[0]}_{w[1]}"] + [f"{n}_{x}" for n, x in f.items()])
    for a, b, c, w, f in _window_cases()])
@pytest.mark.parametrize("D,dtype", [(128, bf16), (64, f16)], ids=["d128-bf16", "d64-fp16"])
def test_hopper_bwd_window_and_seqlens_cuda(D, dtype, case):
    """test_hopper_fwd's sliding windows and Sq != Sk (flash_attn_func: causal bottom-right; rows
    that see no key, keys that no row sees, with and without a sink, with the other features) through
    the Gluon backward (its WINDOW), GQA: against float64 and the Triton backward."""
    _needs_hopper()
    Sq, Sk, causal, window, feats = case
    _check_gluon_bwd_features(D, dtype, causal, 8, 2, feats, Sq=Sq, Sk=Sk, window=window)


@pytest.mark.gpu
@pytest.mark.no_poison
def test_hopper_bwd_features_under_torch_compile_cuda():
    """Compiled with softcap, ALiBi (B, H) and a sink (causal, GQA): the backward graph's opaque op
    runs the Gluon kernel with them; its gradients equal eager's (dk, dv bit for bit, dq to one
    rounding of the atomics' order, dsink to fp32 summation order)."""
    _needs_hopper()
    from test_hopper_fwd import _slopes

    q, k, v = make_inputs(Case("fa", bf16, 2, 8, 2, 256, 256, 128, causal=True), "cuda")
    alibi = _slopes(2, 8, True)
    sink = (randn(8) * 2).cuda().requires_grad_()
    dout = torch.randn(2, 256, 8, 128, device="cuda", dtype=bf16)

    def f(q, k, v, sink):
        return flashkernels.flash_attn_func(q, k, v, causal=True, softcap=5.0, alibi_slopes=alibi,
                                            learnable_sink=sink, backend="triton")

    compiled = torch.compile(f, fullgraph=True)
    torch.autograd.grad(compiled(q, k, v, sink), (q, k, v, sink), dout)
    n = launch.hopper_bwd_launches
    gc = torch.autograd.grad(compiled(q, k, v, sink), (q, k, v, sink), dout)
    assert launch.hopper_bwd_launches == n + 1, "the compiled backward did not run the Gluon kernel"
    ge = torch.autograd.grad(f(q, k, v, sink), (q, k, v, sink), dout)
    assert launch.hopper_bwd_launches == n + 2
    torch.testing.assert_close(gc[1], ge[1], rtol=0, atol=0)
    torch.testing.assert_close(gc[2], ge[2], rtol=0, atol=0)
    torch.testing.assert_close(gc[0], ge[0], rtol=2 ** -7, atol=1e-6)
    torch.testing.assert_close(gc[3], ge[3], rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.no_poison
def test_opcheck_attn_bwd_hopper_features_cuda():
    """opcheck of attn_bwd on a call with softcap, ALiBi and a sink (the Gluon path, eager and
    traced) and of attn_bwd_hopper itself with softcap and the slopes."""
    _needs_hopper()
    from test_hopper_fwd import _slopes

    q, k, v = (_bshd(2, 256, h, dtype=bf16, device="cuda") for h in (4, 2, 2))
    alibi, sink = _slopes(2, 4, True), randn(4).cuda()
    scale = 1 / math.sqrt(128)
    out, lse = launch.attn_fwd_impl(q, k, v, None, scale, True, 0, True, False, -1, -1, 5.0, alibi, sink)
    do = _bshd(2, 256, 4, dtype=bf16, device="cuda")
    n = launch.hopper_bwd_launches
    torch.library.opcheck(torch.ops.flashkernels.attn_bwd.default,
                          (do, q, k, v, out, lse, None, None, scale, True, 0, True, False, -1, -1, 5.0, alibi, sink))
    assert launch.hopper_bwd_launches > n
    delta = launch.attn_bwd_delta(out, do, lse, None)
    torch.library.opcheck(torch.ops.flashkernels.attn_bwd_hopper.default,
                          (do, q, k, v, lse, delta, scale, True, True, 5.0, alibi))


@pytest.mark.gpu
@pytest.mark.parametrize("switch", ["HOPPER_BWD_SPLIT_BAR", "HOPPER_BWD_PROD_WRITER"], ids=["split_bar", "prod_writer"])
@pytest.mark.parametrize("D", [64, 128], ids=lambda d: f"d{d}")
@pytest.mark.parametrize("heads", [(8, 8), (8, 2)], ids=["mha", "gqa"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_hopper_bwd_causal_switch_cuda(monkeypatch, causal, heads, D, switch):
    """Each causal-build switch forced on for both causal settings and emptied gives the same dK and
    dV bit for bit (SPLIT_BAR: the same wgmmas in the same order, only when they are issued moves;
    PROD_WRITER: only who issues dQ's reduces changes) and dQ to its reduce-adds' order; the
    switched build's gradients within the policy."""
    _needs_hopper()
    Hq, Hkv = heads
    grads = {}
    for on in ((False, True), ()):
        monkeypatch.setattr(launch, switch, on)
        n = launch.hopper_bwd_launches
        torch.manual_seed(0)  # (the same q, k, v and dout for both)
        grads[on] = check_case(Case("fa", bf16, 2, Hq, Hkv, 640, 640, D, causal=causal), device="cuda").grads
        assert launch.hopper_bwd_launches == n + 1
    (dq, dk, dv), (dq0, dk0, dv0) = grads[(False, True)], grads[()]
    assert torch.equal(dk, dk0) and torch.equal(dv, dv0)
    torch.testing.assert_close(dq, dq0, rtol=2 ** -7, atol=2 ** -7 * dq0.abs().max().item())


def _hopper_bwd_inputs(B, S, Hq, Hkv, D, causal, bshd=True, dtype=bf16):
    """(do, q, k, v, lse, delta, scale): attn_bwd_hopper_impl's arguments on CUDA from the current seed, (B, H, S, D)
    views of (B, S, H, D) storage (bshd) or contiguous (B, H, S, D), out and lse from the Gluon forward."""
    q, do = (randn(B, S, Hq, D, dtype=dtype, device="cuda").transpose(1, 2) for _ in range(2))
    k, v = (randn(B, S, Hkv, D, dtype=dtype, device="cuda").transpose(1, 2) for _ in range(2))
    if not bshd:
        q, do, k, v = (x.contiguous() for x in (q, do, k, v))
    scale = 1 / math.sqrt(D)
    out, lse = launch.attn_fwd_hopper_impl(q, k, v, scale, causal, bshd)[:2]
    return do, q, k, v, lse, launch.attn_bwd_delta(out, do, lse, None), scale


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [bf16, f16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", [(1, 25, 25, 1024), (1, 40, 10, 2048), (1, 6, 6, 4096)],
                         ids=["b1-h25-1k", "b1-gqa-2k", "b1-h6-4k"])
@pytest.mark.parametrize("D", [64, 128, 256], ids=["d64", "d128", "d256"])
def test_hopper_bwd_tail_cuda(monkeypatch, D, shape, dtype):
    """launch.HOPPER_BWD_TAIL at D = 64 (128 query rows an iteration), 128 and 256 (kernels/bwd_hopper256.py:
    64-key tiles) from any key count here: the main grid, then the last rows' tiles as a tail
    launch of parts by programmatic dependent launch, the parts' dK / dV merged (kernels/bwd_hopper.py TAIL_PARTS).
    Gradients within the policy of float64 (check_case); dK / dV the same bits on a second call (a fresh
    workspace) and in two replays of one CUDA graph; dQ / dK / dV near the launch without a tail. Shapes with a
    tail plan on 132 SMs (128-key tiles: 200, 9 rows of 8 in three parts; 160, GQA, 2 rows of 16 in three; 192, 2
    rows of 32 in halves; 64-key tiles: 400, 1 row of 16 in three; 320, GQA, 2 rows of 32 in halves; the third
    has no plan)."""
    _needs_hopper()
    B, Hq, Hkv, S = shape
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    kb = S // (64 if D == 256 else 128)
    if launch.hopper_bwd_tail_plan(B * Hkv, kb, sms) is None:
        pytest.skip(f"{B * Hkv} rows of {kb} tiles on {sms} SMs: no tail plan")
    monkeypatch.setattr(launch, "HOPPER_BWD_TAIL", (D,))
    monkeypatch.setattr(launch, "HOPPER_BWD_TAIL_MIN_KEYS", 0)
    made = []
    buffers = launch._bwd_tail_buffers
    monkeypatch.setattr(launch, "_bwd_tail_buffers", lambda *a: made.append(a) or buffers(*a))
    n = launch.hopper_bwd_launches
    torch.manual_seed(0)
    check_case(Case("fa", dtype, B, Hq, Hkv, S, S, D, causal=False), device="cuda")
    assert launch.hopper_bwd_launches == n + 1 and len(made) == 1, "the backward's tail did not run"

    torch.manual_seed(1)
    do, q, k, v, lse, delta, scale = _hopper_bwd_inputs(B, S, Hq, Hkv, D, False, dtype=dtype)

    def bwd():
        return launch.attn_bwd_hopper_impl(do, q, k, v, lse, delta, scale, False, True)

    dq, dk, dv = bwd()
    _, dk2, dv2 = bwd()
    assert torch.equal(dk2, dk) and torch.equal(dv2, dv)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        bwd()
        with torch.cuda.graph(graph, stream=stream):
            gq, gk, gv = bwd()
    torch.cuda.current_stream().wait_stream(stream)
    for _ in range(2):
        for x in (gq, gk, gv):
            x.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(gk, dk) and torch.equal(gv, dv)
        torch.testing.assert_close(gq, dq, rtol=2 ** -7, atol=2 ** -7 * dq.abs().max().item())
    monkeypatch.setattr(launch, "HOPPER_BWD_TAIL", ())
    made.clear()
    wq, wk, wv = bwd()
    assert not made
    for a, b in ((dq, wq), (dk, wk), (dv, wv)):
        torch.testing.assert_close(a, b, rtol=2 ** -7, atol=2 ** -7 * b.abs().max().item())


EPI_SHAPES = [(2, 4, 4, 128), (1, 4, 4, 256), (1, 6, 2, 384), (1, 8, 2, 1024), (1, 6, 6, 4096)]


@pytest.mark.gpu
@pytest.mark.parametrize("api", ["fa", "sdpa"])
@pytest.mark.parametrize("shape", EPI_SHAPES, ids=[f"b{b}-h{h}-{hk}-s{s}" for b, h, hk, s in EPI_SHAPES])
@pytest.mark.parametrize("variant", ["full", "full-2stages", "causal"])
@pytest.mark.parametrize("D", [64, 128], ids=["d64", "d128"])
def test_hopper_bwd_epi_tma_cuda(monkeypatch, D, variant, shape, api):
    """launch.HOPPER_BWD_EPI_TMA (dK / dV by TMA stores staged in shared memory no
    iteration reads again, kernels/bwd_hopper.py _bwd_epi_tma) at D = 64 and 128 from any key count, non-causal
    (D = 128: the 3-stage ring, and with 2 stages, dK_w in the dQ tile) and causal (SPLIT_BAR, PROD_WRITER; D = 128's
    2 stages), both output layouts (flash_attn_func's (B, S, H, D), SDPA's (B, H, S, D)), 1 to 64 iterations a CTA
    (the staging stages' every case: a stage never loaded, one loaded once, one loaded again), GQA, and the 4k
    shape's main grid before its tail launch: gradients within the policy of float64 (check_case: unwritten
    elements are poisoned), and dK / dV the same bits as the register stores'."""
    _needs_hopper()
    B, Hq, Hkv, S = shape
    if api == "sdpa" and Hq != Hkv:
        pytest.skip("SDPA's layout: MHA shapes")
    if variant == "full-2stages" and D == 64:
        pytest.skip("D = 64 has 2 stages in the plain build")
    causal = variant == "causal"
    monkeypatch.setattr(launch, "HOPPER_BWD_EPI_TMA", {(D, causal): None})
    if variant == "full-2stages":
        monkeypatch.setattr(launch, "HOPPER_BWD_STAGES", {})
    seen = []
    epi = launch.hopper_bwd_epi_tma
    monkeypatch.setattr(launch, "hopper_bwd_epi_tma", lambda *a: seen.append(epi(*a)) or seen[-1])
    torch.manual_seed(0)
    check_case(Case(api, bf16, B, Hq, Hkv, S, S, D, causal=causal), device="cuda")
    assert seen == [True], "the backward's TMA epilogue did not run"

    torch.manual_seed(1)
    bshd = api == "fa"
    do, q, k, v, lse, delta, scale = _hopper_bwd_inputs(B, S, Hq, Hkv, D, causal, bshd)
    dq, dk, dv = launch.attn_bwd_hopper_impl(do, q, k, v, lse, delta, scale, causal, bshd)
    monkeypatch.setattr(launch, "HOPPER_BWD_EPI_TMA", {})
    seen.clear()
    wq, wk, wv = launch.attn_bwd_hopper_impl(do, q, k, v, lse, delta, scale, causal, bshd)
    assert seen == [False]
    assert torch.equal(dk, wk) and torch.equal(dv, wv)
    torch.testing.assert_close(dq, wq, rtol=2 ** -7, atol=2 ** -7 * wq.abs().max().item())


def _bwd_key(q, k, v, do, out, lse, causal=True, off=0, bshd=True, wl=-1, wr=-1, cap=0.0, alibi=None, sink=None,
             scale=0.125):
    return launch._bwd_plan_key(do, q, k, v, out, lse, scale, causal, off, bshd, wl, wr, cap, alibi, sink)


def _bwd_fresh(B=2, S=256, H=4, Hkv=2, Sk=None, D=128):
    """(q, k, v, do, out, lse) of a backward call, (B, H, S, D) views of (B, S, H, D) storage, fresh tensors."""
    Sk = S if Sk is None else Sk
    return (_bshd(B, S, H, D), _bshd(B, Sk, Hkv, D), _bshd(B, Sk, Hkv, D), _bshd(B, S, H, D), _bshd(B, S, H, D),
            torch.empty(B, H, S))


def test_backward_plan_key_tells_apart_what_the_launch_depends_on(monkeypatch):
    """launch._bwd_plan_key (HOPPER_BWD_PLANS) differs where hopper_bwd_reason's answer, the launch's decisions
    (_hopper_bwd_geom) or the launch cache's keys may: a misaligned tensor (16 bytes), storage, Sq / Sk, GQA, the
    head dim, causal and its offset, the output layout, the window, softcap on or off, ALiBi's (H,) / (B, H), a sink,
    the scale's sign, dO's strides, the switch in the environment; and not for fresh tensors of the same call, nor
    for another softcap or scale."""
    monkeypatch.delenv(launch.HOPPER_BWD_ENV, raising=False)
    base = _bwd_key(*_bwd_fresh())
    assert _bwd_key(*_bwd_fresh()) == base
    q, k, v, do, out, lse = _bwd_fresh()
    flat = torch.empty(do.numel() + 4, dtype=bf16)
    misaligned = flat[4:].view(2, 256, 4, 128).transpose(1, 2)  # (8 bytes off a 16-byte boundary)
    assert misaligned.data_ptr() % 16
    assert _bwd_key(q, k, v, do, misaligned, lse) != base  # (out: as dO below)
    others = [_bwd_key(q, k, v, misaligned, out, lse),
              _bwd_key(q.contiguous(), k, v, do, out, lse), _bwd_key(q, k, v, do.contiguous(), out, lse),
              _bwd_key(*_bwd_fresh(Hkv=4)), _bwd_key(*_bwd_fresh(S=384)), _bwd_key(*_bwd_fresh(Sk=384)),
              _bwd_key(*_bwd_fresh(D=64)), _bwd_key(q, k, v, do, out, lse, causal=False),
              _bwd_key(q, k, v, do, out, lse, off=128), _bwd_key(q, k, v, do, out, lse, bshd=False),
              _bwd_key(q, k, v, do, out, lse, wl=64), _bwd_key(q, k, v, do, out, lse, wr=0),
              _bwd_key(q, k, v, do, out, lse, cap=30.0), _bwd_key(q, k, v, do, out, lse, alibi=torch.rand(4)),
              _bwd_key(q, k, v, do, out, lse, alibi=torch.rand(2, 4)),
              _bwd_key(q, k, v, do, out, lse, sink=torch.zeros(4)),
              _bwd_key(q, k, v, do, out, lse, scale=-1.0)]
    monkeypatch.setenv(launch.HOPPER_BWD_ENV, "0")
    others.append(_bwd_key(q, k, v, do, out, lse))
    assert base not in others and len(set(others)) == len(others)
    monkeypatch.delenv(launch.HOPPER_BWD_ENV)
    assert _bwd_key(q, k, v, do, out, lse, cap=20.0) == _bwd_key(q, k, v, do, out, lse, cap=30.0)
    assert _bwd_key(q, k, v, do, out, lse, scale=0.2) == base


# (D, B, S, Sk, Hq, Hkv, causal, attn_bwd_impl keywords, storage): the plain builds at each head dim, GQA, both
# storages, the tail launch (D = 128 4k on 132 SMs), Sq != Sk causal, a window, softcap, ALiBi (B, H), a sink
BWD_PLAN_CASES = [
    (128, 2, 1024, 1024, 4, 4, False, {}, "bshd"), (128, 2, 1024, 1024, 4, 2, True, {}, "bshd"),
    (64, 2, 1024, 1024, 4, 4, True, {}, "bshd"), (64, 2, 512, 512, 4, 4, False, {}, "bhsd"),
    (256, 2, 512, 512, 2, 2, False, {}, "bshd"), (256, 2, 512, 512, 2, 2, True, dict(sink=True), "bhsd"),
    (128, 4, 4096, 4096, 16, 16, False, {}, "bshd"), (128, 2, 256, 640, 4, 2, True, dict(causal_offset=384), "bshd"),
    (128, 2, 512, 512, 4, 4, False, dict(window_left=100, window_right=20), "bshd"),
    (128, 2, 512, 512, 4, 4, True, dict(softcap=30.0), "bshd"), (64, 2, 512, 512, 2, 2, True, dict(alibi=True), "bhsd"),
    (128, 2, 512, 512, 4, 2, False, dict(sink=True, softcap=5.0), "bshd"),
]
_BWD_PLAN_IDS = [f"d{c[0]}-b{c[1]}-s{c[2]}-k{c[3]}-h{c[4]}-{c[5]}-{'causal' if c[6] else 'full'}-" + "-".join(c[7])
                 + f"-{c[8]}" for c in BWD_PLAN_CASES]


def _bwd_plan_call(D, B, S, Sk, H, Hkv, causal, kw, layout, device="cpu"):
    """attn_bwd_impl's arguments of a BWD_PLAN_CASES case (fresh tensors; out and lse stand-ins) as a dict."""
    def t(b, s, h, dtype=bf16):
        x = torch.randn(b, s, h, D, device=device).to(dtype)
        return x.transpose(1, 2) if layout == "bshd" else x.transpose(1, 2).contiguous()
    kw = dict(kw)
    if kw.pop("alibi", False):
        kw["alibi_slopes"] = torch.rand(B, H, device=device)
    if kw.pop("sink", False):
        kw["sink"] = torch.randn(H, device=device)
    return dict(do=t(B, S, H), q=t(B, S, H), k=t(B, Sk, Hkv), v=t(B, Sk, Hkv), out=t(B, S, H),
                lse=torch.randn(B, H, S, device=device), dlse=None, mask=None, scale=1 / math.sqrt(D), causal=causal,
                causal_offset=kw.pop("causal_offset", 0), bshd=layout == "bshd", allow_tf32=False, **kw)


@pytest.mark.parametrize("case", BWD_PLAN_CASES, ids=_BWD_PLAN_IDS)
def test_backward_plan_geometry_follows_its_key(monkeypatch, case):
    """Two calls of a case on fresh tensors share a plan key and the full path's decisions (_hopper_bwd_geom, what a
    plan keeps in place of them), which hold no tensor; the launches built from them for the second call
    (_hopper_bwd_launches, the one builder of both paths) take the second call's tensors. The next case's key and
    decisions differ."""
    monkeypatch.setattr(launch, "_sm_count", lambda index: 132)

    def key_geom(a):
        key = launch._bwd_plan_key(a["do"], a["q"], a["k"], a["v"], a["out"], a["lse"], a["scale"], a["causal"],
                                   a["causal_offset"], a["bshd"], a.get("window_left", -1), a.get("window_right", -1),
                                   a.get("softcap", 0.0), a.get("alibi_slopes"), a.get("sink"))
        geom = launch._hopper_bwd_geom(a["q"], a["k"], a["causal"], a["bshd"], a.get("softcap", 0.0),
                                       a.get("alibi_slopes") is not None, a["causal_offset"], a.get("window_left", -1),
                                       a.get("window_right", -1), None, 0, 0)
        return key, geom

    first, second = _bwd_plan_call(*case), _bwd_plan_call(*case)
    (k1, g1), (k2, g2) = key_geom(first), key_geom(second)
    assert k1 == k2 and g1 == g2

    def leaves(x):
        return [y for z in x for y in leaves(z)] if isinstance(x, (tuple, list)) else [x]
    assert not any(isinstance(x, torch.Tensor) for x in leaves(tuple(g1)))
    assert (g1.tail is not None) == (case[2] == 4096)  # (the tail case is the one at 4k keys)
    a = second
    B, H, S, D, Hkv, Sk = g1.dims
    dq_acc = torch.zeros(B, H, S, D)
    dq, dk, dv = (torch.empty_like(x) for x in (a["q"], a["k"], a["v"]))
    launches = launch._hopper_bwd_launches(g1, a["do"], a["q"], a["k"], a["v"], a["lse"], torch.empty(B, H, S), dq, dk,
                                           dv, dq_acc, a["scale"], a.get("softcap", 0.0), a.get("alibi_slopes"),
                                           a["causal_offset"], None, None)
    assert len(launches) == (2 if g1.tail else 1)
    for grid, args, kwargs in launches:
        assert args[0].base is a["q"] and args[3].base is a["do"] and args[6] is dq_acc and args[7] is dk
        assert kwargs["HEAD_DIM"] == D and kwargs["CAUSAL"] == g1.causal
    other = BWD_PLAN_CASES[(BWD_PLAN_CASES.index(case) + 1) % len(BWD_PLAN_CASES)]
    k3, g3 = key_geom(_bwd_plan_call(*other))
    assert k3 != k1 and g3 != g1


def test_backward_plans_dropped_when_the_launch_module_changes(monkeypatch):
    """Setting or deleting any attribute of the launch module (a switch, a monkeypatch and its undo) drops every
    backward plan, as the forward's."""
    launch._bwd_plans["x"] = "plan"
    monkeypatch.setattr(launch, "HOPPER_BWD_TAIL", ())
    assert not launch._bwd_plans
    launch._bwd_plans["x"] = "plan"
    monkeypatch.undo()
    assert not launch._bwd_plans
    launch._bwd_plans["x"] = "plan"
    launch.__dict__["hopper_bwd_plan_hits"] += 0  # (as _bwd_plan_run's `global` statement writes it)
    assert launch._bwd_plans == {"x": "plan"}
    launch._bwd_plans.clear()


@pytest.mark.gpu
@pytest.mark.parametrize("case", BWD_PLAN_CASES, ids=_BWD_PLAN_IDS)
def test_hopper_bwd_plans_cuda(monkeypatch, case):
    """launch.HOPPER_BWD_PLANS: of three eager backwards of a case (attn_bwd_impl as autograd calls it, wrap_triton
    off; fresh tensors, the same shapes)
    the second and third launch from the first's plan, with FLASHKERNELS_LAUNCH_CACHE=check (each hit's reason and
    decisions compared with the full path's, and each kernel with Triton's own lookup); dK, dV and dsink are bitwise
    what the same calls give with the plans off, dQ (its fp32 reduces land in any order) within a bf16 step; a fourth
    call with an incoming dlse goes through the same plan and matches too."""
    _needs_hopper()
    monkeypatch.setattr(launch, "HOPPER_BWD_PLANS", True)
    monkeypatch.setenv("FLASHKERNELS_LAUNCH_CACHE", "check")
    torch.manual_seed(0)
    calls = [_bwd_plan_call(*case, device="cuda") for _ in range(4)]
    calls[3]["dlse"] = torch.randn_like(calls[3]["lse"])
    for a in calls:  # (a real forward's out and lse: the backward's inputs)
        fwd = {n: a[n] for n in ("window_left", "window_right", "softcap", "alibi_slopes", "sink") if n in a}
        a["out"], a["lse"] = launch.attn_fwd_impl(a["q"], a["k"], a["v"], None, a["scale"], a["causal"],
                                                  a["causal_offset"], a["bshd"], False, **fwd)[:2]
        assert launch.hopper_bwd_reason(a["do"], a["q"], a["k"], a["v"], None, a["scale"], a["causal"],
                                        a["causal_offset"], a["bshd"], a.get("window_left", -1),
                                        a.get("window_right", -1), a.get("softcap", 0.0), a.get("alibi_slopes"),
                                        a.get("sink"), None) is None
    res = {}
    for plans in (False, True):
        monkeypatch.setattr(launch, "HOPPER_BWD_PLANS", plans)
        hits, n = launch.hopper_bwd_plan_hits, launch.hopper_bwd_launches
        res[plans] = [direct(launch.attn_bwd_impl)(**a) for a in calls]  # (as the eager path: wrap_triton off)
        assert launch.hopper_bwd_launches == n + 4, "the Gluon backward did not run"
        assert launch.hopper_bwd_plan_hits == hits + (3 if plans else 0), "the plan was not used"
    for (q1, k1, v1, s1), (q2, k2, v2, s2) in zip(res[False], res[True]):
        assert torch.equal(k1, k2) and torch.equal(v1, v2) and torch.equal(s1, s2)
        torch.testing.assert_close(q2, q1, rtol=2 ** -7, atol=2 ** -7 * q1.abs().max().item())


def test_backward_plan_record_is_per_thread(monkeypatch):
    """_hopper_bwd_run's full path records (geometry, the launch cache's entries) for attn_bwd_impl's plan only where
    that thread asked (launch._bwd_record, thread-local: autograd runs each device's backward on a thread of its
    own, and a record from another thread's call would make a plan launch other shapes); a plan's run (entries
    given) records nothing. The kernels stubbed: the launches' arguments are built, nothing runs."""
    monkeypatch.setattr(launch, "_sm_count", lambda index: 132)
    launched = []
    monkeypatch.setattr(launch, "cached_launch", lambda kernel, grid, *a, **kw: launched.append(grid))
    monkeypatch.setattr(launch._launch, "cached_entry", lambda kernel, args, kwargs: ("entry", tuple(kwargs)))
    monkeypatch.setattr(launch._launch, "launch_entry",
                        lambda kernel, entry, grid, args, kwargs: launched.append(entry))
    a = _bwd_plan_call(*BWD_PLAN_CASES[0])
    g = launch._hopper_bwd_geom(a["q"], a["k"], a["causal"], a["bshd"], 0.0, False, 0, -1, -1, None, 0, 0)

    def run(entries=None):
        return launch._hopper_bwd_run(g, entries, a["do"], a["q"], a["k"], a["v"], a["lse"],
                                      torch.zeros(a["lse"].shape), a["scale"], 0.0, None, 0, None, None)
    launch._bwd_record.last = launch._RECORD
    try:
        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
        assert len(launched) == 1 and launch._bwd_record.last is launch._RECORD  # (the other thread's call)
        dq, dk, dv = run()
        assert dq.shape == a["q"].shape and dk.shape == a["k"].shape
        geom, entries = launch._bwd_record.last
        assert geom is g and len(entries) == 1 and entries[0][0] == "entry"
        launch._bwd_record.last = launch._RECORD
        run(entries)
        assert launched[-1] == entries[0] and launch._bwd_record.last is launch._RECORD
    finally:
        launch._bwd_record.last = None


@pytest.mark.gpu
@pytest.mark.parametrize("D", [64, 128], ids=lambda d: f"d{d}")
@pytest.mark.parametrize("B, S, Hq, Hkv, bshd", [(2, 1024, 4, 4, True), (1, 2048, 8, 2, True), (3, 256, 2, 2, False),
                                                  (2, 512, 6, 1, True)], ids=["1k", "2k-gqa", "256-bhsd", "512-mqa"])
def test_hopper_bwd_dq_convert_cuda(monkeypatch, D, B, S, Hq, Hkv, bshd):
    """launch.HOPPER_BWD_DQ_CONVERT (kernels/bwd_hopper.py DQ_CONVERT: the last warpgroup of each (batch, kv head)
    row writes the row's dQ from the accumulator): the plain non-causal build takes it (below the tail's key
    floor), dK / dV bitwise and dQ within a bf16 step of the same call without it (dQ's reduces land in any order;
    that path is the one tested against float64); with MQA / GQA every query head of the row converted."""
    _needs_hopper()
    monkeypatch.setenv("FLASHKERNELS_LAUNCH_CACHE", "check")
    torch.manual_seed(0)
    do, q, k, v, lse, delta, scale = _hopper_bwd_inputs(B, S, Hq, Hkv, D, False, bshd)
    res = {}
    for on in (False, True):
        monkeypatch.setattr(launch, "HOPPER_BWD_DQ_CONVERT", {64: None, 128: None} if on else {})
        g = launch._hopper_bwd_geom(q, k, False, bshd, 0.0, False, 0, -1, -1, None, 0, 0)
        assert (("DQ_CONVERT", True) in g.feats) == on
        res[on] = launch.attn_bwd_hopper_impl(do, q, k, v, lse, delta, scale, False, bshd)
    (q0, k0, v0), (q1, k1, v1) = res[False], res[True]
    assert torch.equal(k0, k1) and torch.equal(v0, v1)
    torch.testing.assert_close(q1, q0, rtol=2 ** -7, atol=2 ** -7 * q0.abs().max().item())


def test_bwd_dq_convert_launch_arguments(monkeypatch):
    """launch.HOPPER_BWD_DQ_CONVERT (the kernels stubbed, 132 SMs; {128: 4096} by default): the plain non-causal
    backward at a head dim it names, with fewer keys than its bound and no tail plan, launches kernels/bwd_hopper.py
    with DQ_CONVERT, dQ's output (DQO: q's dtype and shape) and the rows' counters (Cnt: B · Hkv int32 zeros in the
    accumulator's allocation, right after it, so its memset zeroes them); causal calls, features, more keys, a tail
    plan, a head dim it does not name and a producer issuing the reduces (PROD_WRITER) launch without them."""
    rec = _record_bwd_launches(monkeypatch)

    def run(D, causal, S, H, Hkv=None, B=1, bshd=True, **kw):
        Hkv = H if Hkv is None else Hkv
        q, do = _bshd(B, S, H, D), _bshd(B, S, H, D)
        k, v = _bshd(B, S, Hkv, D), _bshd(B, S, Hkv, D)
        if not bshd:
            q, do, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, do, k, v))
        rec.calls.clear()
        launch.attn_bwd_hopper_impl(do, q, k, v, torch.zeros(B, H, S), torch.zeros(B, H, S), 1 / math.sqrt(D),
                                    causal, bshd, **kw)
        return list(rec.calls)

    assert launch.HOPPER_BWD_DQ_CONVERT == {128: 4096}  # (the default)
    monkeypatch.setattr(launch, "HOPPER_BWD_DQ_CONVERT", {})
    assert all("DQ_CONVERT" not in c and "DQO" not in c for c in run(128, False, 1024, 4))
    monkeypatch.setattr(launch, "HOPPER_BWD_DQ_CONVERT", {128: 4096})
    for B, S, H, Hkv, bshd in ((1, 1024, 4, 4, True), (2, 2048, 8, 2, True), (3, 256, 2, 2, False)):
        (one,) = run(128, False, S, H, Hkv, B, bshd)
        assert one["DQ_CONVERT"] is True and one["DQ_TMA"] is True
        assert one["DQO"].dtype == bf16 and one["DQO"].shape == (B, H, S, 128)
        cnt, acc = one["Cnt"], one["desc_dq"].base
        assert cnt.dtype == torch.int32 and cnt.numel() == B * Hkv and not cnt.any()
        assert cnt.data_ptr() == acc.data_ptr() + acc.numel() * 4  # (after the accumulator, zeroed with it)
    for D, causal, S, H, kw in ((64, False, 1024, 4, {}), (128, True, 1024, 4, {}), (128, False, 4096, 4, {}),
                                (128, False, 1024, 4, dict(softcap=5.0)), (128, False, 1024, 4, dict(window_left=256)),
                                (128, False, 4096, 6, {})):
        monkeypatch.setattr(launch, "HOPPER_BWD_DQ_CONVERT", {128: None} if S == 4096 and H == 6 else {128: 4096})
        assert all("DQ_CONVERT" not in c and "DQO" not in c for c in run(D, causal, S, H, **kw)), (D, causal, S, kw)
    # (the producer issuing dQ's reduces, forced on a non-causal build: the consumers then never wait for them, so
    # nothing could tell them the row's dQ is complete; the kernel's static_assert refuses the pair)
    monkeypatch.setattr(launch, "HOPPER_BWD_DQ_CONVERT", {128: None})
    monkeypatch.setattr(launch, "HOPPER_BWD_PROD_WRITER", (False, True))
    (one,) = run(128, False, 1024, 4)
    assert one.get("PROD_WRITER") is True and "DQ_CONVERT" not in one and "DQO" not in one
