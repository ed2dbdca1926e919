"""Packed sequences (flash_attn_varlen_func) through the Gluon Hopper backward (kernels/bwd_hopper.py's
VARLEN) and its dispatch (launch.py).

CPU: which varlen calls take it (hopper_bwd_reason: D = 64 / 128, bshd, every feature; not D =
256, the forward stays Triton), that the backward reaches the Hopper launcher with cu_seqlens and
the max lengths (stubbed by test_hopper_bwd's float64 emulation, run per sequence with its
bottom-right offset) and matches float64, that deterministic=True keeps Triton, and that a traced
backward records the opaque op with the sequence arguments.
GPU (marked ``gpu``): gradients through the kernel per sequence against float64 (policy of
TESTING.md), against the Triton varlen backward and against each sequence run alone; lengths not
multiples of 64 / 128, length 1 and 0, Sq != Sk, causal or not, GQA, windows and the other features.
"""
import math

import pytest
import torch

import flashkernels
from flashkernels.ops.attention import launch
from helpers import assert_close_policy, data_magnitude, f64_flash_attention, randn
from test_hopper_bwd import _emulated_hopper_bwd, machine_ok, switches_unset  # noqa: F401  (fixtures)
from test_hopper_fwd import _feature_kwargs, _needs_hopper

bf16, f16 = torch.bfloat16, torch.float16


def test_varlen_switch(machine_ok, monkeypatch):
    """launch.HOPPER_BWD_VARLEN (on by default) sends varlen backwards to the Triton kernels when False."""
    assert launch.hopper_bwd_reason(**_varlen_bwd_args()) is None
    monkeypatch.setattr(launch, "HOPPER_BWD_VARLEN", False)
    assert "packed sequences (varlen)" in launch.hopper_bwd_reason(**_varlen_bwd_args())


def _packed(lens_q, lens_k, Hq, Hkv, D, dtype, device="cpu"):
    """(q, k, v, cu_q, cu_k): packed (total, H, D) leaves and int32 offsets."""
    cu_q, cu_k = (torch.tensor([0] + torch.tensor(ls).cumsum(0).tolist(), dtype=torch.int32, device=device)
                  for ls in (lens_q, lens_k))
    q = randn(sum(lens_q), Hq, D, dtype=dtype).to(device).requires_grad_()
    k, v = (randn(sum(lens_k), Hkv, D, dtype=dtype).to(device).requires_grad_() for _ in range(2))
    return q, k, v, cu_q, cu_k


def _varlen_bwd_args(lens_q=(100, 1, 0, 257), lens_k=None, H=4, Hkv=2, D=128, dtype=bf16, **over):
    """hopper_bwd_reason's arguments as flash_attn_varlen_func's backward passes them: (1, H, total, D)
    views of packed (total, H, D) tensors, bshd, cu_seqlens_q."""
    q, k, v, cu_q, _ = _packed(lens_q, lens_q if lens_k is None else lens_k, H, Hkv, D, dtype)
    q, k, v = (x.detach()[None].transpose(1, 2) for x in (q, k, v))
    a = dict(do=torch.randn_like(q), q=q, k=k, v=v, mask=None, scale=1 / math.sqrt(D), causal=True, causal_offset=0,
             bshd=True, window_left=-1, window_right=-1, softcap=0.0, alibi_slopes=None, sink=None, cu_seqlens_q=cu_q)
    a.update(over)
    return a


# --------------------------------------------------------------------------------- eligibility
def test_bwd_reason_varlen(machine_ok):
    for D in (64, 128):
        assert launch.hopper_bwd_reason(**_varlen_bwd_args(D=D)) is None
    assert launch.hopper_bwd_reason(**_varlen_bwd_args(causal=False, lens_k=(3, 300, 0, 64))) is None
    assert launch.hopper_bwd_reason(**_varlen_bwd_args(window_left=30, softcap=5.0, alibi_slopes=torch.rand(4, 4),
                                                       sink=torch.randn(4))) is None
    assert "head dim 256" in launch.hopper_bwd_reason(**_varlen_bwd_args(D=256))
    assert "bshd=False" in launch.hopper_bwd_reason(**_varlen_bwd_args(bshd=False))
    assert "head dim" in launch.hopper_bwd_reason(**_varlen_bwd_args(D=96))
    # the forward's Gluon kernel takes them too (its VARLEN build, on by default since session 9)
    a = _varlen_bwd_args()
    a.pop("do")
    a["max_seqlen_q"] = 257
    assert launch.hopper_fwd_reason(**a) is None
    # one CTA row per (sequence, kv head) along grid y
    many = _varlen_bwd_args(lens_q=(1,) * 40000, Hkv=2)
    assert "grid y" in launch.hopper_bwd_reason(**many)


