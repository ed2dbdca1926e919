"""Rotary position embeddings (``flashkernels.apply_rotary_emb``, flash-attn's convention, and
``flashkernels.apply_rotary_pos_emb``, Hugging Face's; ``flashkernels.nn.RotaryEmbedding``):
the Triton kernel through the interpreter (fp32, fp16; bf16 on the GPU) and the reference path
against float64 math written here, forward and backward, partial and interleaved rotary,
positions, strides, bad input, and the custom ops.

The float64 rotations below are written from the definitions (explicit pair indices for
flash-attn, ``q*cos + rotate_half(q)*sin`` for HF) and share no code with
``flashkernels.ops.rope.reference``. The backward is the inverse rotation; both are checked
against autograd of the float64 formulas.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

import flashkernels
import flashkernels.nn as fnn
from helpers import FP32_SEED_TARGET, assert_close_policy, data_magnitude, randn

f16, bf16, f32, f64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"

# (conftest.py poisons every launcher's outputs with NaN)


# --------------------------------------------------------------------------------------------
# the independent float64 rotations
# --------------------------------------------------------------------------------------------

def flash_rope64(x, cos, sin, interleaved, offsets):
    """flash-attn: pair j is (x[j], x[j + rd/2]) or (x[2j], x[2j+1]), angle row s + offsets[b]."""
    B, S = x.shape[:2]
    half = cos.shape[1]
    offs = offsets if isinstance(offsets, torch.Tensor) else torch.full((B,), offsets)
    pos = torch.arange(S)[None, :] + offs.cpu().long()[:, None]            # (B, S)
    c = cos.double().cpu()[pos][:, :, None, :].to(x.device)                # (B, S, 1, half)
    s = sin.double().cpu()[pos][:, :, None, :].to(x.device)
    j = torch.arange(half, device=x.device)
    i1, i2 = (2 * j, 2 * j + 1) if interleaved else (j, j + half)
    x1, x2 = x[..., i1], x[..., i2]
    out = x.clone()
    out[..., i1] = x1 * c - x2 * s
    out[..., i2] = x2 * c + x1 * s
    return out


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def hf_rope64(x, cos, sin):
    """Hugging Face: x*cos + rotate_half(x)*sin on the first rd dims; cos/sin already broadcast
    to x's layout."""
    rd = cos.shape[-1]
    xr = x[..., :rd]
    return torch.cat((xr * cos + rotate_half(xr) * sin, x[..., rd:]), dim=-1)


def angles(pos, rd, base=10000.0):
    """Standard RoPE angles for integer positions ``pos`` (any shape): (..., rd/2), float64."""
    inv_freq = base ** (-torch.arange(0, rd, 2, dtype=f64) / rd)
    return pos.double()[..., None] * inv_freq


# --------------------------------------------------------------------------------------------
# flash-attn convention
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FCase:
    dtype: torch.dtype
    B: int
    S: int
    H: int
    D: int
    rd: int
    interleaved: bool = False
    offsets: str = "none"        # "int", "tensor"
    layout: str = "contiguous"   # "packed" (k of a packed (B, S, 3, H, D) qkv), "transposed"
    grad_out: str = "contiguous"  # or "transposed"

    @property
    def id(self):
        s = f"{str(self.dtype)[6:]}-{self.B}x{self.S}x{self.H}x{self.D}-rd{self.rd}"
        s += "-il" if self.interleaved else ""
        s += f"-off_{self.offsets}" if self.offsets != "none" else ""
        s += f"-{self.layout}" if self.layout != "contiguous" else ""
        s += "-dout_t" if self.grad_out != "contiguous" else ""
        return s


def make_x(case, device):
    B, S, H, D = case.B, case.S, case.H, case.D
    kw = dict(dtype=case.dtype, device=device)
    if case.layout == "packed":
        x = randn(B, S, 3, H, D, **kw)[:, :, 1]
    elif case.layout == "transposed":
        x = randn(B, H, S, D, **kw).transpose(1, 2)
    else:
        x = randn(B, S, H, D, **kw)
    assert x.shape == (B, S, H, D) and x.is_contiguous() == (case.layout == "contiguous")
    return x.requires_grad_()


