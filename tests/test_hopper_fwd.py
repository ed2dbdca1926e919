"""The Gluon Hopper forward (ops/attention/kernels/fwd_hopper.py) and its dispatch (launch.py).

CPU: which calls take it and why the others do not (launch.hopper_fwd_reason, one test a
condition; its features: window, softcap, ALiBi, sink, Sq != Sk), that traced launchers record
the opaque op, that attn_fwd_impl hands the kernel's out/lse on (the launch itself stubbed), and
that the kernel builds for sm_90a with no spills, each feature flag too.
GPU (marked ``gpu``, skipped unless the device is an sm_90 one): its out/lse against float64 and
against the Triton kernel, plain and with each feature (rows that see no key included),
gradients through it, torch.compile and opcheck. compute-sanitizer runs
both Gluon kernels in test_hopper_bwd.py, with the racecheck helpers defined here.
"""
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import flashkernels
from flashkernels.ops.attention import launch
from flashkernels.ops.attention.kernels import fwd_hopper
from flashkernels.ops.attention.reference import attention_reference
from cases import Case, check_case, make_inputs
from helpers import (assert_close_policy, data_magnitude, f64_flash_attention, naive_attention, randn,
                     run_compute_sanitizer)

ROOT = Path(__file__).resolve().parents[1]
bf16, f16 = torch.bfloat16, torch.float16


def _bshd(B, S, H, D=128, dtype=bf16, device="cpu"):
    """A (B, H, S, D) view of (B, S, H, D) storage: what flash_attn_func hands the launcher."""
    return torch.randn(B, S, H, D, device=device).to(dtype).transpose(1, 2)


def _args(B=2, H=4, Hkv=2, S=256, Sk=None, D=128, dtype=bf16, **over):
    """hopper_fwd_reason's arguments for an eligible call, with ``over`` replacing any of them."""
    Sk = S if Sk is None else Sk
    a = dict(mask=None, scale=1 / math.sqrt(D), causal=True, causal_offset=0, bshd=True, window_left=-1,
             window_right=-1, softcap=0.0, alibi_slopes=None, sink=None, cu_seqlens_q=None)
    for name, heads, s in (("q", H, S), ("k", Hkv, Sk), ("v", Hkv, Sk)):
        if name not in over:  # (only those not given: a given one may stand for a huge tensor)
            a[name] = _bshd(B, s, heads, D, dtype)
    a.update(over)
    return a


@pytest.fixture(autouse=True)
def switch_unset(monkeypatch):
    """The Gluon forward is on by default (launch.HOPPER_FWD_ENV unset): whatever the caller's
    environment says, these tests start from the default."""
    monkeypatch.delenv(launch.HOPPER_FWD_ENV, raising=False)


@pytest.fixture(autouse=True)
def gluon_at_any_seqlen(request, monkeypatch):
    """GPU tests check the Gluon forward's results on small shapes: the seqlen floors of
    launch.HOPPER_FWD_MIN_SEQLEN (a speed choice, tested on CPU) are lifted for them."""
    if request.node.get_closest_marker("gpu") is not None:
        monkeypatch.setattr(launch, "HOPPER_FWD_MIN_SEQLEN", {})


@pytest.fixture
def machine_ok(monkeypatch):
    """As on an H100 with Gluon: only the call's own arguments decide."""
    monkeypatch.setattr(launch, "hopper_fwd_device_reason", lambda device: None)


# --------------------------------------------------------------------------------- eligibility
def test_eligible_call_gives_none(machine_ok):
    assert launch.hopper_fwd_reason(**_args()) is None
    assert launch.hopper_fwd_reason(**_args(dtype=f16, causal=False, H=8, Hkv=8, B=1, S=128)) is None
    assert launch.hopper_fwd_reason(**_args(H=8, Hkv=1, S=1024)) is None  # MQA
    assert launch.hopper_fwd_reason(**_args(D=256)) is None  # each head dim of HOPPER_FWD_CONFIGS
    # a window that is plain causal normalises to the causal path
    assert launch.hopper_fwd_reason(**_args(window_left=-1, window_right=0)) is None
    # bottom-right causal with Sq = Sk: offset Sk - Sq = 0
    assert launch.hopper_fwd_reason(**_args(causal_offset=0, causal=True)) is None
    # the output layout does not matter, nor (B, H, S, D) inputs, heads with a stride, packed qkv
    assert launch.hopper_fwd_reason(**_args(bshd=False)) is None
    bhsd = dict(q=torch.randn(2, 4, 256, 128).to(bf16), k=torch.randn(2, 2, 256, 128).to(bf16))
    assert launch.hopper_fwd_reason(**_args(**bhsd, bshd=False)) is None
    assert launch.hopper_fwd_reason(**_args(k=torch.randn(2, 256, 4, 128).to(bf16)[:, :, ::2].transpose(1, 2))) is None
    qkv = torch.randn(2, 256, 3, 4, 128).to(bf16)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert launch.hopper_fwd_reason(**_args(q=q, k=k, v=v, H=4, Hkv=4)) is None


def test_softcap_static_max_mode(monkeypatch):
    """The softcap forward's SOFTCAP constexpr: 2 (the row max fixed at its bound) only for bf16 (fp16's
    P would flush to zero below 2^-24), a cap at most HOPPER_FWD_SOFTCAP_STATIC_MAX, no other score
    feature (ALiBi, sink, window) and a (head dim, causal) build not in HOPPER_FWD_SOFTCAP_DYNAMIC (by
    default D = 64 non-causal, which measured slower with it); True for the rest, False without a
    cap."""
    monkeypatch.setattr(launch, "HOPPER_FWD_SOFTCAP_STATIC_MAX", 40.0)
    monkeypatch.setattr(launch, "HOPPER_FWD_SOFTCAP_DYNAMIC", {(64, False)})
    mode = launch._hopper_fwd_softcap_mode
    assert mode(0.0, False) is False
    assert mode(30.0, False) == 2 and mode(40.0, False) == 2 and mode(30.0, False, 256, False) == 2
    assert mode(30.0, False, 64, True) == 2 and mode(30.0, False, 64, False) is True
    assert mode(50.0, False) is True
    assert mode(30.0, True) is True
    assert mode(2.0, False, 128, True, torch.float16) is True
    monkeypatch.setattr(launch, "HOPPER_FWD_SOFTCAP_STATIC_MAX", 0.0)
    assert mode(30.0, False) is True


@pytest.mark.parametrize("over", [
    dict(window_left=64), dict(window_left=64, window_right=32, causal=False),
    dict(causal=False, window_left=-1, window_right=0), dict(causal=False, window_left=0, window_right=0),
    dict(softcap=30.0), dict(alibi_slopes=torch.rand(4)), dict(alibi_slopes=torch.rand(2, 4)),
    dict(sink=torch.randn(4)), dict(softcap=5.0, alibi_slopes=torch.rand(4), sink=torch.randn(4), window_left=100),
    dict(S=256, Sk=384, causal_offset=128), dict(S=384, Sk=256, causal_offset=-128),  # bottom-right causal
    dict(S=256, Sk=384, causal_offset=0), dict(S=384, Sk=256, causal_offset=0),  # top-left causal
    dict(S=256, Sk=384, causal=False), dict(causal_offset=3), dict(D=256, softcap=30.0, window_left=64),
], ids=["window-causal", "window", "window-right-0", "window-0-0", "softcap", "alibi-h", "alibi-bh", "sink", "all",
        "sq-lt-sk-bottom-right", "sq-gt-sk-bottom-right", "sq-lt-sk-top-left", "sq-gt-sk-top-left",
        "sq-ne-sk-full", "causal-offset-3", "d256-softcap-window"])
def test_kernel_features_are_eligible(machine_ok, over):
    """The Gluon forward's features: sliding window, softcap, ALiBi ((H,) and (B, H)), the sink,
    Sq != Sk (multiples of 128) under either causal alignment, any causal_offset."""
    assert launch.hopper_fwd_reason(**_args(**over)) is None


def _misaligned():
    flat = torch.randn(2 * 256 * 4 * 128 + 1).to(bf16)
    return flat[1:].view(2, 256, 4, 128).transpose(1, 2)  # data pointer 2 bytes past an aligned one


def _meta(B, S, H, D=128):
    return torch.empty(B, S, H, D, dtype=bf16, device="meta").transpose(1, 2)


def _bhsd_meta(B, H, S, D=128):
    return torch.empty(B, H, S, D, dtype=bf16, device="meta")


INELIGIBLE = [
    ("fp32", lambda: _args(dtype=torch.float32), "dtype"),
    # (causal with 3 query tiles a head: no pairs for HOPPER_FWD_SHORT's build)
    ("d64-short", lambda: _args(D=64, S=384), "the Triton kernel is faster below 2048"),
    ("d96", lambda: _args(D=96), "head dim 96"),
    ("mask", lambda: _args(mask=torch.ones(1, 1, 256, 256, dtype=torch.bool)), "mask"),
    ("mask-with-features", lambda: _args(mask=torch.ones(1, 1, 256, 256, dtype=torch.bool), softcap=5.0), "mask"),
    # (packed sequences: on by default; off, test_hopper_fwd_varlen.test_varlen_switch)
    ("seqlen-not-128", lambda: _args(S=200), "multiple of 128"),
    ("seqlen-64", lambda: _args(S=64), "multiple of 128"),
    ("seqlen-k-not-128", lambda: _args(S=256, Sk=200), "seqlen_k 200"),
    ("seqlen-k-64", lambda: _args(S=256, Sk=64, causal=False), "seqlen_k 64"),
    ("window-int32", lambda: _args(window_left=1 << 30), "int32"),
    ("offset-int32", lambda: _args(causal_offset=-(1 << 30)), "int32"),
    ("scale-0", lambda: _args(scale=0.0), "scale"),
    ("scale-neg", lambda: _args(scale=-0.1), "scale"),
    ("heads", lambda: _args(H=4, Hkv=3), "not a multiple"),
    ("v-transposed-d", lambda: _args(v=torch.randn(2, 2, 128, 256).to(bf16).transpose(-1, -2)),
     "v's strides"),
    ("k-expanded-heads", lambda: _args(k=torch.randn(2, 256, 1, 128).to(bf16).expand(2, 256, 2, 128).transpose(1, 2)),
     "k's strides"),
    # rows of 516 elements: 1032 bytes, not a multiple of 16
    ("q-row-stride", lambda: _args(q=torch.randn(2, 256, 516).to(bf16)[..., :512].unflatten(-1, (4, 128))
                                   .transpose(1, 2)), "q's strides"),
    ("misaligned", lambda: _args(q=_misaligned()), "16-byte aligned"),
    ("int32-rows", lambda: _args(q=_bhsd_meta(1, 2048, 1 << 20), k=_bhsd_meta(1, 2048, 1 << 20),
                                 v=_bhsd_meta(1, 2048, 1 << 20)), "rows: TMA coordinates are int32"),
    ("int32-lse", lambda: _args(q=_meta(1, 1 << 21, 1024), k=_meta(1, 1 << 21, 1024), v=_meta(1, 1 << 21, 1024)),
     "lse offsets are int32"),
    ("grid-y", lambda: _args(q=_meta(16384, 128, 4), k=_meta(16384, 128, 4), v=_meta(16384, 128, 4)), "grid y"),
]


@pytest.mark.parametrize("make,expected", [x[1:] for x in INELIGIBLE], ids=[x[0] for x in INELIGIBLE])
def test_each_condition_gives_its_reason(machine_ok, make, expected):
    why = launch.hopper_fwd_reason(**make())
    assert why is not None and expected in why, why


def test_d64_from_its_min_seqlen(machine_ok):
    """D = 64 runs the Gluon forward (three warpgroups) from HOPPER_FWD_MIN_SEQLEN[64] query rows
    on, whatever the keys; below it the Triton kernel (faster there on the H100)."""
    fewest = launch.HOPPER_FWD_MIN_SEQLEN[64]
    assert launch.hopper_fwd_config(64) == (192, 128, 2)
    assert launch.hopper_fwd_reason(**_args(D=64, S=fewest, Sk=256)) is None
    assert "faster below" in launch.hopper_fwd_reason(**_args(D=64, S=fewest - 128, Sk=fewest))
    assert launch.hopper_fwd_reason(**_args(D=128, S=256)) is None  # (no floor at 128)


def test_d64_short_plain_calls(machine_ok, monkeypatch):
    """Below its row limits (non-causal HOPPER_FWD_MIN_SEQLEN[64], causal 4096 and whole pairs of
    query tiles), a plain D = 64 call runs HOPPER_FWD_SHORT's build (launch.hopper_fwd_short); with a
    feature, packed, causal off the top-left diagonal or with an odd count of query tiles, or with
    persistent or chained launches off, it keeps the Triton kernel below HOPPER_FWD_MIN_SEQLEN; at
    D = 128 there is no short build."""
    rows_full, rows_causal = launch.HOPPER_FWD_SHORT[64][2:]
    short = _args(D=64, S=1024, Sk=1024, causal=False)
    assert launch.hopper_fwd_reason(**short) is None
    assert launch.hopper_fwd_reason(**{**short, "causal": True}) is None
    assert launch.hopper_fwd_short(64, 1024, False, plain=True) and launch.hopper_fwd_short(64, 1024, True, True)
    assert not launch.hopper_fwd_short(64, rows_full, False, plain=True)
    assert launch.hopper_fwd_short(64, rows_causal - 256, True, plain=True)
    assert not launch.hopper_fwd_short(64, rows_causal, True, plain=True)
    assert not launch.hopper_fwd_short(64, 1024 + 128, True, plain=True)  # (9 query tiles: no pairs)
    assert not launch.hopper_fwd_short(64, 1024, False, plain=False)
    assert not launch.hopper_fwd_short(128, 1024, False, plain=True)
    for over in (dict(window_left=100), dict(window_right=0), dict(softcap=5.0), dict(alibi_slopes=torch.rand(4)),
                 dict(sink=torch.randn(4)), dict(causal=True, causal_offset=128),
                 dict(causal=True, q=_bshd(2, 1024, 4, 64), k=_bshd(2, 640, 2, 64), v=_bshd(2, 640, 2, 64)),
                 dict(causal=True, q=_bshd(2, 1152, 4, 64), k=_bshd(2, 1152, 2, 64), v=_bshd(2, 1152, 2, 64))):
        why = launch.hopper_fwd_reason(**{**short, **over})
        assert why is not None and "faster below" in why, (list(over), why)
    for switch in ("HOPPER_FWD_CHAIN", "HOPPER_FWD_PERSISTENT"):
        with monkeypatch.context() as m:
            m.setattr(launch, switch, False)
            assert "faster below" in launch.hopper_fwd_reason(**short)
    # (an unbounded window is no window; causal with a right bound is plain causal)
    assert launch.hopper_fwd_reason(**_args(D=64, S=1024, Sk=1024, causal=False, window_left=-3)) is None
    assert launch.hopper_fwd_reason(**_args(D=64, S=1024, Sk=1024, causal=True, window_right=5)) is None


