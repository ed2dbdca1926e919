"""One attention check, run through a public function and held to the tolerance policy.

A :class:`Case` names the function (``sdpa`` = ``scaled_dot_product_attention``, (B, H, S, D),
causal top-left, masks; ``fa`` = ``flash_attn_func``, (B, S, H, D), causal bottom-right, lse),
the shapes, and how the inputs and the output gradient are laid out in memory. :func:`check_case`
runs it on a backend and compares out, lse and (optionally) dq, dk, dv against the float64 math
of helpers.py, with the same-precision reference (reference.py in the input dtype) as ``pt``.
Used by the interpreter tests (CPU) and the GPU tests alike.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import flashkernels
from flashkernels.ops.attention.reference import attention_reference
from helpers import FP32_SEED_TARGET, assert_close_policy, data_magnitude, make_mask, naive_attention, randn

DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}

# mask spec "kind:shape[:variant]": shape letters b/h/q/k give that dim, 1 a broadcast dim;
# variants: "fp16" (mask in float16), "ninf" (float mask with -inf entries), "t" (a
# non-contiguous transposed view).
_DIMS = dict(b=0, h=1, q=2, k=3)


@dataclass(frozen=True)
class Case:
    api: str                     # "sdpa" | "fa"
    dtype: torch.dtype
    B: int
    Hq: int
    Hkv: int
    Sq: int
    Sk: int
    D: int
    causal: bool = False
    mask: str | None = None      # sdpa only, e.g. "bool:b1qk", "float:1hqk:fp16", "bool:qk:t"
    inputs: str = "contig"       # contig | transposed | strided | packed | lastdim
    grad_out: str = "contig"     # contig | transposed | lastdim
    scale: float | None = None
    backward: bool = True
    lse_grad: bool = False       # fa only: a gradient arrives at lse as well as at out

    @property
    def id(self) -> str:
        heads = f"h{self.Hq}" if self.Hq == self.Hkv else f"h{self.Hq}x{self.Hkv}"
        parts = [self.api, DTYPE_NAMES[self.dtype], f"b{self.B}", heads,
                 f"q{self.Sq}-k{self.Sk}", f"d{self.D}"]
        if self.causal:
            parts.append("causal")
        if self.mask:
            parts.append("mask-" + self.mask.replace(":", "-"))
        if self.inputs != "contig":
            parts.append(f"in-{self.inputs}")
        if self.backward and self.grad_out != "contig":
            parts.append(f"dout-{self.grad_out}")
        if self.scale is not None:
            parts.append(f"scale{self.scale:g}")
        if self.lse_grad:
            parts.append("dlse")
        if not self.backward:
            parts.append("fwd")
        return "-".join(parts)

    @property
    def align(self):
        if not self.causal:
            return None
        return "top_left" if self.api == "sdpa" else "bottom_right"


def make_inputs(case: Case, device, *, magnitude=1.0, requires_grad=True):
    """q, k, v in the case's API layout and memory layout (views of larger tensors where the
    case says so). Gradients are taken with respect to these views."""
    B, Hq, Hkv, Sq, Sk, D = case.B, case.Hq, case.Hkv, case.Sq, case.Sk, case.D
    kw = dict(dtype=case.dtype, device=device, magnitude=magnitude)
    sdpa = case.api == "sdpa"

    def api_shape(h, s):
        return (B, h, s, D) if sdpa else (B, s, h, D)

    if case.inputs == "packed":
        # one (B, S, Hq + 2 Hkv, D) buffer, q/k/v are head slices of it
        assert Sq == Sk, "packed qkv needs Sq == Sk"
        base = randn(B, Sq, Hq + 2 * Hkv, D, **kw).requires_grad_(requires_grad)
        views = base[:, :, :Hq], base[:, :, Hq:Hq + Hkv], base[:, :, Hq + Hkv:]
        return tuple(x.transpose(1, 2) if sdpa else x for x in views)

    out = []
    for h, s in ((Hq, Sq), (Hkv, Sk), (Hkv, Sk)):
        shape = api_shape(h, s)
        if case.inputs == "contig":
            x = randn(*shape, **kw).requires_grad_(requires_grad)
        elif case.inputs == "transposed":  # the other layout, transposed into this one
            base = randn(shape[0], shape[2], shape[1], shape[3], **kw).requires_grad_(requires_grad)
            x = base.transpose(1, 2)
        elif case.inputs == "strided":  # x[:, ::2]
            base = randn(shape[0], 2 * shape[1], shape[2], shape[3], **kw).requires_grad_(requires_grad)
            x = base[:, ::2]
        elif case.inputs == "lastdim":  # last-dim stride != 1: the API must copy
            base = randn(shape[0], shape[1], shape[3], shape[2], **kw).requires_grad_(requires_grad)
            x = base.transpose(-1, -2)
        else:
            raise ValueError(case.inputs)
        out.append(x)
    return tuple(out)


def make_case_mask(case: Case, device):
    if case.mask is None:
        return None
    kind, dims, *variant = case.mask.split(":")
    full = (case.B, case.Hq, case.Sq, case.Sk)
    shape = tuple(full[_DIMS[c]] if c in _DIMS else 1 for c in dims)
    dtype = torch.float16 if "fp16" in variant else torch.float32
    if "t" in variant:  # build transposed, hand over a non-contiguous view
        m = make_mask(kind, shape[:-2] + shape[-2:][::-1], device=device, dtype=dtype).transpose(-1, -2)
    else:
        m = make_mask(kind, shape, device=device, dtype=dtype)
    if "ninf" in variant:
        m = m.masked_fill(torch.rand(shape, device=device) < 0.3, -math.inf)
    return m


def make_grad_out(case: Case, out: torch.Tensor):
    if case.grad_out == "contig":
        return torch.randn_like(out, memory_format=torch.contiguous_format)
    if case.grad_out == "transposed":
        s = out.shape
        return randn(s[0], s[2], s[1], s[3], dtype=out.dtype, device=out.device).transpose(1, 2)
    if case.grad_out == "lastdim":
        return randn(*out.shape[:-1], 2 * out.shape[-1], dtype=out.dtype, device=out.device)[..., ::2]
    raise ValueError(case.grad_out)


def to_bhsd(case: Case, x):
    return x if case.api == "sdpa" else x.transpose(1, 2)


def call(case: Case, q, k, v, mask, backend):
    """(out, lse or None) from the case's public function."""
    if case.api == "sdpa":
        out = flashkernels.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=case.causal, scale=case.scale,
            enable_gqa=case.Hq != case.Hkv, backend=backend)
        return out, None
    out, lse, probs = flashkernels.flash_attn_func(
        q, k, v, causal=case.causal, softmax_scale=case.scale, return_attn_probs=True, backend=backend)
    assert probs is None
    return out, lse