def make_dout(shape, dtype, device, transposed):
    if transposed:  # (B, X, Y, D) -> a view with dims 1 and 2 swapped
        return randn(shape[0], shape[2], shape[1], shape[3], dtype=dtype, device=device).transpose(1, 2)
    return randn(*shape, dtype=dtype, device=device)


def flash_inputs(case, device):
    x = make_x(case, device)
    extra = 7
    if case.offsets == "int":
        offsets = 5
    elif case.offsets == "tensor":
        offsets = torch.randint(0, extra + 1, (case.B,), device=device)
        offsets[0] = extra  # reach the end of the tables
    else:
        offsets, extra = 0, 0
    s_max = case.S + extra
    # angles at random positions: table rows differ, values cover all quadrants
    th = angles(torch.randperm(4 * s_max)[:s_max], case.rd)
    cos, sin = th.cos().to(device, case.dtype), th.sin().to(device, case.dtype)
    return x, cos, sin, offsets


def check_flash(case, device=DEVICE, backend="triton"):
    x, cos, sin, offsets = flash_inputs(case, device)
    dout = make_dout(x.shape, case.dtype, device, case.grad_out == "transposed")
    before = [t.detach().clone() for t in (x, cos, sin)]
    before_off = offsets.clone() if isinstance(offsets, torch.Tensor) else offsets

    out = flashkernels.apply_rotary_emb(x, cos, sin, case.interleaved, offsets, backend=backend)
    (dx,) = torch.autograd.grad(out, x, dout)
    pt = flashkernels.apply_rotary_emb(x, cos, sin, case.interleaved, offsets, backend="reference")
    (dx_pt,) = torch.autograd.grad(pt, x, dout)
    for a, b in zip((x, cos, sin), before):
        assert torch.equal(a.detach(), b), "an input changed"
    if isinstance(offsets, torch.Tensor):
        assert torch.equal(offsets, before_off)

    x64 = x.detach().double().requires_grad_()
    ref = flash_rope64(x64, cos, sin, case.interleaved, offsets)
    (dx_ref,) = torch.autograd.grad(ref, x64, dout.double())

    assert out.dtype == case.dtype and out.shape == x.shape and dx.shape == x.shape
    target = FP32_SEED_TARGET if case.dtype == f32 else None
    assert_close_policy(out, ref, pt, name="out", data_magnitude=data_magnitude(x), seed_target=target)
    assert_close_policy(dx, dx_ref, dx_pt, factor=3.0, name="dx", data_magnitude=data_magnitude(x, dout),
                        seed_target=target)
    # the pass-through dims are copied exactly, forward and backward
    assert torch.equal(out[..., case.rd:], x.detach()[..., case.rd:])
    assert torch.equal(dx[..., case.rd:], dout[..., case.rd:])
    return out, dx


FLASH_GRID = [
    FCase(f32, 2, 17, 3, 64, 64),
    FCase(f16, 2, 17, 3, 64, 64),
    FCase(f32, 2, 13, 4, 64, 64, interleaved=True),
    FCase(f16, 2, 13, 4, 40, 40, interleaved=True, offsets="int"),
    FCase(f32, 3, 9, 2, 59, 32, offsets="tensor"),                # odd D, partial rotary
    FCase(f16, 3, 9, 2, 59, 32, interleaved=True, offsets="tensor"),
    FCase(f32, 2, 11, 5, 80, 24, offsets="int"),                  # partial, rd/2 not a power of 2
    FCase(f32, 2, 1, 3, 16, 16, offsets="tensor"),                # decode: S = 1
    FCase(f16, 2, 15, 3, 32, 32, layout="packed", grad_out="transposed"),
    FCase(f32, 2, 15, 3, 48, 32, interleaved=True, layout="packed"),
    FCase(f32, 2, 10, 3, 96, 64, offsets="tensor", layout="transposed", grad_out="transposed"),
    FCase(f16, 1, 33, 1, 8, 2),                                   # the smallest rotary dim
]


