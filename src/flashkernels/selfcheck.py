"""``flashkernels check``: run every attention kernel on this machine against float64 math.

For each case (op, backend, dtype, shape, causal/mask/GQA variant) the outputs and, for the
backward, the gradients are compared with the float64 reference ``ref``
(:func:`flashkernels.ops.attention.reference.attention_reference` on upcast inputs) under the
policy of the test suite (shared/TESTING.md, the FlashAttention rule):

    forward:   max|out - ref| <= 2 * max|pt - ref| + atol
    gradients: max|g - g_ref| <= 3 * max|g_pt - g_ref| + atol

where ``pt`` is the same reference computed in the input dtype (``compute_dtype=dtype``) and
``atol`` is one rounding step of the dtype at the magnitude of ``ref``. fp32 outputs must also be
within 1e-5 of float64 (inputs are unit-scale normals). Positions where ``ref`` is not finite
(lse = -inf on a row that sees no key) must match exactly; a NaN anywhere fails.

On a CUDA GPU the Triton kernels run compiled on medium shapes in fp16, bf16 and fp32. On a CPU
the reference path runs, and the Triton kernels run through Triton's interpreter
(``TRITON_INTERPRET=1``, which the CLI sets itself) on small fp32 and fp16 shapes (the
interpreter has no bf16).
"""
from __future__ import annotations

import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field

import torch

FP32_TARGET = 1e-5
SHORT = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


@dataclass(frozen=True)
class Case:
    """One call to check. Shapes are (B, Hq, Hkv, Sq, Sk, D); ``mask`` None, "bool" or "float"."""

    op: str  # "sdpa" | "flash_attn_func" | "varlen" (B packed sequences) | "kvcache" (B cache rows)
    backend: str  # "triton" | "reference"
    dtype: torch.dtype
    B: int
    Hq: int
    Hkv: int
    Sq: int
    Sk: int
    D: int
    causal: bool = False
    mask: str | None = None
    bwd: bool = True
    window: tuple[int, int] = (-1, -1)  # flash_attn_func / varlen / kvcache
    softcap: float = 0.0
    alibi: bool = False
    sink: bool = False  # flash_attn_func / varlen
    page: int = 0  # kvcache: 0 contiguous, else the page size

    @property
    def gqa(self) -> bool:
        return self.Hq != self.Hkv

    def shape(self) -> str:
        heads = f"{self.Hq}/{self.Hkv}" if self.gqa else f"{self.Hq}"
        return f"{self.B}x{heads}x{self.Sq}x{self.Sk}x{self.D}"

    def variant(self) -> str:
        parts = []
        if self.causal:
            parts.append("causal-br" if self.op == "flash_attn_func" else "causal")
        if self.mask:
            parts.append(f"{self.mask}-mask")
        if self.gqa:
            parts.append("mqa" if self.Hkv == 1 else "gqa")
        if self.window != (-1, -1):
            parts.append(f"win{self.window[0]},{self.window[1]}")
        parts += ["softcap"] * bool(self.softcap) + ["alibi"] * self.alibi + ["sink"] * self.sink
        if self.page:
            parts.append(f"page{self.page}")
        return "+".join(parts) or "full"


@dataclass
class Row:
    case: Case
    mode: str  # "fwd", "lse", "bwd:dq", ...
    err: float = math.nan
    bound: float = math.nan
    ok: bool = False
    note: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if not r.ok]


