"""flash_attn_with_kvcache: decode and chunked prefill over a contiguous or paged KV cache.

The Triton kernels (the interpreter on a CPU, fp32 and fp16) against the reference of
ops/kvcache/reference.py run in float64 (``ref``) and in the input dtype (``pt``), held to the
tolerance policy of helpers.py; the cache after the call (appended keys, rotary, everything
else untouched) against the float64 reference's cache by the same rule. The reference itself is
checked against a float64 formula written here from the definition. Then: paged == contiguous,
num_splits 1 == 3 == auto, empty rows, every bad input raising before the cache is touched, and
``check_inputs=False`` keeping every access inside the cache.

Shapes are small and odd; the interpreter's blocks are 16 x 16, so lengths like 37 and 50 cut
tiles, pages (16, 32) and splits every way.
"""
import math
import re
from dataclasses import dataclass, replace

import pytest
import torch

import flashkernels.ops.kvcache.launch as kv_launch
from flashkernels.ops.kvcache.api import flash_attn_with_kvcache
from flashkernels.ops.kvcache.reference import kvcache_reference
from helpers import FP32_SEED_TARGET, assert_close_policy, data_magnitude, randn

f16, f32 = torch.float16, torch.float32


# --------------------------------------------------------------------------------------------
# one case: inputs, the three runs, the checks
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    dtype: torch.dtype = f32
    B: int = 2
    Sq: int = 1
    Hq: int = 4
    Hkv: int = 2
    D: int = 16
    S_cache: int = 64          # positions a row (paged: max_blocks * page)
    seqlens: tuple = (37, 50)  # cache_seqlens before the append
    Sn: int = 0                # new tokens appended
    page: int = 0              # 0 = contiguous cache
    causal: bool = False
    window: tuple = (-1, -1)
    softcap: float = 0.0
    alibi: str = ""            # "", "h" (Hq,), "bh" (B, Hq)
    batch_idx: bool = False    # contiguous cache with 2 extra rows, shuffled
    leftpad: tuple = ()
    rotary: str = ""           # "", "interleaved", "neox"; rotary_dim = D (or D/2 with "half")
    rotary_half: bool = False
    num_splits: int = 1

    @property
    def id(self):
        p = [{f16: "fp16", f32: "fp32"}[self.dtype], f"b{self.B}", f"q{self.Sq}",
             f"h{self.Hq}x{self.Hkv}", f"d{self.D}", "L" + "_".join(map(str, self.seqlens))]
        if self.Sn:
            p.append(f"new{self.Sn}")
        p.append(f"paged{self.page}" if self.page else "contig")
        if self.causal:
            p.append("causal")
        if self.window != (-1, -1):
            p.append(f"win{self.window[0]}_{self.window[1]}")
        if self.softcap:
            p.append(f"cap{self.softcap:g}")
        if self.alibi:
            p.append(f"alibi-{self.alibi}")
        if self.batch_idx:
            p.append("batchidx")
        if self.leftpad:
            p.append("leftpad" + "_".join(map(str, self.leftpad)))
        if self.rotary:
            p.append(f"rope-{self.rotary}" + ("-half" if self.rotary_half else ""))
        if self.num_splits != 1:
            p.append(f"splits{self.num_splits}")
        return "-".join(p)


def rotary_tables(S, rd, dtype):
    inv = 1.0 / (10000 ** (torch.arange(0, rd, 2, dtype=torch.float64) / rd))
    ang = torch.arange(S, dtype=torch.float64)[:, None] * inv[None, :]
    return ang.cos().to(dtype), ang.sin().to(dtype)


def to_paged(cache, page, extra_pages=3):
    """(paged cache, block_table): the rows of a contiguous cache cut into pages stored in a
    random order among ``extra_pages`` unused (random) pages."""
    B, S, H, D = cache.shape
    nb = S // page
    num_blocks = B * nb + extra_pages
    perm = torch.randperm(num_blocks)[: B * nb].view(B, nb).to(torch.int32)
    paged = randn(num_blocks, page, H, D, dtype=cache.dtype)
    for b in range(B):
        for j in range(nb):
            paged[perm[b, j]] = cache[b, j * page:(j + 1) * page]
    return paged, perm


