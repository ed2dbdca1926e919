"""Packed sequences (flash_attn_varlen_func) through the Gluon Hopper forward (kernels/fwd_hopper.py's
VARLEN) and its dispatch (launch.py).

CPU: which varlen calls take it (hopper_fwd_reason: the switch launch.HOPPER_FWD_VARLEN, on by
default since session 9; every head dim and feature of the dense forward; D = 64's floor against
max_seqlen_q), the kernel's launch arguments (grid over the longest sequence and n · H, always the
WINDOW build with VARLEN, cu_seqlens, the window's bounds), that flash_attn_varlen_func reaches the
Hopper launcher with the sequences (stubbed by a float64 emulation), and that a traced forward
records the opaque op with them.
GPU (marked ``gpu``): out and lse through the kernel per sequence against float64 (policy of
TESTING.md), against the Triton varlen forward and against each sequence run alone; lengths off the
block grid, 1 and 0, Sq != Sk, causal or not, MHA / GQA, D = 64 / 128 / 256, bf16 / fp16, the
features (softcap, ALiBi, sink, windows), gradients through it, opcheck of the op with sequences.
"""
import math

import pytest
import torch

import flashkernels
from flashkernels.ops.attention import launch
from flashkernels.ops.attention.kernels import fwd_hopper
from flashkernels.ops.attention.reference import attention_reference, varlen_attention_reference
from helpers import assert_close_policy, data_magnitude, f64_flash_attention, randn
from test_hopper_bwd_varlen import (VARLEN_FEATURE_IDS, VARLEN_FEATURES, _packed, _varlen_bwd_args,
                                    recorded_call_with_sequences)
from test_hopper_fwd import _feature_kwargs, _needs_hopper, machine_ok, switch_unset  # noqa: F401  (fixtures)

bf16, f16 = torch.bfloat16, torch.float16
VARLEN_DEFAULT = launch.HOPPER_FWD_VARLEN  # (read at import, before any fixture sets it)


@pytest.fixture(autouse=True)
def varlen_on(request, monkeypatch):
    """These tests are the VARLEN build's: its switch (launch.HOPPER_FWD_VARLEN, on by default) set on
    in case; GPU tests check results on small shapes, so D = 64's seqlen floor
    (launch.HOPPER_FWD_MIN_SEQLEN, a speed choice tested on CPU) is lifted for them."""
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN", True)
    if request.node.get_closest_marker("gpu") is not None:
        monkeypatch.setattr(launch, "HOPPER_FWD_MIN_SEQLEN", {})


def _varlen_fwd_args(lens_q=(100, 1, 0, 257), **over):
    """hopper_fwd_reason's arguments as flash_attn_varlen_func passes them: test_hopper_bwd_varlen's
    (1, H, total, D) views of packed (total, H, D) tensors, bshd, cu_seqlens_q; and max_seqlen_q."""
    a = _varlen_bwd_args(lens_q, **over)
    del a["do"]
    a.setdefault("max_seqlen_q", max(lens_q))
    return a


# --------------------------------------------------------------------------------- eligibility
def test_varlen_d64_rows_floor(machine_ok, monkeypatch):
    """D = 64's HOPPER_FWD_MIN_SEQLEN applies to packed sequences (against max_seqlen_q) unless the call
    takes two warpgroups (the dynamic scheduler's build): HOPPER_FWD_VARLEN_PERSISTENT names D = 64, or
    the call is causal and HOPPER_FWD_VARLEN_PERSISTENT_CAUSAL names it (the default), or
    HOPPER_FWD_VARLEN_SHORT names it with more rows than max_seqlen_q (the default: the floor's 2048)."""
    fewest = launch.HOPPER_FWD_MIN_SEQLEN[64]
    short, long = (100, fewest - 1), (100, fewest)
    assert launch.HOPPER_FWD_VARLEN_PERSISTENT_CAUSAL == (64,)  # (default)
    assert launch.HOPPER_FWD_VARLEN_SHORT == {64: (fewest, 3)}  # (default)
    for causal in (True, False):
        assert launch.hopper_fwd_reason(**_varlen_fwd_args(short, D=64, causal=causal)) is None
    assert launch.hopper_fwd_reason(**_varlen_fwd_args(long, D=64, causal=False)) is None
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_SHORT", {64: (fewest - 1, 3)})
    assert launch.hopper_fwd_reason(**_varlen_fwd_args(short, D=64)) is None  # (causal)
    assert "faster below" in launch.hopper_fwd_reason(**_varlen_fwd_args(short, D=64, causal=False))
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_SHORT", {})
    assert "faster below" in launch.hopper_fwd_reason(**_varlen_fwd_args(short, D=64, causal=False))
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_PERSISTENT_CAUSAL", ())
    assert "faster below" in launch.hopper_fwd_reason(**_varlen_fwd_args(short, D=64))
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_PERSISTENT", (64, 128))
    for causal in (True, False):
        assert launch.hopper_fwd_reason(**_varlen_fwd_args(short, D=64, causal=causal)) is None
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_PERSISTENT_CAUSAL", (64,))
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_SHORT", {64: (fewest, 3)})
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_PACKED", False)  # (no dynamic scheduler without the packed grid)
    for causal in (True, False):
        assert "faster below" in launch.hopper_fwd_reason(**_varlen_fwd_args(short, D=64, causal=causal))


def test_varlen_switch(machine_ok, monkeypatch):
    """On by default (session 9: 0.88-0.93x dense, the Triton varlen forward 0.70-0.73x); off, the
    reason names the switch."""
    assert VARLEN_DEFAULT is True
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN", False)
    why = launch.hopper_fwd_reason(**_varlen_fwd_args())
    assert "packed sequences (varlen)" in why and "HOPPER_FWD_VARLEN" in why, why
    # (the same tensors as one batch element of 256 rows: the dense forward, whatever the switch)
    assert launch.hopper_fwd_reason(**_varlen_fwd_args(lens_q=(256,), cu_seqlens_q=None)) is None