# ------------------------------------------------------------------------------------ dispatch
def _emulated_varlen_bwd(calls):
    """launch.attn_bwd_hopper_impl on a CPU for packed sequences: test_hopper_bwd's float64
    emulation of the kernel run on each sequence with its own bottom-right offset (seqlen_k -
    seqlen_q) and slopes; the dense keywords must arrive as a plain call's."""
    def run(do, q, k, v, lse, delta, scale, causal, bshd, softcap=0.0, alibi_slopes=None, causal_offset=0,
            window_left=-1, window_right=-1, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0):
        calls.append(dict(bshd=bshd, causal=causal, causal_offset=causal_offset, window=(window_left, window_right),
                          maxlens=(max_seqlen_q, max_seqlen_k), cu=(cu_seqlens_q.tolist(), cu_seqlens_k.tolist())))
        dense = _emulated_hopper_bwd([])
        grads = [torch.zeros(x.shape, dtype=x.dtype).transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v)]
        for b in range(cu_seqlens_q.numel() - 1):
            qs = slice(int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1]))
            ks = slice(int(cu_seqlens_k[b]), int(cu_seqlens_k[b + 1]))
            slopes = None if alibi_slopes is None else (alibi_slopes if alibi_slopes.dim() == 1 else
                                                        alibi_slopes[b:b + 1])
            g = dense(do[:, :, qs], q[:, :, qs], k[:, :, ks], v[:, :, ks], lse[:, :, qs], delta[:, :, qs], scale,
                      causal, bshd, softcap, slopes, (ks.stop - ks.start) - (qs.stop - qs.start), window_left,
                      window_right)
            for out, part, s in zip(grads, g, (qs, ks, ks)):
                out[:, :, s] += part
        return tuple(grads)
    return run


# (lens_q, lens_k, causal, window, features): lengths 0 and 1, Sq > Sk (rows without keys) and Sq < Sk
VARLEN_DISPATCH = [((5, 0, 40, 12), (9, 3, 33, 0), True, (-1, -1), False),
                   ((3, 50, 1), (20, 50, 1), False, (-1, -1), False),
                   ((30, 18), (45, 18), False, (6, 3), True),
                   ((17, 40), (17, 40), True, (-1, -1), True)]


@pytest.mark.parametrize("deterministic", [False, True], ids=["default", "deterministic"])
@pytest.mark.parametrize("case", VARLEN_DISPATCH, ids=[
    f"q{'_'.join(map(str, a))}-k{'_'.join(map(str, b))}-{'causal' if c else 'full'}-win{w[0]}_{w[1]}"
    + ("-features" if f else "") for a, b, c, w, f in VARLEN_DISPATCH])