def make_inputs(c: Case):
    """Every argument of one call (tensors fresh and random), as a dict of keyword arguments."""
    kw = dict(dtype=c.dtype)
    rows = c.B + 2 if c.batch_idx else c.B
    q = randn(c.B, c.Sq, c.Hq, c.D, **kw)
    kc, vc = randn(rows, c.S_cache, c.Hkv, c.D, **kw), randn(rows, c.S_cache, c.Hkv, c.D, **kw)
    args = dict(q=q, k_cache=kc, v_cache=vc, cache_seqlens=torch.tensor(c.seqlens, dtype=torch.int32),
                causal=c.causal, window_size=c.window, softcap=c.softcap, num_splits=c.num_splits)
    if c.page:
        args["k_cache"], bt = to_paged(kc, c.page)
        vp = randn(*args["k_cache"].shape, **kw)  # v's pages under k's table
        for b in range(c.B):
            for j in range(c.S_cache // c.page):
                vp[bt[b, j]] = vc[b, j * c.page:(j + 1) * c.page]
        args["v_cache"], args["block_table"] = vp, bt
    if c.Sn:
        args["k"], args["v"] = randn(c.B, c.Sn, c.Hkv, c.D, **kw), randn(c.B, c.Sn, c.Hkv, c.D, **kw)
    if c.alibi:
        shape = (c.Hq,) if c.alibi == "h" else (c.B, c.Hq)
        args["alibi_slopes"] = torch.rand(shape, dtype=torch.float32) * 0.5
    if c.batch_idx:
        args["cache_batch_idx"] = torch.randperm(rows)[: c.B].to(torch.int32)
    if c.leftpad:
        args["cache_leftpad"] = torch.tensor(c.leftpad, dtype=torch.int32)
    if c.rotary:
        rd = c.D // 2 if c.rotary_half else c.D
        args["rotary_cos"], args["rotary_sin"] = rotary_tables(c.S_cache, rd, c.dtype)
        args["rotary_interleaved"] = c.rotary == "interleaved"
    return args


def clone_args(args, dtype=None):
    """Deep copy (caches included), floating tensors cast to ``dtype`` (alibi stays float32)."""
    out = {}
    for k, v in args.items():
        if isinstance(v, torch.Tensor):
            v = v.clone()
            if dtype is not None and v.is_floating_point() and k != "alibi_slopes":
                v = v.to(dtype)
        out[k] = v
    return out


def reference_run(args, compute_dtype):
    a = dict(args)
    for name in ("num_splits",):
        a.pop(name, None)
    q, kc, vc = a.pop("q"), a.pop("k_cache"), a.pop("v_cache")
    k, v = a.pop("k", None), a.pop("v", None)
    cos, sin = a.pop("rotary_cos", None), a.pop("rotary_sin", None)
    a["window_size"] = a.pop("window_size")
    out, lse = kvcache_reference(q, kc, vc, k, v, cos, sin, compute_dtype=compute_dtype, **a)
    return out, lse, kc, vc


def check_case(c: Case, backend="triton"):
    args = make_inputs(c)
    run = clone_args(args)
    out, lse = flash_attn_with_kvcache(**run, return_softmax_lse=True, backend=backend)
    assert out.shape == (c.B, c.Sq, c.Hq, c.D) and out.dtype == c.dtype
    assert lse.shape == (c.B, c.Hq, c.Sq) and lse.dtype == torch.float32

    ref_out, ref_lse, ref_kc, _ = reference_run(clone_args(args, torch.float64), torch.float64)
    pt_out, pt_lse, pt_kc, pt_vc = reference_run(clone_args(args), c.dtype)

    seed = FP32_SEED_TARGET if c.dtype == f32 else None
    mag = data_magnitude(args["q"], args["k_cache"], args["v_cache"], args.get("k"), args.get("v"))
    assert_close_policy(out, ref_out, pt_out, name="out", seed_target=seed, data_magnitude=mag)
    finite = ref_lse[torch.isfinite(ref_lse)]
    lse_scale = max(1.0, finite.abs().max().item() if finite.numel() else 0.0)
    assert_close_policy(lse, ref_lse, pt_lse, name="lse", seed_target=seed and seed * lse_scale,
                        data_magnitude=mag)
    empty = ~torch.isfinite(ref_lse).transpose(1, 2)  # (B, Sq, Hq): rows that see no key
    assert (out[empty] == 0).all()
    # The caches: appended (and rotated) keys where they belong, everything else untouched.
    if c.rotary:
        assert_close_policy(run["k_cache"], ref_kc, pt_kc, name="k_cache", data_magnitude=mag)
    else:
        assert torch.equal(run["k_cache"], pt_kc), "k_cache differs from the expected cache"
    assert torch.equal(run["v_cache"], pt_vc), "v_cache differs from the expected cache"
    return out, lse


CASES = [
    # decode (Sq = 1): MHA, GQA, MQA; head dims 16, 40, 64
    Case(Hq=2, Hkv=2),
    Case(dtype=f16, Hq=4, Hkv=2, D=40, Sn=1, causal=True),
    Case(Hq=4, Hkv=1, D=64, Sn=1, page=16),
    Case(dtype=f16, Hq=8, Hkv=2, seqlens=(63, 20), Sn=1, page=32, causal=True),
    # chunked prefill (Sq > 1)
    Case(Sq=7, Sn=7, seqlens=(30, 9), causal=True, page=32),
    Case(dtype=f16, Sq=5, Sn=5, D=40, seqlens=(41, 3), causal=True),
    Case(Sq=6, Hq=3, Hkv=1, seqlens=(50, 21), Sn=2),  # MQA, Sq > Sn, not causal
    # group 3: a query's heads straddle the 16-row blocks (rows 15 | 16, 17 are query 5)
    Case(Sq=7, Sn=7, Hq=6, Hkv=2, seqlens=(25, 40), causal=True, window=(5, -1), num_splits=2),
    Case(Sq=9, seqlens=(5, 40)),  # no append, Sq > keys of row 0 (causal off: all see all)
    Case(Sq=9, seqlens=(5, 40), causal=True),  # causal: row 0's first 4 queries see nothing
    # window, softcap, alibi
    Case(dtype=f16, Sq=5, Sn=5, seqlens=(33, 12), window=(4, 2)),
    Case(Sq=4, Sn=4, seqlens=(40, 17), causal=True, window=(7, -1), page=16),
    Case(Sn=1, window=(-1, 3), seqlens=(20, 45)),
    Case(Sn=1, softcap=3.0, num_splits=3),
    Case(dtype=f16, Sq=3, Sn=3, D=40, softcap=1.5, causal=True, page=16),
    Case(Sq=4, Sn=4, alibi="h", causal=True),
    Case(dtype=f16, Sn=1, alibi="bh", Hq=4, Hkv=1, page=16),
    Case(Sq=3, Sn=3, alibi="bh", window=(5, 1), softcap=2.0, num_splits=2),
    # cache_batch_idx, cache_leftpad
    Case(Sn=2, Sq=2, batch_idx=True, causal=True),
    Case(Sq=3, Sn=3, leftpad=(10, 0), causal=True),
    Case(dtype=f16, Sn=1, leftpad=(36, 17), alibi="h", page=16, num_splits=2),
    Case(Sq=4, Sn=4, leftpad=(20, 5), window=(6, 0), batch_idx=True),
    # rotary, both layouts; causal (q at L + i) and not (every q at L)
    Case(Sq=3, Sn=3, rotary="interleaved", causal=True),
    Case(Sq=3, Sn=3, rotary="neox"),
    Case(dtype=f16, Sn=1, D=40, rotary="neox", rotary_half=True, causal=True, page=16),
    Case(Sq=2, Sn=2, Hq=4, Hkv=1, rotary="interleaved", rotary_half=True, window=(9, 0), leftpad=(3, 11)),
    # splits: long rows, several tiles a split
    Case(S_cache=128, seqlens=(120, 77), Sn=1, num_splits=3, page=32, causal=True),
    Case(dtype=f16, Sq=4, Sn=4, S_cache=128, seqlens=(100, 13), num_splits=0, Hq=8, Hkv=2),
    # an empty row: cache_seqlens 0
    Case(Sq=3, seqlens=(0, 21), Sn=0),                      # row 0 sees nothing: out 0, lse -inf
    Case(Sq=3, seqlens=(0, 21), Sn=3, causal=True),         # row 0 sees only its new keys
    Case(Sq=2, seqlens=(0, 0), Sn=0, num_splits=3, page=16),  # nothing anywhere, split
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_kvcache_triton(case):
    check_case(case, "triton")


REF_CASES = [CASES[1], CASES[4], CASES[16], CASES[19], CASES[22], CASES[28]]


@pytest.mark.parametrize("case", REF_CASES, ids=[c.id for c in REF_CASES])
def test_kvcache_reference_backend(case):
    check_case(case, "reference")


def test_reference_against_definition():
    """The reference (float64) against the formula written out here, on one case with every
    feature: paged, append, rotary at L + i, leftpad, causal window, softcap, alibi (B, H)."""
    c = Case(Sq=3, Sn=3, page=16, seqlens=(30, 12), leftpad=(4, 2), window=(9, -1), causal=True,
             softcap=2.0, alibi="bh", rotary="neox")
    args = clone_args(make_inputs(c), torch.float64)
    orig_k, orig_v = args["k_cache"].clone(), args["v_cache"].clone()
    out, lse, kc, vc = reference_run(clone_args(args), torch.float64)
    cos, sin = args["rotary_cos"], args["rotary_sin"]

    def rot(x, pos):  # GPT-NeoX halves, x (S, H, D), pos (S,)
        h = x.shape[-1] // 2
        c_, s_ = cos[pos][:, None, :], sin[pos][:, None, :]
        x1, x2 = x[..., :h], x[..., h:]
        return torch.cat([x1 * c_ - x2 * s_, x2 * c_ + x1 * s_], -1)

    bt = args["block_table"].long()
    for b in range(c.B):
        L = c.seqlens[b]
        Sk = L + c.Sn
        keys = torch.arange(Sk)
        pages, slots = bt[b][keys // c.page], keys % c.page
        knew = rot(args["k"][b], torch.arange(L, Sk))
        Kb, Vb = orig_k[pages, slots].clone(), orig_v[pages, slots].clone()
        Kb[L:], Vb[L:] = knew, args["v"][b]
        assert torch.allclose(kc[pages, slots], Kb) and torch.equal(vc[pages, slots], Vb)
        qb = rot(args["q"][b], torch.arange(L, L + c.Sq))
        g = c.Hq // c.Hkv
        s = torch.einsum("qhd,khd->hqk", qb, Kb.repeat_interleave(g, 1)) / math.sqrt(c.D)
        s = c.softcap * torch.tanh(s / c.softcap)
        diag = torch.arange(c.Sq)[:, None] + Sk - c.Sq
        j = keys[None, :]
        s = s - args["alibi_slopes"][b].double()[:, None, None] * (diag - j).abs()
        seen = (j >= c.leftpad[b]) & (j <= diag) & (j >= diag - c.window[0])
        s = s.masked_fill(~seen, -math.inf)
        ref_lse = torch.logsumexp(s, -1)
        ref = torch.einsum("hqk,khd->qhd", torch.softmax(s, -1), Vb.repeat_interleave(g, 1))
        torch.testing.assert_close(out[b], ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(lse[b], ref_lse, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------------
# equalities between ways of running the same thing
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("page", [16, 32])
def test_paged_equals_contiguous(page):
    c = Case(Sq=3, Sn=3, Hq=4, Hkv=2, seqlens=(45, 28), causal=True, num_splits=2)
    args = make_inputs(c)
    contig = flash_attn_with_kvcache(**clone_args(args), return_softmax_lse=True, backend="triton")
    paged_args = clone_args(args)
    paged_args["k_cache"], bt = to_paged(args["k_cache"], page)
    vp = randn(*paged_args["k_cache"].shape)
    for b in range(c.B):
        for j in range(c.S_cache // page):
            vp[bt[b, j]] = args["v_cache"][b, j * page:(j + 1) * page]
    paged_args["v_cache"], paged_args["block_table"] = vp, bt
    paged = flash_attn_with_kvcache(**paged_args, return_softmax_lse=True, backend="triton")
    # Same keys in the same tiles (tiles align to key positions, not pages): the same arithmetic.
    torch.testing.assert_close(paged[0], contig[0], rtol=0, atol=0)
    torch.testing.assert_close(paged[1], contig[1], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [f32, f16], ids=["fp32", "fp16"])
def test_num_splits_agree(dtype):
    c = Case(dtype=dtype, Sq=2, Sn=2, S_cache=128, seqlens=(111, 60), Hq=4, Hkv=2, page=16)
    args = make_inputs(c)
    res = {}
    for n in (1, 3, 0, 20):
        a = clone_args(args)
        a["num_splits"] = n
        res[n] = flash_attn_with_kvcache(**a, return_softmax_lse=True, backend="triton")
    tol = dict(rtol=0, atol=2e-6) if dtype == f32 else dict(rtol=0, atol=1e-3)
    for n in (3, 0, 20):
        torch.testing.assert_close(res[n][0], res[1][0], **tol)
        torch.testing.assert_close(res[n][1], res[1][1], rtol=0, atol=2e-6)


def test_combine_many_splits_and_column_blocks():
    """The split combine's tiles: 40 splits (a 64-row tile, 24 padding rows), head dim 80 cut in
    column blocks (the last one partly past D), and splits that saw no key (the short row):
    the same output and lse as one split."""
    bs, bdc = kv_launch.combine_config(40, 80)
    assert (bs, bdc) == (64, 64) and bdc < 80  # the case below does cover several column blocks
    c = Case(D=80, Hq=4, Hkv=2, S_cache=1024, seqlens=(1000, 90), Sn=1)
    args = make_inputs(c)
    res = {}
    for n in (1, 40):
        a = clone_args(args)
        a["num_splits"] = n
        res[n] = flash_attn_with_kvcache(**a, return_softmax_lse=True, backend="triton")
    torch.testing.assert_close(res[40][0], res[1][0], rtol=0, atol=2e-6)
    torch.testing.assert_close(res[40][1], res[1][1], rtol=0, atol=2e-6)


def test_auto_num_splits_heuristic():
    cuda = torch.device("cuda", 0)
    kv_launch._num_sms.cache_clear()
    orig = kv_launch._num_sms
    kv_launch._num_sms = lambda idx: 132  # an H100
    try:
        assert kv_launch.auto_num_splits(16 * 8, 8192, 64, cuda) == 1      # B=16, Hkv=8: 128 programs, one an SM
        assert kv_launch.auto_num_splits(116, 8192, 64, cuda) == 1         # 7/8 of the SMs (115.5)
        assert kv_launch.auto_num_splits(115, 8192, 64, cuda) == 2
        assert kv_launch.auto_num_splits(1 * 8, 131072, 64, cuda) == 33    # B=1: 8 programs
        assert kv_launch.auto_num_splits(512, 8192, 64, cuda) == 1         # grid already fills the GPU
        assert kv_launch.auto_num_splits(8, 512, 64, cuda) == 2            # short cache: >= 4 tiles a split
    finally:
        kv_launch._num_sms = orig


def test_append_equals_prefilled_cache():
    """Appending k, v in the call gives what attention over a cache filled beforehand gives."""
    c = Case(Sq=4, Sn=4, seqlens=(20, 33), causal=True, page=16)
    args = make_inputs(c)
    a = clone_args(args)
    out_a, lse_a = flash_attn_with_kvcache(**a, return_softmax_lse=True, backend="triton")
    b = clone_args(args)
    k, v = b.pop("k"), b.pop("v")
    bt = b["block_table"].long()
    for i, L in enumerate(c.seqlens):
        pos = torch.arange(L, L + c.Sn)
        b["k_cache"][bt[i][pos // c.page], pos % c.page] = k[i]
        b["v_cache"][bt[i][pos // c.page], pos % c.page] = v[i]
    b["cache_seqlens"] = b["cache_seqlens"] + c.Sn
    out_b, lse_b = flash_attn_with_kvcache(**b, return_softmax_lse=True, backend="triton")
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    torch.testing.assert_close(lse_a, lse_b, rtol=0, atol=0)
    assert torch.equal(a["k_cache"], b["k_cache"]) and torch.equal(a["v_cache"], b["v_cache"])


def test_cache_seqlens_forms():
    """An int, a tensor and None (full rows) mean the same lengths; no lse unless asked."""
    c = Case(Sq=2, seqlens=(64, 64))
    args = make_inputs(c)
    outs = []
    for form in (64, torch.tensor([64, 64], dtype=torch.int32), None):
        a = clone_args(args)
        a["cache_seqlens"] = form
        o = flash_attn_with_kvcache(**a, backend="triton")
        assert isinstance(o, torch.Tensor)
        outs.append(o)
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)
    torch.testing.assert_close(outs[2], outs[0], rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_empty_batch_and_empty_query(backend):
    """B = 0 gives an empty result; Sq = 0 still appends k, v and returns an empty result."""
    kc, vc = randn(2, 32, 2, 16), randn(2, 32, 2, 16)
    out = flash_attn_with_kvcache(randn(0, 1, 4, 16), kc, vc, cache_seqlens=torch.zeros(0, dtype=I32),
                                  backend=backend)
    assert out.shape == (0, 1, 4, 16)
    k, v = randn(2, 3, 2, 16), randn(2, 3, 2, 16)
    out, lse = flash_attn_with_kvcache(randn(2, 0, 4, 16), kc, vc, k, v, cache_seqlens=5,
                                       return_softmax_lse=True, backend=backend)
    assert out.shape == (2, 0, 4, 16) and lse.shape == (2, 4, 0)
    assert torch.equal(kc[:, 5:8], k) and torch.equal(vc[:, 5:8], v)


def test_inference_only_no_grad():
    c = Case(Sn=1)
    args = make_inputs(c)
    args["q"].requires_grad_()
    out = flash_attn_with_kvcache(**args, backend="triton")
    assert not out.requires_grad


def test_noncontiguous_q_and_new_kv():
    """q and k/v as strided views (a packed qkv layout) need no copy by the caller."""
    c = Case(Sq=3, Sn=3, Hq=4, Hkv=2)
    args = make_inputs(c)
    qkv = randn(c.B, c.Sq, c.Hq + 2 * c.Hkv, c.D)
    a = clone_args(args)
    a["q"], a["k"], a["v"] = qkv[:, :, :c.Hq], qkv[:, :, c.Hq:c.Hq + c.Hkv], qkv[:, :, c.Hq + c.Hkv:]
    b = clone_args(a)
    b["q"], b["k"], b["v"] = (b[n].contiguous() for n in ("q", "k", "v"))
    o1 = flash_attn_with_kvcache(**a, backend="triton")
    o2 = flash_attn_with_kvcache(**b, backend="triton")
    torch.testing.assert_close(o1, o2, rtol=0, atol=0)
    assert torch.equal(a["k_cache"], b["k_cache"])


# --------------------------------------------------------------------------------------------
# bad input: a clear error naming the argument, before the cache is touched
# --------------------------------------------------------------------------------------------

def _bad(name, err, pattern, **mods):
    return pytest.param(mods, err, pattern, id=name)


I32 = torch.int32
BAD = [
    _bad("page-out-of-range", ValueError, r"block_table.*\[0, ", page=16, block_table_set=(0, 1, 99)),
    _bad("page-negative", ValueError, r"block_table", page=16, block_table_set=(1, 0, -1)),
    _bad("seqlens-too-long", ValueError, r"cache_seqlens.*\[0, 63\]", seqlens=(63, 64)),
    _bad("seqlens-plus-new-too-long", ValueError, r"cache_seqlens", seqlens=(60, 10), Sn=5),
    _bad("seqlens-negative", ValueError, r"cache_seqlens", seqlens=(-1, 10)),
    _bad("seqlens-int-too-long", ValueError, r"cache_seqlens", seqlens_value=70),
    _bad("seqlens-int64", TypeError, r"cache_seqlens.*int32", seqlens_value=torch.tensor([3, 4])),
    _bad("seqlens-shape", ValueError, r"cache_seqlens.*shape", seqlens_value=torch.tensor([3], dtype=I32)),
    _bad("seqlens-none-with-new", ValueError, r"cache_seqlens", seqlens_value=None),
    _bad("block-table-int64", TypeError, r"block_table.*int32", page=16, block_table_dtype=torch.int64),
    _bad("block-table-rank", ValueError, r"block_table.*2-d", page=16, block_table_flat=True),
    _bad("batch-idx-int64", TypeError, r"cache_batch_idx.*int32", batch_idx=True, batch_idx_dtype=torch.int64),
    _bad("batch-idx-out-of-range", ValueError, r"cache_batch_idx", batch_idx=True, batch_idx_value=(0, 4)),
    _bad("batch-idx-with-block-table", ValueError, r"cache_batch_idx.*block_table", page=16, batch_idx=True),
    _bad("leftpad-int64", TypeError, r"cache_leftpad.*int32", leftpad=(1, 2), leftpad_dtype=torch.int64),
    _bad("leftpad-beyond-seqlen", ValueError, r"cache_leftpad", leftpad=(40, 2)),
    _bad("head-dim-mismatch", ValueError, r"k_cache.*head dim", cache_d=8),
    _bad("cache-dtype", TypeError, r"k_cache.*dtype", cache_dtype=f16),
    _bad("new-k-dtype", TypeError, r"\bk\b.*dtype", k_dtype=f16),
    _bad("new-k-shape", ValueError, r"\bk\b.*shape", k_heads=3),
    _bad("k-without-v", ValueError, r"\bv\b", drop="v"),
    _bad("v-without-k", ValueError, r"\bk\b", drop="k"),
    _bad("rotary-without-kv", ValueError, r"rotary_cos", rotary="neox", drop="kv"),
    _bad("rotary-cos-only", ValueError, r"rotary_cos/rotary_sin", rotary="neox", drop="rotary_sin"),
    _bad("rotary-too-short", ValueError, r"rotary_cos.*positions", rotary="neox", rotary_len=10),
    _bad("rotary-dtype", TypeError, r"rotary_cos.*dtype", rotary="neox", rotary_dtype=f16),
    _bad("heads-not-multiple", ValueError, r"multiple", q_heads=3),
    _bad("q-rank", ValueError, r"\bq\b.*4-d", q_rank3=True),
    _bad("alibi-dtype", TypeError, r"alibi_slopes.*float32", alibi="h", alibi_dtype=torch.float64),
    _bad("alibi-shape", ValueError, r"alibi_slopes.*shape", alibi="h", alibi_shape=(3,)),
    _bad("num-splits-negative", ValueError, r"num_splits", num_splits=-1),
    _bad("window", ValueError, r"window_size", window=(-2, 0)),
    _bad("softcap", ValueError, r"softcap", softcap=-1.0),
    _bad("cache-lastdim-stride", ValueError, r"k_cache.*stride", cache_transposed=True),
]


@pytest.mark.parametrize("mods,err,pattern", BAD)
def test_bad_input(mods, err, pattern):
    mods = dict(mods)
    case_fields = {f: mods.pop(f) for f in list(mods) if f in Case.__dataclass_fields__}
    case_fields.setdefault("Sn", 1)
    if "seqlens" not in case_fields:
        case_fields["seqlens"] = (30, 20)
    c = replace(Case(), **case_fields)
    args = make_inputs(c)
    if "block_table_set" in mods:
        b, j, val = mods.pop("block_table_set")
        args["block_table"][b, j] = val  # a page in use (rows hold 31 and 21 keys: pages 0, 1)
    if "seqlens_value" in mods:
        args["cache_seqlens"] = mods.pop("seqlens_value")
    if "block_table_dtype" in mods:
        args["block_table"] = args["block_table"].to(mods.pop("block_table_dtype"))
    if mods.pop("block_table_flat", False):
        args["block_table"] = args["block_table"].flatten()
    if mods.get("batch_idx_dtype") is not None:
        args["cache_batch_idx"] = args["cache_batch_idx"].to(mods.pop("batch_idx_dtype"))
    if "batch_idx_value" in mods:
        args["cache_batch_idx"] = torch.tensor(mods.pop("batch_idx_value"), dtype=I32)
    if c.page and c.batch_idx:
        args["cache_batch_idx"] = torch.tensor([0, 1], dtype=I32)
    if "leftpad_dtype" in mods:
        args["cache_leftpad"] = args["cache_leftpad"].to(mods.pop("leftpad_dtype"))
    if "cache_d" in mods:
        d = mods.pop("cache_d")
        args["k_cache"], args["v_cache"] = args["k_cache"][..., :d].contiguous(), args["v_cache"][..., :d].contiguous()
    if "cache_dtype" in mods:
        dt = mods.pop("cache_dtype")
        args["k_cache"], args["v_cache"] = args["k_cache"].to(dt), args["v_cache"].to(dt)
    if "k_dtype" in mods:
        args["k"] = args["k"].to(mods.pop("k_dtype"))
    if "k_heads" in mods:
        args["k"] = randn(c.B, c.Sn, mods.pop("k_heads"), c.D)
    drop = mods.pop("drop", None)
    if drop == "kv":
        del args["k"], args["v"]
    elif drop:
        del args[drop]
    if "rotary_len" in mods:
        n = mods.pop("rotary_len")
        args["rotary_cos"], args["rotary_sin"] = args["rotary_cos"][:n], args["rotary_sin"][:n]
    if "rotary_dtype" in mods:
        args["rotary_cos"] = args["rotary_cos"].to(mods.pop("rotary_dtype"))
    if "q_heads" in mods:
        args["q"] = randn(c.B, c.Sq, mods.pop("q_heads"), c.D)
    if mods.pop("q_rank3", False):
        args["q"] = args["q"][:, 0]
    if "alibi_dtype" in mods:
        args["alibi_slopes"] = args["alibi_slopes"].to(mods.pop("alibi_dtype"))
    if "alibi_shape" in mods:
        args["alibi_slopes"] = torch.rand(mods.pop("alibi_shape"))
    if mods.pop("cache_transposed", False):
        kc = args["k_cache"]
        args["k_cache"] = kc.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not mods, f"unused test modifiers {mods}"

    before = (args["k_cache"].clone(), args["v_cache"].clone())
    for backend in ("triton", "reference"):
        with pytest.raises(err, match=pattern) as info:
            flash_attn_with_kvcache(**args, backend=backend)
        assert re.search(pattern, str(info.value))
        assert torch.equal(args["k_cache"], before[0]) and torch.equal(args["v_cache"], before[1]), \
            "the cache was written before the error"


# --------------------------------------------------------------------------------------------
# check_inputs=False: bad values run, but nothing outside the cache (or the valid slots) is touched
# --------------------------------------------------------------------------------------------

def test_unchecked_page_index_out_of_range_is_clamped():
    c = Case(Sn=2, Sq=2, page=16, seqlens=(30, 20), causal=True)
    args = make_inputs(c)
    # Row 0's new tokens land at 30, 31: page 1. Point it far outside the cache.
    args["block_table"][0, 1] = 10_000
    args["block_table"][1, 0] = -7  # a page read by row 1's attention, negative
    before_k, before_v = args["k_cache"].clone(), args["v_cache"].clone()
    out = flash_attn_with_kvcache(**args, check_inputs=False, backend="triton")
    assert torch.isfinite(out).all()
    # Row 0's tokens (invalid page) were not written anywhere; row 1's went to its page 1.
    bt = args["block_table"].long()
    exp_k, exp_v = before_k.clone(), before_v.clone()
    pos = torch.arange(20, 22)
    exp_k[bt[1][pos // 16], pos % 16] = args["k"][1]
    exp_v[bt[1][pos // 16], pos % 16] = args["v"][1]
    assert torch.equal(args["k_cache"], exp_k) and torch.equal(args["v_cache"], exp_v)


def test_unchecked_lengths_and_rows_are_clamped():
    c = Case(Sn=3, Sq=3, batch_idx=True, seqlens=(62, -5), leftpad=(70, -3))
    args = make_inputs(c)
    args["cache_batch_idx"] = torch.tensor([1, 99], dtype=I32)
    before_k = args["k_cache"].clone()
    out, lse = flash_attn_with_kvcache(**args, check_inputs=False, return_softmax_lse=True, backend="triton")
    assert not out.isnan().any() and not lse.isnan().any()
    # Row 1 of the cache got token 0 at position 62, token 1 at 63; token 2 (64) fell off the
    # end; batch element 1 (row 99, length -5) wrote nothing.
    exp = before_k.clone()
    exp[1, 62:64] = args["k"][0, :2]
    assert torch.equal(args["k_cache"], exp)


def test_unchecked_rotary_positions_stay_in_table():
    c = Case(Sn=2, Sq=2, seqlens=(63, 5), rotary="interleaved", causal=True)
    args = make_inputs(c)
    out = flash_attn_with_kvcache(**args, check_inputs=False, backend="triton")
    assert torch.isfinite(out).all()


def test_unchecked_decode_step_takes_no_host_sync(monkeypatch):
    """check_inputs=False with append, rotary, paging: the API path reads no tensor value back
    on the host (the launches are stubbed: the interpreter reads values by design), so a decode
    step can be captured in a CUDA graph."""
    import flashkernels.ops.rope.autograd as rope_autograd

    c = Case(Sn=1, Sq=1, seqlens=(10, 3), rotary="interleaved", causal=True, page=16)
    args = make_inputs(c)
    calls = []
    monkeypatch.setattr(rope_autograd, "rope", lambda x, *a, **k: calls.append("rope") or x)
    monkeypatch.setattr(kv_launch, "kvcache_append_eager", lambda *a: calls.append("append"))
    monkeypatch.setattr(kv_launch, "kvcache_attn_eager",
                        lambda q, *a: calls.append("attn") or (q.clone(), q.new_zeros(q.shape[:3])))

    def refuse(*_a, **_k):
        raise AssertionError("host sync: a tensor value was read back")

    with monkeypatch.context() as m:
        for name in ("__int__", "item", "tolist", "__bool__", "__index__"):
            m.setattr(torch.Tensor, name, refuse)
        flash_attn_with_kvcache(**args, check_inputs=False, backend="triton")
    assert calls == ["rope", "rope", "append", "attn"]


# --------------------------------------------------------------------------------------------
# GPU
# --------------------------------------------------------------------------------------------

def _gpu_case(B, S_cache, seqlens, page, Hq=32, Hkv=8, D=128, Sn=1, Sq=1, causal=True, num_splits=0):
    dev = "cuda"
    q = randn(B, Sq, Hq, D, dtype=torch.bfloat16, device=dev)
    kc = randn(B, S_cache, Hkv, D, dtype=torch.bfloat16, device=dev)
    vc = randn(B, S_cache, Hkv, D, dtype=torch.bfloat16, device=dev)
    args = dict(q=q, k_cache=kc, v_cache=vc, cache_seqlens=torch.tensor(seqlens, dtype=I32, device=dev),
                causal=causal, num_splits=num_splits)
    if Sn:
        args["k"] = randn(B, Sn, Hkv, D, dtype=torch.bfloat16, device=dev)
        args["v"] = randn(B, Sn, Hkv, D, dtype=torch.bfloat16, device=dev)
    if page:
        nb = S_cache // page
        perm = torch.randperm(B * nb, device=dev).view(B, nb).to(I32)
        kp = torch.empty(B * nb, page, Hkv, D, dtype=torch.bfloat16, device=dev)
        vp = torch.empty_like(kp)
        kp[perm.long().flatten()] = kc.view(B * nb, page, Hkv, D)
        vp[perm.long().flatten()] = vc.view(B * nb, page, Hkv, D)
        args.update(k_cache=kp, v_cache=vp, block_table=perm)
    return args


@pytest.mark.gpu
@pytest.mark.parametrize("B,S_cache,page", [(16, 8192, 0), (16, 8192, 16), (16, 8192, 256), (1, 131072, 0),
                                            (1, 131072, 16), (1, 131072, 256)])
def test_gpu_bf16_decode_real_sizes(B, S_cache, page):
    g = torch.Generator().manual_seed(B + page)
    seqlens = torch.randint(S_cache // 2, S_cache - 1, (B,), generator=g).tolist()
    args = _gpu_case(B, S_cache, seqlens, page)
    run = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    out, lse = flash_attn_with_kvcache(**run, return_softmax_lse=True, backend="triton")
    ref_args = {k: v for k, v in args.items() if k not in ("q", "k_cache", "v_cache", "k", "v", "num_splits")}
    q, k, v = args["q"], args["k"], args["v"]
    ref_kc, ref_vc = args["k_cache"].float(), args["v_cache"].float()
    ref_out, ref_lse = kvcache_reference(q.float(), ref_kc, ref_vc, k.float(), v.float(),
                                         compute_dtype=torch.float32, **ref_args)
    pt_out, pt_lse = kvcache_reference(q, args["k_cache"].clone(), args["v_cache"].clone(), k, v,
                                       compute_dtype=torch.bfloat16, **ref_args)
    mag = data_magnitude(q, k, v)
    assert_close_policy(out, ref_out, pt_out, name="out", data_magnitude=mag)
    assert_close_policy(lse, ref_lse, pt_lse.float(), name="lse", data_magnitude=mag)
    assert torch.equal(run["k_cache"].float(), ref_kc) and torch.equal(run["v_cache"].float(), ref_vc)


@pytest.mark.gpu
@pytest.mark.no_poison
def test_gpu_opcheck():
    args = _gpu_case(2, 256, [100, 37], 16, Hq=8, Hkv=2, D=64)
    B = 2
    seqlens = args["cache_seqlens"]
    torch.library.opcheck(torch.ops.flashkernels.kvcache_append,
                          (args["k_cache"], args["v_cache"], args["k"], args["v"], seqlens, None, args["block_table"]))
    torch.library.opcheck(torch.ops.flashkernels.kvcache_attn,
                          (args["q"], args["k_cache"], args["v_cache"], seqlens, 1, None, None, args["block_table"],
                           None, 0.125, True, -1, -1, 0.0, 3, False))
    assert B == 2


@pytest.mark.gpu
@pytest.mark.no_poison
def test_gpu_torch_compile_decode_step():
    args = _gpu_case(4, 1024, [500, 3, 1000, 0], 0, Hq=8, Hkv=2, D=64)
    eager = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    out_e = flash_attn_with_kvcache(**eager, check_inputs=False)

    def step(q, k_cache, v_cache, k, v, cache_seqlens):
        return flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=cache_seqlens, causal=True,
                                       check_inputs=False)

    comp = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    fn = torch.compile(step, fullgraph=True)
    out_c = fn(comp["q"], comp["k_cache"], comp["v_cache"], comp["k"], comp["v"], comp["cache_seqlens"])
    torch.testing.assert_close(out_c, out_e, rtol=0, atol=0)
    assert torch.equal(comp["k_cache"], eager["k_cache"])