# (keywords of _varlen_fwd_args, None or a piece of the reason): every head dim of the forward, its
# features, either output layout; and what refuses packed sequences
VARLEN_REASONS = [
    (dict(D=128), None), (dict(D=256), None), (dict(causal=False, lens_k=(3, 300, 0, 64)), None),
    (dict(window_left=30, softcap=5.0, alibi_slopes=torch.rand(4, 4), sink=torch.randn(4)), None),
    (dict(bshd=False, H=8, Hkv=8), None),
    (dict(dtype=torch.float32), "dtype"), (dict(D=96), "head dim 96"),
    (dict(mask=torch.ones(1, 1, 358, 358, dtype=torch.bool)), "mask"),
    (dict(lens_k=(0, 0, 0, 0)), "no keys"),
    (dict(lens_q=(1,) * 20000, H=4, Hkv=4), "grid y"),  # one CTA row per (sequence, head) along grid y
]


@pytest.mark.parametrize("over,expected", VARLEN_REASONS,
                         ids=["d128", "d256", "full-sq-ne-sk", "features", "bhsd-out", "fp32", "d96", "mask",
                              "no-keys", "grid-y"])
def test_fwd_reason_varlen(machine_ok, over, expected):
    why = launch.hopper_fwd_reason(**_varlen_fwd_args(**over))
    assert why is None if expected is None else (why is not None and expected in why), why


def test_d64_floor_is_max_seqlen_q(machine_ok, monkeypatch):
    """D = 64's HOPPER_FWD_MIN_SEQLEN compares the longest sequence (max_seqlen_q, the grid's rows),
    not the packed total (non-causal, HOPPER_FWD_VARLEN_SHORT off: causal calls take the persistent launch at
    any length)."""
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_SHORT", {})
    fewest = launch.HOPPER_FWD_MIN_SEQLEN[64]
    short = _varlen_fwd_args(lens_q=(fewest - 1, fewest - 1), D=64, H=2, Hkv=2, causal=False)  # total past the floor
    assert f"max_seqlen_q {fewest - 1}" in launch.hopper_fwd_reason(**short)
    assert launch.hopper_fwd_reason(**_varlen_fwd_args(lens_q=(fewest, 5), D=64, H=2, Hkv=2, causal=False)) is None


# ------------------------------------------------------------------------------ launch
class _KernelStub:
    """Stands in for fwd_hopper.attn_fwd_hopper_kernel: records the grid, arguments and keywords."""

    def __init__(self):
        self.seen = {}

    def __getitem__(self, grid):
        def run(*args, **kw):
            self.seen.update(grid=grid, args=args, **kw)
        return run


# (causal, window, expected (window_left, window_right) with big = max_seqlen_q + max_seqlen_k)
LAUNCH_WINDOWS = [(True, (-1, -1), ("big", 0)), (False, (-1, -1), ("big", "big")), (True, (30, -1), (30, 0)),
                  (False, (5, 7), (5, 7)), (False, (-1, 3), ("big", 3))]


@pytest.mark.skipif(not fwd_hopper.AVAILABLE, reason=f"Gluon: {fwd_hopper.UNAVAILABLE_REASON}")
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("causal,window,bounds", LAUNCH_WINDOWS,
                         ids=[f"{'causal' if c else 'full'}-win{w[0]}_{w[1]}" for c, w, _ in LAUNCH_WINDOWS])