def test_varlen_backward_takes_the_hopper_path(machine_ok, monkeypatch, case, deterministic):
    """flash_attn_varlen_func (the Triton forward, through the interpreter) sends its backward to the
    Hopper launcher (the emulation above) with cu_seqlens and the max lengths, the offset 0 (each
    sequence's is the kernel's) and the window; deterministic=True keeps the Triton kernels. dq,
    dk, dv (and dsink) match autograd of the float64 definition on each sequence."""
    from flashkernels import _backend

    if _backend.triton_unavailable_reason(torch.device("cpu")) is not None:
        pytest.skip("no Triton interpreter here")
    lq, lk, causal, window, with_feats = case
    calls = []
    monkeypatch.setattr(launch, "attn_bwd_hopper_impl", _emulated_varlen_bwd(calls))
    # (D = 64 below its row floor: the Triton forward, for the calls that would take the Gluon one too)
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_PERSISTENT_CAUSAL", ())
    monkeypatch.setattr(launch, "HOPPER_FWD_VARLEN_SHORT", {})
    Hq, Hkv, D, n = 4, 2, 64, len(lq)
    q, k, v, cu_q, cu_k = _packed(lq, lk, Hq, Hkv, D, f16)
    kw = dict(softcap=2.0, alibi_slopes=torch.rand(n, Hq) * 0.1) if with_feats else {}
    sink = (randn(Hq) * 2).requires_grad_() if with_feats else None
    leaves = (q, k, v) + ((sink,) if with_feats else ())
    out = flashkernels.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lq), max(lk), causal=causal,
                                              window_size=window, learnable_sink=sink, deterministic=deterministic,
                                              backend="triton", **kw)
    dout = randn(*out.shape, dtype=f16)
    grads = torch.autograd.grad(out, leaves, dout)
    if deterministic:
        assert calls == []
    else:
        assert calls == [dict(bshd=True, causal=causal, causal_offset=0, window=window, maxlens=(max(lq), max(lk)),
                              cu=(cu_q.tolist(), cu_k.tolist()))], calls
    dsink = 0.0
    for b in range(n):
        qs, ks = slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1]))
        ref_in = [x[s].detach()[None].double().requires_grad_() for x, s in ((q, qs), (k, ks), (v, ks))]
        ref_sink = sink.detach().double().requires_grad_() if with_feats else None
        alibi = kw["alibi_slopes"][b:b + 1] if with_feats else None
        ref, _ = f64_flash_attention(*ref_in, causal=causal, window_size=window, softcap=kw.get("softcap", 0.0),
                                     alibi=alibi, sink=ref_sink)
        wrt = ref_in + ([ref_sink] if with_feats else [])
        ref_g = torch.autograd.grad(ref, wrt, dout[qs][None].double(), allow_unused=True)
        for name, g, r, s in zip(("dq", "dk", "dv"), grads, ref_g, (qs, ks, ks)):
            assert not g.isnan().any(), name
            r = torch.zeros_like(g[s][None], dtype=torch.float64) if r is None else r
            torch.testing.assert_close(g[s][None].double(), r, atol=2e-2, rtol=2e-2, msg=lambda m: f"seq{b} {name}: {m}")
        if with_feats and ref_g[3] is not None:
            dsink = dsink + ref_g[3]
    if with_feats:
        torch.testing.assert_close(grads[3].double(), dsink, atol=2e-2, rtol=2e-2)


def recorded_call_with_sequences(gm, target: str, max_lens):
    """The fake outputs of the one call of the op ``target`` in ``gm``'s graph, once checked that it
    carries cu_seqlens_q / cu_seqlens_k (graph inputs) and the max lengths ``max_lens``."""
    nodes = [n for n in gm.graph.nodes if str(n.target) == target]
    assert len(nodes) == 1
    bound = nodes[0].target._schema.arguments
    kw = dict(zip((x.name for x in bound), nodes[0].args), **nodes[0].kwargs)
    assert kw["cu_seqlens_q"].op == "placeholder" and kw["cu_seqlens_k"].op == "placeholder", kw
    assert (kw["max_seqlen_q"], kw["max_seqlen_k"]) == max_lens, kw
    return nodes[0].meta["val"]


def test_traced_varlen_backward_records_the_sequences(machine_ok, monkeypatch):
    """make_fx of attn_bwd_impl on packed sequences: one attn_bwd_hopper call carrying cu_seqlens_q /
    cu_seqlens_k and the max lengths, dQ / dK / dV of the packed shapes from its fake, no launch."""
    from torch.fx.experimental.proxy_tensor import make_fx

    def no_launch(*args, **kwargs):
        raise AssertionError("the Gluon backward was launched while tracing")

    monkeypatch.setattr(launch, "attn_bwd_hopper_impl", no_launch)
    monkeypatch.setattr(launch, "attn_bwd_delta", lambda out, do, lse, dlse: torch.empty_like(lse))
    a = _varlen_bwd_args(lens_q=(100, 1, 0, 257), lens_k=(64, 3, 9, 200))
    q, k = a["q"], a["k"]
    cu_k = torch.tensor([0, 64, 67, 76, 276], dtype=torch.int32)
    lse = torch.randn(1, 4, q.shape[2])
    for mode in ("fake", "symbolic"):
        def f(do, q, k, v, o, l, cq, ck):
            return launch.attn_bwd_impl(do, q, k, v, o, l, None, None, a["scale"], True, 0, True, False,
                                        cu_seqlens_q=cq, cu_seqlens_k=ck, max_seqlen_q=257, max_seqlen_k=200)
        gm = make_fx(f, tracing_mode=mode)(a["do"], q, k, a["v"], torch.randn_like(a["do"]), lse, a["cu_seqlens_q"],
                                           cu_k)
        dq, dk, dv = recorded_call_with_sequences(gm, "flashkernels.attn_bwd_hopper.default", (257, 200))
        assert tuple(dq.shape) == tuple(q.shape) and tuple(dk.shape) == tuple(dv.shape) == tuple(k.shape)