def kernel_lse(case: Case, q, k, v, mask):
    """lse of the Triton forward for an sdpa case (the public function returns only out), via
    the registered custom op torch.ops.flashkernels.attn_fwd."""
    import flashkernels.ops.attention.launch  # noqa: F401  (registers the op)

    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    scale = case.scale if case.scale is not None else 1.0 / math.sqrt(case.D)
    offset = 0  # sdpa: top-left
    # ..., scale, causal, causal_offset, bshd, allow_tf32, window_left, window_right, softcap
    _, lse = torch.ops.flashkernels.attn_fwd(q.detach(), k.detach(), v.detach(), mask, scale,
                                             case.causal, offset, False, False, -1, -1, 0.0)
    return lse


def _rel(target, ref):
    """``target`` scaled by the reference's magnitude when that is above 1."""
    if target is None:
        return None
    finite = ref[torch.isfinite(ref)]
    return target * max(1.0, finite.abs().max().item() if finite.numel() else 0.0)


@dataclass
class Result:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    out: torch.Tensor
    lse: torch.Tensor | None
    grads: tuple | None
    errs: dict


def check_case(case: Case, *, device="cpu", backend="triton", magnitude=1.0, mask=None) -> Result:
    """Run ``case`` and hold out, lse and gradients to the policy. ``mask`` overrides the case's
    mask spec. Returns the tensors and the errors found. (conftest fills the kernels' output
    allocations with NaN first, so an unwritten element fails the NaN check.)"""
    q, k, v = make_inputs(case, device, magnitude=magnitude, requires_grad=case.backward)
    if mask is None:
        mask = make_case_mask(case, device)
    out, lse = call(case, q, k, v, mask, backend)
    B, Hq, Sq, D = case.B, case.Hq, case.Sq, case.D
    expect_shape = (B, Hq, Sq, D) if case.api == "sdpa" else (B, Sq, Hq, D)
    assert out.shape == expect_shape and out.dtype == case.dtype and out.device == q.device
    if lse is None and backend == "triton":
        lse = kernel_lse(case, q, k, v, mask)
    # The fp32 target (1e-5 from float64) is for unit-scale inputs: unit magnitude and the
    # default softmax scale. A larger scale sharpens the softmax and grows the gradients (with
    # scale 0.3 at D=192, torch's own fp32 dq is 2e-5 off), which the 2x/3x rule covers.
    seed = (FP32_SEED_TARGET if case.dtype == torch.float32 and magnitude == 1.0
            and case.scale is None else None)

    qb, kb, vb = (to_bhsd(case, x) for x in (q, k, v))
    kw = dict(scale=case.scale, causal=case.causal, causal_align=case.align or "top_left", mask=mask)
    pt_q, pt_k, pt_v = (x.detach().requires_grad_(case.backward) for x in (qb, kb, vb))
    pt_out, pt_lse = attention_reference(pt_q, pt_k, pt_v, compute_dtype=case.dtype, **kw)
    ref_q, ref_k, ref_v = (x.detach().double().requires_grad_(case.backward) for x in (qb, kb, vb))
    ref_out, ref_lse = naive_attention(ref_q, ref_k, ref_v, scale=case.scale, causal=case.align, mask=mask)

    errs = {}
    mag = data_magnitude(q, k, v)
    errs["out"] = assert_close_policy(to_bhsd(case, out), ref_out, pt_out, name="out", seed_target=seed,
                                      data_magnitude=mag)
    # lse and the gradients are not unit-scale even at unit-scale inputs (lse ~ log Sk, dv sums
    # P dO over every query that sees a key): the fp32 target is taken relative to their size.
    if lse is not None:
        assert lse.shape == (B, Hq, Sq) and lse.dtype == torch.float32
        errs["lse"] = assert_close_policy(lse, ref_lse, pt_lse, name="lse", seed_target=_rel(seed, ref_lse),
                                          data_magnitude=mag)
    if not case.backward:
        return Result(q, k, v, out, lse, None, errs)

    dout = make_grad_out(case, out)
    doutb = to_bhsd(case, dout)
    outs, pt_outs, ref_outs, douts = (out,), (pt_out,), (ref_out,), (dout,)
    if case.lse_grad:  # d lse / d scores = softmax: the backward folds it into its row term
        assert case.api == "fa"
        dlse = randn(B, Hq, Sq, device=q.device)
        outs, pt_outs, ref_outs, douts = (out, lse), (pt_out, pt_lse), (ref_out, ref_lse), (dout, dlse)
    grads = torch.autograd.grad(outs, (q, k, v), douts)
    pt_grads = torch.autograd.grad(pt_outs, (pt_q, pt_k, pt_v), (doutb,) + douts[1:])
    ref_grads = torch.autograd.grad(ref_outs, (ref_q, ref_k, ref_v),
                                    (doutb.double(),) + tuple(d.double() for d in douts[1:]))
    gmag = max(mag, data_magnitude(*douts))
    for name, g, x, g_pt, g_ref in zip(("dq", "dk", "dv"), grads, (q, k, v), pt_grads, ref_grads):
        assert g.shape == x.shape and g.dtype == x.dtype, f"{name}: {g.shape} {g.dtype}"
        errs[name] = assert_close_policy(to_bhsd(case, g), g_ref, g_pt, factor=3.0, name=name,
                                         seed_target=_rel(seed, g_ref), data_magnitude=gmag)
    return Result(q, k, v, out, lse, grads, errs)