@pytest.mark.parametrize("case", FLASH_GRID, ids=lambda c: c.id)
def test_apply_rotary_emb_kernel(case):
    check_flash(case)


@pytest.mark.parametrize("case", [FCase(f64, 2, 9, 3, 40, 24, interleaved=il, offsets="tensor")
                                  for il in (False, True)], ids=lambda c: c.id)
def test_apply_rotary_emb_reference_float64(case):
    """The reference path at float64 is the definition (to rounding)."""
    x, cos, sin, offsets = flash_inputs(case, "cpu")
    out = flashkernels.apply_rotary_emb(x, cos, sin, case.interleaved, offsets, backend="reference")
    ref = flash_rope64(x.detach(), cos, sin, case.interleaved, offsets)
    torch.testing.assert_close(out, ref, rtol=1e-14, atol=1e-14)
    dout = torch.randn_like(ref)
    (dx,) = torch.autograd.grad(out, x, dout)
    # the inverse rotation: rotating dout by -theta (sin -> -sin) gives dx
    torch.testing.assert_close(dx, flash_rope64(dout, cos, -sin, case.interleaved, offsets), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_apply_rotary_emb_in_place(backend):
    case = FCase(f32, 2, 7, 3, 24, 16, offsets="tensor")
    x, cos, sin, offsets = flash_inputs(case, DEVICE)
    x = x.detach()
    expected = flash_rope64(x.double(), cos, sin, False, offsets)
    x_copy = x.clone()
    assert flashkernels.apply_rotary_emb(x_copy, cos, sin, False, offsets, backend=backend) is not x_copy
    assert torch.equal(x_copy, x)
    out = flashkernels.apply_rotary_emb(x, cos, sin, False, offsets, in_place=True, backend=backend)
    assert out is x
    assert (x.double() - expected).abs().max().item() <= FP32_SEED_TARGET
    xg = x.clone().requires_grad_()
    with pytest.raises(NotImplementedError, match="in_place"):
        flashkernels.apply_rotary_emb(xg, cos, sin, in_place=True, backend=backend)


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_apply_rotary_emb_empty_batch(backend):
    x = torch.empty(0, 5, 2, 8, requires_grad=True)
    cos = sin = torch.randn(5, 4)
    out = flashkernels.apply_rotary_emb(x, cos, sin, backend=backend)
    assert out.shape == x.shape
    assert torch.autograd.grad(out.sum(), x)[0].shape == x.shape


# --------------------------------------------------------------------------------------------
# Hugging Face convention
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class HCase:
    dtype: torch.dtype
    B: int
    Hq: int
    Hk: int
    S: int
    D: int
    rd: int
    unsqueeze_dim: int = 1
    table: str = "bsr"           # "1sr", "sr", "pos_ids" (per-batch), "pos_ids_1s" (shared row)
    layout: str = "contiguous"   # "packed": q, k views of one packed qkv projection

    @property
    def id(self):
        s = (f"{str(self.dtype)[6:]}-B{self.B}-H{self.Hq}_{self.Hk}-S{self.S}-D{self.D}-rd{self.rd}"
             f"-u{self.unsqueeze_dim}-{self.table}")
        return s + (f"-{self.layout}" if self.layout != "contiguous" else "")


def hf_shape(case, H):
    return (case.B, H, case.S, case.D) if case.unsqueeze_dim == 1 else (case.B, case.S, H, case.D)


def hf_inputs(case, device):
    kw = dict(dtype=case.dtype, device=device)
    if case.layout == "packed":  # (B, S, Hq + 2 Hk, D) from one projection, viewed per head group
        qkv = randn(case.B, case.S, case.Hq + 2 * case.Hk, case.D, **kw)
        q, k = qkv[:, :, :case.Hq], qkv[:, :, case.Hq:case.Hq + case.Hk]
        if case.unsqueeze_dim == 1:
            q, k = q.transpose(1, 2), k.transpose(1, 2)
    else:
        q, k = randn(*hf_shape(case, case.Hq), **kw), randn(*hf_shape(case, case.Hk), **kw)
    assert q.shape == hf_shape(case, case.Hq) and k.shape == hf_shape(case, case.Hk)
    B, S = case.B, case.S
    position_ids = None
    if case.table.startswith("pos_ids"):
        s_max = S + 9
        rows = B if case.table == "pos_ids" else 1
        position_ids = torch.stack([torch.randperm(s_max)[:S] for _ in range(rows)]).to(device)
        th = angles(torch.arange(s_max), case.rd)                   # (S_max, rd/2)
        pos = position_ids.cpu().expand(B, S)
    else:
        pos = torch.randint(0, 4 * S, (1 if case.table != "bsr" else B, S))
        th = angles(pos, case.rd)                                   # (B | 1, S, rd/2)
        if case.table == "sr":
            th = th[0]
        pos = pos.expand(B, S)
    emb = torch.cat((th, th), dim=-1)                               # HF's duplicated layout
    cos, sin = emb.cos().to(**kw), emb.sin().to(**kw)
    # cos/sin for the float64 formula, broadcast as HF's unsqueeze(unsqueeze_dim) does
    emb_b = torch.cat((angles(pos, case.rd),) * 2, dim=-1).unsqueeze(case.unsqueeze_dim).to(device)
    return q.requires_grad_(), k.requires_grad_(), cos, sin, position_ids, emb_b


def check_hf(case, device=DEVICE, backend="triton"):
    q, k, cos, sin, position_ids, emb_b = hf_inputs(case, device)
    dq_out = make_dout(q.shape, case.dtype, device, transposed=True)
    dk_out = make_dout(k.shape, case.dtype, device, transposed=False)
    before = [t.detach().clone() for t in (q, k, cos, sin)]

    args = (cos, sin, position_ids, case.unsqueeze_dim)
    qo, ko = flashkernels.apply_rotary_pos_emb(q, k, *args, backend=backend)
    grads = torch.autograd.grad((qo, ko), (q, k), (dq_out, dk_out))
    qp, kp = flashkernels.apply_rotary_pos_emb(q, k, *args, backend="reference")
    pt_grads = torch.autograd.grad((qp, kp), (q, k), (dq_out, dk_out))
    for a, b in zip((q, k, cos, sin), before):
        assert torch.equal(a.detach(), b), "an input changed"

    q64, k64 = (t.detach().double().requires_grad_() for t in (q, k))
    c64, s64 = emb_b.cos(), emb_b.sin()
    q_ref, k_ref = hf_rope64(q64, c64, s64), hf_rope64(k64, c64, s64)
    ref_grads = torch.autograd.grad((q_ref, k_ref), (q64, k64), (dq_out.double(), dk_out.double()))

    target = FP32_SEED_TARGET if case.dtype == f32 else None
    mag = data_magnitude(q, k)
    for name, o, r, p, x in (("q_embed", qo, q_ref, qp, q), ("k_embed", ko, k_ref, kp, k)):
        assert o.dtype == case.dtype and o.shape == x.shape
        assert_close_policy(o, r, p, name=name, data_magnitude=mag, seed_target=target)
        assert torch.equal(o[..., case.rd:], x.detach()[..., case.rd:])
    gmag = data_magnitude(q, k, dq_out, dk_out)
    for name, g, r, p in zip(("dq", "dk"), grads, ref_grads, pt_grads):
        assert_close_policy(g, r, p, factor=3.0, name=name, data_magnitude=gmag, seed_target=target)


HF_GRID = [
    HCase(f32, 2, 4, 2, 13, 64, 64),
    HCase(f16, 2, 4, 2, 13, 64, 64),
    HCase(f32, 2, 3, 1, 11, 40, 40, unsqueeze_dim=2, table="1sr"),
    HCase(f16, 1, 2, 2, 9, 59, 32, table="sr"),                      # odd D, partial rotary
    HCase(f32, 3, 2, 1, 7, 80, 48, unsqueeze_dim=2, table="pos_ids"),
    HCase(f16, 2, 4, 4, 10, 32, 32, table="pos_ids"),
    HCase(f32, 2, 3, 1, 8, 24, 24, table="pos_ids_1s"),
    HCase(f32, 2, 4, 2, 12, 32, 32, layout="packed"),               # transposed packed views
    HCase(f16, 2, 6, 2, 9, 48, 16, unsqueeze_dim=2, table="pos_ids", layout="packed"),
    HCase(f32, 2, 2, 2, 1, 16, 16, table="bsr"),                     # decode: S = 1
]


@pytest.mark.parametrize("case", HF_GRID, ids=lambda c: c.id)
def test_apply_rotary_pos_emb_kernel(case):
    check_hf(case)


def test_apply_rotary_pos_emb_keeps_the_memory_order():
    """q, k as (B, H, S, D) views of (B, S, H, D) memory (Hugging Face's projections): the
    rotated q, k come back in that memory order, and so do their gradients when the incoming
    ones are (no copy on the way to the projections' backward), with the values of contiguous
    inputs."""
    B, H, HK, S, D = 2, 4, 2, 7, 16
    cos, sin = randn(S, D), randn(S, D)
    q, k = randn(B, H, S, D), randn(B, HK, S, D)
    views = [t.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_() for t in (q, k)]
    q.requires_grad_(), k.requires_grad_()
    outs = flashkernels.apply_rotary_pos_emb(*views, cos, sin, backend="triton")
    refs = flashkernels.apply_rotary_pos_emb(q, k, cos, sin, backend="triton")
    # the gradients arriving in the same memory order (as the attention's dq, dk do)
    douts = [randn(*t.shape).transpose(1, 2).contiguous().transpose(1, 2) for t in refs]
    for o, r in zip(outs, refs):
        assert o.transpose(1, 2).is_contiguous() and torch.equal(o, r)
    for g, r in zip(torch.autograd.grad(outs, views, douts), torch.autograd.grad(refs, (q, k), douts)):
        assert g.transpose(1, 2).is_contiguous() and torch.equal(g, r)


def test_apply_rotary_pos_emb_reference_is_hf_formula():
    """The reference path in float64 is HF's formula; with full-width tables that are not
    duplicated (columns j and j + rd/2 differ), the kernel still follows the formula exactly:
    both halves use their own columns."""
    case = HCase(f32, 2, 3, 2, 7, 24, 16)
    q, k, _, _, _, _ = hf_inputs(case, DEVICE)
    cos, sin = randn(2, 7, 16, device=DEVICE), randn(2, 7, 16, device=DEVICE)
    c, s = cos.double().unsqueeze(1), sin.double().unsqueeze(1)
    q64, k64 = (t.detach().double().requires_grad_() for t in (q, k))
    q_ref, k_ref = hf_rope64(q64, c, s), hf_rope64(k64, c, s)
    r64 = flashkernels.apply_rotary_pos_emb(q64, k64, c[:, 0], s[:, 0], backend="reference")
    torch.testing.assert_close(r64[0], q_ref, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(r64[1], k_ref, rtol=1e-14, atol=1e-14)
    qo, ko = flashkernels.apply_rotary_pos_emb(q, k, cos, sin, backend="triton")
    dq_out, dk_out = torch.randn_like(qo), torch.randn_like(ko)
    dq, dk = torch.autograd.grad((qo, ko), (q, k), (dq_out, dk_out))
    rdq, rdk = torch.autograd.grad((q_ref, k_ref), (q64, k64), (dq_out.double(), dk_out.double()))
    for a, b in ((qo, q_ref), (ko, k_ref), (dq, rdq), (dk, rdk)):
        assert (a.double() - b).abs().max().item() <= 4 * FP32_SEED_TARGET  # |cos|, |sin| up to ~4


def test_apply_rotary_pos_emb_one_output_used():
    """Backward with a gradient for q only (k_embed unused): dk is zero."""
    case = HCase(f32, 1, 2, 1, 5, 16, 16)
    q, k, cos, sin, _, _ = hf_inputs(case, DEVICE)
    qo, _ = flashkernels.apply_rotary_pos_emb(q, k, cos, sin, backend="triton")
    dq, dk = torch.autograd.grad(qo.sum(), (q, k), allow_unused=True)
    assert dk is None or torch.equal(dk, torch.zeros_like(k))
    assert torch.isfinite(dq).all()


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------

def _flash_bad():
    x = torch.randn(2, 6, 3, 16)
    cos, sin = torch.randn(8, 8), torch.randn(8, 8)
    return [
        ("x-rank", dict(x=x[0]), ValueError, "x"),
        ("x-dtype", dict(x=x.int()), TypeError, "x"),
        ("x-not-tensor", dict(x=x.tolist()), TypeError, "x"),
        ("cos-rank", dict(cos=cos[None], sin=sin[None]), ValueError, "cos"),
        ("sin-shape", dict(sin=sin[:, :4]), ValueError, "sin"),
        ("cos-dtype", dict(cos=cos.half()), TypeError, "cos"),
        ("sin-dtype", dict(sin=sin.double()), TypeError, "sin"),
        ("rotary-dim-too-large", dict(cos=torch.randn(8, 9), sin=torch.randn(8, 9)), ValueError, "cos"),
        ("offset-too-large", dict(seqlen_offsets=3), ValueError, "seqlen_offsets"),
        ("offset-negative", dict(seqlen_offsets=-1), ValueError, "seqlen_offsets"),
        ("offsets-tensor-too-large", dict(seqlen_offsets=torch.tensor([0, 3])), ValueError, "seqlen_offsets"),
        ("offsets-shape", dict(seqlen_offsets=torch.tensor([0, 1, 2])), ValueError, "seqlen_offsets"),
        ("offsets-dtype", dict(seqlen_offsets=torch.tensor([0.0, 1.0])), TypeError, "seqlen_offsets"),
        ("offsets-float", dict(seqlen_offsets=1.5), TypeError, "seqlen_offsets"),
        ("interleaved-type", dict(interleaved="yes"), TypeError, "interleaved"),
        ("cos-requires-grad", dict(cos=cos.clone().requires_grad_()), NotImplementedError, "cos"),
    ], dict(x=x, cos=cos, sin=sin)


_FB, _FDEF = _flash_bad()


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("bad", _FB, ids=[b[0] for b in _FB])
def test_apply_rotary_emb_bad_input(bad, backend):
    _, override, err, name = bad
    kw = {**_FDEF, **override}
    with pytest.raises(err, match=name):
        flashkernels.apply_rotary_emb(kw.pop("x"), kw.pop("cos"), kw.pop("sin"), **kw, backend=backend)


def _hf_bad():
    q, k = torch.randn(2, 4, 6, 16), torch.randn(2, 2, 6, 16)
    cos, sin = torch.randn(2, 6, 16), torch.randn(2, 6, 16)
    return [
        ("q-rank", dict(q=q[0]), ValueError, "q"),
        ("k-dtype", dict(k=k.half()), TypeError, "k"),
        ("k-seqlen", dict(k=k[:, :, :5]), ValueError, "k"),
        ("k-head-dim", dict(k=k[..., :8]), ValueError, "k"),
        ("cos-seqlen", dict(cos=cos[:, :5], sin=sin[:, :5]), ValueError, "cos"),
        ("cos-batch", dict(cos=cos.repeat(2, 1, 1), sin=sin.repeat(2, 1, 1)), ValueError, "cos"),
        ("sin-shape", dict(sin=sin[0]), ValueError, "sin"),
        ("cos-dtype", dict(cos=cos.double(), sin=sin.double()), TypeError, "cos"),
        ("rotary-dim-odd", dict(cos=cos[..., :7], sin=sin[..., :7]), ValueError, "cos"),
        ("rotary-dim-too-large", dict(cos=torch.randn(2, 6, 18), sin=torch.randn(2, 6, 18)), ValueError, "cos"),
        ("unsqueeze-dim", dict(unsqueeze_dim=3), ValueError, "unsqueeze_dim"),
        ("position-ids-with-3d-table", dict(position_ids=torch.zeros(2, 6, dtype=torch.long)), ValueError, "cos"),
        ("position-ids-too-large", dict(cos=torch.randn(8, 16), sin=torch.randn(8, 16),
                                        position_ids=torch.full((2, 6), 8)), ValueError, "position_ids"),
        ("position-ids-shape", dict(cos=torch.randn(8, 16), sin=torch.randn(8, 16),
                                    position_ids=torch.zeros(2, 5, dtype=torch.long)), ValueError, "position_ids"),
        ("position-ids-dtype", dict(cos=torch.randn(8, 16), sin=torch.randn(8, 16),
                                    position_ids=torch.zeros(2, 6)), TypeError, "position_ids"),
        ("sin-requires-grad", dict(sin=sin.clone().requires_grad_()), NotImplementedError, "sin"),
    ], dict(q=q, k=k, cos=cos, sin=sin)


_HB, _HDEF = _hf_bad()


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("bad", _HB, ids=[b[0] for b in _HB])
def test_apply_rotary_pos_emb_bad_input(bad, backend):
    _, override, err, name = bad
    kw = {**_HDEF, **override}
    with pytest.raises(err, match=name):
        flashkernels.apply_rotary_pos_emb(kw.pop("q"), kw.pop("k"), kw.pop("cos"), kw.pop("sin"), **kw,
                                          backend=backend)


def test_bad_inputs_pass_when_fixed():
    """The defaults of the bad-input tables are valid (so each case fails for its one change)."""
    kw = dict(_FDEF)
    flashkernels.apply_rotary_emb(kw.pop("x"), kw.pop("cos"), kw.pop("sin"), backend="triton")
    kw = dict(_HDEF)
    flashkernels.apply_rotary_pos_emb(kw.pop("q"), kw.pop("k"), kw.pop("cos"), kw.pop("sin"), backend="triton")


# --------------------------------------------------------------------------------------------
# nn.RotaryEmbedding
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
def test_rotary_embedding_module(interleaved, monkeypatch):
    monkeypatch.setenv("FLASHKERNELS_BACKEND", "triton")
    m = fnn.RotaryEmbedding(16, max_seqlen=32, base=500.0, interleaved=interleaved)
    x = randn(2, 5, 3, 24)
    out = m(x, seqlen_offsets=4)
    th = angles(torch.arange(32), 16, base=500.0)
    ref = flash_rope64(x.double(), th.cos(), th.sin(), interleaved, 4)
    assert (out.double() - ref).abs().max().item() <= FP32_SEED_TARGET
    assert m.state_dict() == {}
    # relative rotation: <R(p) a, R(p') b> depends on p - p' only
    a, b = randn(1, 1, 1, 16).expand(1, 2, 1, 16), randn(1, 1, 1, 16).expand(1, 2, 1, 16)
    ra, rb = m(a.contiguous(), seqlen_offsets=3), m(b.contiguous(), seqlen_offsets=9)
    d1 = (ra[0, 0] * rb[0, 0]).sum()  # positions 3 and 9
    d2 = (ra[0, 1] * rb[0, 1]).sum()  # positions 4 and 10
    torch.testing.assert_close(d1, d2, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# GPU only: bf16, opcheck, torch.compile
# --------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("case", [FCase(bf16, 2, 17, 3, 64, 64), FCase(bf16, 3, 9, 2, 59, 32, interleaved=True,
                                                                        offsets="tensor", layout="packed")],
                         ids=lambda c: c.id)