# ================================================================================== GPU
# (lens_q, lens_k): lengths off the 64 / 128 grid, 1 and 0, a last sequence that ends at the
# tensor's end (TMA zero fill past it), Sq > Sk (rows that see no key) and Sq < Sk, many short ones
VARLEN_LENS = {
    "odd": ((1, 130, 257, 64, 511, 0, 77), None),
    "sq-ne-sk": ((100, 0, 300, 1, 129, 40), (260, 17, 128, 1, 0, 7)),
    "many": (tuple(torch.randint(1, 700, (16,), generator=torch.Generator().manual_seed(1)).tolist()), None),
}


def _check_gluon_varlen_bwd(D, dtype, causal, Hq, Hkv, lens_q, lens_k=None, window=(-1, -1), feats=None):
    """flash_attn_varlen_func's gradients (q, k, v and the sink) through the Gluon backward (one launch
    more), per sequence within the policy of float64 (pt: the reference in the input dtype), and as
    close to the Triton varlen backward's (deterministic=True) and to each sequence run alone
    (flash_attn_func) as the policy's bound allows."""
    from flashkernels.ops.attention.reference import attention_reference

    lens_k = lens_q if lens_k is None else lens_k
    n = len(lens_q)
    q, k, v, cu_q, cu_k = _packed(lens_q, lens_k, Hq, Hkv, D, dtype, "cuda")
    kw = _feature_kwargs(n, Hq, **(feats or {}))
    sink = kw.pop("learnable_sink", None)
    leaves = (q, k, v)
    if sink is not None:
        sink = sink.clone().requires_grad_()
        leaves += (sink,)
    for x in leaves:
        x.grad = None
    dout = randn(sum(lens_q), Hq, D, dtype=dtype, device="cuda")

    def run(deterministic):
        out = flashkernels.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal,
                                                  window_size=window, learnable_sink=sink,
                                                  deterministic=deterministic, backend="triton", **kw)
        return torch.autograd.grad(out, leaves, dout)

    before = launch.hopper_bwd_launches
    gluon = run(False)
    assert launch.hopper_bwd_launches == before + 1, "the Gluon backward did not run"
    triton_ = run(True)
    assert launch.hopper_bwd_launches == before + 1, "deterministic=True ran the Gluon backward"
    for name, g in zip(("dq", "dk", "dv", "dsink"), gluon):
        assert torch.isfinite(g).all(), f"{name}: not finite"
    mag = data_magnitude(q, k, v, dout)
    alibi = kw.get("alibi_slopes")
    dsink_ref = dsink_pt = 0.0
    for b in range(n):
        qs, ks = slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1]))
        a_b = None if alibi is None else (alibi if alibi.dim() == 1 else alibi[b:b + 1])
        parts = [x[s].detach()[None] for x, s in ((q, qs), (k, ks), (v, ks))]
        d = dout[qs][None]
        ref_in = [x.cpu().double().requires_grad_() for x in parts]
        ref_sink = None if sink is None else sink.detach().cpu().double().requires_grad_()
        ref_out, _ = f64_flash_attention(*ref_in, causal=causal, window_size=window, softcap=kw["softcap"],
                                         alibi=None if a_b is None else a_b.cpu(), sink=ref_sink)
        r_wrt = ref_in + ([ref_sink] if sink is not None else [])
        ref_g = torch.autograd.grad(ref_out, r_wrt, d.cpu().double(), allow_unused=True)
        pt_in = [x.transpose(1, 2).clone().requires_grad_() for x in parts]
        pt_sink = None if sink is None else sink.detach().clone().requires_grad_()
        pt_out, _ = attention_reference(*pt_in, causal=causal, causal_align="bottom_right", window_size=window,
                                        softcap=kw["softcap"], alibi_slopes=a_b, sink=pt_sink, compute_dtype=dtype)
        p_wrt = pt_in + ([pt_sink] if sink is not None else [])
        pt_g = torch.autograd.grad(pt_out.transpose(1, 2), p_wrt, d, allow_unused=True)
        alone = None
        if lens_q[b] and lens_k[b]:
            alone_in = [x.clone().requires_grad_() for x in parts]
            alone_sink = None if sink is None else sink.detach().clone().requires_grad_()
            o = flashkernels.flash_attn_func(*alone_in, causal=causal, window_size=window, softcap=kw["softcap"],
                                             alibi_slopes=a_b, learnable_sink=alone_sink, backend="triton")
            alone = torch.autograd.grad(o, alone_in, d)
        for i, (name, s) in enumerate(zip(("dq", "dk", "dv"), (qs, ks, ks))):
            if s.stop == s.start:
                continue
            r = ref_g[i] if ref_g[i] is not None else torch.zeros_like(ref_in[i])
            p = pt_g[i].transpose(1, 2) if pt_g[i] is not None else torch.zeros_like(parts[i])
            g = gluon[i][s][None]
            _, bound = assert_close_policy(g, r, p, factor=3.0, name=f"seq{b} {name}", data_magnitude=mag,
                                           dtype=dtype)
            for other, what in ((triton_[i][s][None], "Triton varlen"), (None if alone is None else alone[i], "alone")):
                if other is not None:
                    diff = (g.double() - other.double()).abs().max().item()
                    assert diff <= bound, f"seq{b} {name}: Gluon vs {what} {diff:.3e} > policy bound {bound:.3e}"
        if sink is not None:
            dsink_ref = dsink_ref + (ref_g[3] if ref_g[3] is not None else 0.0)
            dsink_pt = dsink_pt + (pt_g[3] if pt_g[3] is not None else 0.0)
    if sink is not None:
        assert_close_policy(gluon[3], torch.as_tensor(dsink_ref), torch.as_tensor(dsink_pt), factor=3.0,
                            name="dsink", data_magnitude=mag, dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("lens", list(VARLEN_LENS))
@pytest.mark.parametrize("heads", ["mha", "gqa"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [bf16, f16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("D", [64, 128], ids=lambda d: f"d{d}")
def test_hopper_bwd_varlen_cuda(D, dtype, causal, heads, lens):
    """Packed sequences through the Gluon backward (VARLEN), causal bottom-right per sequence or
    not, MHA (8 / 8) and GQA (8 / 2)."""
    _needs_hopper()
    Hq, Hkv = {"mha": (8, 8), "gqa": (8, 2)}[heads]
    _check_gluon_varlen_bwd(D, dtype, causal, Hq, Hkv, *VARLEN_LENS[lens])


VARLEN_FEATURES = [("sq-ne-sk", True, (-1, -1), dict(softcap=2.0, alibi="bh", sink="mixed")),
                   ("sq-ne-sk", False, (40, 9), {}),
                   ("odd", False, (100, 0), dict(alibi="h")),
                   ("odd", True, (70, -1), dict(softcap=2.0, sink="large"))]
VARLEN_FEATURE_IDS = [f"{ls}-{'causal' if c else 'full'}-win{w[0]}_{w[1]}" + "".join(f"-{k}_{x}" for k, x in f.items())
                      for ls, c, w, f in VARLEN_FEATURES]


@pytest.mark.gpu
@pytest.mark.parametrize("case", VARLEN_FEATURES, ids=VARLEN_FEATURE_IDS)
@pytest.mark.parametrize("D,dtype", [(128, bf16), (64, f16)], ids=["d128-bf16", "d64-fp16"])
def test_hopper_bwd_varlen_features_cuda(D, dtype, case):
    """Packed sequences with a sliding window (per sequence, bottom-right), softcap, ALiBi (H,) and
    (n, H), a sink, GQA 8 / 2."""
    _needs_hopper()
    lens, causal, window, feats = case
    _check_gluon_varlen_bwd(D, dtype, causal, 8, 2, *VARLEN_LENS[lens], window=window, feats=feats)


@pytest.mark.gpu
@pytest.mark.no_poison
def test_opcheck_attn_bwd_hopper_varlen_cuda():
    """opcheck of attn_bwd_hopper with packed sequences (the schema and fake with cu_seqlens)."""
    _needs_hopper()
    lens_q, lens_k = (100, 1, 0, 257), (64, 3, 9, 200)
    q, k, v, cu_q, cu_k = _packed(lens_q, lens_k, 4, 2, 128, bf16, "cuda")
    q, k, v = (x.detach()[None].transpose(1, 2) for x in (q, k, v))
    scale = 1 / math.sqrt(128)
    out, lse = launch.attn_fwd_impl(q, k, v, None, scale, True, 0, True, False, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                                    max_seqlen_q=257, max_seqlen_k=200)
    do = torch.randn_like(out)
    delta = launch.attn_bwd_delta(out, do, lse, None)
    n = launch.hopper_bwd_launches
    torch.library.opcheck(torch.ops.flashkernels.attn_bwd_hopper.default, (do, q, k, v, lse, delta, scale, True, True),
                          dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=257, max_seqlen_k=200))
    assert launch.hopper_bwd_launches > n