class _KernelStub:
    """Stands in for fwd_hopper.attn_fwd_hopper_kernel: records the grid and the keywords."""

    def __init__(self):
        self.seen = {}

    def __getitem__(self, grid):
        def run(*args, **kw):
            self.seen.clear()
            self.seen.update(grid=grid, **kw)
        return run


def _stubbed_hopper_fwd(monkeypatch, B=2, H=4):
    """launch.hopper_fwd with the kernel stubbed (_KernelStub) on 132 SMs: run(D, S, causal, B, H,
    **features) returns the grid and the keywords of its launch, on (B, S, H, D) inputs."""
    stub = _KernelStub()
    monkeypatch.setattr(fwd_hopper, "attn_fwd_hopper_kernel", stub)
    monkeypatch.setattr(launch, "_sm_count", lambda index: 132)

    def run(D, S, causal, B=B, H=H, **kw):
        q, k, v = (_bshd(B, S, H, D) for _ in range(3))
        launch.hopper_fwd(q, k, v, torch.empty(B, H, S, D, dtype=bf16), torch.empty(B, H, S), 0.125, causal, **kw)
        return dict(stub.seen)
    return run


# (D, S, Sk, Hq, Hkv, causal, hopper_fwd keywords, storage): the plain builds (persistent, chained, D = 64's
# short one, the grid past 8192 causal rows), Sq != Sk, a window, softcap on both sides of its static-max bound,
# ALiBi (H,) and (B, H), a sink, GQA, (B, H, S, D) storage
PLAN_CASES = [
    (128, 1024, 1024, 4, 4, False, {}, "bshd"), (128, 1024, 1024, 4, 2, True, {}, "bshd"),
    (64, 1024, 1024, 4, 4, True, {}, "bshd"), (256, 512, 512, 2, 2, False, {}, "bhsd"),
    (128, 16384, 16384, 1, 1, True, {}, "bshd"), (128, 256, 640, 4, 2, True, dict(causal_offset=384), "bshd"),
    (128, 512, 512, 4, 4, False, dict(window_left=100, window_right=20), "bshd"),
    (128, 512, 512, 4, 4, True, dict(softcap=30.0), "bshd"), (128, 512, 512, 4, 4, True, dict(softcap=50.0), "bshd"),
    (256, 4096, 4096, 1, 1, False, dict(alibi="h"), "bshd"), (64, 512, 512, 2, 2, True, dict(alibi="bh"), "bhsd"),
    (128, 512, 512, 4, 2, False, dict(sink=True, softcap=5.0), "bshd"),
]


def _plan_call(D, S, Sk, H, Hkv, causal, kw, layout, B=2):
    """(hopper_fwd's positional arguments, its keywords) of a PLAN_CASES case, fresh tensors."""
    if layout == "bshd":
        q, out = _bshd(B, S, H, D), _bshd(B, S, H, D)
        k, v = _bshd(B, Sk, Hkv, D), _bshd(B, Sk, Hkv, D)
    else:
        q, out = torch.randn(B, H, S, D).to(bf16), torch.randn(B, H, S, D).to(bf16)
        k, v = (torch.randn(B, Hkv, Sk, D).to(bf16) for _ in range(2))
    kw = dict(kw)
    if "alibi" in kw:
        kw["alibi_slopes"] = torch.rand(B, H)[0] if kw.pop("alibi") == "h" else torch.rand(B, H)
    if kw.pop("sink", False):
        kw["sink"] = torch.randn(H)
    return (q, k, v, out, torch.empty(B, H, S), 1 / math.sqrt(D), causal), kw


@pytest.mark.parametrize("case", PLAN_CASES, ids=[f"d{c[0]}-s{c[1]}-k{c[2]}-{'causal' if c[5] else 'full'}-"
                                                  + "-".join(c[6]) + f"-{c[7]}" for c in PLAN_CASES])
def test_forward_plan_rebuilds_the_full_paths_launch(monkeypatch, case):
    """launch.hopper_fwd's plans (HOPPER_FWD_PLANS): two calls of a case on fresh tensors share a plan
    key, and the arguments the plan of the first rebuilds for the second (_fwd_plan_args) are the full
    path's (_hopper_fwd_args: grid, keywords, every argument: the descriptors by base and fields, the
    tensors by identity, the integers and floats by value), which _check_fwd_plan (the GPU tests'
    check on every hit) confirms; a plan of another case fails that check."""
    monkeypatch.setattr(launch, "_sm_count", lambda index: 132)
    kernel = fwd_hopper.attn_fwd_hopper_kernel
    pos1, kw1 = _plan_call(*case)
    pos2, kw2 = _plan_call(*case)
    feats = ("causal_offset", "window_left", "window_right", "softcap", "alibi_slopes", "sink")  # (defaults below)

    def key(pos, kw):
        q, k, v, out, lse, _, causal = pos
        return launch._fwd_plan_key(kernel, q, k, v, out, lse, causal,
                                    *(kw.get(f, d) for f, d in zip(feats, (0, -1, -1, 0.0, None, None))))

    assert key(pos1, kw1) == key(pos2, kw2)
    grid, args, kwargs = launch._hopper_fwd_args(*pos1, **kw1)
    plan = launch._FwdPlan(None, grid, args[9:30], args[31], args[1].block_shape[0], kwargs)  # (as hopper_fwd keeps it)
    assert not any(isinstance(x, torch.Tensor) for x in (*plan.ints, *plan.kwargs.values()))  # (no memory held)
    q, k, v, out, lse, scale, _ = pos2
    rebuilt = launch._fwd_plan_args(plan, q, k, v, out, lse, scale * 1.5, kw2.get("softcap", 0.0),
                                    kw2.get("alibi_slopes"), kw2.get("sink"))
    full = launch._hopper_fwd_args(*pos2[:5], scale * 1.5, pos2[6], **kw2)
    launch._check_fwd_plan(plan, rebuilt, full)
    assert rebuilt[0].base is q and rebuilt[3].base is out and rebuilt[7] == scale * 1.5
    other = PLAN_CASES[(PLAN_CASES.index(case) + 1) % len(PLAN_CASES)]
    pos3, kw3 = _plan_call(*other)
    assert key(pos3, kw3) != key(pos1, kw1)
    with pytest.raises(AssertionError, match="plan launches other arguments"):
        launch._check_fwd_plan(plan, launch._fwd_plan_args(plan, *pos3[:6], kw3.get("softcap", 0.0),
                                                           kw3.get("alibi_slopes"), kw3.get("sink")),
                               launch._hopper_fwd_args(*pos3, **kw3))


def test_forward_plan_key_tells_apart_what_the_launch_depends_on():
    """_fwd_plan_key differs where the full path's launch may: storage (bshd / bhsd), a misaligned
    tensor (16 bytes: the launch cache's specialisation and TMA's base), Sq / Sk, GQA, causal and its
    offset, the window, softcap's sides of its static-max bound, ALiBi's (H,) / (B, H), a sink; and
    not for fresh tensors of the same call, nor for another softcap below the bound."""
    kernel = fwd_hopper.attn_fwd_hopper_kernel

    def key(q, k, v, out, lse, causal=True, off=0, wl=-1, wr=-1, cap=0.0, alibi=None, sink=None):
        return launch._fwd_plan_key(kernel, q, k, v, out, lse, causal, off, wl, wr, cap, alibi, sink)

    def fresh(B=2, S=256, H=4, Hkv=2):
        return _bshd(B, S, H), _bshd(B, S, Hkv), _bshd(B, S, Hkv), _bshd(B, S, H), torch.empty(B, H, S)

    base = key(*fresh())
    assert key(*fresh()) == base
    q, k, v, out, lse = fresh()
    flat = torch.empty(out.numel() + 4, dtype=bf16)
    misaligned = flat[4:].view(2, 256, 4, 128).transpose(1, 2)  # (8 bytes off a 16-byte boundary)
    assert misaligned.data_ptr() % 16
    others = [key(q, k, v, misaligned, lse), key(q.contiguous(), k, v, out, lse),  # ((B, H, S, D) storage)
              key(*fresh(Hkv=4)), key(*fresh(S=384)), key(q, k, v, out, lse, causal=False),
              key(q, k, v, out, lse, off=128), key(q, k, v, out, lse, wl=64), key(q, k, v, out, lse, wr=0),
              key(q, k, v, out, lse, cap=30.0), key(q, k, v, out, lse, cap=launch.HOPPER_FWD_SOFTCAP_STATIC_MAX + 1),
              key(q, k, v, out, lse, alibi=torch.rand(4)), key(q, k, v, out, lse, alibi=torch.rand(2, 4)),
              key(q, k, v, out, lse, sink=torch.zeros(4))]
    assert base not in others and len(set(others)) == len(others)
    assert key(q, k, v, out, lse, cap=20.0) == key(q, k, v, out, lse, cap=30.0)


def test_forward_plans_dropped_when_the_launch_module_changes(monkeypatch):
    """Setting or deleting any attribute of the launch module (a switch, a monkeypatch and its undo)
    drops every plan; hopper_fwd's own counters (global statements) do not."""
    launch._fwd_plans["x"] = "plan"
    monkeypatch.setattr(launch, "HOPPER_FWD_CHAIN", not launch.HOPPER_FWD_CHAIN)
    assert not launch._fwd_plans
    launch._fwd_plans["x"] = "plan"
    monkeypatch.undo()
    assert not launch._fwd_plans
    launch._fwd_plans["x"] = "plan"
    monkeypatch.setattr(launch, "_fk_test_attribute", 1, raising=False)
    launch._fwd_plans["x"] = "plan"
    monkeypatch.delattr(launch, "_fk_test_attribute")
    assert not launch._fwd_plans
    launch._fwd_plans["x"] = "plan"
    launch.__dict__["hopper_fwd_launches"] += 0  # (as hopper_fwd's `global` statement writes it)
    assert launch._fwd_plans == {"x": "plan"}
    launch._fwd_plans.clear()