def test_apply_rotary_emb_bf16(case):
    check_flash(case)


@pytest.mark.gpu
@pytest.mark.parametrize("case", [HCase(bf16, 2, 4, 2, 13, 64, 64), HCase(bf16, 2, 6, 2, 9, 48, 16, unsqueeze_dim=2,
                                                                         table="pos_ids", layout="packed")],
                         ids=lambda c: c.id)
def test_apply_rotary_pos_emb_bf16(case):
    check_hf(case)


@pytest.mark.gpu
@pytest.mark.no_poison
def test_rope_opcheck():
    from flashkernels.ops.rope import autograd  # noqa: F401  (registers the ops)

    x = randn(2, 9, 3, 40, device="cuda", dtype=f16, requires_grad=True)
    th = angles(torch.arange(12), 32)
    cos, sin = th.cos().to("cuda", f16)[None], th.sin().to("cuda", f16)[None]
    offs = torch.tensor([1, 3], device="cuda")
    torch.library.opcheck(torch.ops.flashkernels.rope.default, (x, cos, sin, offs, 1, 0, 1, True, False, False))
    q, k = randn(2, 4, 9, 40, device="cuda", requires_grad=True), randn(2, 2, 9, 40, device="cuda", requires_grad=True)
    e = torch.cat((th, th), -1)[:9]
    c2, s2 = e.cos().float().cuda()[None], e.sin().float().cuda()[None]
    torch.library.opcheck(torch.ops.flashkernels.rope_qk.default, (q, k, c2, s2, None, 0, 2, True, False))