def test_varlen_launch_arguments(monkeypatch, D, causal, window, bounds):
    """launch.hopper_fwd on packed sequences (the kernel stubbed): grid (total_q // BLOCK_M + n, H)
    over the packed tiles with VARLEN_NB (a power of two > n, at least 128) and n_bh = n · H, or
    with HOPPER_FWD_VARLEN_PACKED off (ceil(max_seqlen_q / BLOCK_M), n · H); VARLEN with WINDOW
    (never CAUSAL: each sequence's offset is the kernel's), the window's bounds (unbounded:
    max_seqlen_q + max_seqlen_k), cu_seqlens, ALiBi slopes (H,) expanded to (n, H), lse's rows
    total_q, out's pointer and the row stride of its 2-D view."""
    stub = _KernelStub()
    monkeypatch.setattr(fwd_hopper, "attn_fwd_hopper_kernel", stub)
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_PERSISTENT", ())  # (the grid launches; the persistent one below)
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_PERSISTENT_CAUSAL", ())
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_SHORT", {})
    lens_q, lens_k = (100, 1, 0, 257), (64, 3, 9, 200)
    n, H, Hkv = len(lens_q), 4, 2
    a = _varlen_fwd_args(lens_q, lens_k=lens_k, H=H, Hkv=Hkv, D=D)
    q, k, v = a["q"], a["k"], a["v"]
    cu_q, cu_k = (torch.tensor([0] + torch.tensor(ls).cumsum(0).tolist(), dtype=torch.int32) for ls in (lens_q, lens_k))
    out = launch._empty_like_layout(1, H, sum(lens_q), D, True, q)
    lse = torch.empty(1, H, sum(lens_q))
    slopes = torch.rand(H)
    launch.hopper_fwd(q, k, v, out, lse, 0.125, causal, window_left=window[0], window_right=window[1],
                      alibi_slopes=slopes, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=257, max_seqlen_k=200)
    s = stub.seen
    block_m = launch.hopper_fwd_config(D, True)[0]  # (ALiBi: BLOCK_M 128 at every head dim)
    assert s["grid"] == (sum(lens_q) // block_m + n, H) and s["VARLEN_NB"] == 128 and s["n_bh"] == n * H
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_PACKED", False)
    stub.seen.clear()
    launch.hopper_fwd(q, k, v, out, lse, 0.125, causal, window_left=window[0], window_right=window[1],
                      alibi_slopes=slopes, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=257, max_seqlen_k=200)
    assert s["grid"] == (-(-257 // block_m), n * H) and "VARLEN_NB" not in s
    assert s["VARLEN"] is True and s["WINDOW"] is True and s["CAUSAL"] is False
    big = 257 + 200
    assert tuple(s["args"][14:16]) == tuple(big if b == "big" else b for b in bounds), s["args"][14:16]
    assert s["args"][9] == sum(lens_q) and s["args"][11:13] == (H, H // Hkv)  # SQ = total_q (lse's rows)
    alibi = s["args"][5]
    assert tuple(alibi.shape) == (n, H) and tuple(s["args"][16:18]) == (0, 1)
    assert s["args"][30] is out and s["args"][31] == H * D  # out (total, H, D): row stride H * D
    assert s["args"][32] is cu_q and s["args"][33] is cu_k
    # a plain launch: no VARLEN keyword (the plain build's code), stand-ins for the sequences
    # (the grid launch's, not the persistent one's)
    monkeypatch.setattr(launch, "HOPPER_FWD_PERSISTENT", False)
    stub.seen.clear()
    dense = _varlen_fwd_args((256,), H=H, Hkv=Hkv, D=D)
    launch.hopper_fwd(dense["q"], dense["k"], dense["v"], torch.empty_like(dense["q"]), torch.empty(1, H, 256), 0.125,
                      causal)
    assert "VARLEN" not in stub.seen and stub.seen["grid"][1] == H


@pytest.mark.skipif(not fwd_hopper.AVAILABLE, reason=f"Gluon: {fwd_hopper.UNAVAILABLE_REASON}")
def test_varlen_persistent_launch_arguments(monkeypatch):
    """launch.HOPPER_FWD_VARLEN_PERSISTENT (the kernel stubbed, 132 SMs): at the head dims it names,
    with two consumer warpgroups (BLOCK_M 128) and the packed-tile grid, the launch is persistent:
    grid (min(tiles, SMs),) where tiles = (total_q // 128 + n) · H, PERSISTENT, VARLEN_NB and n_bh as
    the grid launch's, and Sched a fresh zeroed int32 counter (the dynamic scheduler's) each call;
    D = 64 (BLOCK_M 192 in its config) when the switch names it runs so with two warpgroups; the other
    grid (HOPPER_FWD_VARLEN_PACKED off) and head dims it does not name keep the grid launch without
    them. VARLEN_QSETS = 2 only where HOPPER_FWD_VARLEN_QSETS says."""
    stub = _KernelStub()
    monkeypatch.setattr(fwd_hopper, "attn_fwd_hopper_kernel", stub)
    monkeypatch.setattr(launch, "_sm_count", lambda index: 132)

    def run(D, lens, H=4, causal=True, **kw):
        a = _varlen_fwd_args(lens, H=H, Hkv=2, D=D)
        cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
        total = sum(lens)
        stub.seen.clear()
        launch.hopper_fwd(a["q"], a["k"], a["v"], launch._empty_like_layout(1, H, total, D, True, a["q"]),
                          torch.empty(1, H, total), 0.125, causal, cu_seqlens_q=cu, cu_seqlens_k=cu,
                          max_seqlen_q=max(lens), max_seqlen_k=max(lens), **kw)
        return dict(stub.seen)

    assert launch.HOPPER_FWD_VARLEN_PERSISTENT == (128,) and launch.HOPPER_FWD_VARLEN_SORT == 0  # (defaults)
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_PERSISTENT", (128, 256))
    lens = (100, 1, 0, 257)
    for D, H in ((128, 4), (256, 4), (128, 64)):
        tiles = (sum(lens) // 128 + len(lens)) * H
        s = run(D, lens, H=H)
        assert s["grid"] == (min(tiles, 132),) and s["PERSISTENT"] is True and s["VARLEN"] is True, (D, H, s["grid"])
        assert s["VARLEN_NB"] == 128 and s["n_bh"] == len(lens) * H and "CHAIN" not in s
        assert s["Sched"].dtype == torch.int32 and s["Sched"].shape == (1,) and int(s["Sched"]) == 0
        again = run(D, lens, H=H)["Sched"]
        assert again is not s["Sched"] and int(again) == 0  # (a counter of its own a call)
    s = run(128, lens, alibi_slopes=torch.rand(4), softcap=3.0, sink=torch.zeros(4))
    assert s["PERSISTENT"] and "ROT_N" not in s and "ALIBI_MMA" not in s
    # the tiles longest first (HOPPER_FWD_VARLEN_SORT) up to HOPPER_FWD_VARLEN_SORT_MAX sequences
    for sort in (0, 1, 2):
        monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_SORT", sort)
        assert run(128, lens).get("VARLEN_SORT", 0) == sort
        cap = launch.HOPPER_FWD_VARLEN_SORT_MAX
        assert "VARLEN_SORT" not in run(128, (3,) * (cap + 1))
        assert run(128, (3,) * cap).get("VARLEN_SORT", 0) == sort
    # two sets of Q buffers (HOPPER_FWD_VARLEN_QSETS): at the head dims it names up to HOPPER_FWD_CHAIN_MAX_DIM
    assert launch.HOPPER_FWD_VARLEN_QSETS == (64, 128)  # (default)
    assert run(128, lens)["VARLEN_QSETS"] == 2
    # with them the tile's sequence published and the output store waited for late (HOPPER_FWD_VARLEN_PUB, _DEFER)
    assert launch.HOPPER_FWD_VARLEN_PUB == launch.HOPPER_FWD_VARLEN_DEFER == (64, 128)  # (defaults)
    s = run(128, lens)
    assert s["VARLEN_PUB"] is True and s["VARLEN_DEFER"] is True
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_DEFER", ())
    s = run(128, lens)
    assert s["VARLEN_PUB"] is True and "VARLEN_DEFER" not in s
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_PUB", ())
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_DEFER", (128, 256))
    s = run(128, lens)
    assert "VARLEN_PUB" not in s and s["VARLEN_DEFER"] is True
    assert "VARLEN_DEFER" not in run(256, lens)  # (one Q set there: HOPPER_FWD_CHAIN_MAX_DIM)
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_QSETS", ())
    s = run(128, lens)
    assert "VARLEN_QSETS" not in s and "VARLEN_PUB" not in s and "VARLEN_DEFER" not in s  # (two Q sets only)
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_QSETS", (128, 256))
    assert run(128, lens)["VARLEN_QSETS"] == 2 and "CHAIN" not in run(128, lens)
    assert run(128, lens, alibi_slopes=torch.rand(4), softcap=3.0)["VARLEN_QSETS"] == 2
    assert "VARLEN_QSETS" not in run(256, lens)
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_QSETS", ())
    # D = 64 (three warpgroups in its config): named, its packed sequences take two and run persistent; by
    # default (HOPPER_FWD_VARLEN_PERSISTENT_CAUSAL) its causal calls, with two sets of Q buffers, and below
    # HOPPER_FWD_VARLEN_SHORT's rows (max_seqlen_q) every call, with its K / V stages
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_QSETS", (64, 128))
    fewest, st = launch.HOPPER_FWD_VARLEN_SHORT[64]
    stages = launch.HOPPER_FWD_CONFIGS[64][1]
    assert st != stages
    long = (100, fewest)
    for causal in (True, False):
        s = run(64, lens, causal=causal)
        assert s["BLOCK_M"] == 128 and s["PERSISTENT"] is True and s["STAGES"] == st and s["VARLEN_QSETS"] == 2
        assert s["grid"] == (min((sum(lens) // 128 + 4) * 4, 132),)
    s = run(64, long)
    assert s["BLOCK_M"] == 128 and s["PERSISTENT"] is True and s["STAGES"] == stages and s["VARLEN_QSETS"] == 2
    s = run(64, long, causal=False)
    assert s["BLOCK_M"] == 192 and "PERSISTENT" not in s and "VARLEN_QSETS" not in s and s["STAGES"] == stages
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_SHORT", {})
    assert run(64, lens)["STAGES"] == stages
    s = run(64, lens, causal=False)
    assert s["BLOCK_M"] == 192 and "PERSISTENT" not in s and "VARLEN_QSETS" not in s
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_PERSISTENT_CAUSAL", ())
    assert run(64, lens)["BLOCK_M"] == 192 and "PERSISTENT" not in run(64, lens)
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_QSETS", ())
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_PERSISTENT", (64, 128))
    for causal in (True, False):
        s = run(64, lens, causal=causal)
        assert s["BLOCK_M"] == 128 and s["PERSISTENT"] is True and "VARLEN_QSETS" not in s
    for D, switch, packed in ((64, (128, 256), True), (128, (256,), True), (128, (128,), False)):
        monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_PERSISTENT", switch)
        monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_PACKED", packed)
        s = run(D, lens)
        assert "PERSISTENT" not in s and "Sched" not in s and len(s["grid"]) == 2, (D, switch, packed)
        assert "VARLEN_SORT" not in s


@pytest.mark.parametrize("block_m", [128, 192])
@pytest.mark.parametrize("seed", range(4))
def test_varlen_packed_tile_map(block_m, seed):
    """The packed grid's tile map as kernels/fwd_hopper._ws_tile_varlen computes it (CTA x of a head
    takes sequence b = #{j in 1 .. n-1: cu[j] // BLOCK_M + j <= x}, rows from (x - cu[b] // BLOCK_M
    - b) · BLOCK_M; grid total // BLOCK_M + n): every query tile of every sequence exactly once, no
    negative row, at most one CTA a sequence past its rows. Random lengths with zeros, ones and
    multiples of the tile."""
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 40, (1,), generator=g))
    lens = torch.randint(0, 3 * block_m, (n,), generator=g)
    lens[torch.rand(n, generator=g) < 0.2] = 0
    lens[torch.rand(n, generator=g) < 0.2] = block_m * torch.randint(1, 3, (1,), generator=g)
    cu = [0] + torch.cumsum(lens, 0).tolist()
    seen, empty = [], [0] * n
    for x in range(cu[-1] // block_m + n):
        b = sum(1 for j in range(1, n) if cu[j] // block_m + j <= x)
        m0 = (x - (cu[b] // block_m + b)) * block_m
        assert m0 >= 0, (x, b, m0)
        if m0 < lens[b]:
            seen.append((b, m0))
        else:
            empty[b] += 1
    want = [(b, m) for b in range(n) for m in range(0, int(lens[b]), block_m)]
    assert sorted(seen) == want, "a tile missing or visited twice"
    assert max(empty) <= 1, empty


# ------------------------------------------------------------------------------ dispatch
def _emulated_varlen_fwd(calls):
    """launch.hopper_fwd on a CPU for packed sequences: the float64 varlen reference (each sequence
    alone, bottom-right) into out and lse, the keywords recorded."""
    def run(q, k, v, out, lse, scale, causal, window_left=-1, window_right=-1, softcap=0.0, alibi_slopes=None,
            sink=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0, **rest):
        assert not rest, rest  # (no causal_offset: each sequence's is the kernel's)
        calls.append(dict(causal=causal, window=(window_left, window_right), maxlens=(max_seqlen_q, max_seqlen_k),
                          cu=(cu_seqlens_q.tolist(), cu_seqlens_k.tolist()), out_stride=out.stride(),
                          lse_shape=tuple(lse.shape)))
        o, l = varlen_attention_reference(*(x[0].transpose(0, 1).double() for x in (q, k, v)), cu_seqlens_q,
                                          cu_seqlens_k, scale=scale, causal=causal,
                                          window_size=(window_left, window_right), softcap=softcap,
                                          alibi_slopes=None if alibi_slopes is None else alibi_slopes.double(),
                                          sink=None if sink is None else sink.double())
        out.copy_(o.transpose(0, 1)[None])
        lse.copy_(l[None])
    return run


# (lens_q, lens_k, causal, window, features): lengths 0 and 1, Sq > Sk (rows without keys) and Sq < Sk
VARLEN_DISPATCH = [((5, 0, 40, 12), (9, 3, 33, 0), True, (-1, -1), False),
                   ((30, 18), (45, 18), False, (6, 3), True)]


@pytest.mark.parametrize("case", VARLEN_DISPATCH, ids=[
    f"q{'_'.join(map(str, a))}-k{'_'.join(map(str, b))}-{'causal' if c else 'full'}-win{w[0]}_{w[1]}"
    + ("-features" if f else "") for a, b, c, w, f in VARLEN_DISPATCH])
def test_varlen_forward_takes_the_hopper_path(machine_ok, monkeypatch, case):
    """flash_attn_varlen_func reaches the Hopper launcher (the emulation above) once, with cu_seqlens,
    the max lengths, the window and no causal offset; its out (total, H, D) and lse (H, total)
    come back per sequence as the float64 definition gives them."""
    from flashkernels import _backend

    if _backend.triton_unavailable_reason(torch.device("cpu")) is not None:
        pytest.skip("no Triton interpreter here")
    lq, lk, causal, window, with_feats = case
    calls = []
    monkeypatch.setattr(launch, "hopper_fwd", _emulated_varlen_fwd(calls))
    monkeypatch.setattr(launch, "HOPPER_FWD_MIN_SEQLEN", {})
    Hq, Hkv, D, n = 4, 2, 64, len(lq)
    q, k, v, cu_q, cu_k = _packed(lq, lk, Hq, Hkv, D, f16)
    kw = dict(softcap=2.0, alibi_slopes=torch.rand(n, Hq) * 0.1, learnable_sink=randn(Hq) * 2) if with_feats else {}
    out, lse, _ = flashkernels.flash_attn_varlen_func(q.detach(), k.detach(), v.detach(), cu_q, cu_k, max(lq),
                                                      max(lk), causal=causal, window_size=window,
                                                      return_attn_probs=True, backend="triton", **kw)
    assert len(calls) == 1, calls
    assert calls[0] == dict(causal=causal, window=window, maxlens=(max(lq), max(lk)),
                            cu=(cu_q.tolist(), cu_k.tolist()), out_stride=calls[0]["out_stride"],
                            lse_shape=(1, Hq, sum(lq)))
    assert out.shape == (sum(lq), Hq, D) and out.is_contiguous() and lse.shape == (Hq, sum(lq))
    for b in range(n):
        qs, ks = slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1]))
        alibi = kw["alibi_slopes"][b:b + 1] if with_feats else None
        ref, ref_lse = f64_flash_attention(q[qs][None].detach(), k[ks][None].detach(), v[ks][None].detach(),
                                           causal=causal, window_size=window, softcap=kw.get("softcap", 0.0),
                                           alibi=alibi, sink=kw.get("learnable_sink"))
        torch.testing.assert_close(out[qs][None].double(), ref, atol=2e-3, rtol=2e-3, msg=lambda m: f"seq{b}: {m}")
        torch.testing.assert_close(lse[:, qs][None].double(), ref_lse, atol=1e-5, rtol=1e-5,
                                   msg=lambda m: f"seq{b} lse: {m}")


def test_traced_varlen_forward_records_the_sequences(machine_ok, monkeypatch):
    """make_fx of attn_fwd_impl on packed sequences: one attn_fwd_hopper call carrying cu_seqlens_q /
    cu_seqlens_k and the max lengths, out / lse of the packed shapes from its fake, no launch; run,
    the op hands the sequences on to hopper_fwd (misaligned: to the Triton kernel)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    def no_launch(*args, **kwargs):
        raise AssertionError("a kernel was launched while tracing")

    monkeypatch.setattr(launch, "hopper_fwd", no_launch)
    monkeypatch.setattr(launch, "cached_launch", no_launch)
    a = _varlen_fwd_args(lens_q=(100, 1, 0, 257), lens_k=(64, 3, 9, 200))
    q, k, v = a["q"], a["k"], a["v"]
    cu_k = torch.tensor([0, 64, 67, 76, 276], dtype=torch.int32)
    for mode in ("fake", "symbolic"):
        def f(q, k, v, cq, ck):
            return launch.attn_fwd_impl(q, k, v, None, a["scale"], True, 0, True, False, cu_seqlens_q=cq,
                                        cu_seqlens_k=ck, max_seqlen_q=257, max_seqlen_k=200)
        gm = make_fx(f, tracing_mode=mode)(q, k, v, a["cu_seqlens_q"], cu_k)
        out, lse = recorded_call_with_sequences(gm, "flashkernels.attn_fwd_hopper.default", (257, 200))
        assert tuple(out.shape) == tuple(q.shape) and tuple(lse.shape) == (1, 4, q.shape[2])
    seen = []
    monkeypatch.setattr(launch, "hopper_fwd", lambda *x, **kw: seen.append(("gluon", kw)))
    monkeypatch.setattr(launch, "_attn_fwd_triton", lambda *x, **kw: seen.append(("triton", x[-1])) or (x[9], x[10]))
    launch.attn_fwd_hopper_impl(q, k, v, a["scale"], True, True, cu_seqlens_q=a["cu_seqlens_q"], cu_seqlens_k=cu_k,
                                max_seqlen_q=257, max_seqlen_k=200)
    assert seen[0][0] == "gluon" and seen[0][1]["cu_seqlens_k"] is cu_k and seen[0][1]["max_seqlen_q"] == 257
    assert seen[0][1].keys() == {"cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k"}
    flat = torch.randn(q.numel() + 1).to(bf16)
    mis = flat[1:].view(q.shape[2], 4, 128)[None].transpose(1, 2)
    launch.attn_fwd_hopper_impl(mis, k, v, a["scale"], True, True, cu_seqlens_q=a["cu_seqlens_q"], cu_seqlens_k=cu_k,
                                max_seqlen_q=257, max_seqlen_k=200)
    f = seen[1][1]
    assert seen[1][0] == "triton" and f.varlen and (f.batch, f.seqlen_q, f.seqlen_k) == (4, 257, 200)


# ================================================================================== GPU
# (lens_q, lens_k): lengths off the 64 / 128 / 192 grid, 1 and 0, a last sequence that ends at the
# tensor's end (TMA zero fill past it), Sq > Sk (rows that see no key) and Sq < Sk, sequences
# without keys (the last one's key block starts at the tensor's end: all TMA zeros), many short ones
VARLEN_LENS = {
    "odd": ((1, 130, 257, 64, 511, 0, 77), None),
    "sq-ne-sk": ((100, 0, 300, 1, 129, 40), (260, 17, 128, 1, 0, 0)),
    "many": (tuple(torch.randint(1, 700, (16,), generator=torch.Generator().manual_seed(1)).tolist()), None),
}


def _dead_rows(Sq, Sk, causal, window):
    """Bool (Sq,): the rows of a sequence that see no key (bottom-right, as flash-attn)."""
    rows = torch.arange(Sq)
    left, right = window
    right = 0 if causal else right
    lo = (rows + Sk - Sq - left).clamp(min=0) if left >= 0 else torch.zeros_like(rows)
    hi = (rows + Sk - Sq + right).clamp(max=Sk - 1) if right >= 0 else torch.full_like(rows, Sk - 1)
    return lo > hi


def _check_gluon_varlen_fwd(monkeypatch, D, dtype, causal, Hq, Hkv, lens_q, lens_k=None, window=(-1, -1),
                            feats=None):
    """flash_attn_varlen_func's out and lse through the Gluon forward (one launch more), per sequence
    within the policy of float64 (pt: the reference in the input dtype), as close to the Triton
    varlen forward's (HOPPER_FWD_VARLEN off) and to each sequence run alone (flash_attn_func) as the
    policy's bound allows (lse: the same infinities, the finite ones to 1e-5 relative); rows that
    see no key out 0 and lse -inf (the sink's logit with a sink)."""
    lens_k = lens_q if lens_k is None else lens_k
    n = len(lens_q)
    q, k, v, cu_q, cu_k = (x.detach() for x in _packed(lens_q, lens_k, Hq, Hkv, D, dtype, "cuda"))
    kw = _feature_kwargs(n, Hq, **(feats or {}))
    kw.update(causal=causal, window_size=window)

    def run():
        return flashkernels.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k),
                                                   return_attn_probs=True, backend="triton", **kw)[:2]

    before = launch.hopper_fwd_launches
    out, lse = run()
    assert launch.hopper_fwd_launches == before + 1, "the Gluon forward did not run"
    with monkeypatch.context() as m:
        m.setattr(launch, "HOPPER_FWD_VARLEN", False)
        out_t, lse_t = run()
    assert launch.hopper_fwd_launches == before + 1, "HOPPER_FWD_VARLEN=False ran the Gluon forward"
    mag = data_magnitude(q, k, v)
    alibi, sink = kw.get("alibi_slopes"), kw.get("learnable_sink")
    for b in range(n):
        qs, ks = slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1]))
        if qs.stop == qs.start:
            continue
        a_b = None if alibi is None else (alibi if alibi.dim() == 1 else alibi[b:b + 1])
        parts = [x[s][None] for x, s in ((q, qs), (k, ks), (v, ks))]
        o_b, l_b = out[qs][None], lse[:, qs][None]
        ref, ref_lse = f64_flash_attention(*(x.cpu() for x in parts), causal=causal, window_size=window,
                                           softcap=kw["softcap"], alibi=None if a_b is None else a_b.cpu(),
                                           sink=None if sink is None else sink.cpu())
        pt, pt_lse = attention_reference(*(x.transpose(1, 2) for x in parts), causal=causal,
                                         causal_align="bottom_right", window_size=window, softcap=kw["softcap"],
                                         alibi_slopes=a_b, sink=sink, compute_dtype=dtype)
        _, bound = assert_close_policy(o_b, ref, pt.transpose(1, 2), name=f"seq{b} out", data_magnitude=mag)
        assert_close_policy(l_b, ref_lse, pt_lse, name=f"seq{b} lse", data_magnitude=mag)
        others = [(out_t[qs][None], lse_t[:, qs][None], "Triton varlen")]
        if ks.stop > ks.start:
            alone, alone_lse, _ = flashkernels.flash_attn_func(*parts, causal=causal, window_size=window,
                                                               softcap=kw["softcap"], alibi_slopes=a_b,
                                                               learnable_sink=sink, return_attn_probs=True,
                                                               backend="triton")
            others.append((alone, alone_lse, "alone"))
        for o_x, l_x, what in others:
            diff = (o_b.double() - o_x.double()).abs().max().item()
            assert diff <= bound, f"seq{b}: out, Gluon vs {what} {diff:.3e} > policy bound {bound:.3e}"
            fin = torch.isfinite(l_x)
            assert torch.equal(fin, torch.isfinite(l_b)) and torch.equal(l_b[~fin], l_x[~fin]), \
                f"seq{b}: lse infinities differ from {what}'s"
            if fin.any():
                lse_diff = (l_b[fin] - l_x[fin]).abs().max().item()
                assert lse_diff <= 1e-5 * max(1.0, l_x[fin].abs().max().item()), \
                    f"seq{b}: lse, Gluon vs {what} {lse_diff:.3e}"
        dead = _dead_rows(qs.stop - qs.start, ks.stop - ks.start, causal, window).cuda()
        if dead.any():
            assert (o_b[:, dead] == 0).all(), f"seq{b}: rows that see no key are not 0"
            expect = torch.full((Hq,), -math.inf, device="cuda") if sink is None else sink
            assert torch.equal(l_b[0][:, dead], expect.view(Hq, 1).expand(Hq, int(dead.sum()))), f"seq{b}: lse"


@pytest.mark.gpu
@pytest.mark.parametrize("lens", ["odd", "sq-ne-sk"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [bf16, f16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("D", sorted(launch.HOPPER_FWD_CONFIGS), ids=lambda d: f"d{d}")
def test_hopper_fwd_varlen_cuda(monkeypatch, D, dtype, causal, lens):
    """Packed sequences through the Gluon forward (VARLEN) at each of its head dims (D = 64: three
    consumer warpgroups, BLOCK_M 192), causal bottom-right per sequence or not; "odd" MHA (8 / 8),
    "sq-ne-sk" GQA (8 / 2)."""
    _needs_hopper()
    Hq, Hkv = (8, 8) if lens == "odd" else (8, 2)
    _check_gluon_varlen_fwd(monkeypatch, D, dtype, causal, Hq, Hkv, *VARLEN_LENS[lens])


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_hopper_fwd_varlen_many_cuda(monkeypatch, causal):
    """Sixteen random lengths (1 .. 700), GQA 16 / 4, D = 128, bf16."""
    _needs_hopper()
    _check_gluon_varlen_fwd(monkeypatch, 128, bf16, causal, 16, 4, *VARLEN_LENS["many"])


# (lens, D): zero and one-row sequences, lengths on and off the 128 / 192 tile grid; 300 sequences
# (past launch.HOPPER_FWD_VARLEN_PACKED_MAX - 1, where the launcher keeps the other grid: the test
# raises the cap so that 512 offsets are searched)
PACKED_CASES = {
    "odd-d128": (VARLEN_LENS["odd"][0], 128),
    "odd-d64": (VARLEN_LENS["odd"][0] + (192, 383, 384), 64),
    "aligned": ((128, 256, 0, 128, 1, 127, 129), 128),
    "many300": (tuple(torch.randint(0, 90, (300,), generator=torch.Generator().manual_seed(2)).tolist()), 128),
}


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("case", sorted(PACKED_CASES))
def test_hopper_fwd_varlen_packed_grid_cuda(monkeypatch, case, causal):
    """The VARLEN build's grid over the packed query tiles (launch.HOPPER_FWD_VARLEN_PACKED: a CTA
    finds its sequence from the offsets) computes bitwise what the grid over the longest sequence's
    tiles does: every tile once, the empty ones writing nothing."""
    _needs_hopper()
    lens, D = PACKED_CASES[case]
    q, k, v, cu, _ = _packed(lens, lens, 8, 2, D, bf16, "cuda")
    outs = {}
    assert (len(lens) < launch.HOPPER_FWD_VARLEN_PACKED_MAX) == (case != "many300")
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_PACKED_MAX", 1024)
    for packed in (False, True):
        monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_PACKED", packed)
        n = launch.hopper_fwd_launches
        with torch.no_grad():
            out, lse, _ = flashkernels.flash_attn_varlen_func(q, k, v, cu, cu, max(lens), max(lens), causal=causal,
                                                              return_attn_probs=True)
        assert launch.hopper_fwd_launches == n + 1, "the Gluon forward did not run"
        outs[packed] = (out, lse)
    assert torch.equal(outs[True][0], outs[False][0]), "out differs between the grids"
    assert torch.equal(outs[True][1], outs[False][1]), "lse differs between the grids"
    # (the packed grid, left on, against the float64 reference per sequence, for one case)
    if case == "odd-d128":
        _check_gluon_varlen_fwd(monkeypatch, D, bf16, causal, 8, 2, lens)


# (lens, Hq, Hkv, D, causal, window, features): the packed-tile cases, `bench varlen`'s lengths at H 16
# (2304 tiles: 17 a CTA), one tile (fewer than the SMs), features and a window
_BENCH_LENS = (1183, 1723, 374, 460, 808, 1456, 1171, 1977, 1102, 1453, 890, 995, 242, 533, 781, 1236)
PERSISTENT_CASES = {
    "odd-d128": (VARLEN_LENS["odd"][0], 8, 2, 128, None, (-1, -1), {}),
    "odd-d256": (VARLEN_LENS["odd"][0], 8, 2, 256, None, (-1, -1), {}),
    "odd-d64": (VARLEN_LENS["odd"][0], 8, 2, 64, None, (-1, -1), {}),
    "aligned": ((128, 256, 0, 128, 1, 127, 129), 8, 8, 128, None, (-1, -1), {}),
    "bench-h16": (_BENCH_LENS, 16, 16, 128, None, (-1, -1), {}),
    "one-tile": ((0, 37, 0), 1, 1, 128, None, (-1, -1), {}),
    "many300": (tuple(torch.randint(0, 90, (300,), generator=torch.Generator().manual_seed(2)).tolist()), 8, 2,
                128, None, (-1, -1), {}),
    "features": (VARLEN_LENS["sq-ne-sk"][0], 8, 2, 128, VARLEN_LENS["sq-ne-sk"][1], (40, 9),
                 dict(softcap=2.0, alibi="bh", sink="mixed")),
}


# The launches test_hopper_fwd_varlen_persistent_cuda compares, the grid first: (HOPPER_FWD_VARLEN_PERSISTENT,
# HOPPER_FWD_VARLEN_SORT, HOPPER_FWD_VARLEN_QSETS, HOPPER_FWD_VARLEN_PUB and _DEFER) at the case's head dim or not,
# and the K / V stages HOPPER_FWD_VARLEN_SHORT gives at any length (0: off; D = 64 only: D = 128's two Q sets and
# three stages would pass the shared memory)
_PERSISTENT_VARIANTS = {"grid": (False, 0, False, False, 0), "persistent": (True, 0, False, False, 0),
                        "qsets": (True, 0, True, False, 0), "pub-defer": (True, 0, True, True, 0),
                        "pub-defer-st3": (True, 0, True, True, 3),
                        "sorted-outer": (True, 2, True, False, 0), "sorted": (True, 1, True, False, 0)}


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("case", sorted(PERSISTENT_CASES))
def test_hopper_fwd_varlen_persistent_cuda(monkeypatch, case, causal):
    """launch.HOPPER_FWD_VARLEN_PERSISTENT (the packed tiles by a dynamic scheduler, one CTA an SM),
    with its tiles in the packed grid's order, with two sets of Q buffers (HOPPER_FWD_VARLEN_QSETS; at
    D <= 128, else as "persistent"), with them and each tile's sequence published, its output store waited
    for late (HOPPER_FWD_VARLEN_PUB, HOPPER_FWD_VARLEN_DEFER), and longest first (HOPPER_FWD_VARLEN_SORT 1 and 2: the
    heads innermost or head by head; "many300"
    passes HOPPER_FWD_VARLEN_SORT_MAX, so runs unsorted), at D = 64 with a three-stage K / V ring too
    (HOPPER_FWD_VARLEN_SHORT; its grid launch has three warpgroups), computes bitwise what the packed-tile grid
    launch does, in two calls in a row (each call's counter starts at zero) and in two replays of
    one CUDA graph; every tile once, the empty ones writing nothing."""
    _needs_hopper()
    lens, Hq, Hkv, D, lens_k, window, feats = PERSISTENT_CASES[case]
    lens_k = lens if lens_k is None else lens_k
    q, k, v, cu_q, cu_k = (x.detach() for x in _packed(lens, lens_k, Hq, Hkv, D, bf16, "cuda"))
    kw = _feature_kwargs(len(lens), Hq, **feats)
    kw.update(causal=causal, window_size=window)
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_PACKED_MAX", 1024)

    def run(check_inputs=True):
        with torch.no_grad():
            return flashkernels.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens), max(lens_k),
                                                       return_attn_probs=True, check_inputs=check_inputs, **kw)[:2]

    outs = {}
    for variant, (persistent, sort, qsets, late, stages) in _PERSISTENT_VARIANTS.items():
        if stages and D != 64:
            continue
        monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_SHORT", {D: (1 << 30, stages)} if stages else {})
        monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_PERSISTENT", (D,) if persistent else ())
        monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_PERSISTENT_CAUSAL", ())
        monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_SORT", sort)
        monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_QSETS", (D,) if qsets else ())
        monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_PUB", (D,) if late else ())
        monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_DEFER", (D,) if late else ())
        n = launch.hopper_fwd_launches
        outs[variant] = [run(), run()]
        assert launch.hopper_fwd_launches == n + 2, "the Gluon forward did not run"
    if len(lens) < 100:  # (two replays of one graph: the counter zeroed in each; sorted, as left set)
        torch.cuda.synchronize()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(stream):
            run(False)
            with torch.cuda.graph(graph, stream=stream):
                captured = run(False)  # (no offsets read: no sync inside the capture)
        torch.cuda.current_stream().wait_stream(stream)
        for _ in range(2):
            captured[0].fill_(float("nan"))
            graph.replay()
            outs["sorted"].append(tuple(x.clone() for x in captured))
    grid_out, grid_lse = outs["grid"][0]
    assert torch.equal(outs["grid"][1][0], grid_out)
    for variant in list(outs)[1:]:
        for i, (out, lse) in enumerate(outs[variant]):
            assert torch.equal(out, grid_out), f"{variant}: out differs from the grid launch's (call {i})"
            assert torch.equal(lse, grid_lse), f"{variant}: lse differs from the grid launch's (call {i})"
    if case == "odd-d128":  # (against the float64 reference per sequence, persistent on)
        _check_gluon_varlen_fwd(monkeypatch, D, bf16, causal, Hq, Hkv, lens)


@pytest.mark.gpu
@pytest.mark.parametrize("case", VARLEN_FEATURES, ids=VARLEN_FEATURE_IDS)  # (the backward's cases)
@pytest.mark.parametrize("D,dtype", [(128, bf16), (64, f16)], ids=["d128-bf16", "d64-fp16"])
def test_hopper_fwd_varlen_features_cuda(monkeypatch, D, dtype, case):
    """Packed sequences with a sliding window (per sequence, bottom-right), softcap, ALiBi (H,) and
    (n, H), a sink, GQA 8 / 2."""
    _needs_hopper()
    lens, causal, window, feats = case
    _check_gluon_varlen_fwd(monkeypatch, D, dtype, causal, 8, 2, *VARLEN_LENS[lens], window=window, feats=feats)


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_hopper_fwd_varlen_gradients_cuda(causal):
    """Gradients (q, k, v, and a gradient at lse) through flash_attn_varlen_func on the Gluon
    forward's out and lse (the backward: Triton, or Gluon where its own switch is on), per sequence
    within the policy of float64."""
    _needs_hopper()
    lens_q, lens_k = VARLEN_LENS["sq-ne-sk"]
    Hq, Hkv, D = 8, 2, 128
    q, k, v, cu_q, cu_k = _packed(lens_q, lens_k, Hq, Hkv, D, bf16, "cuda")
    n = launch.hopper_fwd_launches
    out, lse, _ = flashkernels.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal,
                                                      return_attn_probs=True, backend="triton")
    assert launch.hopper_fwd_launches == n + 1, "the Gluon forward did not run"
    dout = randn(*out.shape, dtype=bf16, device="cuda")
    dlse = randn(*lse.shape, device="cuda") * torch.isfinite(lse)  # (rows without keys: no gradient)
    grads = torch.autograd.grad((out, lse), (q, k, v), (dout, dlse))
    mag = data_magnitude(q, k, v, dout, dlse)
    for b in range(len(lens_q)):
        qs, ks = slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1]))
        if qs.stop == qs.start:  # no query: its keys get no gradient (and the references no graph)
            assert not grads[1][ks].any() and not grads[2][ks].any(), f"seq{b}: dk / dv not 0"
            continue
        if ks.stop == ks.start:  # no key: out 0 and lse -inf for every row, so no gradient at q
            assert not grads[0][qs].any(), f"seq{b}: dq not 0"
            continue
        parts = [x[s].detach()[None] for x, s in ((q, qs), (k, ks), (v, ks))]
        ref_in = [x.cpu().double().requires_grad_() for x in parts]
        ref_out, ref_lse = f64_flash_attention(*ref_in, causal=causal)
        ref_lse = ref_lse.where(torch.isfinite(ref_lse), 0.0)
        ref_g = torch.autograd.grad((ref_out, ref_lse), ref_in, (dout[qs][None].cpu().double(),
                                                                 dlse[:, qs][None].cpu().double()), allow_unused=True)
        pt_in = [x.transpose(1, 2).clone().requires_grad_() for x in parts]
        pt_out, pt_lse = attention_reference(*pt_in, causal=causal, causal_align="bottom_right", compute_dtype=bf16)
        pt_g = torch.autograd.grad((pt_out, pt_lse), pt_in, (dout[qs][None].transpose(1, 2), dlse[:, qs][None]),
                                   allow_unused=True)
        for i, (name, s) in enumerate(zip(("dq", "dk", "dv"), (qs, ks, ks))):
            if s.stop == s.start:
                continue
            r = ref_g[i] if ref_g[i] is not None else torch.zeros_like(ref_in[i])
            p = pt_g[i].transpose(1, 2) if pt_g[i] is not None else torch.zeros_like(parts[i])
            assert_close_policy(grads[i][s][None], r, p, factor=3.0, name=f"seq{b} {name}", data_magnitude=mag,
                                dtype=bf16)


@pytest.mark.gpu
@pytest.mark.no_poison
def test_opcheck_attn_fwd_hopper_varlen_cuda():
    """opcheck of attn_fwd_hopper with packed sequences (the schema and fake with cu_seqlens), and of
    attn_fwd on them (eager: the Gluon kernel; traced: the op)."""
    _needs_hopper()
    lens_q, lens_k = (100, 1, 0, 257), (64, 3, 9, 200)
    q, k, v, cu_q, cu_k = _packed(lens_q, lens_k, 4, 2, 128, bf16, "cuda")
    q, k, v = (x.detach()[None].transpose(1, 2) for x in (q, k, v))
    scale = 1 / math.sqrt(128)
    seqs = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=257, max_seqlen_k=200)
    n = launch.hopper_fwd_launches
    torch.library.opcheck(torch.ops.flashkernels.attn_fwd_hopper.default, (q, k, v, scale, True, True), seqs)
    assert launch.hopper_fwd_launches > n
    n = launch.hopper_fwd_launches
    torch.library.opcheck(torch.ops.flashkernels.attn_fwd.default, (q, k, v, None, scale, True, 0, True, False), seqs)
    assert launch.hopper_fwd_launches > n