# ------------------------------------------------------------------------------------ plans
def cpu_cases() -> list[Case]:
    """Small enough for the interpreter: the whole plan runs in well under a minute on 2 cores.
    Odd sizes on purpose (Sq, Sk not multiples of the 16/32 interpreter blocks, D not a power of
    two) so the masked tails of every loop run."""
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    ref = [
        Case("sdpa", "reference", f32, 2, 4, 2, 113, 203, 40, causal=True),
        Case("sdpa", "reference", f16, 2, 4, 4, 127, 129, 64, mask="bool"),
        Case("sdpa", "reference", bf16, 2, 4, 1, 65, 97, 59, mask="float"),
        Case("flash_attn_func", "reference", bf16, 2, 4, 2, 203, 113, 32, causal=True),
        Case("flash_attn_func", "reference", f32, 1, 2, 2, 1, 239, 128),
    ]
    tri = [
        Case("sdpa", "triton", f32, 1, 2, 2, 37, 45, 32),
        Case("sdpa", "triton", f32, 1, 4, 2, 45, 37, 40, causal=True),
        Case("sdpa", "triton", f16, 1, 2, 1, 33, 47, 16, mask="bool"),
        Case("sdpa", "triton", f32, 2, 2, 2, 19, 35, 24, mask="float"),
        Case("flash_attn_func", "triton", f16, 1, 4, 2, 33, 50, 32, causal=True),
        Case("flash_attn_func", "triton", f32, 1, 2, 2, 50, 33, 16, causal=True),
        Case("sdpa", "triton", f32, 1, 2, 1, 67, 70, 59, causal=True),
        Case("sdpa", "triton", f16, 1, 4, 4, 1, 77, 64, causal=True),
        Case("sdpa", "triton", f32, 2, 4, 2, 29, 41, 32, mask="bool"),
        Case("flash_attn_func", "triton", f16, 1, 2, 2, 96, 96, 64),
        Case("flash_attn_func", "triton", f32, 1, 4, 2, 41, 53, 16, causal=True, window=(9, -1), softcap=5.0,
             alibi=True, sink=True),
        Case("varlen", "triton", f16, 3, 4, 2, 40, 47, 32, causal=True, alibi=True, sink=True),
        Case("kvcache", "triton", f32, 2, 8, 2, 3, 70, 32, causal=True, page=16, bwd=False),
        Case("kvcache", "triton", f16, 3, 4, 1, 1, 90, 64, softcap=10.0, alibi=True, bwd=False),
    ]
    return ref + tri


def gpu_cases() -> list[Case]:
    """Medium shapes on the compiled kernels: every dtype, causal and not, both mask kinds, GQA
    and MQA, odd lengths, non-power-of-two head dims; plus the reference path once. Head dims are
    shared between cases where the point is something else, so that the number of distinct
    kernel specialisations (each a compile of a few seconds) stays around a dozen."""
    cases = []
    for dt in (torch.float16, torch.bfloat16, torch.float32):
        cases += [
            Case("sdpa", "triton", dt, 2, 8, 8, 1023, 1024, 64),
            Case("sdpa", "triton", dt, 2, 8, 2, 1024, 1023, 128, causal=True),
            Case("sdpa", "triton", dt, 2, 4, 4, 511, 769, 128, mask="bool"),
            Case("flash_attn_func", "triton", dt, 2, 8, 2, 700, 1100, 128, causal=True),
        ]
    cases += [
        Case("sdpa", "triton", torch.bfloat16, 1, 8, 1, 257, 1000, 128, mask="float"),
        Case("sdpa", "triton", torch.bfloat16, 1, 4, 4, 513, 513, 256, causal=True),
        Case("flash_attn_func", "triton", torch.bfloat16, 2, 4, 4, 1100, 700, 80, causal=True),
        Case("sdpa", "triton", torch.float16, 2, 4, 2, 333, 301, 40, mask="bool"),
        Case("sdpa", "reference", torch.float32, 2, 4, 2, 300, 301, 64, causal=True),
        # the cases of the Gluon Hopper forward (on an H100; the Triton kernel elsewhere)
        Case("flash_attn_func", "triton", torch.bfloat16, 2, 8, 2, 1024, 1024, 128, causal=True),
        Case("flash_attn_func", "triton", torch.float16, 1, 8, 8, 512, 512, 128),
        Case("flash_attn_func", "triton", torch.bfloat16, 1, 4, 2, 512, 512, 256, causal=True),
        Case("flash_attn_func", "triton", torch.bfloat16, 2, 8, 2, 700, 1100, 128, causal=True, window=(256, -1),
             softcap=30.0, alibi=True, sink=True),
        Case("varlen", "triton", torch.bfloat16, 6, 8, 2, 900, 1000, 128, causal=True),
        Case("kvcache", "triton", torch.bfloat16, 4, 32, 8, 1, 5000, 128, page=256, bwd=False),
        Case("kvcache", "triton", torch.float16, 2, 8, 8, 64, 3000, 64, causal=True, bwd=False),
    ]
    return cases


