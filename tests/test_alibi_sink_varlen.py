"""ALiBi (``alibi_slopes``), learnable sinks (``learnable_sink``) and packed sequences
(``flash_attn_varlen_func``), forward (out, lse) and backward (dq, dk, dv, dsink), on the Triton
kernels (the interpreter on a CPU, fp32 and fp16) and the reference backend, against a float64
formula written from the definitions (helpers.f64_flash_attention):

    s = q k^T * scale;  s = softcap * tanh(s / softcap) if softcap;  s -= slope * |i + Sk - Sq - j|
    s = -inf outside the causal / sliding window;  one more column s = sink[h] with value 0

and, for varlen, against flash_attn_func run on each sequence alone. Tolerances: helpers.py.
"""

import pytest
import torch

import flashkernels
from flashkernels.ops.attention.reference import attention_reference
from helpers import FP32_SEED_TARGET, assert_close_policy, data_magnitude, f64_flash_attention, randn

f16, f32 = torch.float16, torch.float32
BACKENDS = ["triton", "reference"]


def _slopes(B, H, per_batch):
    """ALiBi's geometric slopes (2^(-8/H), ...), per batch element scaled a little differently."""
    base = torch.tensor([2.0 ** (-8.0 * (h + 1) / H) for h in range(H)])
    return torch.stack([base * (1 + 0.25 * b) for b in range(B)]) if per_batch else base


# (dtype, B, Hq, Hkv, Sq, Sk, D, causal, window_size, softcap, alibi, sink)
CASES = [
    (f32, 2, 4, 2, 37, 53, 16, False, (-1, -1), 0.0, "h", None),       # ALiBi (H,), GQA
    (f16, 1, 4, 4, 45, 45, 32, True, (-1, -1), 0.0, "bh", None),       # ALiBi (B, H), causal
    (f32, 1, 2, 1, 60, 41, 16, True, (-1, -1), 0.0, None, "mixed"),    # sink, dead rows (Sq > Sk)
    (f16, 2, 4, 2, 33, 70, 16, False, (-1, -1), 0.0, None, "mixed"),   # sink, GQA
    (f32, 1, 4, 2, 50, 50, 16, True, (9, -1), 3.0, "h", "mixed"),      # everything at once
    (f32, 1, 2, 2, 40, 40, 16, False, (0, 0), 0.0, None, "large"),     # one key a row, sink dominates
]


def _id(c):
    dt, B, Hq, Hkv, Sq, Sk, D, causal, ws, cap, alibi, sink = c
    parts = [{f16: "fp16", f32: "fp32"}[dt], f"b{B}h{Hq}x{Hkv}", f"q{Sq}-k{Sk}", f"d{D}"]
    if causal:
        parts.append("causal")
    if ws != (-1, -1):
        parts.append(f"win{ws[0]}_{ws[1]}")
    if cap:
        parts.append(f"cap{cap:g}")
    if alibi:
        parts.append(f"alibi_{alibi}")
    if sink:
        parts.append(f"sink_{sink}")
    return "-".join(parts)