@pytest.mark.skipif(not fwd_hopper.AVAILABLE, reason=f"Gluon: {fwd_hopper.UNAVAILABLE_REASON}")
def test_persistent_launch_arguments(monkeypatch):
    """launch.hopper_fwd (the kernel stubbed, 132 SMs): the plain non-causal forward at D = 128 runs
    persistent and chained (grid: the SMs, or the tiles when fewer); D = 64 below its floor
    HOPPER_FWD_SHORT's build (two warpgroups: BLOCK_M 128) chained too, causal or not; causal calls
    run persistent over pairs of query tiles (grid: the SMs, or the pairs when fewer) when a head's
    query tiles pair up and are no more than HOPPER_FWD_PERSISTENT_CAUSAL_MAX_ROWS, else the grid
    (B · H along y), as with HOPPER_FWD_PERSISTENT_CAUSAL off; softcap, ALiBi and sinks persistent
    too, windows not; with HOPPER_FWD_CHAIN off the D = 128 launch is persistent without CHAIN."""
    run = _stubbed_hopper_fwd(monkeypatch, B=4, H=16)

    s = run(128, 1024, False)
    assert s["grid"] == (132,) and s["PERSISTENT"] and s["CHAIN"] and s["n_bh"] == 64 and s["BLOCK_M"] == 128
    assert run(128, 256, False, B=1, H=2)["grid"] == (4,)  # (2 tiles x 2 heads: fewer than the SMs)
    block_n, stages = launch.HOPPER_FWD_SHORT[64][:2]
    for causal in (False, True):  # (causal: pairs of query tiles)
        s = run(64, 1024, causal)
        assert (s["BLOCK_M"], s["BLOCK_N"], s["STAGES"]) == (128, block_n, stages), s
        assert s["PERSISTENT"] and s["CHAIN"] and s["grid"] == (132,) and s["CAUSAL"] is causal
    s = run(64, 4096, True)  # (past the short build's causal rows: the head dim's own config, a grid)
    assert s["BLOCK_M"] == launch.hopper_fwd_config(64)[0] and "PERSISTENT" not in s and s["grid"][1] == 64
    s = run(128, 1024, True)
    assert s["PERSISTENT"] and s["CHAIN"] and s["grid"] == (132,)
    assert run(128, 512, True, B=1, H=4)["grid"] == (8,)  # (4 tiles = 2 pairs a head x 4 heads)
    s = run(128, 384, True)  # (3 query tiles a head: no pairs, the grid launch, last tiles first)
    assert "PERSISTENT" not in s and s["grid"] == (3, 64) and s["REVERSE_M"]
    cap = launch.HOPPER_FWD_PERSISTENT_CAUSAL_MAX_ROWS
    assert run(128, cap, True, B=1, H=2)["grid"] == (cap // 256 * 2,)
    s = run(128, cap + 256, True, B=1, H=2)  # (past the cap: the grid)
    assert "PERSISTENT" not in s and s["grid"] == ((cap + 256) // 128, 2) and s["REVERSE_M"]
    assert run(128, cap + 256, False, B=1, H=2)["grid"] == (132,)  # (non-causal: no cap)
    for feature in (dict(softcap=2.0), dict(alibi_slopes=torch.ones(16)), dict(sink=torch.zeros(16))):
        for causal in (False, True):  # (the score features: persistent too)
            s = run(128, 1024, causal, **feature)
            assert s["PERSISTENT"] and s["CHAIN"] and s["grid"] == (132,), (feature, causal)
    s = run(128, 1024, False, window_left=256)  # (a window: the grid)
    assert "PERSISTENT" not in s and s["WINDOW"]
    monkeypatch.setattr(launch, "HOPPER_FWD_PERSISTENT_CAUSAL", False)
    s = run(128, 1024, True)
    assert "PERSISTENT" not in s and s["grid"] == (8, 64) and s["REVERSE_M"]
    monkeypatch.setattr(launch, "HOPPER_FWD_CHAIN", False)
    s = run(128, 1024, False)
    assert s["PERSISTENT"] and "CHAIN" not in s


def test_chain_defer_and_probe_launch_arguments(monkeypatch):
    """launch.hopper_fwd (the kernel stubbed): chained launches (D = 128, and D = 64's short build, causal
    or not, with a score feature too) pass CHAIN = 2 at the head dims HOPPER_FWD_CHAIN_DEFER names (the
    store's wait deferred; by default D = 64) and CHAIN = True at the others; grid launches pass no
    CHAIN. HOPPER_FWD_PROBE reaches chained launches only (Probe, PROBE: 2 with HOPPER_FWD_PROBE_GLOBAL), and none
    while it is None."""
    run = _stubbed_hopper_fwd(monkeypatch)

    assert launch.HOPPER_FWD_CHAIN_DEFER == (64,)
    for defer in ((64,), (64, 128), ()):
        monkeypatch.setattr(launch, "HOPPER_FWD_CHAIN_DEFER", defer)
        for D, causal, kw in ((128, False, {}), (128, True, {}), (64, False, {}), (64, True, {}),
                              (128, False, dict(sink=torch.zeros(4)))):
            s = run(D, 1024, causal, **kw)
            assert s["PERSISTENT"] and s["CHAIN"] == (2 if D in defer else 1), (defer, D, causal, kw)
            assert (s["CHAIN"] is True) is (D not in defer) and "PROBE" not in s and "Probe" not in s
        s = run(128, 1024, False, window_left=256)  # (a window: a grid launch, no chain)
        assert "CHAIN" not in s and "PROBE" not in s
    probe = torch.zeros(8, dtype=torch.int64)
    monkeypatch.setattr(launch, "HOPPER_FWD_PROBE", probe)
    s = run(128, 1024, False)
    assert s["PROBE"] is True and s["Probe"] is probe
    monkeypatch.setattr(launch, "HOPPER_FWD_PROBE_GLOBAL", True)  # (the global timer: PROBE = 2)
    s = run(64, 1024, True)
    assert s["PROBE"] == 2 and s["Probe"] is probe
    s = run(256, 1024, False)  # (D = 256: not chained)
    assert "CHAIN" not in s and "PROBE" not in s


def test_split_tail_launch_arguments(monkeypatch):
    """launch.HOPPER_FWD_SPLIT_TAIL (the kernel stubbed, 132 SMs): a plain non-causal chained launch at a head dim
    it names, from HOPPER_FWD_SPLIT_TAIL_MIN_KEYS keys, passes SPLIT_TAIL with a fresh workspace (Part: fp32, 2
    slots of 64 x (D + 2) a CTA; Flags: int32 zeros, one a slot) when its last round is at least half full (2 ·
    (tiles mod 132) >= 132), else nothing; not causal calls, features, a probe, nor the switch off."""
    run = _stubbed_hopper_fwd(monkeypatch)
    assert launch.HOPPER_FWD_SPLIT_TAIL == (128,) and launch.HOPPER_FWD_SPLIT_TAIL_MIN_KEYS == 4096  # (defaults)
    assert "SPLIT_TAIL" not in run(128, 1024, False, B=1, H=25)  # (fewer keys than the floor)
    assert run(128, 4096, False, B=1, H=7)["SPLIT_TAIL"] is True  # (224 tiles: 92 in the last round)
    assert "SPLIT_TAIL" not in run(128, 4096, False, B=1, H=6)  # (192: 60, under half)
    monkeypatch.setattr(launch, "HOPPER_FWD_SPLIT_TAIL", ())
    assert "SPLIT_TAIL" not in run(128, 4096, False, B=1, H=7)
    monkeypatch.setattr(launch, "HOPPER_FWD_SPLIT_TAIL", (128,))
    monkeypatch.setattr(launch, "HOPPER_FWD_SPLIT_TAIL_MIN_KEYS", 0)
    # (tiles: 200, 68 in the last round; 64 and 128: one round; 264: none left; 256: 124; 160: 28, under half)
    for B, H, split in ((1, 25, True), (2, 4, False), (1, 16, False), (3, 11, False), (4, 8, True), (1, 20, False)):
        tiles = B * H * 1024 // 128
        s = run(128, 1024, False, B=B, H=H)
        assert ("SPLIT_TAIL" in s) is split, (B, H, tiles)
        if split:
            assert s["SPLIT_TAIL"] is True and s["grid"] == (132,) and s["CHAIN"] is True
            assert s["Part"].dtype == torch.float32 and s["Part"].numel() == 132 * 2 * 64 * 130
            assert s["Flags"].dtype == torch.int32 and s["Flags"].shape == (264,) and not s["Flags"].any()
            again = run(128, 1024, False, B=B, H=H)
            assert again["Flags"] is not s["Flags"] and again["Part"] is not s["Part"]  # (fresh a call)
    for kw in (dict(causal=True), dict(causal=False, softcap=5.0), dict(causal=False, sink=torch.zeros(25)),
               dict(causal=False, window_left=256)):
        causal = kw.pop("causal")
        assert "SPLIT_TAIL" not in run(128, 1024, causal, B=1, H=25, **kw), kw
    assert "SPLIT_TAIL" not in run(64, 1024, False, B=1, H=25)  # (not named; D = 64's short build defers)
    monkeypatch.setattr(launch, "HOPPER_FWD_PROBE", torch.zeros(8, dtype=torch.int64))
    assert "SPLIT_TAIL" not in run(128, 1024, False, B=1, H=25)


def test_split_tail_segments_cover_every_unit_once():
    """The SPLIT_TAIL map (kernels/fwd_hopper._ws_tail, _ws_n_segs, _ws_seg, written out here): over every CTA,
    the whole rounds' tiles and the last round's segments cover each (tile, key block) exactly once; a CTA's
    segments are at most two, the first-part (k0 = 0, k1 < NB) one only ever its last, a later part only ever its
    first; and a tile's first part has at most two later parts to merge when the launcher's condition holds."""
    for g, tiles, nb in ((132, 200, 8), (132, 256, 32), (132, 2048, 128), (132, 2112, 132), (7, 12, 3), (5, 9, 1)):
        rounds, r = tiles // g, tiles % g
        if 2 * r < g:
            continue
        u = r * nb
        seen = {}
        for i in range(g):
            u0, u1 = i * u // g, (i + 1) * u // g
            segs = [(i + c * g, 0, nb) for c in range(rounds)]
            if u1 > u0:
                for c in range(1 + ((u1 - 1) // nb > u0 // nb)):
                    ta = u0 // nb + c
                    segs.append((rounds * g + ta, max(u0 - ta * nb, 0), min(u1 - ta * nb, nb)))
            for k, (t, k0, k1) in enumerate(segs):
                assert 0 <= k0 < k1 <= nb
                if k0 > 0:
                    assert k == rounds, (i, segs)
                if k0 == 0 and k1 < nb:
                    assert k == len(segs) - 1, (i, segs)
                    later = [j for j in range(i + 1, g) if j * u // g < (t - rounds * g + 1) * nb]
                    assert len(later) <= 2, (i, later)
                for blk in range(k0, k1):
                    assert (t, blk) not in seen
                    seen[t, blk] = i
        assert len(seen) == tiles * nb


def test_alibi_mma_launch_arguments(monkeypatch):
    """launch.hopper_fwd (the kernel stubbed): ALiBi's column bias goes to the tensor cores (ALIBI_MMA)
    at every head dim (D = 256 from HOPPER_FWD_ALIBI_MMA_MIN_ROWS' 4096 query rows), causal or not,
    persistent or not, and only without softcap or a window (those builds do not split the bias), nor
    with the switch off; no other call passes the flag."""
    run = _stubbed_hopper_fwd(monkeypatch)

    alibi = dict(alibi_slopes=torch.rand(4))
    for D in (64, 128, 256):
        for causal in (False, True):
            assert run(D, 4096, causal, B=1, **alibi).get("ALIBI_MMA") is True, (D, causal)
            assert run(D, 1024, causal, **alibi).get("ALIBI_MMA", False) is (D != 256), (D, causal)
            assert "ALIBI_MMA" not in run(D, 4096, causal, B=1), (D, causal)
    monkeypatch.setattr(launch, "HOPPER_FWD_ALIBI_MMA_MIN_ROWS", {})
    assert run(256, 1024, True, **alibi)["ALIBI_MMA"]
    s = run(128, 16384, True, B=1, **alibi)  # (past HOPPER_FWD_PERSISTENT_CAUSAL_MAX_ROWS: the grid)
    assert s["ALIBI_MMA"] and "PERSISTENT" not in s
    for other in (dict(softcap=2.0), dict(window_left=256), dict(sink=torch.zeros(4))):
        s = run(128, 1024, False, **alibi, **other)
        assert s.get("ALIBI_MMA", False) is ("sink" in other), other
    monkeypatch.setattr(launch, "HOPPER_FWD_ALIBI_MMA", False)
    assert "ALIBI_MMA" not in run(128, 1024, False, **alibi)


def test_alibi_rotate_launch_arguments(monkeypatch):
    """launch.hopper_fwd (the kernel stubbed): with HOPPER_FWD_ALIBI_ROTATE an ALiBi forward of two
    warpgroups walks its key blocks from the diagonal (ROT_N), causal or not, persistent or a grid,
    with a sink too, from HOPPER_FWD_ALIBI_ROTATE_MIN_ROWS query rows; not with a window or packed
    sequences (their blocks start at lo) nor softcap, not a plain call, and no call with the switch off."""
    run = _stubbed_hopper_fwd(monkeypatch)

    alibi = dict(alibi_slopes=torch.rand(4))
    monkeypatch.setattr(launch, "HOPPER_FWD_ALIBI_ROTATE", True)
    monkeypatch.setattr(launch, "HOPPER_FWD_ALIBI_ROTATE_MIN_ROWS", {256: 2048})
    for D in (64, 128, 256):
        for causal in (False, True):
            s = run(D, 2048, causal, **alibi)
            assert s.get("ROT_N") is True and s["BLOCK_M"] == 128, (D, causal)
            assert "ROT_N" not in run(D, 2048, causal), (D, causal)
            assert run(D, 1024, causal, **alibi).get("ROT_N", False) is (D != 256), (D, causal)
    s = run(128, 16384, True, B=1, **alibi)  # (the grid launch)
    assert s["ROT_N"] and "PERSISTENT" not in s
    assert run(128, 1024, True, **alibi)["PERSISTENT"]
    for other in (dict(sink=torch.zeros(4)), dict(causal_offset=128)):
        assert run(128, 1024, False, **alibi, **other).get("ROT_N") is True, other
    assert "ROT_N" not in run(128, 1024, False, window_left=256, **alibi)
    assert "ROT_N" not in run(128, 1024, True, softcap=2.0, **alibi)
    cu = torch.tensor([0, 300, 1024], dtype=torch.int32)
    assert "ROT_N" not in run(128, 1024, False, B=1, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=724,
                              max_seqlen_k=724, **alibi)
    monkeypatch.setattr(launch, "HOPPER_FWD_ALIBI_ROTATE", False)
    assert "ROT_N" not in run(128, 1024, False, **alibi)


def test_alibi_causal_split_launch_arguments(monkeypatch):
    """launch.HOPPER_FWD_ALIBI_CAUSAL_SPLIT (the kernel stubbed): ALIBI = 2 for the kernel's CAUSAL builds
    with ALiBi and without softcap at the head dims it names, persistent or a grid launch, with a sink too;
    True otherwise (not causal; causal with an offset: the kernel's WINDOW build; softcap; other head dims;
    the switch empty), False without slopes."""
    run = _stubbed_hopper_fwd(monkeypatch)
    alibi = dict(alibi_slopes=torch.rand(4))
    assert launch.HOPPER_FWD_ALIBI_CAUSAL_SPLIT == (128, 256)  # (default)
    for D in (64, 128, 256):
        s = run(D, 1024, True, **alibi)
        assert s["CAUSAL"] is True and s["ALIBI"] == (True if D == 64 else 2), (D, s["ALIBI"])
        assert run(D, 1024, False, **alibi)["ALIBI"] is True, D
        assert run(D, 1024, True)["ALIBI"] is False, D
    s = run(128, 16384, True, B=1, **alibi)  # (the grid launch)
    assert s["ALIBI"] == 2 and "PERSISTENT" not in s
    assert run(128, 1024, True, sink=torch.zeros(4), **alibi)["ALIBI"] == 2
    s = run(128, 1024, True, causal_offset=128, **alibi)
    assert s["WINDOW"] is True and s["CAUSAL"] is False and s["ALIBI"] is True
    assert run(128, 1024, True, softcap=2.0, **alibi)["ALIBI"] is True
    monkeypatch.setattr(launch, "HOPPER_FWD_ALIBI_CAUSAL_SPLIT", ())
    assert run(128, 1024, True, **alibi)["ALIBI"] is True


def test_config_entries_and_key_blocks(machine_ok, monkeypatch):
    """HOPPER_FWD_CONFIGS: (BLOCK_N, STAGES) means BLOCK_M 128, a third element is BLOCK_M (192:
    three consumer warpgroups); Sk must be a multiple of BLOCK_N (no key tail), Sq only of 128."""
    assert launch.hopper_fwd_config(128) == (128, 128, 2)
    monkeypatch.setattr(launch, "HOPPER_FWD_MIN_SEQLEN", {})  # (the tiles' conditions alone)
    monkeypatch.setitem(launch.HOPPER_FWD_CONFIGS, 64, (128, 2, 192))
    assert launch.hopper_fwd_config(64) == (192, 128, 2)
    assert launch.hopper_fwd_config(64, alibi=True) == (128, 128, 2)  # (192 spills with ALiBi)
    assert launch.hopper_fwd_reason(**_args(D=64, S=640)) is None  # 640 = 3 x 192 + 64
    assert launch.hopper_fwd_reason(**_args(D=64, S=128, Sk=640)) is None
    monkeypatch.setitem(launch.HOPPER_FWD_CONFIGS, 64, (256, 2))
    why = launch.hopper_fwd_reason(**_args(D=64, S=256, Sk=384))
    assert why is not None and "seqlen_k 384: a multiple of 256" in why, why


@pytest.mark.skipif(not fwd_hopper.AVAILABLE, reason=f"Gluon: {fwd_hopper.UNAVAILABLE_REASON}")
@pytest.mark.parametrize("cfg,S,grid,maxnreg", [((128, 2), 640, 5, 168), ((128, 2, 192), 640, 4, 128),
                                                ((128, 3, 192), 128, 1, 128)], ids=["wg2", "wg3", "wg3-one-tile"])
def test_launch_grid_and_register_cap(monkeypatch, cfg, S, grid, maxnreg):
    """launch.hopper_fwd at D = 64 with a config (the kernel stubbed): ceil(Sq / BLOCK_M) CTAs a
    head, BLOCK_M and the launch's register cap of its number of warpgroups, q/out blocks of 64 rows."""
    seen = {}

    class Stub:
        def __getitem__(self, g):
            def run(*args, **kw):
                seen.update(grid=g, args=args, **kw)
            return run

    monkeypatch.setitem(launch.HOPPER_FWD_CONFIGS, 64, cfg)
    monkeypatch.setattr(fwd_hopper, "attn_fwd_hopper_kernel", Stub())
    monkeypatch.setattr(launch, "HOPPER_FWD_PERSISTENT", False)
    B, H = 2, 4
    q, k, v = (_bshd(B, S, H, 64) for _ in range(3))
    out, lse = torch.empty_like(q), torch.empty(B, H, S)
    launch.hopper_fwd(q, k, v, out, lse, 0.125, True)
    assert seen["grid"] == (grid, B * H) and seen["maxnreg"] == maxnreg
    assert "PERSISTENT" not in seen and seen["REVERSE_M"] is True  # (causal: a head's longest tiles first)
    seen.clear()
    launch.hopper_fwd(q, k, v, out, lse, 0.125, False)
    assert "REVERSE_M" not in seen
    # persistent (two warpgroups, no feature; here at D = 64): one CTA an SM, at most one a tile,
    # n_bh = B·H; causal with 5 query tiles a head (no pairs, _ws_tile_c) a grid launch
    monkeypatch.setattr(launch, "HOPPER_FWD_SHORT", {})  # (this config, not the short-sequence build)
    monkeypatch.setattr(launch, "HOPPER_FWD_PERSISTENT", True)
    monkeypatch.setattr(launch, "HOPPER_FWD_PERSISTENT_DIMS", (64,))
    monkeypatch.setattr(launch, "HOPPER_FWD_PERSISTENT_CAUSAL", True)
    monkeypatch.setattr(launch, "_sm_count", lambda index: 132 if grid * B * H > 132 else 7)
    seen.clear()
    launch.hopper_fwd(q, k, v, out, lse, 0.125, True)
    assert seen["grid"] == (grid, B * H) and "PERSISTENT" not in seen
    seen.clear()
    launch.hopper_fwd(q, k, v, out, lse, 0.125, False)
    if len(cfg) > 2:  # (three warpgroups: not persistent)
        assert seen["grid"] == (grid, B * H) and "PERSISTENT" not in seen
    else:
        assert seen["grid"] == (min(grid * B * H, launch._sm_count(0)),)
        assert seen["PERSISTENT"] is True and seen["n_bh"] == B * H and "REVERSE_M" not in seen
    assert seen["BLOCK_M"] == (cfg[2] if len(cfg) > 2 else 128) and (seen["BLOCK_N"], seen["STAGES"]) == cfg[:2]
    assert seen["args"][0].block_shape == [64, 64] and seen["args"][1].block_shape == [cfg[0], 64]


def test_machine_conditions(monkeypatch):
    """Gluon missing, the switch, the interpreter, the device and its capability."""
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(fwd_hopper, "AVAILABLE", True)
    monkeypatch.setattr(launch, "KERNELS_INTERPRETED", False)
    monkeypatch.setenv(launch.HOPPER_FWD_ENV, "1")
    cap = {0: (9, 0)}
    monkeypatch.setattr(launch, "_capability", lambda index: cap[index])
    assert launch.hopper_fwd_device_reason(cuda) is None
    for other in ((8, 0), (8, 9), (10, 0), (12, 0)):
        cap[0] = other
        assert "compute capability" in launch.hopper_fwd_device_reason(cuda)
    cap[0] = (9, 0)
    assert "not on a CUDA GPU" in launch.hopper_fwd_device_reason(torch.device("cpu"))
    monkeypatch.setattr(launch, "KERNELS_INTERPRETED", True)
    assert "interpreter" in launch.hopper_fwd_device_reason(cuda)
    monkeypatch.setattr(launch, "KERNELS_INTERPRETED", False)
    monkeypatch.setenv(launch.HOPPER_FWD_ENV, "0")
    assert launch.HOPPER_FWD_ENV in launch.hopper_fwd_device_reason(cuda)
    monkeypatch.setattr(fwd_hopper, "AVAILABLE", False)
    monkeypatch.setattr(fwd_hopper, "UNAVAILABLE_REASON", "no Gluon here")
    assert launch.hopper_fwd_device_reason(cuda) == "no Gluon here"
    # hopper_fwd_reason asks the machine first
    assert launch.hopper_fwd_reason(**_args()) == "no Gluon here"


def test_switch_values(monkeypatch):
    """On by default: only "0" turns it off; unset, "1" or anything else leave it on."""
    monkeypatch.setattr(launch, "KERNELS_INTERPRETED", False)
    monkeypatch.setattr(launch, "_capability", lambda index: (9, 0))
    monkeypatch.setattr(fwd_hopper, "AVAILABLE", True)
    assert launch.hopper_fwd_device_reason(torch.device("cuda", 0)) is None  # unset
    for value, off in (("0", True), (" 0 ", True), ("1", False), (" 1 ", False), ("", False), ("yes", False)):
        monkeypatch.setenv(launch.HOPPER_FWD_ENV, value)
        why = launch.hopper_fwd_device_reason(torch.device("cuda", 0))
        assert (why is not None) == off, (value, why)


def test_gluon_import_guard():
    """The module imports either way; AVAILABLE and the reason agree."""
    assert fwd_hopper.AVAILABLE == (fwd_hopper.UNAVAILABLE_REASON is None)
    import triton

    if tuple(int(x) for x in triton.__version__.split(".")[:2]) != fwd_hopper.TESTED_TRITON:
        assert not fwd_hopper.AVAILABLE and triton.__version__ in fwd_hopper.UNAVAILABLE_REASON


# ------------------------------------------------------------------------------ tracing
def test_traced_calls_record_the_opaque_op(machine_ok, monkeypatch):
    """Traced (make_fx real/fake/symbolic, fake tensors), an eligible forward is one call of the
    opaque op flashkernels::attn_fwd_hopper in the graph and launches nothing while tracing; the
    data pointers are not asked of fake tensors (the op checks them when it runs)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    a = _args()
    with FakeTensorMode() as mode:
        fake = _args(q=mode.from_tensor(a["q"]), k=mode.from_tensor(a["k"]), v=mode.from_tensor(a["v"]))
        assert launch.hopper_fwd_reason(**fake) is None

    def no_launch(*args, **kwargs):
        raise AssertionError("a kernel was launched while tracing")

    monkeypatch.setattr(launch, "hopper_fwd", no_launch)
    monkeypatch.setattr(launch, "cached_launch", no_launch)
    rest = (a["scale"], True, 0, True, False, -1, -1, 0.0, None, None, None, None, 0, 0)
    for mode in ("fake", "symbolic"):
        gm = make_fx(lambda q, k, v: launch.attn_fwd_impl(q, k, v, None, *rest), tracing_mode=mode)(
            a["q"], a["k"], a["v"])
        targets = [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
        assert targets.count("flashkernels.attn_fwd_hopper.default") == 1, targets
        out_node = next(n for n in gm.graph.nodes if n.op == "output")
        assert out_node is not None


def test_traced_calls_with_features_record_them(machine_ok, monkeypatch):
    """Traced with every feature (Sq != Sk, causal_offset, window, softcap, ALiBi, sink), the opaque
    op's call carries them all, and its fake gives out (B, H, Sq, D) and lse (B, H, Sq); run, the
    op hands them to hopper_fwd (only those in use) or, misaligned, to the Triton kernel."""
    from torch.fx.experimental.proxy_tensor import make_fx

    a = _args(S=256, Sk=384)
    alibi, sink = torch.rand(2, 4), torch.randn(4)

    def no_launch(*args, **kwargs):
        raise AssertionError("a kernel was launched while tracing")

    monkeypatch.setattr(launch, "hopper_fwd", no_launch)
    monkeypatch.setattr(launch, "cached_launch", no_launch)
    rest = (a["scale"], True, 128, True, False, 100, -1, 5.0)
    for mode in ("fake", "symbolic"):
        gm = make_fx(lambda q, k, v, al, sk: launch.attn_fwd_impl(q, k, v, None, *rest, al, sk, None, None, 0, 0),
                     tracing_mode=mode)(a["q"], a["k"], a["v"], alibi, sink)
        nodes = [n for n in gm.graph.nodes if n.op == "call_function"
                 and str(n.target) == "flashkernels.attn_fwd_hopper.default"]
        assert len(nodes) == 1
        args = nodes[0].args
        assert tuple(args[3:10]) == (a["scale"], True, True, 128, 100, -1, 5.0), args
        assert [x.op for x in args[10:12]] == ["placeholder"] * 2, args  # the slopes and the sink, as given
        out, lse = nodes[0].meta["val"]
        assert tuple(out.shape) == (2, 4, 256, 128) and tuple(lse.shape) == (2, 4, 256)
    seen = []
    monkeypatch.setattr(launch, "hopper_fwd", lambda *x, **kw: seen.append(kw))
    monkeypatch.setattr(launch, "_attn_fwd_triton", lambda *x, **kw: seen.append(x[5:7] + x[11:16]) or (x[9], x[10]))
    launch.attn_fwd_hopper_impl(a["q"], a["k"], a["v"], a["scale"], True, True, 128, 100, -1, 5.0, alibi, sink)
    assert seen[0].keys() == {"causal_offset", "window_left", "window_right", "softcap", "alibi_slopes", "sink"}
    launch.attn_fwd_hopper_impl(a["q"], a["k"], a["v"], a["scale"], True, True, 0, -1, -1, 0.0, None, sink)
    assert seen[1].keys() == {"sink"}
    launch.attn_fwd_hopper_impl(_misaligned(), a["k"], a["v"], a["scale"], True, True, 128, 100, -1, 5.0, alibi, sink)
    assert seen[2][:5] == (True, 128, 100, -1, 5.0) and seen[2][5] is alibi and seen[2][6] is sink


def test_opaque_op_fake_and_misaligned_fallback(machine_ok, monkeypatch):
    """The op's fake gives the eager layouts; run on misaligned tensors it takes the Triton kernel
    (stubbed here: the interpreter is not needed to see the choice)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    for bshd in (True, False):
        with FakeTensorMode() as mode:
            q = mode.from_tensor(_bshd(2, 256, 4))
            k = mode.from_tensor(_bshd(2, 256, 2))
            out, lse = torch.ops.flashkernels.attn_fwd_hopper(q, k, k, 0.1, True, bshd)
            ref = launch._empty_like_layout(2, 4, 256, 128, bshd, torch.empty(0, dtype=bf16))
            assert out.shape == ref.shape and out.stride() == ref.stride() and out.dtype == bf16
            assert lse.shape == (2, 4, 256) and lse.dtype == torch.float32
    used = []
    monkeypatch.setattr(launch, "hopper_fwd", lambda *a, **k: used.append("gluon"))
    monkeypatch.setattr(launch, "_attn_fwd_triton", lambda *a, **k: used.append("triton") or (a[9], a[10]))
    a = _args(q=_misaligned())
    launch.attn_fwd_hopper_impl(a["q"], a["k"], a["v"], 0.1, True, True)
    a = _args()
    launch.attn_fwd_hopper_impl(a["q"], a["k"], a["v"], 0.1, True, True)
    assert used == ["triton", "gluon"]


# ------------------------------------------------------------------------------ dispatch
def _fake_hopper(calls):
    """Stands in for launch.hopper_fwd on a CPU: fills out/lse with the float64 reference (what
    the kernel computes) and records the layouts and features it was handed (a causal_offset
    only: top-left 0 or bottom-right Sk - Sq)."""
    def run(q, k, v, out, lse, scale, causal, **features):
        calls.append(dict(out_stride=out.stride(), lse_shape=tuple(lse.shape), causal=causal, scale=scale,
                          features=dict(features)))
        off = features.pop("causal_offset", 0)
        assert not features and off in (0, k.shape[2] - q.shape[2]), features
        o, l = naive_attention(q, k, v, scale=scale, causal=("top_left" if off == 0 else "bottom_right") if causal
                               else None)
        out.copy_(o)
        lse.copy_(l)
    return run


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_flash_attn_func_takes_the_hopper_path(machine_ok, monkeypatch, causal):
    """Through the public function: the forward comes from the Hopper launcher (stubbed), in
    (B, S, H, D) storage, and the Triton backward (interpreter, fp16) runs on its out/lse."""
    from flashkernels import _backend

    if _backend.triton_unavailable_reason(torch.device("cpu")) is not None:
        pytest.skip("no Triton interpreter here")
    calls = []
    monkeypatch.setattr(launch, "hopper_fwd", _fake_hopper(calls))
    monkeypatch.setenv(launch.HOPPER_BWD_ENV, "0")  # the Triton backward (interpreter) on its out/lse
    B, S, H, Hkv, D = 1, 128, 2, 1, 128
    q, k, v = (randn(B, S, h, D, dtype=f16, requires_grad=True) for h in (H, Hkv, Hkv))
    out, lse, _ = flashkernels.flash_attn_func(q, k, v, causal=causal, return_attn_probs=True, backend="triton")
    assert len(calls) == 1 and calls[0]["causal"] == causal
    assert calls[0]["out_stride"] == (S * H * D, D, H * D, 1) and calls[0]["lse_shape"] == (B, H, S)
    assert out.shape == (B, S, H, D) and out.is_contiguous()
    dout = randn(B, S, H, D, dtype=f16)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    qb, kb, vb = (x.detach().transpose(1, 2) for x in (q, k, v))
    ref_leaves = [x.double().requires_grad_() for x in (qb, kb, vb)]
    pt_leaves = [x.clone().requires_grad_() for x in (qb, kb, vb)]
    kw = dict(causal="top_left" if causal else None)
    ref, ref_lse = naive_attention(*ref_leaves, **kw)
    pt, pt_lse = attention_reference(*pt_leaves, causal=causal, compute_dtype=f16)
    assert_close_policy(out.transpose(1, 2), ref, pt)
    assert_close_policy(lse, ref_lse, pt_lse)
    ref_g = torch.autograd.grad(ref, ref_leaves, dout.transpose(1, 2).double())
    pt_g = torch.autograd.grad(pt, pt_leaves, dout.transpose(1, 2))
    mag = data_magnitude(q, k, v, dout)
    for name, g, r, p in zip(("dq", "dk", "dv"), grads, ref_g, pt_g):
        assert_close_policy(g.transpose(1, 2), r, p, factor=3.0, name=name, data_magnitude=mag)


def test_sdpa_layout_takes_the_hopper_path(machine_ok, monkeypatch):
    """scaled_dot_product_attention ((B, H, S, D) in and out) reaches the Hopper launcher with a
    (B, H, S, D)-contiguous output; Sq != Sk too (flash_attn_func: with the bottom-right
    causal_offset), a seqlen that is not a multiple of 128 does not."""
    from flashkernels import _backend

    if _backend.triton_unavailable_reason(torch.device("cpu")) is not None:
        pytest.skip("no Triton interpreter here")
    calls = []
    monkeypatch.setattr(launch, "hopper_fwd", _fake_hopper(calls))
    q, k, v = (randn(1, 2, 128, 128, dtype=f16) for _ in range(3))
    out = flashkernels.scaled_dot_product_attention(q, k, v, is_causal=True, backend="triton")
    assert len(calls) == 1 and calls[0]["out_stride"] == (2 * 128 * 128, 128 * 128, 128, 1)
    assert out.is_contiguous()
    assert calls[0]["features"] == {}
    q2 = randn(1, 128, 2, 128, dtype=f16)
    k2, v2 = (randn(1, 256, 2, 128, dtype=f16) for _ in range(2))
    flashkernels.flash_attn_func(q2, k2, v2, causal=True, backend="triton")
    assert len(calls) == 2 and calls[1]["features"] == {"causal_offset": 128}
    flashkernels.flash_attn_func(randn(1, 100, 2, 128, dtype=f16), k2, v2, causal=True, backend="triton")
    assert len(calls) == 2


@pytest.mark.skipif(not fwd_hopper.AVAILABLE, reason=f"Gluon: {fwd_hopper.UNAVAILABLE_REASON}")
def test_descriptors_view_each_layout_as_2d():
    """(B, S, H, D) storage: heads side by side in a token's row; (B, H, S, D): each head's rows
    after the previous head's; a packed qkv slice: rows of 3·H·D with the heads in the columns."""
    B, S, H, D = 2, 256, 4, 128
    bshd = _bshd(B, S, H)
    d, coef = launch._hopper_desc(bshd, 64)
    assert d.base is bshd and list(d.shape) == [B * S, H * D] and list(d.strides) == [H * D, 1]
    assert list(d.block_shape) == [64, D] and coef == (S, 0, D)
    bhsd = torch.randn(B, H, S, D).to(bf16)
    d, coef = launch._hopper_desc(bhsd, 128)
    assert list(d.shape) == [B * H * S, D] and list(d.strides) == [D, 1] and coef == (H * S, S, 0)
    qkv = torch.randn(B, S, 3, H, D).to(bf16)
    v = qkv[:, :, 2].transpose(1, 2)
    d, coef = launch._hopper_desc(v, 128)
    assert list(d.shape) == [B * S, H * D] and list(d.strides) == [3 * H * D, 1] and coef == (S, 0, D)
    # every (b, h, m) lands on the element the view names
    for t in (bshd, bhsd, v):
        view = launch._hopper_view(t)
        flat = t.as_strided((view.rows, view.cols), (view.row_stride, 1))
        for b, h, m in ((0, 0, 0), (1, 3, 255), (1, 2, 17)):
            row, col = b * view.rb + h * view.rh + m, h * view.ch
            assert torch.equal(flat[row, col:col + D], t[b, h, m])


# ------------------------------------------------------------------------------ sm_90a build
@pytest.mark.skipif(not fwd_hopper.AVAILABLE, reason=f"Gluon: {fwd_hopper.UNAVAILABLE_REASON}")
def test_kernel_builds_for_sm90a_without_spills():
    """The four specialisations (bf16/fp16 x causal) of the forward and of the backward
    (kernels/bwd_hopper.py) at each of their head dims, and the forward's short-sequence builds
    (bf16/fp16 x causal, launch.HOPPER_FWD_SHORT), compile for sm_90a with ptxas (no GPU
    needed) and spill nothing (the causal backward a few bytes), through scripts/compile_check.py (in its own process: the
    compiler cannot run functions decorated for the interpreter)."""
    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("triton ships no ptxas here")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("TRITON_INTERPRET", None)
    dims = ",".join(map(str, sorted(set(launch.HOPPER_FWD_CONFIGS) | set(launch.HOPPER_BWD_HEAD_DIMS))))
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "compile_check.py"), "--dims", dims,
                          "--dtypes", "bf16,fp16", "--causal", "0,1", "--kernels", "hopper"],
                         capture_output=True, text=True, env=env, timeout=300)
    log = res.stdout + res.stderr
    fwd = [ln for ln in res.stdout.splitlines() if ln.startswith("gluon ")]
    bwd = [ln for ln in res.stdout.splitlines() if ln.startswith("gluon-bwd ")]
    short = [ln for ln in res.stdout.splitlines() if ln.startswith("gluon-short ")]  # (launch.HOPPER_FWD_SHORT)
    assert res.returncode == 0 and len(fwd) == 4 * len(launch.HOPPER_FWD_CONFIGS), log[-4000:]
    assert len(short) == 4 * len(launch.HOPPER_FWD_SHORT), log[-4000:]
    fwd += short
    assert len(bwd) == 4 * len(launch.HOPPER_BWD_HEAD_DIMS), log[-4000:]
    assert "serialized" not in log, log  # ptxas serialising wgmmas (registers): slow
    for ln in fwd + bwd:
        spill = re.search(r"spill\s+(\d+)B", ln)
        # the backward's causal build spills 52 B (3 LDL per iteration in each warpgroup's loop,
        # ``compile_check.py --sass``); its D = 128 non-causal one, with the 3-stage ring
        # (launch.HOPPER_BWD_STAGES, +3-6% for it), 8 B (one LDL an iteration in one warpgroup);
        # at D = 64, with 128 query rows an iteration (launch.HOPPER_BWD_M128, +5-20% for it on the H100:
        # S^T and dP^T take 64 registers each) 68 B causal (7 LDL an iteration), 76 B not (its TMA epilogue,
        # launch.HOPPER_BWD_EPI_TMA, at every length: 2 / 6 LDL an iteration; 44 B with the register stores);
        # the others nothing
        if ln in bwd and "D=64" in ln and "(128, " in ln:
            bound = 68 if "causal=1" in ln else 76
        elif ln in fwd and "D=128" in ln and "causal=1" in ln:
            # the causal forward at D = 128 is the chained persistent build (launch.HOPPER_FWD_CHAIN,
            # HOPPER_FWD_PERSISTENT_CAUSAL): one 4-byte value stored at the start and loaded twice
            # outside the loops (compile_check --dump-sass; --sass: no LDL/STL in its loops)
            bound = 4
        else:
            bound = (64 if "causal=1" in ln else 8 if "D=128" in ln else 0) if ln in bwd else 0
        assert spill and int(spill.group(1)) <= bound, ln


# The forward's feature flags (kernels/fwd_hopper.py), as launch.hopper_fwd passes them: each one
# alone, with causal where it combines with it (WINDOW replaces CAUSAL), and all together; VARLEN
# (packed sequences: a WINDOW build, causal or not) plain and with the score features; causal too, where the
# call's causal picks the launch (launch.HOPPER_FWD_VARLEN_PERSISTENT_CAUSAL: D = 64's persistent build).
FEATURE_BUILDS = [
    (False, dict(softcap=True)), (True, dict(softcap=True)), (False, dict(alibi=True)), (True, dict(alibi=True)),
    (False, dict(sink=True)), (True, dict(sink=True)), (False, dict(window=True)),
    (True, dict(softcap=True, alibi=True, sink=True)), (False, dict(softcap=True, alibi=True, sink=True, window=True)),
    (False, dict(varlen=True)), (False, dict(softcap=True, alibi=True, sink=True, varlen=True)),
    (True, dict(varlen=True)), (True, dict(softcap=True, alibi=True, sink=True, varlen=True)),
]
# Builds not (yet) in launch.HOPPER_FWD_CONFIGS, head dim -> ((BLOCK_M, BLOCK_N, STAGES), builds):
# three consumer warpgroups at D = 64 (scripts/ab_fwd64.py), plain and with the features it takes
# (with ALiBi the launcher runs two: launch.hopper_fwd_config).
CANDIDATE_BUILDS = {64: ((192, 128, 2), [(False, {}), (True, {}), (True, dict(softcap=True, sink=True)),
                                         (False, dict(softcap=True, sink=True, window=True))])}
_FEATURE_BUILD_SCRIPT = """
import sys, torch
sys.path.insert(0, sys.argv[1])
import compile_check as cc
from flashkernels.ops.attention import launch
todo = [(D, None, %r) for D in sorted(launch.HOPPER_FWD_CONFIGS)]  # (None: the launcher's choice)
todo += [(D, cfg, builds) for D, (cfg, builds) in %r.items() if D not in launch.HOPPER_FWD_CONFIGS]
for D, cfg, builds in todo:
    for causal, flags in builds:
        tag = f"gluon-feat bf16 D={D} {cfg} causal={int(causal)} " + "+".join(flags)
        cc.report(tag, lambda: cc.compile_hopper_fwd(torch.bfloat16, causal, True, D=D, config=cfg, **flags))
"""


@pytest.mark.skipif(not fwd_hopper.AVAILABLE, reason=f"Gluon: {fwd_hopper.UNAVAILABLE_REASON}")
def test_kernel_feature_builds_for_sm90a_without_spills():
    """The forward's feature flags (softcap, ALiBi, sink, window; alone, with causal, together) at
    each of its head dims, and the candidate builds (CANDIDATE_BUILDS: three consumer warpgroups),
    build for sm_90a (bf16) through compile_check.compile_hopper_fwd, with no serialised wgmma, no
    local loads or stores in the inner loops (compile_check --sass) and no spill (in its own
    process, as the test above), except ALiBi's builds without softcap or a window: since its bias
    split (session 8: the column biases live across the loop) 4 B, outside the loops (0 B since
    session 22, whose builds at every head dim add the column bias by a wgmma); and
    the D = 256 build of every feature with packed sequences: since the grid over the packed tiles
    (session 14: the sequence index comes from a search, no longer from the CTA's id) 16 B, outside
    the loops too (the loop check below holds for it). The persistent builds (D = 128's score
    features since session 16: chained tiles, causal in pairs) spill in the step between two tiles,
    which holds two tiles' state (ALiBi alone 40-92 B, the others up to 24 B): a few local loads
    there (up to 10; 23 in ALiBi's non-causal build, whose column bias a wgmma adds since session 17
    and whose tiles start at the diagonal since session 22: 64 -> 92 B, measured faster from 2k,
    perf-notes), none in the tile loops (the loops with the fewest HGMMA)."""
    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("triton ships no ptxas here")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("TRITON_INTERPRET", None)
    res = subprocess.run([sys.executable, "-c", _FEATURE_BUILD_SCRIPT % (FEATURE_BUILDS, CANDIDATE_BUILDS),
                          str(ROOT / "scripts")], capture_output=True, text=True, env=env, timeout=600)
    log = res.stdout + res.stderr
    built = [ln for ln in res.stdout.splitlines() if ln.startswith("gluon-feat ")]
    n = len(FEATURE_BUILDS) * len(launch.HOPPER_FWD_CONFIGS) + \
        sum(len(b) for d, (_, b) in CANDIDATE_BUILDS.items() if d not in launch.HOPPER_FWD_CONFIGS)
    assert res.returncode == 0 and len(built) == n, log[-4000:]
    assert "FAILED" not in log and "SMEM TOO LARGE" not in log, log[-4000:]
    assert "serialized" not in log, log
    lines = res.stdout.splitlines()
    for i, ln in enumerate(lines):
        if not ln.startswith("gluon-feat "):
            continue
        spill = re.search(r"spill\s+(\d+)B", ln)
        alibi_split = "alibi" in ln and not any(f in ln for f in ("softcap", "window", "varlen"))
        packed_all = "D=256" in ln and "softcap+alibi+sink+varlen" in ln
        loops = []  # (its --sass lines)
        for x in lines[i + 1:]:
            if not x.strip().startswith("loop "):
                break
            loops.append(x)
        assert loops, ln
        hgmma = [int(re.search(r"HGMMA (\d+)", lp).group(1)) for lp in loops]
        # a persistent build (launch.hopper_fwd_persistent): each consumer's tile loop inside its loop
        # over the CTA's tiles, whose HGMMA count includes the step between two tiles
        persistent = max(hgmma) > min(hgmma)
        bound = (96 if alibi_split else 24) if persistent else 4 if alibi_split else 16 if packed_all else 0
        assert spill and int(spill.group(1)) <= bound, ln
        for lp, n in zip(loops, hgmma):
            local = sum(int(k) for k in re.findall(r"(?:LDL|STL) (\d+)", lp))
            # (the step between two tiles: 10 local loads / stores, 24 for ALiBi's split, whose build adds
            # the column bias by a wgmma since session 17 and rotates its key blocks since session 22: 18 LDL
            # + 5 STL there in the non-causal one)
            assert local <= (0 if n == min(hgmma) else 24 if alibi_split else 10), f"{ln}\n{lp}"


# ================================================================================== GPU
def _needs_hopper():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    why = launch.hopper_fwd_device_reason(torch.device("cuda", torch.cuda.current_device()))
    if why is not None:
        pytest.skip(f"Gluon Hopper forward off: {why}")


HEADS = {"mha": (8, 8), "gqa": (32, 8), "mqa": (8, 1)}


# (D, B, S): the full grid at D = 128; at the other head dims of the forward's configs, fewer
# batch/seqlen pairs (one config each, the same code; the GPU run has a time budget)
FWD_DBS = [(128, b, s) for b in (1, 3) for s in (128, 384, 1024)] + \
    [(d, b, s) for d in sorted(launch.HOPPER_FWD_CONFIGS) if d != 128 for b, s in ((3, 128), (1, 1024))]


def test_hopper_fwd_persistent_choice(monkeypatch):
    """The persistent forward: the plain build at D = 128, causal too (its own switch)."""
    assert launch.hopper_fwd_persistent(128, 128, features=False)
    assert launch.hopper_fwd_persistent(128, 128, features=False, causal=True)
    assert not launch.hopper_fwd_persistent(256, 128, features=False)
    assert not launch.hopper_fwd_persistent(128, 128, features=True)
    assert launch.hopper_fwd_persistent(128, 128, features=False, causal=True, score_features=True)
    assert not launch.hopper_fwd_persistent(128, 128, features=True, score_features=True)
    with monkeypatch.context() as m:
        m.setattr(launch, "HOPPER_FWD_PERSISTENT_FEATURES", False)
        assert not launch.hopper_fwd_persistent(128, 128, features=False, score_features=True)
        assert launch.hopper_fwd_persistent(128, 128, features=False)
    monkeypatch.setattr(launch, "HOPPER_FWD_PERSISTENT_DIMS", (64, 128, 256))
    assert not launch.hopper_fwd_persistent(64, 192, features=False)  # (three warpgroups: TRIM)
    assert launch.hopper_fwd_persistent(256, 128, features=False)
    monkeypatch.setattr(launch, "HOPPER_FWD_PERSISTENT_CAUSAL", False)
    assert not launch.hopper_fwd_persistent(128, 128, features=False, causal=True)
    monkeypatch.setattr(launch, "HOPPER_FWD_PERSISTENT", False)
    assert not launch.hopper_fwd_persistent(128, 128, features=False)


@pytest.mark.gpu
@pytest.mark.parametrize("chain", [False, True], ids=["tiles", "chain"])
@pytest.mark.parametrize("D", [64, 128, 256], ids=lambda d: f"d{d}")
@pytest.mark.parametrize("heads", ["mha", "gqa"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_hopper_fwd_persistent_cuda(monkeypatch, causal, heads, D, chain):
    """The persistent forward (launch.HOPPER_FWD_PERSISTENT; here at D = 64 (two warpgroups), 128 and
    256 and causal too: HOPPER_FWD_PERSISTENT_DIMS / _CAUSAL, which the default leaves out) with more
    tiles than SMs (4 · Hq heads x 8 query tiles: each CTA runs several, the K / V ring and the Q
    buffers carried from tile to tile, causal ones in pairs, _ws_tile_c), its tiles one after another or
    chained into one stream of key blocks (HOPPER_FWD_CHAIN, D <= 128): within the policy of
    float64, and bitwise the grid launch's out and lse (the same arithmetic per tile)."""
    _needs_hopper()
    monkeypatch.setattr(launch, "HOPPER_FWD_PERSISTENT_DIMS", (64, 128, 256))
    monkeypatch.setattr(launch, "HOPPER_FWD_PERSISTENT_CAUSAL", True)
    monkeypatch.setattr(launch, "HOPPER_FWD_CHAIN", chain)
    monkeypatch.setitem(launch.HOPPER_FWD_CONFIGS, 64, (128, 2))  # (two warpgroups: the persistent build's)
    monkeypatch.setattr(launch, "HOPPER_FWD_MIN_SEQLEN", {})
    Hq, Hkv = {"mha": (16, 16), "gqa": (32, 8)}[heads]
    n = launch.hopper_fwd_launches
    torch.manual_seed(0)
    r = check_case(Case("fa", bf16, 4, Hq, Hkv, 1024, 1024, D, causal=causal, backward=False), device="cuda")
    assert launch.hopper_fwd_launches == n + 1
    assert 4 * Hq * 1024 // 128 > torch.cuda.get_device_properties(0).multi_processor_count
    monkeypatch.setattr(launch, "HOPPER_FWD_PERSISTENT", False)
    out, lse, _ = flashkernels.flash_attn_func(r.q, r.k, r.v, causal=causal, return_attn_probs=True)
    assert launch.hopper_fwd_launches == n + 2
    assert torch.equal(out, r.out) and torch.equal(lse, r.lse)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [bf16, f16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", [(1, 25, 25, 1024), (2, 32, 8, 2048), (1, 28, 7, 4096)],
                         ids=["b1-h25-1k", "b2-gqa-2k", "b1-gqa-4k"])
def test_hopper_fwd_split_tail_cuda(monkeypatch, shape, dtype):
    """launch.HOPPER_FWD_SPLIT_TAIL at D = 128 (from any key count here): the last round's tiles split by key blocks
    over every CTA and
    merged (kernels/fwd_hopper._ws_seg_out): within the policy of float64 and near the Triton kernel
    (_check_gluon_fwd), near the unsplit persistent launch, the same bits on a second call (its plan, a fresh
    workspace) and in two replays of one CUDA graph. Shapes whose last round is at least half full on 132 SMs
    (200, 1024 and 896 tiles of 128 rows: 68, 100 and 104 left over the whole rounds)."""
    _needs_hopper()
    B, Hq, Hkv, S = shape
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    tiles = B * Hq * S // 128
    if 2 * (tiles % min(tiles, sms)) < min(tiles, sms):
        pytest.skip(f"{tiles} tiles leave no half-full last round on {sms} SMs")
    monkeypatch.setattr(launch, "HOPPER_FWD_SPLIT_TAIL", (128,))
    monkeypatch.setattr(launch, "HOPPER_FWD_SPLIT_TAIL_MIN_KEYS", 0)  # (the short ones too: more tiles split)
    torch.manual_seed(0)
    q = randn(B, S, Hq, 128, dtype=dtype, device="cuda")
    k, v = (randn(B, S, Hkv, 128, dtype=dtype, device="cuda") for _ in range(2))
    out, lse = _check_gluon_fwd(monkeypatch, q, k, v, causal=False)
    again, lse2, _ = flashkernels.flash_attn_func(q, k, v, return_attn_probs=True)
    assert torch.equal(again, out) and torch.equal(lse2, lse)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        flashkernels.flash_attn_func(q, k, v)
        with torch.cuda.graph(graph, stream=stream):
            captured = flashkernels.flash_attn_func(q, k, v)
    torch.cuda.current_stream().wait_stream(stream)
    for _ in range(2):
        captured.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(captured, out)
    monkeypatch.setattr(launch, "HOPPER_FWD_SPLIT_TAIL", ())
    whole, lse3, _ = flashkernels.flash_attn_func(q, k, v, return_attn_probs=True)
    assert (whole.double() - out.double()).abs().max().item() <= 2 ** -7 * max(1.0, whole.abs().max().item())
    assert (lse3 - lse).abs().max().item() <= 1e-5 * max(1.0, lse3.abs().max().item())


@pytest.mark.gpu
@pytest.mark.parametrize("case", PLAN_CASES, ids=[f"d{c[0]}-s{c[1]}-k{c[2]}-{'causal' if c[5] else 'full'}-"
                                                  + "-".join(c[6]) + f"-{c[7]}" for c in PLAN_CASES])
def test_hopper_fwd_plans_cuda(monkeypatch, case):
    """launch.HOPPER_FWD_PLANS: the second and third calls of a case (fresh tensors, same shapes) launch
    from the first's plan, with FLASHKERNELS_LAUNCH_CACHE=check (each hit's arguments compared with
    the full path's, and its kernel with Triton's own lookup), and write bitwise what the same calls
    write with the plans off."""
    _needs_hopper()
    monkeypatch.setenv("FLASHKERNELS_LAUNCH_CACHE", "check")
    calls = [_plan_call(*case) for _ in range(3)]
    calls = [(tuple(x.cuda() if isinstance(x, torch.Tensor) else x for x in pos),
              {n: (x.cuda() if isinstance(x, torch.Tensor) else x) for n, x in kw.items()}) for pos, kw in calls]
    res = {}
    for plans in (False, True):
        monkeypatch.setattr(launch, "HOPPER_FWD_PLANS", plans)
        hits, n = launch.hopper_fwd_plan_hits, launch.hopper_fwd_launches
        res[plans] = []
        for pos, kw in calls:
            out, lse = torch.full_like(pos[3], float("nan")), torch.full_like(pos[4], float("nan"))
            launch.hopper_fwd(*pos[:3], out, lse, *pos[5:], **kw)
            res[plans].append((out, lse))
        assert launch.hopper_fwd_launches == n + 3
        assert launch.hopper_fwd_plan_hits == hits + (2 if plans else 0), "the plan was not used"
    for (o1, l1), (o2, l2) in zip(res[False], res[True]):
        assert torch.equal(o1, o2) and torch.equal(l1, l2)


@pytest.mark.gpu
@pytest.mark.parametrize("S", [256, 1024])
@pytest.mark.parametrize("D", [64, 128], ids=lambda d: f"d{d}")
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_hopper_fwd_chain_defer_cuda(monkeypatch, causal, D, S):
    """launch.HOPPER_FWD_CHAIN_DEFER (the chained forward waits for a tile's output store one loop step
    later, then releases its Q buffer) changes no bit of out or lse: D = 128 chained and D = 64's short
    build, more tiles than SMs, tiles of two key blocks (S = 256: the wait in the only loop step) and of
    eight, causal pairs whose short tile has one block (the wait at the boundary)."""
    _needs_hopper()
    monkeypatch.setattr(launch, "HOPPER_FWD_MIN_SEQLEN", _MIN_SEQLEN)
    Hq = 2048 // D
    B = 4 * 1024 // S
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert launch.hopper_fwd_chained(D) and B * Hq * S // 128 > sms
    torch.manual_seed(0)
    q, k, v = make_inputs(Case("fa", bf16, B, Hq, Hq, S, S, D, causal=causal, backward=False), "cuda",
                          requires_grad=False)
    res = {}
    for defer in (True, False):
        monkeypatch.setattr(launch, "HOPPER_FWD_CHAIN_DEFER", (D,) if defer else ())
        n = launch.hopper_fwd_launches
        res[defer] = flashkernels.flash_attn_func(q, k, v, causal=causal, return_attn_probs=True)[:2]
        assert launch.hopper_fwd_launches == n + 1
    assert torch.equal(res[True][0], res[False][0]) and torch.equal(res[True][1], res[False][1])


_MIN_SEQLEN = dict(launch.HOPPER_FWD_MIN_SEQLEN)  # (the default, before any test's monkeypatch)


@pytest.mark.gpu
@pytest.mark.parametrize("S", [512, 1024])
@pytest.mark.parametrize("heads", ["mha", "gqa"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [bf16, f16], ids=["bf16", "fp16"])
def test_hopper_fwd_short_cuda(monkeypatch, dtype, causal, heads, S):
    """D = 64 below its seqlen floor (the default launch.HOPPER_FWD_MIN_SEQLEN) runs
    HOPPER_FWD_SHORT's build (two warpgroups, persistent, chained; causal over pairs of query
    tiles): within the policy of float64 and as close to the Triton kernel's as that bound
    (_check_gluon_fwd)."""
    _needs_hopper()
    monkeypatch.setattr(launch, "HOPPER_FWD_MIN_SEQLEN", _MIN_SEQLEN)
    assert launch.hopper_fwd_short(64, S, causal, plain=True)
    Hq, Hkv = HEADS[heads]
    q, k, v = make_inputs(Case("fa", dtype, 3, Hq, Hkv, S, S, 64, causal=causal, backward=False), "cuda",
                          requires_grad=False)
    _check_gluon_fwd(monkeypatch, q, k, v, causal=causal)


@pytest.mark.gpu
@pytest.mark.parametrize("D,B,S", FWD_DBS, ids=lambda x: None)
@pytest.mark.parametrize("heads", list(HEADS))
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [bf16, f16], ids=["bf16", "fp16"])
def test_hopper_fwd_cuda(monkeypatch, dtype, causal, heads, D, B, S):
    """out/lse of the Gluon kernel at each head dim it runs: within the policy of float64, and as
    close to the Triton kernel's as the policy's bound (lse to 1e-5 relative)."""
    _needs_hopper()
    Hq, Hkv = HEADS[heads]
    case = Case("fa", dtype, B, Hq, Hkv, S, S, D, causal=causal, backward=False)
    n = launch.hopper_fwd_launches
    r = check_case(case, device="cuda")
    assert launch.hopper_fwd_launches == n + 1, "the Gluon forward did not run"
    assert r.out.is_contiguous()
    monkeypatch.setenv(launch.HOPPER_FWD_ENV, "0")
    out_t, lse_t, _ = flashkernels.flash_attn_func(r.q, r.k, r.v, causal=causal, return_attn_probs=True,
                                                   backend="triton")
    assert launch.hopper_fwd_launches == n + 1, "FLASHKERNELS_HOPPER_FWD=0 did not turn it off"
    diff = (r.out.double() - out_t.double()).abs().max().item()
    assert diff <= r.errs["out"][1], f"out: Gluon vs Triton {diff:.3e} > policy bound {r.errs['out'][1]:.3e}"
    lse_diff = (r.lse - lse_t).abs().max().item()
    assert lse_diff <= 1e-5 * max(1.0, lse_t.abs().max().item()), f"lse: Gluon vs Triton {lse_diff:.3e}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [bf16, f16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("B,Hq,Hkv,S", [(1, 32, 8, 384), (3, 8, 8, 256), (2, 8, 1, 128)],
                         ids=["gqa", "mha", "mqa"])
def test_hopper_fwd_gradients_cuda(monkeypatch, dtype, causal, B, Hq, Hkv, S):
    """Gradients through flash_attn_func (Triton backward on the Gluon forward's out and lse, with a
    gradient at lse as well) within the policy of float64, and as close to the gradients of the
    all-Triton path as that policy's bound."""
    _needs_hopper()
    case = Case("fa", dtype, B, Hq, Hkv, S, S, 128, causal=causal)
    q, k, v = make_inputs(case, "cuda")
    dout = randn(B, S, Hq, 128, dtype=dtype, device="cuda")
    dlse = randn(B, Hq, S, device="cuda")

    def run():
        out, lse, _ = flashkernels.flash_attn_func(q, k, v, causal=causal, return_attn_probs=True, backend="triton")
        return (out, lse, *torch.autograd.grad((out, lse), (q, k, v), (dout, dlse)))

    n = launch.hopper_fwd_launches
    gluon = run()
    assert launch.hopper_fwd_launches == n + 1
    monkeypatch.setenv(launch.HOPPER_FWD_ENV, "0")
    triton_ = run()
    assert launch.hopper_fwd_launches == n + 1
    qb, kb, vb = (x.detach().transpose(1, 2) for x in (q, k, v))
    ref_leaves = [x.double().requires_grad_() for x in (qb, kb, vb)]
    pt_leaves = [x.clone().requires_grad_() for x in (qb, kb, vb)]
    align = "top_left" if causal else None  # Sq = Sk: both alignments agree
    ref, ref_lse = naive_attention(*ref_leaves, causal=align)
    pt, pt_lse = attention_reference(*pt_leaves, causal=causal, compute_dtype=dtype)
    ref_g = torch.autograd.grad((ref, ref_lse), ref_leaves, (dout.transpose(1, 2).double(), dlse.double()))
    pt_g = torch.autograd.grad((pt, pt_lse), pt_leaves, (dout.transpose(1, 2), dlse.to(pt_lse.dtype)))
    mag = data_magnitude(q, k, v, dout, dlse)
    for name, g, t, r, p in zip(("dq", "dk", "dv"), gluon[2:], triton_[2:], ref_g, pt_g):
        g, t = g.transpose(1, 2), t.transpose(1, 2)
        _, bound = assert_close_policy(g, r, p, factor=3.0, name=name, data_magnitude=mag)
        diff = (g.double() - t.double()).abs().max().item()
        assert diff <= bound, f"{name}: Gluon-forward vs Triton-forward gradients {diff:.3e} > {bound:.3e}"


@pytest.mark.gpu
@pytest.mark.no_poison
def test_hopper_fwd_under_torch_compile_cuda():
    """Compiled, the graph holds the opaque op, which runs the Gluon kernel: one launch per
    compiled call, and the compiled result equals the eager one bit for bit."""
    _needs_hopper()
    case = Case("fa", bf16, 2, 8, 2, 256, 256, 128, causal=True)
    q, k, v = make_inputs(case, "cuda")

    def f(q, k, v):
        return flashkernels.flash_attn_func(q, k, v, causal=True, backend="triton")

    compiled = torch.compile(f, fullgraph=True)
    compiled(q, k, v)
    n = launch.hopper_fwd_launches
    out_c = compiled(q, k, v)
    assert launch.hopper_fwd_launches == n + 1, "the compiled graph did not run the Gluon forward"
    out_e = f(q, k, v)
    assert launch.hopper_fwd_launches == n + 2
    torch.testing.assert_close(out_c, out_e, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_hopper_fwd_layouts_cuda(causal):
    """The same numbers whatever the storage: (B, H, S, D) inputs with either output layout, heads
    with a stride, slices of a packed qkv, a storage offset; each bit for bit the result of the
    (B, S, H, D)-contiguous call, and each through the Gluon kernel."""
    _needs_hopper()
    B, S, H, Hkv, D = 2, 384, 8, 2, 128
    torch.manual_seed(0)
    q0 = torch.randn(B, S, H, D, device="cuda", dtype=bf16)
    k0, v0 = (torch.randn(B, S, Hkv, D, device="cuda", dtype=bf16) for _ in range(2))
    scale = 1 / math.sqrt(D)
    rest = (None, scale, causal, 0)

    def run(q, k, v, bshd):
        n = launch.hopper_fwd_launches
        out, lse = launch.attn_fwd_impl(q, k, v, *rest, bshd, False)
        assert launch.hopper_fwd_launches == n + 1, "not the Gluon kernel"
        return out, lse

    ref_out, ref_lse = run(*(t.transpose(1, 2) for t in (q0, k0, v0)), True)
    bhsd = [t.transpose(1, 2).contiguous() for t in (q0, k0, v0)]
    qkv = torch.empty(B, S, H + 2 * Hkv, D, device="cuda", dtype=bf16)  # packed, GQA widths
    qkv[:, :, :H], qkv[:, :, H:H + Hkv], qkv[:, :, H + Hkv:] = q0, k0, v0
    packed = [qkv[:, :, :H], qkv[:, :, H:H + Hkv], qkv[:, :, H + Hkv:]]
    wide = torch.empty(B, S, 2 * H, D, device="cuda", dtype=bf16)  # q's heads every other one
    wide[:, :, ::2] = q0
    flat = torch.empty(q0.numel() + 8, device="cuda", dtype=bf16)  # 16 bytes in: still aligned
    flat[8:] = q0.flatten()
    offset_q = flat[8:].view(B, S, H, D)
    cases = {
        "bhsd-in-bhsd-out": (bhsd, False), "bhsd-in-bshd-out": (bhsd, True),
        "packed-qkv": ([t.transpose(1, 2) for t in packed], True),
        "strided-heads": ([wide[:, :, ::2].transpose(1, 2), k0.transpose(1, 2), v0.transpose(1, 2)], False),
        "storage-offset": ([offset_q.transpose(1, 2), k0.transpose(1, 2), v0.transpose(1, 2)], True),
    }
    for name, (qkv_, bshd) in cases.items():
        out, lse = run(*qkv_, bshd)
        assert out.is_contiguous() == (not bshd) and out.transpose(1, 2).is_contiguous() == bshd, name
        assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse), name


@pytest.mark.gpu
@pytest.mark.no_poison
def test_opcheck_attn_fwd_on_the_hopper_path_cuda():
    """opcheck of attn_fwd on an eligible call (eager: the Gluon kernel directly; traced: the
    opaque attn_fwd_hopper op, which runs it too) and of attn_fwd_hopper itself, both layouts."""
    _needs_hopper()
    q, k, v = (_bshd(2, 256, h, dtype=bf16, device="cuda") for h in (4, 2, 2))
    args = (q, k, v, None, 1 / math.sqrt(128), True, 0, True, False, -1, -1, 0.0)
    n = launch.hopper_fwd_launches
    torch.library.opcheck(torch.ops.flashkernels.attn_fwd.default, args)
    assert launch.hopper_fwd_launches > n
    for bshd in (True, False):
        torch.library.opcheck(torch.ops.flashkernels.attn_fwd_hopper.default, (q, k, v, 0.125, True, bshd))


# ------------------------------------------------------------------ GPU: the kernel's features
def _slopes(B, H, per_batch):
    """ALiBi's geometric slopes 2^(-8 (h + 1) / H) on the GPU, (H,) or (B, H) with each batch
    element's a little different (as test_alibi_sink_varlen's)."""
    base = torch.tensor([2.0 ** (-8.0 * (h + 1) / H) for h in range(H)])
    return (torch.stack([base * (1 + 0.25 * b) for b in range(B)]) if per_batch else base).cuda()


def _feature_kwargs(B, Hq, softcap=0.0, alibi=None, sink=None):
    """flash_attn_func's keywords for a case: softcap; alibi "h" ((Hq,) slopes) or "bh" ((B, Hq));
    sink "mixed" (randn * 2) or "large" (6.0: most of every row's mass on the sink)."""
    kw = dict(softcap=softcap)
    if alibi:
        kw["alibi_slopes"] = _slopes(B, Hq, alibi == "bh")
    if sink:
        kw["learnable_sink"] = (randn(Hq) * 2 if sink == "mixed" else torch.full((Hq,), 6.0)).cuda()
    return kw


def _check_gluon_fwd(monkeypatch, q, k, v, *, causal, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                     learnable_sink=None):
    """flash_attn_func on (B, S, H, D) CUDA inputs: the Gluon forward runs (one launch more), its
    out and lse are within the policy of float64 (helpers.f64_flash_attention; pt: the reference in
    the input dtype) and as close to the Triton kernel's (FLASHKERNELS_HOPPER_FWD=0) as the
    policy's bound allows (lse: the same infinities, the finite ones to 1e-5 relative)."""
    kw = dict(causal=causal, window_size=window_size, softcap=softcap, alibi_slopes=alibi_slopes,
              learnable_sink=learnable_sink)
    n = launch.hopper_fwd_launches
    out, lse, _ = flashkernels.flash_attn_func(q, k, v, return_attn_probs=True, backend="triton", **kw)
    assert launch.hopper_fwd_launches == n + 1, "the Gluon forward did not run"
    with monkeypatch.context() as m:
        m.setenv(launch.HOPPER_FWD_ENV, "0")
        out_t, lse_t, _ = flashkernels.flash_attn_func(q, k, v, return_attn_probs=True, backend="triton", **kw)
    assert launch.hopper_fwd_launches == n + 1, "FLASHKERNELS_HOPPER_FWD=0 did not turn it off"

    def cpu(x):
        return None if x is None else x.detach().cpu()

    ref_out, ref_lse = f64_flash_attention(cpu(q), cpu(k), cpu(v), causal=causal, window_size=window_size,
                                           softcap=softcap, alibi=cpu(alibi_slopes), sink=cpu(learnable_sink))
    pt_out, pt_lse = attention_reference(*(x.detach().transpose(1, 2) for x in (q, k, v)), causal=causal,
                                         causal_align="bottom_right", window_size=window_size, softcap=softcap,
                                         alibi_slopes=alibi_slopes, sink=learnable_sink, compute_dtype=q.dtype)
    mag = data_magnitude(q, k, v)
    _, bound = assert_close_policy(out, ref_out, pt_out.transpose(1, 2), name="out", data_magnitude=mag)
    assert_close_policy(lse, ref_lse, pt_lse, name="lse", data_magnitude=mag)
    diff = (out.double() - out_t.double()).abs().max().item()
    assert diff <= bound, f"out: Gluon vs Triton {diff:.3e} > policy bound {bound:.3e}"
    fin = torch.isfinite(lse_t)
    assert torch.equal(fin, torch.isfinite(lse)) and torch.equal(lse[~fin], lse_t[~fin]), "lse: infinities differ"
    if fin.any():
        lse_diff = (lse[fin] - lse_t[fin]).abs().max().item()
        assert lse_diff <= 1e-5 * max(1.0, lse_t[fin].abs().max().item()), f"lse: Gluon vs Triton {lse_diff:.3e}"
    return out, lse


FEATURES = {
    "softcap": dict(softcap=2.0), "alibi-h": dict(alibi="h"), "alibi-bh": dict(alibi="bh"),
    "sink": dict(sink="mixed"), "sink-large": dict(sink="large"),
    "all": dict(softcap=2.0, alibi="bh", sink="mixed"),
}


@pytest.mark.gpu
@pytest.mark.parametrize("feature", list(FEATURES))
@pytest.mark.parametrize("heads", ["mha", "gqa"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [bf16, f16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("D", sorted(launch.HOPPER_FWD_CONFIGS), ids=lambda d: f"d{d}")
def test_hopper_fwd_features_cuda(monkeypatch, D, dtype, causal, heads, feature):
    """softcap (2: it bends every score), ALiBi (H,) and (B, H), the sink, and all three at once,
    causal or not, MHA and GQA, on the Gluon forward: against float64 and the Triton kernel."""
    _needs_hopper()
    Hq, Hkv = HEADS[heads]
    B, S = 2, 384
    q, k, v = make_inputs(Case("fa", dtype, B, Hq, Hkv, S, S, D, causal=causal, backward=False), "cuda",
                          requires_grad=False)
    _check_gluon_fwd(monkeypatch, q, k, v, causal=causal, **_feature_kwargs(B, Hq, **FEATURES[feature]))


@pytest.mark.gpu
@pytest.mark.parametrize("inputs", ["randn", "far"])
@pytest.mark.parametrize("cap", [2.0, 40.0], ids=lambda c: f"cap{c:g}")
@pytest.mark.parametrize("D", [64, 128, 256], ids=lambda d: f"d{d}")
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_hopper_fwd_softcap_static_max_cuda(monkeypatch, causal, D, cap, inputs):
    """Softcap with the row max fixed at its bound (launch.HOPPER_FWD_SOFTCAP_STATIC_MAX: SOFTCAP = 2
    in the build) within the policy of float64 and of the Triton kernel, also where every score sits
    near -cap ("far": q·kᵀ large and negative, so p = 2^((t - 1)·cap·log2 e) near 2^-115 at cap 40)."""
    _needs_hopper()
    monkeypatch.setattr(launch, "HOPPER_FWD_SOFTCAP_STATIC_MAX", 40.0)
    monkeypatch.setattr(launch, "HOPPER_FWD_SOFTCAP_DYNAMIC", set())  # (every head dim and causal setting)
    assert launch._hopper_fwd_softcap_mode(cap, False, D, causal) == 2
    B, H, S = (1, 2, 2048) if D == 64 else (2, 4, 384)
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(B, S, H, D, generator=g) for _ in range(3))
    if inputs == "far":
        q, k = q.abs() * 4, -k.abs() * 4
    q, k, v = (x.to("cuda", bf16) for x in (q, k, v))
    _check_gluon_fwd(monkeypatch, q, k, v, causal=causal, softcap=cap)


@pytest.mark.gpu
@pytest.mark.parametrize("feature", list(FEATURES))
@pytest.mark.parametrize("heads", ["mha", "gqa"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_hopper_fwd_persistent_features_cuda(monkeypatch, causal, heads, feature):
    """The score features in the persistent forward (launch.HOPPER_FWD_PERSISTENT_FEATURES; D = 128,
    chained, causal in pairs of query tiles) with more tiles than SMs (4 · Hq heads x 8 query tiles:
    each CTA runs several, the ALiBi slope and the sink loaded for each tile's head): within the
    policy of float64 and of the Triton kernel, and bitwise the grid launch's out and lse."""
    _needs_hopper()
    monkeypatch.setattr(launch, "HOPPER_FWD_PERSISTENT_FEATURES", True)
    assert launch.hopper_fwd_persistent(128, 128, features=False, causal=causal, score_features=True)
    Hq, Hkv = {"mha": (16, 16), "gqa": (32, 8)}[heads]
    B, S = 4, 1024
    assert B * Hq * S // 128 > torch.cuda.get_device_properties(0).multi_processor_count
    torch.manual_seed(0)
    q, k, v = make_inputs(Case("fa", bf16, B, Hq, Hkv, S, S, 128, causal=causal, backward=False), "cuda",
                          requires_grad=False)
    kw = _feature_kwargs(B, Hq, **FEATURES[feature])
    _check_gluon_fwd(monkeypatch, q, k, v, causal=causal, **kw)
    out, lse, _ = flashkernels.flash_attn_func(q, k, v, causal=causal, return_attn_probs=True, **kw)
    monkeypatch.setattr(launch, "HOPPER_FWD_PERSISTENT_FEATURES", False)
    out_g, lse_g, _ = flashkernels.flash_attn_func(q, k, v, causal=causal, return_attn_probs=True, **kw)
    assert torch.equal(out, out_g) and torch.equal(lse, lse_g)


@pytest.mark.gpu
@pytest.mark.parametrize("Sq,Sk", [(1024, 1024), (256, 640), (640, 256)], ids=["sq-eq-sk", "sq-lt-sk", "sq-gt-sk"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("D", sorted(launch.HOPPER_FWD_CONFIGS), ids=lambda d: f"d{d}")
def test_hopper_fwd_alibi_rotate_cuda(monkeypatch, D, causal, Sq, Sk):
    """ALiBi's key blocks from the diagonal (launch.HOPPER_FWD_ALIBI_ROTATE, kernels/fwd_hopper.py
    ROT_N) at every head dim, causal or not, Sq != Sk (bottom-right: causal ones pass as windows,
    which keep key order), GQA with (B, H) slopes and a sink: within the policy of float64 and of the
    Triton kernel; at D = 128 with Sq = Sk the persistent (chained) launch bitwise the grid's."""
    _needs_hopper()
    monkeypatch.setattr(launch, "HOPPER_FWD_ALIBI_ROTATE", True)
    monkeypatch.setattr(launch, "HOPPER_FWD_ALIBI_ROTATE_MIN_ROWS", {})  # (every head dim at these lengths)
    B, Hq, Hkv = 2, 8, 2
    torch.manual_seed(0)
    q, k, v = make_inputs(Case("fa", bf16, B, Hq, Hkv, Sq, Sk, D, causal=causal, backward=False), "cuda",
                          requires_grad=False)
    kw = _feature_kwargs(B, Hq, alibi="bh", sink="mixed")
    # (steeper slopes than the geometric 2^-1..2^-8 too: the max moves by up to 128 · 2 · log2 e a block)
    kw["alibi_slopes"] = kw["alibi_slopes"] * 4.0
    _check_gluon_fwd(monkeypatch, q, k, v, causal=causal, **kw)
    if D == 128 and Sq == Sk:
        out, lse, _ = flashkernels.flash_attn_func(q, k, v, causal=causal, return_attn_probs=True, **kw)
        monkeypatch.setattr(launch, "HOPPER_FWD_PERSISTENT_FEATURES", False)
        out_g, lse_g, _ = flashkernels.flash_attn_func(q, k, v, causal=causal, return_attn_probs=True, **kw)
        assert torch.equal(out, out_g) and torch.equal(lse, lse_g)


# (Sq, Sk, causal, window_size, features): sliding windows (block-aligned or not, one key a row,
# one side only), causal with a window, Sq != Sk under causal (bottom-right: rows that see no key
# when Sq > Sk) and not, windows that leave whole query blocks without a key (with a sink: all
# their mass on it), everything at once.
WINDOW_CASES = [
    (512, 512, False, (128, 0), {}),
    (512, 512, False, (100, 37), {}),
    (512, 512, False, (0, 0), {}),
    (512, 512, False, (-1, 63), {}),
    (512, 512, True, (200, -1), {}),
    (256, 640, True, (-1, -1), {}),
    (640, 256, True, (-1, -1), {}),
    (640, 256, True, (-1, -1), dict(sink="mixed")),
    (256, 640, False, (-1, -1), {}),
    (1024, 128, False, (3, 5), {}),
    (1024, 128, False, (3, 5), dict(sink="large")),
    (128, 1024, True, (300, -1), dict(alibi="h")),
    (384, 1024, False, (64, 64), dict(softcap=2.0, alibi="bh", sink="mixed")),
    (256, 640, False, (-1, -1), dict(alibi="h")),  # (ALiBi's |i + Sk - Sq - j| without a window:
    (640, 256, False, (-1, -1), dict(alibi="bh", sink="mixed")),  # D = 128 runs it persistent, chained)
]


def _window_id(c):
    Sq, Sk, causal, (left, right), feats = c
    return "-".join([f"q{Sq}-k{Sk}", "causal" if causal else "full", f"win{left}_{right}"]
                    + [f"{name}_{val}" for name, val in feats.items()])


@pytest.mark.gpu
@pytest.mark.parametrize("case", WINDOW_CASES, ids=[_window_id(c) for c in WINDOW_CASES])
@pytest.mark.parametrize("dtype", [bf16, f16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("D", sorted(launch.HOPPER_FWD_CONFIGS), ids=lambda d: f"d{d}")
def test_hopper_fwd_window_and_seqlens_cuda(monkeypatch, D, dtype, case):
    """Sliding windows and Sq != Sk (flash_attn_func: causal bottom-right) on the Gluon forward,
    GQA: against float64 and the Triton kernel; rows that see no key give out 0 and lse -inf (the
    sink's logit with a sink)."""
    _needs_hopper()
    Sq, Sk, causal, window, feats = case
    B, Hq, Hkv = 2, 8, 2
    q, k, v = make_inputs(Case("fa", dtype, B, Hq, Hkv, Sq, Sk, D, causal=causal, backward=False), "cuda",
                          requires_grad=False)
    kw = _feature_kwargs(B, Hq, **feats)
    out, lse = _check_gluon_fwd(monkeypatch, q, k, v, causal=causal, window_size=window, **kw)
    off = Sk - Sq
    rows = torch.arange(Sq, device="cuda")
    left, right = window
    right = 0 if causal else right
    lo = (rows + off - left).clamp(min=0) if left >= 0 else torch.zeros_like(rows)
    hi = (rows + off + right).clamp(max=Sk - 1) if right >= 0 else torch.full_like(rows, Sk - 1)
    dead = lo > hi  # rows that see no key
    if dead.any():
        assert (out[:, dead] == 0).all()
        sink = kw.get("learnable_sink")
        expect = torch.full((Hq,), -math.inf, device="cuda") if sink is None else sink
        assert torch.equal(lse[:, :, dead], expect.view(1, Hq, 1).expand(B, Hq, int(dead.sum())))


@pytest.mark.gpu
@pytest.mark.parametrize("Sq,Sk", [(256, 640), (640, 256)], ids=["sq-lt-sk", "sq-gt-sk"])
def test_hopper_fwd_causal_top_left_cuda(Sq, Sk):
    """Causal aligned top-left (causal_offset 0, as scaled_dot_product_attention) with Sq != Sk,
    through attn_fwd_impl, GQA: the Gluon forward, within the policy of float64."""
    _needs_hopper()
    B, H, Hkv, D = 2, 8, 2, 128
    q = randn(B, H, Sq, D, dtype=bf16, device="cuda")
    k, v = (randn(B, Hkv, Sk, D, dtype=bf16, device="cuda") for _ in range(2))
    scale = 1 / math.sqrt(D)
    n = launch.hopper_fwd_launches
    out, lse = launch.attn_fwd_impl(q, k, v, None, scale, True, 0, False, False)
    assert launch.hopper_fwd_launches == n + 1, "the Gluon forward did not run"
    ref, ref_lse = naive_attention(q.cpu(), k.cpu(), v.cpu(), scale=scale, causal="top_left")
    pt, pt_lse = attention_reference(q, k, v, scale=scale, causal=True, causal_align="top_left", compute_dtype=bf16)
    mag = data_magnitude(q, k, v)
    assert_close_policy(out, ref, pt, name="out", data_magnitude=mag)
    assert_close_policy(lse, ref_lse, pt_lse, name="lse", data_magnitude=mag)


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_hopper_fwd_features_gradients_cuda(causal):
    """Gradients (q, k, v and the sink, with a gradient at lse too) through flash_attn_func with
    softcap, ALiBi (B, H), a sink, a window and Sq < Sk: the Gluon backward (it has these features
    too: test_hopper_bwd) on the Gluon forward's out and lse, within the policy of float64."""
    _needs_hopper()
    B, Sq, Sk, Hq, Hkv, D = 2, 384, 512, 8, 2, 128
    q = randn(B, Sq, Hq, D, dtype=bf16, device="cuda", requires_grad=True)
    k, v = (randn(B, Sk, Hkv, D, dtype=bf16, device="cuda", requires_grad=True) for _ in range(2))
    alibi = _slopes(B, Hq, True)
    sink = (randn(Hq) * 2).cuda().requires_grad_()
    kw = dict(causal=causal, window_size=(200, -1), softcap=2.0)
    n, nb = launch.hopper_fwd_launches, launch.hopper_bwd_launches
    out, lse, _ = flashkernels.flash_attn_func(q, k, v, alibi_slopes=alibi, learnable_sink=sink,
                                               return_attn_probs=True, backend="triton", **kw)
    dout = randn(*out.shape, dtype=bf16, device="cuda")
    dlse = randn(*lse.shape, device="cuda")
    grads = torch.autograd.grad((out, lse), (q, k, v, sink), (dout, dlse))
    assert launch.hopper_fwd_launches == n + 1, "the Gluon forward did not run"
    assert launch.hopper_bwd_launches == nb + 1, "the Gluon backward did not run"
    ref_in = [x.detach().cpu().double().requires_grad_() for x in (q, k, v)]
    ref_sink = sink.detach().cpu().double().requires_grad_()
    ref_out, ref_lse = f64_flash_attention(*ref_in, alibi=alibi.cpu(), sink=ref_sink, **kw)
    pt_in = [x.detach().transpose(1, 2).requires_grad_() for x in (q, k, v)]
    pt_sink = sink.detach().clone().requires_grad_()
    pt_out, pt_lse = attention_reference(*pt_in, causal_align="bottom_right", alibi_slopes=alibi, sink=pt_sink,
                                         compute_dtype=bf16, **kw)
    mag = data_magnitude(q, k, v)
    assert_close_policy(out, ref_out, pt_out.transpose(1, 2), name="out", data_magnitude=mag)
    assert_close_policy(lse, ref_lse, pt_lse, name="lse", data_magnitude=mag)
    ref_g = torch.autograd.grad((ref_out, ref_lse), ref_in + [ref_sink], (dout.cpu().double(), dlse.cpu().double()))
    pt_g = torch.autograd.grad((pt_out, pt_lse), pt_in + [pt_sink], (dout.transpose(1, 2), dlse))
    gmag = max(mag, data_magnitude(dout, dlse))
    for name, g, r, p in zip(("dq", "dk", "dv", "dsink"), grads, ref_g, pt_g):
        if name != "dsink":
            p = p.transpose(1, 2)
        assert_close_policy(g, r, p, factor=3.0, name=name, data_magnitude=gmag, dtype=bf16)


@pytest.mark.gpu
@pytest.mark.no_poison
def test_hopper_fwd_features_under_torch_compile_cuda():
    """Compiled with every feature (window, softcap, ALiBi, sink; Sq < Sk, causal): the graph's
    opaque op runs the Gluon kernel, one launch a call, bit for bit the eager result."""
    _needs_hopper()
    q, k, v = make_inputs(Case("fa", bf16, 2, 8, 2, 256, 384, 128, causal=True, backward=False), "cuda",
                          requires_grad=False)
    alibi = _slopes(2, 8, True)
    sink = (randn(8) * 2).cuda()

    def f(q, k, v):
        return flashkernels.flash_attn_func(q, k, v, causal=True, window_size=(100, -1), softcap=5.0,
                                            alibi_slopes=alibi, learnable_sink=sink, backend="triton")

    compiled = torch.compile(f, fullgraph=True)
    compiled(q, k, v)
    n = launch.hopper_fwd_launches
    out_c = compiled(q, k, v)
    assert launch.hopper_fwd_launches == n + 1, "the compiled graph did not run the Gluon forward"
    out_e = f(q, k, v)
    assert launch.hopper_fwd_launches == n + 2
    torch.testing.assert_close(out_c, out_e, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.no_poison
def test_opcheck_attn_fwd_hopper_features_cuda():
    """opcheck of attn_fwd on a call with every feature (the Gluon path, eager and traced) and of
    attn_fwd_hopper itself with them."""
    _needs_hopper()
    q = _bshd(2, 256, 4, dtype=bf16, device="cuda")
    k, v = (_bshd(2, 384, 2, dtype=bf16, device="cuda") for _ in range(2))
    alibi = _slopes(2, 4, True)
    sink = randn(4).cuda()
    scale = 1 / math.sqrt(128)
    n = launch.hopper_fwd_launches
    torch.library.opcheck(torch.ops.flashkernels.attn_fwd.default,
                          (q, k, v, None, scale, True, 128, True, False, 100, -1, 5.0, alibi, sink))
    assert launch.hopper_fwd_launches > n
    torch.library.opcheck(torch.ops.flashkernels.attn_fwd_hopper.default,
                          (q, k, v, scale, True, True, 128, 100, -1, 5.0, alibi, sink))


def _racecheck_sites(script: Path) -> tuple[str, set, set]:
    """Run ``script`` under racecheck; (log, {(file, line)} of every access a hazard names, and
    {((file, line), (file, line))}: each reported pair, its first access and one of the others)."""
    log = run_compute_sanitizer("racecheck", script)
    assert "RACECHECK SUMMARY" in log, log[-4000:]
    pairs, first = set(), None
    for ln in log.splitlines():
        m = re.search(r"(Race reported between|and) \w+ access at \S+ in (\S+?):(\d+)", ln)
        if m and m.group(1) != "and":
            first = (m.group(2), m.group(3))
        elif m and first is not None:
            pairs.add((first, (m.group(2), m.group(3))))
    return log, set(re.findall(r"access at \S+ in (\S+?):(\d+)", log)), pairs


def _warp_specialize_lines(path: Path) -> set:
    """Where Triton's lowering puts the partition-state handshake of the gl.warp_specialize(...)
    call in ``path`` (a store, by the default warps, and loads, by each worker warp, of one state
    byte per worker warp): the call's own lines, and the ``def`` line of the kernel holding it
    (the location of code the lowering adds without a source line of its own, such as the
    workers' dispatch loop)."""
    lines = path.read_text().splitlines()
    found = set()
    for start in (i for i, ln in enumerate(lines) if "gl.warp_specialize(" in ln):
        depth, end = 0, start
        for end in range(start, len(lines)):
            depth += lines[end].count("(") + lines[end].count("[") - lines[end].count(")") - lines[end].count("]")
            if depth == 0:
                break
        kernel_def = max(i for i in range(start) if lines[i].startswith("def "))
        found |= {kernel_def, *range(start, end + 1)}
        if re.match(r"\s*(if .*|elif .*|else):", lines[start - 1]):  # (one call a branch: the branch's line too)
            found.add(start - 1)
    return {(path.name, str(n + 1)) for n in found}


def _varlen_state_lines(path: Path) -> set:
    """The lines of ``path`` marked ``# racecheck: varlen-state`` (the VARLEN producers' generic stores
    into shared memory: the backward's lse / Delta, the persistent forward's tile index; see
    assert_racecheck_only_handshake)."""
    return {(path.name, str(i + 1)) for i, ln in enumerate(path.read_text().splitlines())
            if "racecheck: varlen-state" in ln}


def assert_racecheck_only_handshake(script: Path, kernel_files) -> None:
    """Run ``script`` under racecheck and fail on any hazard outside the warp-specialize
    handshake lines (:func:`_warp_specialize_lines`) of ``kernel_files``.

    Why those are let through (2026-11-26, H200, CUDA 13 compute-sanitizer): racecheck reports
    RAW hazards between the partition-state bytes the default warps store (one byte per worker
    warp, ``st.shared.v2.b32`` after the kernel's barriers) and the worker warps' ``ld.shared.b8``
    of them, at the kernel's ``def`` line and the ``gl.warp_specialize`` line: code Triton's
    lowering generates, in which both sides are ordered by ``barrier.sync 1`` over all the CTA's
    threads. It is not understood why racecheck does not credit that barrier: the smallest kernel
    with the same partition layout (scripts/ws_racecheck_control.py) reports no hazard. Every
    correctness test of the kernels passes, run after run; docs/perf-notes.md keeps this open.

    Also let through (2026-11-26, H100): pairs whose first access is one of the VARLEN backward
    producer's generic stores of lse / Delta into a ring stage (lines marked ``# racecheck:
    varlen-state``; a 1-D TMA copy needs a 16-byte aligned start, which packed sequences do not
    give) and whose other access is a consumer's read of that stage. Their order: the producer
    warp's stores, its thread barrier, then its one thread's ``mbarrier.arrive.expect_tx``
    (.release.cta by default) on the stage's ready barrier, which the consumers' ``try_wait``
    (.acquire.cta) observes before they read; the ring's reuse waits on the empty barrier, which a
    consumer arrives on after the pair barrier that follows its last read. racecheck does not
    credit that order either; the varlen GPU tests pass. The same holds for the line so marked in
    the forward (session 25): the persistent VARLEN producer's generic store of the next tile's
    index (fwd_hopper._ws_sched_put), which it orders before its arrivals on the tile's Q barriers
    and rewrites only after every consumer, having read it, arrived on q_empty. Any other pair with
    those lines fails."""
    log, sites, pairs = _racecheck_sites(script)
    allowed = set().union(*(_warp_specialize_lines(Path(f)) for f in kernel_files))
    varlen_state = set().union(*(_varlen_state_lines(Path(f)) for f in kernel_files))
    let_through = {a for pair in pairs if pair[0] in varlen_state or pair[1] in varlen_state for a in pair}
    outside = {s for s in sites if s not in allowed and s not in let_through}
    # (a line of a let-through pair that also races with anything else still fails)
    outside |= {a for pair in pairs if pair[0] not in varlen_state and pair[1] not in varlen_state
                for a in pair if a not in allowed}
    assert not outside, f"racecheck hazards in the kernels' code at {sorted(outside)}:\n{log[-4000:]}"


# ------------------------------------------------------------------------------ reporting
def test_info_and_check_report_the_hopper_forward(monkeypatch, capsys):
    """`flashkernels info` (text and --json) and selfcheck say whether it is on, and why not."""
    import json

    from flashkernels import cli, selfcheck

    active, text = selfcheck.hopper_fwd_status(torch.device("cpu"))
    assert not active and text.startswith("off on cpu: ")
    assert cli.main(["info", "--json"]) == 0
    hop = json.loads(capsys.readouterr().out)["hopper_fwd"]
    assert hop["active"] is False and hop["text"].startswith("off")
    monkeypatch.setattr(launch, "hopper_fwd_device_reason", lambda device: None)
    active, text = selfcheck.hopper_fwd_status(torch.device("cuda", 0))
    assert active and text.startswith("on for ") and launch.HOPPER_FWD_ENV in text
    monkeypatch.setattr(cli, "_default_device", lambda: torch.device("cpu"))
    assert cli.main(["info"]) == 0
    assert "Hopper attention forward (Gluon): on for" in capsys.readouterr().out