# ----------------------------------------------------------------------------------- compare
def _ulp_at(magnitude: float, dtype: torch.dtype) -> float:
    fi = torch.finfo(dtype)
    if not magnitude >= fi.tiny:
        return fi.tiny
    return fi.eps * 2.0 ** math.floor(math.log2(magnitude))


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| where b is finite; inf if a has a NaN, or differs from b where b is not finite,
    or is not finite where b is."""
    a, b = a.detach().double(), b.detach().double()
    if a.shape != b.shape:
        return math.inf
    if a.numel() == 0:
        return 0.0
    fin = torch.isfinite(b)
    if a.isnan().any() or (~fin & (a != b)).any() or (fin & ~torch.isfinite(a)).any():
        return math.inf
    return (a - b).abs().where(fin, torch.zeros_like(a)).max().item()


def _compare(case: Case, mode: str, out, ref, pt, dtype, factor: float, target: float | None) -> Row:
    fin = ref[torch.isfinite(ref)]
    mag = fin.abs().max().item() if fin.numel() else 0.0
    err = _max_err(out, ref)
    pt_err = _max_err(pt, ref)
    if not math.isfinite(pt_err):  # an infinite bound would pass anything: fail instead
        return Row(case, mode, err, math.inf, False, "the same-precision reference is not finite")
    bound = factor * pt_err + _ulp_at(mag, dtype)
    if target is not None:
        bound = min(bound, target)
    note = "" if math.isfinite(err) else "NaN/inf, or wrong where the reference is not finite"
    return Row(case, mode, err, bound, err <= bound, note)


# --------------------------------------------------------------------------------------- run
def _inputs(case: Case, device: torch.device, gen: torch.Generator):
    """q, k, v leaves in the op's own layout (B,H,S,D for sdpa, B,S,H,D for flash_attn_func),
    the mask, and a function giving the (B,H,S,D) view of a tensor in that layout."""
    bshd = case.op == "flash_attn_func"

    def rnd(h, s):
        shape = (case.B, s, h, case.D) if bshd else (case.B, h, s, case.D)
        # drawn in fp32 on the CPU then cast: the same numbers whatever the device
        return torch.randn(shape, generator=gen).to(device=device, dtype=case.dtype)

    q, k, v = rnd(case.Hq, case.Sq), rnd(case.Hkv, case.Sk), rnd(case.Hkv, case.Sk)
    mask = None
    if case.mask == "bool":  # broadcast over heads; row 0 of batch 0 sees no key at all
        mask = torch.rand((case.B, 1, case.Sq, case.Sk), generator=gen) < 0.7
        mask[0, 0, 0, :] = False
        mask = mask.to(device)
    elif case.mask == "float":  # broadcast over batch
        mask = torch.randn((1, case.Hq, case.Sq, case.Sk), generator=gen).to(device=device, dtype=case.dtype)
    view = (lambda x: x.transpose(1, 2)) if bshd else (lambda x: x)
    return (q, k, v), mask, view


def _call(case: Case, q, k, v, mask, alibi=None, sink=None):
    import flashkernels

    if case.op == "sdpa":
        out = flashkernels.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=case.causal,
                                                        enable_gqa=case.gqa, backend=case.backend)
        return out, None
    out, lse, _ = flashkernels.flash_attn_func(q, k, v, causal=case.causal, return_attn_probs=True,
                                               window_size=case.window, softcap=case.softcap, alibi_slopes=alibi,
                                               learnable_sink=sink, backend=case.backend)
    return out, lse


def _features(case: Case, device: torch.device, gen: torch.Generator, batch: int):
    """(alibi slopes (batch, Hq) float32 or None, sink (Hq,) float32 or None) for the case."""
    alibi = (torch.rand((batch, case.Hq), generator=gen) * 0.5).to(device) if case.alibi else None
    sink = torch.randn(case.Hq, generator=gen).to(device) if case.sink else None
    return alibi, sink


def run_packed_case(case: Case, device: torch.device, gen: torch.Generator) -> list[Row]:
    """varlen: B sequences of random lengths up to (Sq, Sk), packed; kvcache: B cache rows of
    random valid lengths up to Sk (paged when case.page), Sq new queries a row, no backward.
    Each sequence / row is checked against attention_reference on it alone."""
    import flashkernels
    from .ops.attention.reference import attention_reference

    lens_q = torch.randint(1, case.Sq + 1, (case.B,), generator=gen).tolist()
    lens_k = torch.randint(1, case.Sk + 1, (case.B,), generator=gen).tolist()
    if case.op == "kvcache":
        lens_q = [case.Sq] * case.B
        lens_k = [max(n, case.Sq) for n in lens_k]
    alibi, sink = _features(case, device, gen, case.B)
    rnd = lambda *shape: torch.randn(shape, generator=gen).to(device=device, dtype=case.dtype)  # noqa: E731
    kw = dict(causal=case.causal, window_size=case.window, softcap=case.softcap, alibi_slopes=alibi)
    if case.op == "varlen":
        cu_q = torch.tensor([0] + torch.tensor(lens_q).cumsum(0).tolist(), dtype=torch.int32, device=device)
        cu_k = torch.tensor([0] + torch.tensor(lens_k).cumsum(0).tolist(), dtype=torch.int32, device=device)
        q, k, v = rnd(sum(lens_q), case.Hq, case.D), rnd(sum(lens_k), case.Hkv, case.D), rnd(sum(lens_k), case.Hkv,
                                                                                            case.D)
        leaves = [t.clone().requires_grad_(case.bwd) for t in (q, k, v)]
        with torch.set_grad_enabled(case.bwd):
            out, lse, _ = flashkernels.flash_attn_varlen_func(*leaves, cu_q, cu_k, max(lens_q), max(lens_k),
                                                              learnable_sink=sink, return_attn_probs=True,
                                                              backend=case.backend, **kw)
        seqs = [(slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1]))) for b in range(case.B)]
        parts = lambda t, s: t[s].transpose(0, 1)[None]  # noqa: E731  (1, H, S, D)
    else:
        cap = case.Sk if not case.page else -(-case.Sk // case.page) * case.page
        kc, vc = rnd(case.B, cap, case.Hkv, case.D), rnd(case.B, cap, case.Hkv, case.D)
        q = rnd(case.B, case.Sq, case.Hq, case.D)
        seqlens = torch.tensor(lens_k, dtype=torch.int32, device=device)
        if case.page:
            per = cap // case.page
            perm = torch.randperm(case.B * per, generator=gen).to(device)
            table = perm.view(case.B, per).to(torch.int32)
            pages = torch.empty(case.B * per, case.page, case.Hkv, case.D, dtype=case.dtype, device=device)
            kp, vp = pages.clone(), pages.clone()
            kp[perm] = kc.reshape(case.B * per, case.page, case.Hkv, case.D)
            vp[perm] = vc.reshape(case.B * per, case.page, case.Hkv, case.D)
            out, lse = flashkernels.flash_attn_with_kvcache(q, kp, vp, cache_seqlens=seqlens, block_table=table,
                                                            return_softmax_lse=True, backend=case.backend, **kw)
        else:
            out, lse = flashkernels.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=seqlens, return_softmax_lse=True,
                                                            backend=case.backend, **kw)
        leaves = None
        seqs = [(b, b) for b in range(case.B)]
        qkv = (q, kc, vc)
    rows, outs, refs, pts, lses, ref_lses, pt_lses = [], [], [], [], [], [], []
    for b, (sq, sk) in enumerate(seqs):
        if case.op == "varlen":
            qb, kb, vb = parts(q, sq), parts(k, sk), parts(v, sk)
            o_b, l_b = parts(out, sq), lse[:, sq][None]
        else:
            qb = qkv[0][b].transpose(0, 1)[None]
            kb, vb = (t[b, :lens_k[b]].transpose(0, 1)[None] for t in qkv[1:])
            o_b, l_b = out[b].transpose(0, 1)[None], lse[b][None]
        a_b = None if alibi is None else alibi[b]
        ref_o, ref_l = attention_reference(qb.double(), kb.double(), vb.double(), causal=case.causal,
                                           causal_align="bottom_right", compute_dtype=torch.float64,
                                           alibi_slopes=a_b, sink=None if sink is None else sink.double(),
                                           window_size=case.window, softcap=case.softcap)
        pt_o, pt_l = attention_reference(qb, kb, vb, causal=case.causal, causal_align="bottom_right",
                                         compute_dtype=case.dtype, alibi_slopes=a_b, sink=sink,
                                         window_size=case.window, softcap=case.softcap)
        outs.append(o_b.flatten())
        refs.append(ref_o.flatten())
        pts.append(pt_o.flatten())
        lses.append(l_b.flatten())
        ref_lses.append(ref_l.flatten())
        pt_lses.append(pt_l.flatten())
    target = FP32_TARGET if case.dtype == torch.float32 else None
    rows.append(_compare(case, "fwd", torch.cat(outs), torch.cat(refs), torch.cat(pts), case.dtype, 2.0, target))
    rows.append(_compare(case, "fwd:lse", torch.cat(lses), torch.cat(ref_lses), torch.cat(pt_lses), torch.float32,
                         2.0, target))
    if case.bwd and leaves is not None:  # varlen backward against the reference on the packed tensors
        dout = rnd(*out.shape)
        grads = torch.autograd.grad(out, leaves, dout)
        leaves64 = [t.detach().double().requires_grad_() for t in (q, k, v)]
        leaves_pt = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        from .ops.attention.reference import varlen_attention_reference
        ref_out, _ = varlen_attention_reference(*leaves64, cu_q, cu_k, causal=case.causal, window_size=case.window,
                                                softcap=case.softcap, alibi_slopes=alibi,
                                                sink=None if sink is None else sink.double(),
                                                compute_dtype=torch.float64)
        pt_out, _ = varlen_attention_reference(*leaves_pt, cu_q, cu_k, causal=case.causal, window_size=case.window,
                                               softcap=case.softcap, alibi_slopes=alibi, sink=sink,
                                               compute_dtype=case.dtype)
        ref_grads = torch.autograd.grad(ref_out, leaves64, dout.double())
        pt_grads = torch.autograd.grad(pt_out, leaves_pt, dout)
        for name, g, gr, gp in zip(("dq", "dk", "dv"), grads, ref_grads, pt_grads):
            rows.append(_compare(case, f"bwd:{name}", g, gr, gp, case.dtype, 3.0, None))
    return rows


def run_case(case: Case, device: torch.device, gen: torch.Generator) -> list[Row]:
    from .ops.attention.reference import attention_reference

    if case.op in ("varlen", "kvcache"):
        return run_packed_case(case, device, gen)

    (q, k, v), mask, view = _inputs(case, device, gen)
    align = "bottom_right" if case.op == "flash_attn_func" else "top_left"

    alibi, sink = _features(case, device, gen, case.B)

    def reference(tensors, compute_dtype):
        qq, kk, vv = (view(t) for t in tensors)
        m = mask
        if m is not None and m.is_floating_point():
            m = m.to(compute_dtype)
        return attention_reference(qq, kk, vv, causal=case.causal, causal_align=align, mask=m,
                                   compute_dtype=compute_dtype, window_size=case.window, softcap=case.softcap,
                                   alibi_slopes=alibi, sink=None if sink is None else sink.to(compute_dtype))

    leaves = [t.clone().requires_grad_(case.bwd) for t in (q, k, v)]
    leaves64 = [t.double().requires_grad_(case.bwd) for t in (q, k, v)]
    leaves_pt = [t.clone().requires_grad_(case.bwd) for t in (q, k, v)]

    with torch.set_grad_enabled(case.bwd):
        launches = _hopper_fwd_launches()
        out, lse = _call(case, *leaves, mask, alibi, sink)
        hopper = _hopper_fwd_launches() > launches
        ref_out, ref_lse = reference(leaves64, torch.float64)
        pt_out, pt_lse = reference(leaves_pt, case.dtype)
    target = FP32_TARGET if case.dtype == torch.float32 else None
    rows = [_compare(case, "fwd", view(out), ref_out, pt_out, case.dtype, 2.0, target)]
    if lse is not None:
        # lse is float32 whatever the input dtype: its rounding step is float32's.
        rows.append(_compare(case, "fwd:lse", lse, ref_lse, pt_lse, torch.float32, 2.0, target))
    if hopper:
        for r in rows:
            r.note = " ".join(filter(None, (r.note, "(Gluon Hopper forward)")))
    if case.bwd:
        dout = torch.randn(out.shape, generator=gen).to(device=device, dtype=case.dtype)
        grads = torch.autograd.grad(out, leaves, dout)
        ref_grads = torch.autograd.grad(ref_out, leaves64, view(dout).double())
        pt_grads = torch.autograd.grad(pt_out, leaves_pt, view(dout))
        for name, g, gr, gp in zip(("dq", "dk", "dv"), grads, ref_grads, pt_grads):
            rows.append(_compare(case, f"bwd:{name}", view(g), view(gr), view(gp), case.dtype, 3.0, None))
    return rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------ report
HEADER = (f"{'op':16s} {'backend':9s} {'dtype':5s} {'shape BxHxSqxSkxD':22s} {'variant':24s} "
          f"{'mode':7s} {'max err':>9s} {'bound':>9s}  result")


def format_row(r: Row) -> str:
    c = r.case
    err = "-" if math.isnan(r.err) else f"{r.err:9.2e}"
    bound = "-" if math.isnan(r.bound) else f"{r.bound:9.2e}"
    res = "pass" if r.ok else "FAIL"
    line = (f"{c.op:16s} {c.backend:9s} {SHORT[c.dtype]:5s} {c.shape():22s} {c.variant():24s} "
            f"{r.mode:7s} {err:>9s} {bound:>9s}  {res}")
    return line + (f"  {r.note}" if r.note else "")


def run(device: torch.device, backends: tuple[str, ...] = ("triton", "reference"), seed: int = 0,
        out=sys.stdout, verbose: bool = False, plan: str | None = None) -> Report:
    """Run the plan for ``device`` (or the named ``plan``, "cpu" or "gpu"), keeping the cases
    whose backend is in ``backends``, printing each row as it is measured. Returns the report;
    the caller decides the exit code."""
    plan = plan or ("gpu" if device.type == "cuda" else "cpu")
    cases = gpu_cases() if plan == "gpu" else cpu_cases()
    cases = [c for c in cases if c.backend in backends]
    gen = torch.Generator().manual_seed(seed)
    report = Report()
    t0 = time.time()
    print(HEADER, file=out)
    print("-" * len(HEADER), file=out, flush=True)
    for case in cases:
        try:
            rows = run_case(case, device, gen)
            _sync(device)
        except Exception as exc:  # an exception is a failed check, reported with its reason
            msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
            rows = [Row(case, "fwd+bwd" if case.bwd else "fwd", note=msg)]
            if verbose:
                traceback.print_exc(file=out)
        for r in rows:
            print(format_row(r), file=out, flush=True)
        report.rows.extend(rows)
    report.seconds = time.time() - t0
    return report


HOPPER_FWD_CASES = ("bf16/fp16, D=128 or 256, Sq and Sk multiples of 128, (B, S, H, D) or (B, H, S, D) "
                    "storage, causal, window, softcap, ALiBi and sinks; no mask, no varlen")


def _hopper_fwd_launches() -> int:
    """Gluon forward launches so far (0 while the attention launcher is not imported)."""
    launch = sys.modules.get("flashkernels.ops.attention.launch")
    return launch.hopper_fwd_launches if launch is not None else 0


def hopper_fwd_status(device: torch.device) -> tuple[bool, str]:
    """(active, text): whether the attention forward runs the Gluon Hopper kernel
    (ops/attention/kernels/fwd_hopper.py) on ``device`` for its cases, and why not."""
    from ._backend import triton_import_error

    if triton_import_error() is not None:
        return False, "off: triton does not import"
    try:
        from .ops.attention import launch
    except Exception as exc:  # a broken triton: say so, do not fail `info`
        return False, f"off: the attention launcher does not import ({type(exc).__name__}: {exc})"
    why = launch.hopper_fwd_device_reason(device)
    if why is not None:
        return False, f"off on {device}: {why}"
    bwd = ("the backward at D=64/128 (its features too)"
           if os.environ.get(launch.HOPPER_BWD_ENV, "").strip() != "0"
           else f"the backward off ({launch.HOPPER_BWD_ENV}=0)")
    return True, (f"on for {HOPPER_FWD_CASES} ({launch.HOPPER_FWD_ENV}=0 turns it off); {bwd}, except with "
                  "deterministic=True")


def interpreter_compat() -> None:
    """Make the interpreter work with this NumPy (see flashkernels._interpreter)."""
    from ._interpreter import fix_numpy_scalar_conversion

    fix_numpy_scalar_conversion()


def triton_imported() -> bool:
    """True once ``triton.language`` (or a flashkernels kernel module) is imported: from then on
    TRITON_INTERPRET can no longer change how kernels run in this process, since Triton decides at
    @triton.jit time, and triton.language decorates its own helpers on import."""
    return "triton.language" in sys.modules or any(
        name.startswith("flashkernels.ops.") and ".kernels" in name for name in sys.modules)


__all__ = ["Case", "Row", "Report", "run", "cpu_cases", "gpu_cases", "format_row", "HEADER",
           "interpreter_compat", "triton_imported", "hopper_fwd_status"]