def _sink(H, kind):
    if kind is None:
        return None
    s = randn(H) * 2 if kind == "mixed" else torch.full((H,), 6.0)
    return s.requires_grad_()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_alibi_and_sink(case, backend):
    dtype, B, Hq, Hkv, Sq, Sk, D, causal, ws, cap, alibi_kind, sink_kind = case
    q = randn(B, Sq, Hq, D, dtype=dtype, requires_grad=True)
    k = randn(B, Sk, Hkv, D, dtype=dtype, requires_grad=True)
    v = randn(B, Sk, Hkv, D, dtype=dtype, requires_grad=True)
    alibi = None if alibi_kind is None else _slopes(B, Hq, alibi_kind == "bh")
    sink = _sink(Hq, sink_kind)
    out, lse, _ = flashkernels.flash_attn_func(q, k, v, causal=causal, window_size=ws, softcap=cap,
                                               alibi_slopes=alibi, learnable_sink=sink,
                                               return_attn_probs=True, backend=backend)
    assert out.shape == q.shape and out.dtype == dtype and lse.shape == (B, Hq, Sq)

    ref_in = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref_sink = None if sink is None else sink.detach().double().requires_grad_()
    ref_out, ref_lse = f64_flash_attention(*ref_in, causal=causal, window_size=ws, softcap=cap, alibi=alibi,
                                     sink=ref_sink)
    pt_in = [x.detach().transpose(1, 2).requires_grad_() for x in (q, k, v)]
    pt_sink = None if sink is None else sink.detach().clone().requires_grad_()
    pt_out, pt_lse = attention_reference(*pt_in, causal=causal, causal_align="bottom_right", window_size=ws,
                                         softcap=cap, alibi_slopes=alibi, sink=pt_sink, compute_dtype=dtype)
    pt_out = pt_out.transpose(1, 2)

    seed = FP32_SEED_TARGET if dtype == f32 else None
    mag = data_magnitude(q, k, v)
    assert_close_policy(out, ref_out, pt_out, name="out", seed_target=seed, data_magnitude=mag)
    lse_scale = max(1.0, ref_lse[torch.isfinite(ref_lse)].abs().max().item())
    assert_close_policy(lse, ref_lse, pt_lse, name="lse", seed_target=seed and seed * lse_scale,
                        data_magnitude=mag)

    dout = randn(*out.shape, dtype=dtype)
    dlse = randn(*lse.shape)  # lse is differentiable, also through the sink
    wrt = (q, k, v) + ((sink,) if sink is not None else ())
    ref_wrt = tuple(ref_in) + ((ref_sink,) if sink is not None else ())
    pt_wrt = tuple(pt_in) + ((pt_sink,) if sink is not None else ())
    keep = torch.isfinite(ref_lse)
    grads = torch.autograd.grad((out.float() * dout.float()).sum() + (lse * dlse)[keep].sum(), wrt)
    ref_grads = torch.autograd.grad((ref_out * dout.double()).sum() + (ref_lse * dlse.double())[keep].sum(),
                                    ref_wrt)
    pt_grads = torch.autograd.grad((pt_out.float() * dout.float()).sum() + (pt_lse * dlse)[keep].sum(), pt_wrt)
    gmag = max(mag, data_magnitude(dout, dlse))
    for name, g, g_ref, g_pt in zip(("dq", "dk", "dv", "dsink"), grads, ref_grads, pt_grads):
        if name != "dsink":
            g_pt = g_pt.transpose(1, 2)
        rel = max(1.0, g_ref.abs().max().item())
        assert_close_policy(g, g_ref, g_pt, factor=3.0, name=name, seed_target=seed and seed * rel,
                            data_magnitude=gmag, dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sink_row_that_sees_no_key(backend):
    """A row with no visible key puts all its mass on the sink: out 0, lse = sink, zero grads."""
    q, k, v = (randn(1, s, 2, 16, requires_grad=True) for s in (20, 5, 5))
    sink = torch.tensor([0.5, -1.0], requires_grad=True)
    out, lse, _ = flashkernels.flash_attn_func(q, k, v, causal=True, learnable_sink=sink,
                                               return_attn_probs=True, backend=backend)
    dead = slice(0, 15)  # bottom-right: rows 0..14 of 20 see none of the 5 keys
    assert (out[:, dead] == 0).all()
    torch.testing.assert_close(lse[0, :, dead], sink.detach()[:, None].expand(2, 15), rtol=0, atol=1e-6)
    dq, = torch.autograd.grad(out.sum(), (q,))
    assert (dq[:, dead] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_sink_with_no_keys_at_all(backend):
    q, k, v = randn(2, 7, 2, 16), randn(2, 0, 2, 16), randn(2, 0, 2, 16)
    sink = torch.tensor([0.25, 3.0])
    out, lse, _ = flashkernels.flash_attn_func(q, k, v, learnable_sink=sink, return_attn_probs=True,
                                               backend=backend)
    assert (out == 0).all()
    torch.testing.assert_close(lse, sink.view(1, 2, 1).expand(2, 2, 7), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_alibi_zero_slopes_is_plain(backend):
    q, k, v = (randn(1, 29, 2, 16) for _ in range(3))
    a = flashkernels.flash_attn_func(q, k, v, causal=True, backend=backend)
    b = flashkernels.flash_attn_func(q, k, v, causal=True, alibi_slopes=torch.zeros(2), backend=backend)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------- varlen
def _packed(lens_q, lens_k, Hq, Hkv, D, dtype):
    cu_q = torch.tensor([0] + torch.tensor(lens_q).cumsum(0).tolist(), dtype=torch.int32)
    cu_k = torch.tensor([0] + torch.tensor(lens_k).cumsum(0).tolist(), dtype=torch.int32)
    q = randn(sum(lens_q), Hq, D, dtype=dtype, requires_grad=True)
    k = randn(sum(lens_k), Hkv, D, dtype=dtype, requires_grad=True)
    v = randn(sum(lens_k), Hkv, D, dtype=dtype, requires_grad=True)
    return q, k, v, cu_q, cu_k


# (dtype, lens_q, lens_k, Hq, Hkv, D, causal, window_size, alibi, sink)
VARLEN_CASES = [
    (f32, (17, 40, 1, 33), (17, 40, 1, 33), 2, 2, 16, False, (-1, -1), None, None),
    (f16, (17, 40, 1, 33), (17, 40, 1, 33), 4, 2, 32, True, (-1, -1), None, None),
    (f32, (5, 0, 40, 12), (9, 3, 33, 0), 4, 1, 16, True, (-1, -1), None, None),   # empty, Sq > Sk
    (f32, (30, 18), (45, 18), 2, 2, 24, False, (6, 3), "bh", "mixed"),
    (f16, (3, 50, 21), (20, 50, 21), 4, 2, 16, True, (-1, -1), "h", "mixed"),
]


def _vid(c):
    dt, lq, lk, Hq, Hkv, D, causal, ws, alibi, sink = c
    parts = [{f16: "fp16", f32: "fp32"}[dt], "q" + "_".join(map(str, lq)), "k" + "_".join(map(str, lk)),
             f"h{Hq}x{Hkv}", f"d{D}"]
    parts += ["causal"] * causal + ([f"win{ws[0]}_{ws[1]}"] if ws != (-1, -1) else [])
    parts += ([f"alibi_{alibi}"] if alibi else []) + ([f"sink_{sink}"] if sink else [])
    return "-".join(parts)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", VARLEN_CASES, ids=[_vid(c) for c in VARLEN_CASES])
def test_varlen_matches_each_sequence_alone(case, backend):
    """flash_attn_varlen_func == flash_attn_func on each sequence (same backend, rounding of the
    kernels aside), and both against float64; gradients too."""
    dtype, lq, lk, Hq, Hkv, D, causal, ws, alibi_kind, sink_kind = case
    q, k, v, cu_q, cu_k = _packed(lq, lk, Hq, Hkv, D, dtype)
    n = len(lq)
    alibi = None if alibi_kind is None else _slopes(n, Hq, alibi_kind == "bh")
    sink = _sink(Hq, sink_kind)
    out, lse, _ = flashkernels.flash_attn_varlen_func(
        q, k, v, cu_q, cu_k, max(lq), max(lk), causal=causal, window_size=ws, alibi_slopes=alibi,
        learnable_sink=sink, return_attn_probs=True, backend=backend)
    assert out.shape == q.shape and out.dtype == dtype and lse.shape == (Hq, sum(lq))
    dout = randn(*out.shape, dtype=dtype)
    wrt = (q, k, v) + ((sink,) if sink is not None else ())
    grads = torch.autograd.grad(out, wrt, dout)

    seed = FP32_SEED_TARGET if dtype == f32 else None
    mag = data_magnitude(q, k, v, dout)
    dsink_ref = dsink_pt = 0.0
    for b in range(n):
        qs, ks = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        if lq[b] == 0:
            continue
        a_b = None if alibi is None else (alibi if alibi.dim() == 1 else alibi[b])
        parts = [x[s].detach()[None] for x, s in ((q, qs), (k, ks), (v, ks))]
        ref_in = [x.double().requires_grad_() for x in parts]
        ref_sink = None if sink is None else sink.detach().double().requires_grad_()
        ref_out, ref_lse = f64_flash_attention(*ref_in, causal=causal, window_size=ws, alibi=a_b, sink=ref_sink)
        pt_in = [x.transpose(1, 2).clone().requires_grad_() for x in parts]
        pt_sink = None if sink is None else sink.detach().clone().requires_grad_()
        pt_out, pt_lse = attention_reference(*pt_in, causal=causal, causal_align="bottom_right",
                                             window_size=ws, alibi_slopes=a_b, sink=pt_sink, compute_dtype=dtype)
        tag = f"seq{b}"
        assert_close_policy(out[qs][None], ref_out, pt_out.transpose(1, 2), name=f"{tag} out", seed_target=seed,
                            data_magnitude=mag)
        assert_close_policy(lse[:, qs][None], ref_lse, pt_lse, name=f"{tag} lse", data_magnitude=mag,
                            seed_target=seed and seed * max(1.0, data_magnitude(ref_lse)))
        d = dout[qs][None]
        r_wrt = tuple(ref_in) + ((ref_sink,) if sink is not None else ())
        p_wrt = tuple(pt_in) + ((pt_sink,) if sink is not None else ())
        rg = torch.autograd.grad(ref_out, r_wrt, d.double(), allow_unused=True)
        pg = torch.autograd.grad(pt_out.transpose(1, 2), p_wrt, d, allow_unused=True)
        for name, g, g_ref, g_pt, sl in zip(("dq", "dk", "dv"), grads, rg, pg, (qs, ks, ks)):
            assert_close_policy(g[sl][None], g_ref, g_pt.transpose(1, 2), factor=3.0, name=f"{tag} {name}",
                                data_magnitude=mag, seed_target=seed and seed * max(1.0, data_magnitude(g_ref)))
        if sink is not None:
            dsink_ref = dsink_ref + rg[3]
            dsink_pt = dsink_pt + pg[3]
    if sink is not None:
        assert_close_policy(grads[3], dsink_ref, dsink_pt, factor=3.0, name="dsink", data_magnitude=mag, dtype=dtype)
    if backend == "triton":  # and the dense kernels on each sequence alone agree to rounding
        for b in range(n):
            qs, ks = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
            a_b = None if alibi is None else (alibi if alibi.dim() == 1 else alibi[b:b + 1])
            alone = flashkernels.flash_attn_func(q[qs][None], k[ks][None], v[ks][None], causal=causal,
                                                 window_size=ws, alibi_slopes=a_b, learnable_sink=sink,
                                                 backend="triton")
            torch.testing.assert_close(out[qs][None], alone, rtol=0, atol=0)


def test_varlen_check_inputs_off_gives_the_same():
    q, k, v, cu_q, cu_k = _packed((9, 20), (15, 4), 2, 2, 16, f32)
    a = flashkernels.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 20, 15, causal=True, backend="triton")
    b = flashkernels.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 20, 15, causal=True, check_inputs=False,
                                            backend="triton")
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def _paged(k, v, cu_k, page, extra_blocks=3, seed=0):
    """Scatter packed k/v (total_k, H, D) into shuffled pages: (caches, block_table)."""
    lens = (cu_k[1:] - cu_k[:-1]).tolist()
    per_seq = [max(1, -(-n // page)) for n in lens]
    num_blocks = sum(per_seq) + extra_blocks
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(num_blocks, generator=g)
    kc = randn(num_blocks, page, *k.shape[1:], dtype=k.dtype)  # junk outside the sequences
    vc = randn(num_blocks, page, *v.shape[1:], dtype=v.dtype)
    table = torch.zeros(len(lens), max(per_seq), dtype=torch.int32)
    used = 0
    for b, n in enumerate(lens):
        for j in range(per_seq[b]):
            blk = int(perm[used])
            used += 1
            table[b, j] = blk
            lo, hi = j * page, min(n, (j + 1) * page)
            if hi > lo:
                kc[blk, :hi - lo] = k[cu_k[b] + lo:cu_k[b] + hi]
                vc[blk, :hi - lo] = v[cu_k[b] + lo:cu_k[b] + hi]
    return kc, vc, table


# (dtype, lens_q, lens_k, Hq, Hkv, D, causal, window_size, softcap, alibi, page)
PAGED_CASES = [
    (f32, (5, 17, 1), (40, 17, 33), 4, 2, 16, True, (-1, -1), 0.0, None, 16),
    (f16, (9, 30), (9, 61), 2, 2, 32, False, (7, 3), 0.0, "bh", 16),
    (f32, (3, 12, 20), (50, 0, 20), 4, 1, 16, True, (-1, -1), 5.0, "h", 32),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", PAGED_CASES, ids=lambda c: f"{c[0]}-q{c[1]}-k{c[2]}-causal{int(c[6])}-page{c[10]}"
                         .replace("torch.", "").replace(" ", ""))
def test_varlen_block_table_equals_unpaged(case, backend):
    """flash_attn_varlen_func with block_table (paged K/V) == the same call on packed K/V, and
    both against float64 per sequence."""
    dtype, lq, lk, Hq, Hkv, D, causal, ws, cap, alibi_kind, page = case
    q, k, v, cu_q, cu_k = _packed(lq, lk, Hq, Hkv, D, dtype)
    q, k, v = q.detach(), k.detach(), v.detach()
    alibi = None if alibi_kind is None else _slopes(len(lq), Hq, alibi_kind == "bh")
    kc, vc, table = _paged(k, v, cu_k, page)
    kw = dict(causal=causal, window_size=ws, softcap=cap, alibi_slopes=alibi, return_attn_probs=True)
    out, lse, _ = flashkernels.flash_attn_varlen_func(q, kc, vc, cu_q, cu_k, max(lq), max(lk), block_table=table,
                                                      backend=backend, **kw)
    flat, flat_lse, _ = flashkernels.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lq), max(lk), backend=backend,
                                                            **kw)
    assert out.shape == q.shape and lse.shape == (Hq, sum(lq))
    mag = data_magnitude(q, k, v)
    for b in range(len(lq)):
        qs, ks = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        if lq[b] == 0:
            continue
        a_b = None if alibi is None else (alibi if alibi.dim() == 1 else alibi[b])
        parts = [x[s][None] for x, s in ((q, qs), (k, ks), (v, ks))]
        ref_out, ref_lse = f64_flash_attention(*parts, causal=causal, window_size=ws, softcap=cap, alibi=a_b)
        pt_out, pt_lse = attention_reference(*(x.transpose(1, 2) for x in parts), causal=causal,
                                             causal_align="bottom_right", window_size=ws, softcap=cap,
                                             alibi_slopes=a_b, compute_dtype=dtype)
        assert_close_policy(out[qs][None], ref_out, pt_out.transpose(1, 2), name=f"seq{b} out", data_magnitude=mag)
        assert_close_policy(lse[:, qs][None], ref_lse, pt_lse, name=f"seq{b} lse", data_magnitude=mag)
    torch.testing.assert_close(out, flat, rtol=0, atol=2 * float(torch.finfo(dtype).eps) * max(1.0, mag))
    torch.testing.assert_close(lse, flat_lse, rtol=0, atol=1e-5 if dtype == f32 else 2e-3)


def test_varlen_block_table_refuses_grad_and_sink():
    q, k, v, cu_q, cu_k = _packed((9, 20), (15, 4), 2, 2, 16, f32)
    kc, vc, table = _paged(k.detach(), v.detach(), cu_k, 16)
    fv = flashkernels.flash_attn_varlen_func
    _err(NotImplementedError, r"block_table: the paged path is inference only", fv, q, kc, vc, cu_q, cu_k, 20, 15,
         block_table=table)
    _err(NotImplementedError, r"learnable_sink: not supported with block_table", fv, q.detach(), kc, vc, cu_q, cu_k,
         20, 15, block_table=table, learnable_sink=torch.zeros(2))
    _err(ValueError, r"k: expected a 4-d tensor", fv, q.detach(), k.detach(), v.detach(), cu_q, cu_k, 20, 15,
         block_table=table)


# -------------------------------------------------------------------------------------- bad input
def _err(exc, match, fn, *a, **kw):
    with pytest.raises(exc, match=match):
        fn(*a, **kw)


def test_alibi_and_sink_bad_input():
    q, k, v = (randn(2, 8, 4, 16) for _ in range(3))
    fa = flashkernels.flash_attn_func
    _err(ValueError, r"alibi_slopes: expected shape \(4,\) or \(2, 4\)", fa, q, k, v, alibi_slopes=torch.ones(3))
    _err(TypeError, r"alibi_slopes: expected dtype torch.float32", fa, q, k, v,
         alibi_slopes=torch.ones(4, dtype=torch.float64))
    _err(TypeError, r"alibi_slopes: expected a torch.Tensor", fa, q, k, v, alibi_slopes=[1.0] * 4)
    _err(NotImplementedError, r"alibi_slopes: gradients", fa, q, k, v, alibi_slopes=torch.ones(4, requires_grad=True))
    _err(ValueError, r"learnable_sink: expected shape \(4,\)", fa, q, k, v, learnable_sink=torch.ones(2, 4))
    _err(TypeError, r"learnable_sink: expected a float dtype", fa, q, k, v,
         learnable_sink=torch.ones(4, dtype=torch.int32))


def test_varlen_bad_input():
    q, k, v, cu_q, cu_k = _packed((9, 20), (15, 4), 2, 2, 16, f32)
    fv = flashkernels.flash_attn_varlen_func
    _err(ValueError, r"q: expected a 3-d tensor", fv, q[None], k, v, cu_q, cu_k, 20, 15)
    _err(TypeError, r"cu_seqlens_q: expected dtype torch.int32", fv, q, k, v, cu_q.long(), cu_k, 20, 15)
    _err(ValueError, r"cu_seqlens_k: expected offsets from 0 to 19", fv, q, k, v, cu_q,
         torch.tensor([0, 15, 18], dtype=torch.int32), 20, 15)
    _err(ValueError, r"cu_seqlens_q: expected non-decreasing", fv, q, k, v,
         torch.tensor([0, 20, 9, 29], dtype=torch.int32), torch.tensor([0, 15, 15, 19], dtype=torch.int32), 20, 15)
    _err(ValueError, r"cu_seqlens_q/cu_seqlens_k: expected the same number of sequences", fv, q, k, v,
         torch.tensor([0, 9, 20, 29], dtype=torch.int32), cu_k, 20, 15)
    _err(ValueError, r"max_seqlen_q: a sequence has 20 tokens", fv, q, k, v, cu_q, cu_k, 19, 15)
    _err(ValueError, r"max_seqlen_k: expected an int >= 0", fv, q, k, v, cu_q, cu_k, 20, -1)
    _err(ValueError, r"cu_seqlens_q: expected a 1-d tensor", fv, q, k, v, cu_q[None], cu_k, 20, 15)
    _err(ValueError, r"alibi_slopes: expected shape \(2,\) or \(2, 2\)", fv, q, k, v, cu_q, cu_k, 20, 15,
         alibi_slopes=torch.ones(3))


# -------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
def test_alibi_sink_gpu_bf16(causal):
    bf16 = torch.bfloat16
    B, Sq, Sk, Hq, Hkv, D = 2, 1000, 1100, 8, 2, 128
    q = randn(B, Sq, Hq, D, dtype=bf16, device="cuda", requires_grad=True)
    k = randn(B, Sk, Hkv, D, dtype=bf16, device="cuda", requires_grad=True)
    v = randn(B, Sk, Hkv, D, dtype=bf16, device="cuda", requires_grad=True)
    alibi = _slopes(B, Hq, True).cuda()
    sink = (randn(Hq) * 2).cuda().requires_grad_()
    out, lse, _ = flashkernels.flash_attn_func(q, k, v, causal=causal, alibi_slopes=alibi, learnable_sink=sink,
                                               return_attn_probs=True, backend="triton")
    ref_in = [x.detach().float().transpose(1, 2).requires_grad_() for x in (q, k, v)]
    ref_sink = sink.detach().clone().requires_grad_()
    ref_out, ref_lse = attention_reference(*ref_in, causal=causal, causal_align="bottom_right", alibi_slopes=alibi,
                                           sink=ref_sink)
    pt_in = [x.detach().transpose(1, 2).requires_grad_() for x in (q, k, v)]
    pt_sink = sink.detach().clone().requires_grad_()
    pt_out, pt_lse = attention_reference(*pt_in, causal=causal, causal_align="bottom_right", alibi_slopes=alibi,
                                         sink=pt_sink, compute_dtype=bf16)
    mag = data_magnitude(q, k, v)
    assert_close_policy(out, ref_out.transpose(1, 2), pt_out.transpose(1, 2), name="out", data_magnitude=mag)
    assert_close_policy(lse, ref_lse, pt_lse, name="lse", data_magnitude=mag)
    dout = torch.randn_like(out)
    g = torch.autograd.grad(out, (q, k, v, sink), dout)
    rg = torch.autograd.grad(ref_out.transpose(1, 2), ref_in + [ref_sink], dout.float())
    pg = torch.autograd.grad(pt_out.transpose(1, 2), pt_in + [pt_sink], dout)
    for name, a, r, p in zip(("dq", "dk", "dv", "dsink"), g, rg, pg):
        if name != "dsink":
            r, p = r.transpose(1, 2), p.transpose(1, 2)
        assert_close_policy(a, r, p, factor=3.0, name=name, data_magnitude=max(mag, data_magnitude(dout)),
                            dtype=bf16)


@pytest.mark.gpu
def test_varlen_gpu_bf16_matches_dense_per_sequence(monkeypatch):
    """Bit for bit the dense Triton kernels per sequence. Pinned so that both sides sum in the
    same order: on Hopper the dense calls of lengths that are multiples of 128 would take the
    Gluon kernels, and the dK/dV group split (fp32 partials, chosen from the program count) would
    differ between one short sequence and the packed batch."""
    from flashkernels.ops.attention import launch

    monkeypatch.setenv(launch.HOPPER_FWD_ENV, "0")
    monkeypatch.setenv(launch.HOPPER_BWD_ENV, "0")
    monkeypatch.setattr(launch, "DKDV_GROUP_SPLIT", 1)
    bf16 = torch.bfloat16
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(1, 1500, (12,), generator=g).tolist()
    q, k, v, cu_q, cu_k = _packed(lens, lens, 16, 4, 128, bf16)
    q, k, v = (x.detach().cuda().requires_grad_() for x in (q, k, v))
    cu_q, cu_k = cu_q.cuda(), cu_k.cuda()
    out = flashkernels.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens), max(lens), causal=True,
                                              backend="triton")
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    for b in range(len(lens)):
        s = slice(int(cu_q[b]), int(cu_q[b + 1]))
        parts = [x[s].detach()[None].requires_grad_() for x in (q, k, v)]
        alone = flashkernels.flash_attn_func(*parts, causal=True, backend="triton")
        ga = torch.autograd.grad(alone, parts, dout[s][None])
        torch.testing.assert_close(out[s][None], alone, rtol=0, atol=0)
        for x, y in zip(grads, ga):
            torch.testing.assert_close(x[s][None], y, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.no_poison
def test_opcheck_with_alibi_sink_varlen():
    from flashkernels.ops.attention import autograd  # noqa: F401  (registers attn_fwd's backward: opcheck needs it)

    q, k, v, cu_q, cu_k = _packed((100, 37, 260), (100, 37, 260), 4, 2, 64, torch.float16)
    q, k, v = (x.detach().cuda()[None].transpose(1, 2).requires_grad_() for x in (q, k, v))
    cu_q, cu_k = cu_q.cuda(), cu_k.cuda()
    alibi = _slopes(3, 4, True).cuda()
    sink = torch.randn(4, device="cuda", requires_grad=True)
    args = (q, k, v, None, 0.125, True, 0, True, False, -1, -1, 0.0, alibi, sink, cu_q, cu_k, 260, 260)
    torch.library.opcheck(torch.ops.flashkernels.attn_fwd.default, args)
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]  # attn_bwd has no backward
    out, lse = torch.ops.flashkernels.attn_fwd(*plain)
    do = torch.randn_like(out)
    torch.library.opcheck(torch.ops.flashkernels.attn_bwd.default, (do, *plain[:3], out, lse, None, None, *plain[4:]))