@pytest.mark.gpu
@pytest.mark.no_poison
def test_rope_torch_compile():
    x = randn(2, 9, 3, 40, device="cuda", dtype=f16, requires_grad=True)
    th = angles(torch.arange(12), 32)
    cos, sin = th.cos().to("cuda", f16), th.sin().to("cuda", f16)
    fn = torch.compile(lambda t: flashkernels.apply_rotary_emb(t, cos, sin, False, 2, backend="triton"),
                       fullgraph=True)
    out = fn(x)
    ref = flashkernels.apply_rotary_emb(x, cos, sin, False, 2, backend="triton")
    assert torch.equal(out, ref)
    g1, = torch.autograd.grad(out.sum(), x)
    g2, = torch.autograd.grad(ref.sum(), x)
    assert torch.equal(g1, g2)


def test_unchecked_offsets_take_no_host_sync(monkeypatch):
    """check_inputs=False: the API reads no tensor value back on the host before the launch
    (the launch itself is stubbed out here: the interpreter reads values by design)."""
    import flashkernels.ops.rope.autograd as rope_autograd

    launched = []
    monkeypatch.setattr(rope_autograd, "rope", lambda x, *a, **k: launched.append(a) or x)

    def refuse(*_a, **_k):
        raise AssertionError("host sync: a tensor value was read back")

    x, cos, sin = randn(3, 5, 2, 16), randn(12, 8), randn(12, 8)
    offsets = torch.tensor([0, 7, 40])
    with monkeypatch.context() as m:
        for name in ("__int__", "item", "tolist", "__bool__", "__index__"):
            m.setattr(torch.Tensor, name, refuse)
        flashkernels.apply_rotary_emb(x, cos, sin, seqlen_offsets=offsets, check_inputs=False, backend="triton")
        with pytest.raises(AssertionError, match="host sync"):  # the checked call does read them
            flashkernels.apply_rotary_emb(x, cos, sin, seqlen_offsets=offsets, backend="triton")
    assert len(launched) == 1


def test_unchecked_offsets_are_clamped_into_the_tables():
    """Positions past the tables read the last row (the kernel never leaves cos/sin)."""
    x = randn(3, 5, 2, 16)
    cos, sin = randn(12, 8), randn(12, 8)
    offsets = torch.tensor([0, 7, 40])  # 40 + 4 runs past the 12 positions
    out = flashkernels.apply_rotary_emb(x, cos, sin, seqlen_offsets=offsets, check_inputs=False, backend="triton")
    pos = (torch.arange(5)[None, :] + offsets[:, None]).clamp(max=11)
    c, s = cos[pos][:, :, None, :], sin[pos][:, :, None, :]  # (B, S, 1, 8)
    x1, x2 = x[..., :8], x[..., 8:]
    want = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)


def test_checked_offsets_still_refuse_out_of_range():
    x, cos, sin = randn(3, 5, 2, 16), randn(12, 8), randn(12, 8)
    with pytest.raises(ValueError, match=r"seqlen_offsets: expected values in \[0, 7\]"):
        flashkernels.apply_rotary_emb(x, cos, sin, seqlen_offsets=torch.tensor([0, 7, 40]), backend="triton")