@pytest.mark.gpu
def test_varlen_block_table_gpu_bf16():
    bf16 = torch.bfloat16
    g = torch.Generator().manual_seed(1)
    lq = torch.randint(1, 300, (8,), generator=g).tolist()
    lk = [n + int(x) for n, x in zip(lq, torch.randint(0, 2000, (8,), generator=g))]
    q, k, v, cu_q, cu_k = _packed(lq, lk, 32, 8, 128, bf16)
    kc, vc, table = _paged(k.detach(), v.detach(), cu_k, 256)
    args = [x.detach().cuda() for x in (q, k, v, cu_q, cu_k)]
    with torch.no_grad():
        paged = flashkernels.flash_attn_varlen_func(args[0], kc.cuda(), vc.cuda(), args[3], args[4], max(lq), max(lk),
                                                    causal=True, block_table=table.cuda(), backend="triton")
        flat = flashkernels.flash_attn_varlen_func(*args, max(lq), max(lk), causal=True, backend="triton")
    ref, _ = flashkernels.flash_attn_varlen_func(*(x.float() if x.is_floating_point() else x for x in args), max(lq),
                                                 max(lk), causal=True, backend="reference", return_attn_probs=True)[:2]
    mag = data_magnitude(q, k, v)
    assert_close_policy(paged, ref.double(), flat, name="paged vs flat", data_magnitude=mag)
